"""Every action that opens a dialog, triggered as a person triggers it, on the test driver.

``QAction.triggered`` carries a ``checked`` bool. A slot with a defaulted parameter
catches it: the revert slot once took it for ``force_reason`` and every revert from the
window demanded "Force". These tests trigger the actions themselves (menu, toolbar,
context menu), never the slots.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication, QDialog, QDialogButtonBox, QPlainTextEdit
from pytestqt.qtbot import QtBot

import vmsnapgui.qt
from tests.gui.conftest import LOAD_TIMEOUT_MS, select_row, select_vm
from tests.gui.user_input import (
    pick_from_context_menu,
    press,
    press_toolbar_button,
    shown_state,
)
from vmsnapgui.qt.connection_dialog import AddConnectionDialog
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.operation_dialogs import DeleteDialog, RevertDialog, TakeSnapshotDialog
from vmsnapgui.qt.snapshot_operations import DELETE_MODES
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY

# The window's own actions that do something other than open a dialog. Anything not
# listed here must open one and is checked below, so a new action cannot slip past.
NOT_DIALOGS = {
    "&Remove connection",
    "Re&try connection",
    "Open the &demo lab",
    "&Quit",
    "&Filter snapshots",
    "Go to &connections",
    "Go to the snapshot &tree",
    "&Copy name",
    "&Edit description",
}
MODE_OF = {label: mode for _key, mode, label in DELETE_MODES}


def window_actions(window: MainWindow) -> dict[str, QAction]:
    return {a.text(): a for a in window.findChildren(QAction) if a.parent() is window}


def operation_dialog_after(qtbot: QtBot, window: MainWindow, before: QDialog | None) -> QDialog:
    """The operation dialog that opened since ``before`` (its facts are gathered first)."""

    def opened() -> bool:
        dialog = window.operations.dialog
        return dialog is not None and dialog is not before and dialog.isVisible()

    qtbot.waitUntil(opened, timeout=LOAD_TIMEOUT_MS)
    dialog = window.operations.dialog
    assert dialog is not None
    return dialog


def close_dialog(qtbot: QtBot, dialog: QDialog) -> None:
    """Cancel (or close) the dialog as a person would."""
    buttons = dialog.findChild(QDialogButtonBox)
    if buttons is not None:
        press(qtbot, buttons.button(QDialogButtonBox.StandardButton.Cancel))
    else:
        dialog.close()
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=LOAD_TIMEOUT_MS)


def open_by_trigger(qtbot: QtBot, window: MainWindow, action: QAction, checked: bool) -> QDialog:
    """Emit the action's ``triggered(checked)`` (``trigger()`` sends False) and wait."""
    before = window.operations.dialog
    if checked:
        action.triggered[bool].emit(True)  # what a checkable action that got ticked sends
    else:
        action.trigger()
    return operation_dialog_after(qtbot, window, before)


def assert_nothing_leaked(dialog: QDialog, label: str) -> None:
    """What each dialog must show when opened from an action, whatever ``checked`` was."""
    if isinstance(dialog, RevertDialog):
        assert not dialog.force_box.isVisibleTo(dialog), "the Force box is offered"
        assert dialog.force() is False
        assert dialog.ok_button.isEnabled(), "Revert is disabled without a reason"
        texts = [child.text() for child in dialog.findChildren(type(dialog.refusal))]
        assert not any("force" in text.lower() for text in texts), texts
    elif isinstance(dialog, DeleteDialog):
        assert dialog.plan.mode is MODE_OF[label]
    elif isinstance(dialog, TakeSnapshotDialog):
        assert dialog.name_edit.text() == dialog.options.default_name
        assert not dialog.quiesce_box.isChecked()
    else:
        assert dialog.findChild(QPlainTextEdit) is not None, f"{label!r} opened {dialog!r}"


def test_every_dialog_action_of_the_window_is_checked_here(lab_window: MainWindow) -> None:
    actions = window_actions(lab_window)
    assert set(actions) >= NOT_DIALOGS
    dialog_labels = set(actions) - NOT_DIALOGS
    expected = {
        "&Add connection…",
        "&Take snapshot…",
        "&Revert to snapshot…",
        "C&lone…",
        "Show &XML",
        *MODE_OF,
    }
    assert dialog_labels == expected


