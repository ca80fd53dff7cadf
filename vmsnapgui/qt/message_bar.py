"""An inline message strip for errors and notices: no modal dialogs, details on demand."""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from vmsnapgui.core.errors import UserError


class MessageBar(QFrame):
    """One sentence with an icon; "Details" shows the technical text; an optional action.

    Newer messages replace older ones; closing hides the bar.
    """

    action_triggered = Signal(str)  # the action's name (e.g. "retry")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAccessibleName("Message")
        self.setAutoFillBackground(True)
        self._action_name = ""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        row = QHBoxLayout()
        self.icon = QLabel()
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.details_button = QPushButton("Details")
        self.details_button.setCheckable(True)
        self.details_button.setAccessibleName("Show details")
        self.action_button = QPushButton()
        self.close_button = QToolButton()
        self.close_button.setIcon(
            self.style().standardIcon(QStyle.StandardPixmap.SP_TitleBarCloseButton)
        )
        self.close_button.setAutoRaise(True)
        self.close_button.setAccessibleName("Close message")
        self.close_button.setToolTip("Close")
        row.addWidget(self.icon)
        row.addWidget(self.text, 1)
        row.addWidget(self.action_button)
        row.addWidget(self.details_button)
        row.addWidget(self.close_button)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setAccessibleName("Message details")
        self.details.setMaximumHeight(120)
        layout.addLayout(row)
        layout.addWidget(self.details)
        self.details.hide()
        self._connect_signals()
        self.hide()

    def _connect_signals(self) -> None:
        self.details_button.toggled.connect(self.details.setVisible)
        self.close_button.clicked.connect(self.hide)
        self.action_button.clicked.connect(self._on_action_clicked)

    def show_error(
        self, error: UserError | str, *, action: str = "", action_label: str = ""
    ) -> None:
        """Show an error; ``action``/``action_label`` add a button (e.g. Retry)."""
        self._show(QStyle.StandardPixmap.SP_MessageBoxWarning, error, action, action_label)

    def show_info(self, message: str) -> None:
        """Show a notice."""
        self._show(QStyle.StandardPixmap.SP_MessageBoxInformation, message, "", "")

    @property
    def message(self) -> str:
        """The sentence shown."""
        return self.text.text() if self.isVisible() or not self.isHidden() else ""

    def _show(
        self, icon: QStyle.StandardPixmap, error: UserError | str, action: str, label: str
    ) -> None:
        message = error.message if isinstance(error, UserError) else error
        detail = error.detail if isinstance(error, UserError) else None
        size = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
        self.icon.setPixmap(self.style().standardIcon(icon).pixmap(size, size))
        self.text.setText(message)
        self.details.setPlainText(detail or "")
        self.details_button.setVisible(bool(detail))
        self.details_button.setChecked(False)
        self._action_name = action
        self.action_button.setText(label)
        self.action_button.setVisible(bool(action))
        self.show()

    @Slot()
    def _on_action_clicked(self) -> None:
        if self._action_name:
            self.action_triggered.emit(self._action_name)
