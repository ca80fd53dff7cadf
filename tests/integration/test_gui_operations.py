"""Operations from the window on real guests: menu → dialog → result, checked with virsh
and the disk bytes; cancel leaves nothing; failures say why and the window keeps going.

Everything is driven as a person drives it: a right-click on the row, a click on the menu
entry or the toolbar button, a click on the dialog's button. Calling a slot or
``dialog.accept()`` directly would skip what a person meets (``triggered(bool)``'s
argument, a disabled OK) and once hid a revert that always demanded "Force"."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import TypeVar

import libvirt
import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QDialog, QPlainTextEdit
from pytestqt.qtbot import QtBot

from tests.gui.user_input import pick_from_context_menu, press, press_toolbar_button
from tests.integration.conftest import (
    MIB,
    SYSTEM_URI,
    Guest,
    GuestFactory,
    TmpfsFactory,
    fill_up,
    image_holds,
    internal_snapshots_in,
    virsh,
)
from tests.integration.gui_support import show_vm
from vmsnapgui.core.domain_xml import domain_disks
from vmsnapgui.qt.job_runner import Job, JobState
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.operation_dialogs import (
    CloneDialog,
    DeleteDialog,
    RevertDialog,
    TakeSnapshotDialog,
)
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY

WAIT_MS = 60_000


def snapshot_names(domain: str) -> list[str]:
    return sorted(virsh(SYSTEM_URI, "snapshot-list", domain, "--name").stdout.split("\n")[:-1])


def open_vm(qtbot: QtBot, window: MainWindow, name: str, row: str) -> None:
    window.add_connection(SYSTEM_URI, remember=False)
    show_vm(qtbot, window, name)
    qtbot.waitUntil(lambda: window.tree_view.select_key(row), timeout=WAIT_MS)


def trigger(qtbot: QtBot, window: MainWindow, row: str, label: str) -> None:
    """Right-click the row and click ``label`` in its context menu, as a user would."""
    pick_from_context_menu(window, row, label, timeout_s=WAIT_MS / 1000)


def last_job(window: MainWindow) -> Job:
    rows = window.operations_panel._rows
    return max(rows.values(), key=lambda r: r.job.id).job


D = TypeVar("D", bound=QDialog)


def open_dialog(qtbot: QtBot, window: MainWindow, row: str, label: str, kind: type[D]) -> D:
    """Pick ``label`` from the row's menu and wait for its dialog (facts gathered first)."""
    trigger(qtbot, window, row, label)
    qtbot.waitUntil(lambda: isinstance(window.operations.dialog, kind), timeout=WAIT_MS)
    dialog = window.operations.dialog
    assert isinstance(dialog, kind)
    return dialog


def press_ok(qtbot: QtBot, dialog: QDialog) -> None:
    """Click the dialog's OK button (Take snapshot, Revert, Delete…); it must be enabled."""
    button = getattr(dialog, "ok_button", None)
    assert button is not None, f"{dialog!r} has no OK button"
    press(qtbot, button)


def run_dialog(qtbot: QtBot, window: MainWindow, dialog: QDialog) -> Job:
    """Click OK and wait for the operation it submitted to end."""
    jobs_before = set(window.operations_panel._rows)
    press_ok(qtbot, dialog)
    assert set(window.operations_panel._rows) != jobs_before, "OK submitted nothing"
    job = last_job(window)
    qtbot.waitUntil(lambda: job.is_finished, timeout=WAIT_MS)
    return job


def shows_vm(window: MainWindow, name: str) -> bool:
    return window.tree_model.domain is not None and window.tree_model.domain.name == name


class Heartbeat:
    """Measures the longest gap between 10 ms timer ticks on the GUI thread."""

    def __init__(self) -> None:
        import time

        self._clock = time.perf_counter
        self.longest = 0.0
        self._last = self._clock()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = self._clock()
        self.longest = max(self.longest, now - self._last)
        self._last = now


