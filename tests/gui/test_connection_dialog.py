"""The "Add connection" dialog builds URIs from presets and checks them as you type."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QDialogButtonBox
from pytestqt.qtbot import QtBot

from vmsnapgui.qt.connection_dialog import AddConnectionDialog, Preset


def dialog(qtbot: QtBot, existing: list[str] | None = None) -> AddConnectionDialog:
    widget = AddConnectionDialog(existing)
    qtbot.addWidget(widget)
    return widget


def ok_enabled(widget: AddConnectionDialog) -> bool:
    return widget.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()


def test_the_local_presets_need_nothing_typed(qtbot: QtBot) -> None:
    widget = dialog(qtbot)
    assert widget.uri() == "qemu:///system" and ok_enabled(widget)
    widget.select_preset(Preset.LOCAL_SESSION)
    assert widget.uri() == "qemu:///session"


def test_ssh_builds_the_uri_from_user_and_host(qtbot: QtBot) -> None:
    widget = dialog(qtbot)
    widget.select_preset(Preset.REMOTE_SSH)
    assert not ok_enabled(widget)
    assert widget.problem_text() == "Type the name or address of the host."
    qtbot.keyClicks(widget.user, "admin")
    qtbot.keyClicks(widget.host, "kvm1.example.org")
    assert widget.uri() == "qemu+ssh://admin@kvm1.example.org/system"
    assert ok_enabled(widget)


def test_a_test_driver_file_must_exist(qtbot: QtBot, lab_file: Path, tmp_path: Path) -> None:
    widget = dialog(qtbot)
    widget.select_preset(Preset.TEST_FILE)
    widget.file.setText(str(tmp_path / "missing.xml"))
    assert not ok_enabled(widget)
    assert "does not exist" in widget.problem_text()
    widget.file.setText(str(lab_file))
    assert widget.uri() == f"test://{lab_file}"
    assert ok_enabled(widget)


def test_a_free_uri_is_validated_live(qtbot: QtBot) -> None:
    widget = dialog(qtbot, existing=["qemu:///system"])
    widget.select_preset(Preset.CUSTOM)
    widget.uri_edit.clear()
    qtbot.keyClicks(widget.uri_edit, "nonsense")
    assert not ok_enabled(widget)
    assert "is not a libvirt URI" in widget.problem_text()
    widget.uri_edit.clear()
    qtbot.keyClicks(widget.uri_edit, "qemu:///system")
    assert widget.problem_text() == "This connection is already open."
    widget.uri_edit.clear()
    qtbot.keyClicks(widget.uri_edit, "qemu+tls://host/system")
    assert ok_enabled(widget)
