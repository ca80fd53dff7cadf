"""The "Add connection" dialog: presets for the usual hosts and a free URI, checked live."""

from __future__ import annotations

import enum
import os
from urllib.parse import quote

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from vmsnapgui.core.errors import UserError
from vmsnapgui.virt.connection import validate_uri


class Preset(enum.Enum):
    """The kinds of connection the dialog offers."""

    LOCAL_SYSTEM = "This computer: system VMs (qemu:///system)"
    LOCAL_SESSION = "This computer: my user's VMs (qemu:///session)"
    REMOTE_SSH = "Another computer over SSH"
    TEST_FILE = "A libvirt test-driver file"
    CUSTOM = "Any libvirt URI"


def ssh_uri(user: str, host: str, session: bool = False) -> str:
    """``qemu+ssh://user@host/system`` (or ``/session``)."""
    user_part = f"{quote(user.strip(), safe='')}@" if user.strip() else ""
    return f"qemu+ssh://{user_part}{host.strip()}/{'session' if session else 'system'}"


def test_driver_uri(path: str) -> str:
    """``test:///absolute/path.xml``."""
    return "test://" + os.path.abspath(os.path.expanduser(path.strip())) if path.strip() else ""


class AddConnectionDialog(QDialog):
    """Asks for a connection; :meth:`uri` is the validated result."""

    def __init__(self, existing: list[str] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Add connection")
        self.setAccessibleName("Add connection")
        self._existing = set(existing or [])
        self._build()
        self._connect_signals()
        self._on_preset_changed()

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.preset = QComboBox()
        self.preset.setAccessibleName("Kind of connection")
        for preset in Preset:
            self.preset.addItem(preset.value, preset)
        form.addRow("&Connect to:", self.preset)

        self.user = QLineEdit()
        self.user.setPlaceholderText("root")
        self.user.setAccessibleName("SSH user")
        self.host = QLineEdit()
        self.host.setPlaceholderText("host.example.org")
        self.host.setAccessibleName("SSH host")
        self.user_label = QLabel("&User:")
        self.user_label.setBuddy(self.user)
        self.host_label = QLabel("&Host:")
        self.host_label.setBuddy(self.host)
        form.addRow(self.user_label, self.user)
        form.addRow(self.host_label, self.host)

        self.file = QLineEdit()
        self.file.setAccessibleName("Test-driver file")
        self.file.setPlaceholderText("/path/to/host.xml")
        self.browse = QPushButton("&Browse…")
        file_row = QHBoxLayout()
        file_row.addWidget(self.file, 1)
        file_row.addWidget(self.browse)
        self.file_container = QWidget()
        self.file_container.setLayout(file_row)
        file_row.setContentsMargins(0, 0, 0, 0)
        self.file_label = QLabel("&File:")
        self.file_label.setBuddy(self.file)
        form.addRow(self.file_label, self.file_container)

        self.uri_edit = QLineEdit()
        self.uri_edit.setAccessibleName("Connection URI")
        form.addRow("&URI:", self.uri_edit)
        layout.addLayout(form)

        self.problem = QLabel()
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #d93a2b;")
        self.problem.setAccessibleName("Problem with the URI")
        layout.addWidget(self.problem)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Connect")
        layout.addWidget(self.buttons)
        self.resize(520, self.sizeHint().height())

    def _connect_signals(self) -> None:
        self.preset.currentIndexChanged.connect(self._on_preset_changed)
        self.user.textChanged.connect(self._on_fields_edited)
        self.host.textChanged.connect(self._on_fields_edited)
        self.file.textChanged.connect(self._on_fields_edited)
        self.uri_edit.textEdited.connect(self._on_uri_edited)
        self.browse.clicked.connect(self._on_browse)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    # -- public -------------------------------------------------------------------------

    @property
    def current_preset(self) -> Preset:
        """The preset chosen."""
        preset = self.preset.currentData()
        return preset if isinstance(preset, Preset) else Preset.CUSTOM

    def select_preset(self, preset: Preset) -> None:
        """Choose a preset (tests, and callers that know what the user wants)."""
        self.preset.setCurrentIndex(list(Preset).index(preset))

    def uri(self) -> str:
        """The URI as typed or built (validated when the dialog was accepted)."""
        return self.uri_edit.text().strip()

    def problem_text(self) -> str:
        """Why the URI cannot be used (empty when it can)."""
        return self.problem.text()

    # -- slots --------------------------------------------------------------------------

    @Slot()
    def _on_preset_changed(self) -> None:
        preset = self.current_preset
        ssh = preset is Preset.REMOTE_SSH
        test = preset is Preset.TEST_FILE
        for widget in (self.user, self.host, self.user_label, self.host_label):
            widget.setVisible(ssh)
        for file_widget in (self.file_container, self.file_label):
            file_widget.setVisible(test)
        self.uri_edit.setReadOnly(preset is not Preset.CUSTOM)
        self._on_fields_edited()
        if ssh:
            self.host.setFocus()
        elif test:
            self.file.setFocus()
        elif preset is Preset.CUSTOM:
            self.uri_edit.setFocus()

    @Slot()
    def _on_fields_edited(self) -> None:
        preset = self.current_preset
        if preset is Preset.LOCAL_SYSTEM:
            self.uri_edit.setText("qemu:///system")
        elif preset is Preset.LOCAL_SESSION:
            self.uri_edit.setText("qemu:///session")
        elif preset is Preset.REMOTE_SSH:
            self.uri_edit.setText(
                ssh_uri(self.user.text(), self.host.text()) if self.host.text().strip() else ""
            )
        elif preset is Preset.TEST_FILE:
            self.uri_edit.setText(test_driver_uri(self.file.text()))
        self._validate()

    @Slot()
    def _on_uri_edited(self) -> None:
        self._validate()

    @Slot()
    def _on_browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Test-driver file", "", "libvirt test driver (*.xml);;All files (*)"
        )
        if path:
            self.file.setText(path)

    def _validate(self) -> None:
        text = self.uri()
        problem = ""
        if self.current_preset is Preset.REMOTE_SSH and not self.host.text().strip():
            problem = "Type the name or address of the host."
        elif self.current_preset is Preset.TEST_FILE and not self.file.text().strip():
            problem = "Choose a test-driver XML file."
        else:
            try:
                validate_uri(text)
            except UserError as exc:
                problem = exc.message
            else:
                if text in self._existing:
                    problem = "This connection is already open."
        self.problem.setText(problem)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problem)