@pytest.mark.parametrize("checked", [False, True], ids=["trigger", "triggered-true"])
def test_no_snapshot_action_lets_checked_into_its_dialog(
    lab_window: MainWindow, qtbot: QtBot, checked: bool
) -> None:
    select_vm(qtbot, lab_window, "web")
    select_row(qtbot, lab_window, "nginx-installed")  # has children: every delete applies
    actions = lab_window.operation_actions
    opened = []
    for key, action in actions.items():
        if key in ("take", "clone"):
            continue  # Now's action; clone is refused on the test driver (checked for real)
        label = action.text()
        qtbot.waitUntil(action.isEnabled, timeout=LOAD_TIMEOUT_MS)
        dialog = open_by_trigger(qtbot, lab_window, action, checked)
        assert_nothing_leaked(dialog, label)
        opened.append(label)
        close_dialog(qtbot, dialog)
    assert sorted(opened) == sorted(["&Revert to snapshot…", "Show &XML", *MODE_OF])
    assert not actions["clone"].isEnabled()  # the test driver's disks are not files here
    select_row(qtbot, lab_window, NOW_KEY)
    take = actions["take"]
    qtbot.waitUntil(take.isEnabled, timeout=LOAD_TIMEOUT_MS)
    dialog = open_by_trigger(qtbot, lab_window, take, checked)
    assert_nothing_leaked(dialog, take.text())
    close_dialog(qtbot, dialog)


def test_a_dialog_looks_the_same_whatever_checked_the_action_sent(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    for key, row in (
        ("revert", "base"),
        ("delete", "base"),
        ("show-xml", "base"),
        ("take", NOW_KEY),
    ):
        select_row(qtbot, lab_window, row)
        action = lab_window.operation_actions[key]
        qtbot.waitUntil(action.isEnabled, timeout=LOAD_TIMEOUT_MS)
        seen = []
        for checked in (False, True):
            dialog = open_by_trigger(qtbot, lab_window, action, checked)
            seen.append(shown_state(dialog))
            close_dialog(qtbot, dialog)
        assert seen[0] == seen[1], key


def test_add_connection_is_not_handed_checked_either(lab_window: MainWindow, qtbot: QtBot) -> None:
    shown: list[QDialog] = []

    def look_and_cancel() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, AddConnectionDialog):
            shown.append(dialog)
            dialog.reject()
        else:
            QTimer.singleShot(20, look_and_cancel)

    QTimer.singleShot(0, look_and_cancel)
    window_actions(lab_window)["&Add connection…"].trigger()  # runs the dialog's own loop
    assert len(shown) == 1
    assert len(lab_window.hosts) == 1


def test_revert_from_the_toolbar_and_the_context_menu_needs_no_force(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    select_row(qtbot, lab_window, "base")
    revert = lab_window.operation_actions["revert"]
    before = lab_window.operations.dialog
    press_toolbar_button(qtbot, lab_window, revert)
    dialog = operation_dialog_after(qtbot, lab_window, before)
    assert isinstance(dialog, RevertDialog)
    assert_nothing_leaked(dialog, revert.text())
    close_dialog(qtbot, dialog)

    pick_from_context_menu(lab_window, "php-tuned", "&Revert to snapshot…")
    dialog = operation_dialog_after(qtbot, lab_window, dialog)
    assert isinstance(dialog, RevertDialog)
    assert "'php-tuned'" in dialog.windowTitle() or any(
        "'php-tuned'" in label.text() for label in dialog.findChildren(type(dialog.refusal))
    )
    assert_nothing_leaked(dialog, revert.text())
    close_dialog(qtbot, dialog)


def test_no_slot_connected_by_name_has_a_parameter_a_signal_could_fill_by_accident() -> None:
    """``x.triggered.connect(self.slot)`` (or clicked, toggled…): the slot takes no
    defaulted parameters, or the signal's bool lands in them. Use a ``partial`` instead."""
    package = Path(vmsnapgui.qt.__file__).parent
    bool_signals = {"triggered", "clicked", "toggled"}
    found = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defaulted = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.args.defaults
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            signal = node.func.value
            if node.func.attr != "connect" or not isinstance(signal, ast.Attribute):
                continue
            slot = node.args[0] if node.args else None
            if (
                signal.attr in bool_signals
                and isinstance(slot, ast.Attribute)
                and slot.attr in defaulted
            ):
                found.append(f"{path.name}:{node.lineno} {signal.attr} -> {slot.attr}")
    assert found == []
