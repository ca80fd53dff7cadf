"""Driving the window as a person does: right-click a row, pick from the menu that pops
up, press a toolbar button, press a dialog's OK. Never the slot underneath: a slot called
directly skips the signal's arguments (``triggered(bool)``) and a disabled button."""

from __future__ import annotations

import re
import time

from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtGui import QAction, QContextMenuEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractButton, QApplication, QMenu, QToolButton, QWidget
from pytestqt.qtbot import QtBot

from vmsnapgui.qt.main_window import MainWindow

MENU_TIMEOUT_S = 60.0
_MINUTE_STAMP = re.compile(r"\d{4}-\d\d-\d\d-\d{4}")  # default names, which can tick over


def _wait_for(condition: object, timeout_s: float) -> bool:
    """Spin the event loop (we are inside a menu's own loop) until ``condition()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        QApplication.processEvents()
        time.sleep(0.01)
    return bool(condition())  # type: ignore[operator]


def pick_from_context_menu(
    window: MainWindow, key: str, label: str, timeout_s: float = MENU_TIMEOUT_S
) -> None:
    """Right-click the tree row ``key`` and click ``label`` in the menu that pops up.

    The right-click is the QContextMenuEvent a mouse press delivers to the tree's viewport;
    the menu is the one the window builds and runs with ``exec``; the action is clicked
    with the mouse once it is enabled (facts such as capabilities may still be loading).
    """
    view = window.tree_view
    index = view.view_index(key)
    assert index.isValid(), f"no row {key!r} is shown"
    view.scrollTo(index)
    position = view.visualRect(index).center()
    viewport = view.viewport()
    outcome: dict[str, str] = {}

    def in_menu() -> None:
        menu = QApplication.activePopupWidget()
        if not isinstance(menu, QMenu):
            outcome["error"] = "no menu popped up"
            return
        labels = [a.text() for a in menu.actions() if not a.isSeparator()]
        action = next((a for a in menu.actions() if a.text() == label), None)
        if action is None:
            outcome["error"] = f"the menu has no {label!r}: {labels}"
            menu.close()
            return
        if not _wait_for(action.isEnabled, timeout_s):
            outcome["error"] = f"{label!r} stayed disabled: {action.toolTip()}"
            menu.close()
            return
        QTest.mouseClick(
            menu,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
            menu.actionGeometry(action).center(),
        )
        outcome["picked"] = label
        if menu.isVisible():  # the click closes the menu; never leave its loop running
            menu.close()

    QTimer.singleShot(0, in_menu)
    event = QContextMenuEvent(
        QContextMenuEvent.Reason.Mouse, position, viewport.mapToGlobal(position)
    )
    QApplication.sendEvent(viewport, event)  # returns when the menu has closed
    assert "error" not in outcome, outcome["error"]
    assert outcome.get("picked") == label, "the menu closed before anything was picked"


def toolbar_button(window: MainWindow, action: QAction) -> QToolButton:
    """The main toolbar's button for ``action``."""
    button = window.toolbar.widgetForAction(action)
    assert isinstance(button, QToolButton), f"{action.text()!r} is not on the toolbar"
    return button


def press_toolbar_button(qtbot: QtBot, window: MainWindow, action: QAction) -> None:
    """Click the toolbar button of ``action`` once it is enabled."""
    button = toolbar_button(window, action)
    qtbot.waitUntil(button.isEnabled, timeout=int(MENU_TIMEOUT_S * 1000))
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def press(qtbot: QtBot, button: QAbstractButton) -> None:
    """Click a button as a person would; a disabled button is a failure, not a no-op."""
    assert button.isVisible(), f"{button.text()!r} is not shown"
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton, pos=QPoint(2, 2))


def shown_state(dialog: QWidget) -> list[tuple[object, ...]]:
    """What a person can see of a dialog: each widget's kind, text, visibility and state."""
    state: list[tuple[object, ...]] = [("title", dialog.windowTitle())]
    for widget in dialog.findChildren(QWidget):
        row: list[object] = [
            type(widget).__name__,
            widget.isVisibleTo(dialog),
            widget.isEnabled(),
            widget.toolTip(),
        ]
        for getter in ("text", "toPlainText", "isChecked", "currentText"):
            value = getattr(widget, getter, None)
            if callable(value):
                shown = value()
                row.append(_MINUTE_STAMP.sub("<time>", shown) if isinstance(shown, str) else shown)
        state.append(tuple(row))
    return state