def test_take_from_the_now_row_through_its_dialog(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest(start=True)
    open_vm(qtbot, window, guest.name, NOW_KEY)
    dialog = open_dialog(qtbot, window, NOW_KEY, "&Take snapshot…", TakeSnapshotDialog)
    dialog.name_edit.setText("from the window")
    dialog.description_edit.setPlainText("taken by clicking")
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    assert snapshot_names(guest.name) == ["from the window"]
    qtbot.waitUntil(lambda: window.tree_view.selected_key() == "from the window", timeout=WAIT_MS)
    assert window.operations_panel.row_text(job)["Result"].startswith(
        "Snapshot 'from the window' taken"
    )


def test_revert_through_its_dialog_keeps_a_safety_snapshot_and_restores_the_bytes(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest(start=True)
    guest.write(0xA1, 0, MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "good")
    guest.write(0xB2, 0, MIB)
    open_vm(qtbot, window, guest.name, "good")
    heartbeat = Heartbeat()
    dialog = open_dialog(qtbot, window, "good", "&Revert to snapshot…", RevertDialog)
    assert dialog.safety_snapshot()
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    assert guest.holds(0xA1, 0, MIB) and not guest.holds(0xB2, 0, MIB)
    names = snapshot_names(guest.name)
    assert len(names) == 2 and "good" in names
    assert any(n.startswith("before-revert-") for n in names)
    qtbot.waitUntil(lambda: window.tree_view.selected_key() == "good", timeout=WAIT_MS)
    assert heartbeat.longest < 0.5  # the window kept painting (the bench measures finer)


@pytest.mark.parametrize("how", ["toolbar-button", "action-trigger", "context-menu"])
def test_revert_from_the_window_needs_no_force_and_libvirt_is_not_asked_to_force(
    window: MainWindow,
    qtbot: QtBot,
    make_guest: GuestFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    how: str,
) -> None:
    guest = make_guest()  # shut off: a revert that needs no force
    guest.write(0xA1, 0, MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "good")
    guest.write(0xB2, 0, MIB)
    asked: list[int] = []
    real_revert = libvirt.virDomain.revertToSnapshot

    def revert_and_record(
        dom: libvirt.virDomain, snap: libvirt.virDomainSnapshot, flags: int = 0
    ) -> int:
        asked.append(flags)
        return real_revert(dom, snap, flags)

    monkeypatch.setattr(libvirt.virDomain, "revertToSnapshot", revert_and_record)
    open_vm(qtbot, window, guest.name, "good")
    action = window.operation_actions["revert"]
    if how == "toolbar-button":
        press_toolbar_button(qtbot, window, action)
    elif how == "action-trigger":
        qtbot.waitUntil(action.isEnabled, timeout=WAIT_MS)
        action.trigger()
    else:
        trigger(qtbot, window, "good", "&Revert to snapshot…")
    qtbot.waitUntil(lambda: isinstance(window.operations.dialog, RevertDialog), timeout=WAIT_MS)
    dialog = window.operations.dialog
    assert isinstance(dialog, RevertDialog)
    assert not dialog.force_box.isVisibleTo(dialog)
    assert dialog.ok_button.isEnabled()  # nothing to tick first
    assert dialog.force() is False
    if how == "context-menu":
        assert dialog.grab().save(str(tmp_path / "revert-dialog-from-context-menu.png"))
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    assert asked and not any(f & libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE for f in asked)
    assert guest.holds(0xA1, 0, MIB) and not guest.holds(0xB2, 0, MIB)


def test_delete_through_its_dialog(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "keep")
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "drop")
    open_vm(qtbot, window, guest.name, "drop")
    dialog = open_dialog(qtbot, window, "drop", "&Delete this snapshot…", DeleteDialog)
    assert [dialog.list.item(i).text() for i in range(dialog.list.count())] == ["drop"]
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    assert snapshot_names(guest.name) == ["keep"]
    qtbot.waitUntil(lambda: window.tree_view.selected_key() == "keep", timeout=WAIT_MS)


def test_cancelling_a_clone_from_the_panel_leaves_nothing_behind(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest(size="2G")
    guest.write(0xC3, 0, 768 * MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "big")
    before = sorted(os.listdir(guest.directory))
    open_vm(qtbot, window, guest.name, "big")
    dialog = open_dialog(qtbot, window, "big", "C&lone…", CloneDialog)
    qtbot.waitUntil(lambda: dialog.required is not None, timeout=WAIT_MS)
    dialog.name_edit.setText(f"{guest.name}-c")
    qtbot.waitUntil(dialog.ok_button.isEnabled, timeout=WAIT_MS)
    press_ok(qtbot, dialog)
    job = last_job(window)
    panel = window.operations_panel

    def cancellable() -> bool:
        button = panel.cancel_button(job)  # None once the row has ended
        return job.is_finished or (button is not None and button.isEnabled())

    qtbot.waitUntil(cancellable, timeout=WAIT_MS)
    assert not job.is_finished, "the copy ended before it could be cancelled"
    button = panel.cancel_button(job)
    assert button is not None
    button.click()
    qtbot.waitUntil(lambda: job.is_finished, timeout=WAIT_MS)
    assert job.state is JobState.CANCELLED
    assert sorted(os.listdir(guest.directory)) == before
    assert f"{guest.name}-c" not in {d.name() for d in system_conn.listAllDomains(0)}


def test_a_full_clone_from_the_window_makes_a_vm_with_the_snapshots_bytes(
    window: MainWindow,
    qtbot: QtBot,
    make_guest: GuestFactory,
    system_conn: libvirt.virConnect,
    clones: list[str],
) -> None:
    guest = make_guest()
    guest.write(0xD4, 0, MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "base")
    guest.write(0xE5, 0, MIB)
    open_vm(qtbot, window, guest.name, "base")
    dialog = open_dialog(qtbot, window, "base", "C&lone…", CloneDialog)
    name = f"{guest.name}-w"
    clones.append(name)
    dialog.name_edit.setText(name)
    qtbot.waitUntil(dialog.ok_button.isEnabled, timeout=WAIT_MS)
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    disk = domain_disks(system_conn.lookupByName(name).XMLDesc(0))[0].source or ""
    assert image_holds(disk, 0xD4, 0, MIB) and not image_holds(disk, 0xE5, 0, MIB)
    qtbot.waitUntil(partial(shows_vm, window, name), timeout=WAIT_MS)


def test_a_failing_operation_says_why_and_the_window_keeps_working(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    open_vm(qtbot, window, guest.name, NOW_KEY)
    dialog = open_dialog(qtbot, window, NOW_KEY, "&Take snapshot…", TakeSnapshotDialog)
    dialog.name_edit.setText("contested")
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "contested")  # someone else was faster
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.FAILED
    message = "There is already a snapshot called 'contested'."
    assert window.operations_panel.row_text(job)["Result"] == message
    assert window.message_bar.text.text() == message
    # Still usable: the next operation works.
    take_through_dialog(qtbot, window, "after the failure")
    assert snapshot_names(guest.name) == ["after the failure", "contested"]


def take_through_dialog(qtbot: QtBot, window: MainWindow, name: str) -> None:
    """Take a snapshot from the Now row's menu and its dialog; it must work."""
    qtbot.waitUntil(lambda: window.tree_view.select_key(NOW_KEY), timeout=WAIT_MS)
    dialog = open_dialog(qtbot, window, NOW_KEY, "&Take snapshot…", TakeSnapshotDialog)
    dialog.name_edit.setText(name)
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error


def test_a_clone_onto_a_disk_that_filled_up_fails_plainly_and_the_window_carries_on(
    window: MainWindow,
    qtbot: QtBot,
    make_guest: GuestFactory,
    small_disk: TmpfsFactory,
    system_conn: libvirt.virConnect,
    clones: list[str],
) -> None:
    small = small_disk("160M")
    guest = make_guest()
    guest.write(0xF6, 0, 32 * MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "s")
    open_vm(qtbot, window, guest.name, "s")
    dialog = open_dialog(qtbot, window, "s", "C&lone…", CloneDialog)
    name = f"{guest.name}-full"
    clones.append(name)  # removed afterwards should it be made after all
    dialog.name_edit.setText(name)
    dialog.folder_edit.clear()
    qtbot.keyClicks(dialog.folder_edit, str(small))  # typed, so the default does not replace it
    qtbot.waitUntil(lambda: dialog.required is not None, timeout=WAIT_MS)
    assert dialog.folder_edit.text() == str(small)
    assert dialog.ok_button.isEnabled()  # it fits while the dialog is filled in...
    fill_up(small, leave=2 * MIB)  # ...then something else takes the space
    heartbeat = Heartbeat()
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.FAILED
    message = window.operations_panel.row_text(job)["Result"]
    assert message.startswith("The clone needs ") and message.endswith(f"is free in {small}.")
    assert window.message_bar.text.text() == message
    assert os.listdir(small) == ["filler"]
    assert name not in {d.name() for d in system_conn.listAllDomains(0)}
    assert heartbeat.longest < 0.5
    take_through_dialog(qtbot, window, "after the full disk")
    assert snapshot_names(guest.name) == ["after the full disk", "s"]


def branch_by_virsh(guest: Guest) -> None:
    """root -> (a -> a1, b), internal snapshots of a shut-off guest, each with its bytes."""
    for pattern, offset, name in ((0x10, 0, "root"), (0x20, 1, "a"), (0x21, 2, "a1")):
        guest.write(pattern, offset * MIB, MIB)
        virsh(SYSTEM_URI, "snapshot-create-as", guest.name, name)
    virsh(SYSTEM_URI, "snapshot-revert", guest.name, "root")
    guest.write(0x30, 3 * MIB, MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "b")


@pytest.mark.parametrize(
    ("row", "label", "listed", "left_in_libvirt", "left_in_image", "selected"),
    [
        ("a", "Delete with all its &children…", ["a", "a1"], ["b", "root"], ["b", "root"], "root"),
        ("root", "Delete its children &only…", ["a", "a1", "b"], ["root"], ["root"], "root"),
        (
            "b",
            "Forget it, keep its data (&metadata only)…",
            ["b"],
            ["a", "a1", "root"],
            ["a", "a1", "b", "root"],
            "root",
        ),
    ],
)
def test_each_kind_of_delete_through_its_dialog(
    window: MainWindow,
    qtbot: QtBot,
    make_guest: GuestFactory,
    row: str,
    label: str,
    listed: list[str],
    left_in_libvirt: list[str],
    left_in_image: list[str],
    selected: str,
) -> None:
    guest = make_guest()
    branch_by_virsh(guest)
    open_vm(qtbot, window, guest.name, row)
    trigger(qtbot, window, row, label)
    qtbot.waitUntil(lambda: isinstance(window.operations.dialog, DeleteDialog), timeout=WAIT_MS)
    dialog = window.operations.dialog
    assert isinstance(dialog, DeleteDialog)
    assert sorted(dialog.list.item(i).text() for i in range(dialog.list.count())) == listed
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    assert snapshot_names(guest.name) == left_in_libvirt
    assert sorted(internal_snapshots_in(guest.disks["vda"])) == left_in_image
    assert guest.holds(0x30, 3 * MIB, MIB)  # Now is untouched
    qtbot.waitUntil(
        lambda: sorted(window.tree_model.keys()) == sorted([*left_in_libvirt, NOW_KEY]),
        timeout=WAIT_MS,
    )
    qtbot.waitUntil(lambda: window.tree_view.selected_key() == selected, timeout=WAIT_MS)


def test_clone_current_state_from_the_now_row(
    window: MainWindow,
    qtbot: QtBot,
    make_guest: GuestFactory,
    system_conn: libvirt.virConnect,
    clones: list[str],
) -> None:
    guest = make_guest()
    guest.write(0xA7, 0, MIB)
    open_vm(qtbot, window, guest.name, NOW_KEY)
    dialog = open_dialog(qtbot, window, NOW_KEY, "C&lone current state…", CloneDialog)
    assert not dialog.linked_button.isEnabled()  # Now keeps changing
    name = f"{guest.name}-now"
    clones.append(name)
    dialog.name_edit.setText(name)
    qtbot.waitUntil(dialog.ok_button.isEnabled, timeout=WAIT_MS)
    job = run_dialog(qtbot, window, dialog)
    assert job.state is JobState.DONE, job.error
    disk = domain_disks(system_conn.lookupByName(name).XMLDesc(0))[0].source or ""
    assert os.path.dirname(disk) == str(guest.directory)  # beside the source by default
    assert image_holds(disk, 0xA7, 0, MIB)
    assert virsh(SYSTEM_URI, "domstate", name).stdout.strip() == "shut off"
    qtbot.waitUntil(partial(shows_vm, window, name), timeout=WAIT_MS)


def test_show_xml_shows_what_libvirt_has(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "s", "--description", "a <b> & c")
    open_vm(qtbot, window, guest.name, "s")
    trigger(qtbot, window, "s", "Show &XML")
    qtbot.waitUntil(lambda: window.operations.dialog is not None, timeout=WAIT_MS)
    dialog = window.operations.dialog
    assert dialog is not None
    view = dialog.findChild(QPlainTextEdit)
    assert view is not None
    text = view.toPlainText()
    shown = ET.fromstring(text)
    assert shown.findtext("name") == "s"
    assert shown.findtext("description") == "a <b> & c"
    libvirts = ET.fromstring(virsh(SYSTEM_URI, "snapshot-dumpxml", guest.name, "s").stdout)
    assert shown.findtext("creationTime") == libvirts.findtext("creationTime")


def test_a_delete_that_would_change_a_linked_clones_disk_names_it_and_cannot_be_confirmed(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory, system_conn: libvirt.virConnect
) -> None:
    from tests.integration.conftest import qemu_img, remove_domain
    from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml

    guest = make_guest()
    guest.write(0x5A, 0, MIB)
    frozen = str(guest.disks["vda"])
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "base", "--disk-only")
    overlay = guest.directory / "linked.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", frozen, str(overlay))
    clone = system_conn.defineXML(tiny_domain_xml(f"{guest.name}-linked", [DiskSpec(str(overlay))]))
    try:
        before = os.stat(frozen).st_mtime_ns
        open_vm(qtbot, window, guest.name, "base")
        dialog = open_dialog(qtbot, window, "base", "&Delete this snapshot…", DeleteDialog)
        assert not dialog.ok_button.isEnabled()
        shown = dialog.refusal.text()
        assert clone.name() in shown and frozen in shown
        dialog.reject()
        assert snapshot_names(guest.name) == ["base"]
        assert os.stat(frozen).st_mtime_ns == before
        assert image_holds(str(overlay), 0x5A, 0, MIB)
    finally:
        remove_domain(clone)
