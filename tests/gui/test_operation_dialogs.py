"""The dialogs in front of operations inform first, validate as you type, and refuse clearly."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from vmsnapgui.core.disk_usage import PoolSpace, SnapshotUsage
from vmsnapgui.core.progress import CancelToken, Progress, ProgressCallback
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, Snapshot, SnapshotDisk
from vmsnapgui.qt.job_runner import JobRunner, JobState
from vmsnapgui.qt.operation_dialogs import (
    CloneDialog,
    DeleteDialog,
    RevertDialog,
    TakeSnapshotDialog,
)
from vmsnapgui.qt.operations_panel import OperationsPanel
from vmsnapgui.virt.clone_domain import CloneFolder
from vmsnapgui.virt.delete_snapshot import DeleteMode, DeletePlan
from vmsnapgui.virt.revert_snapshot import EndState
from vmsnapgui.virt.take_snapshot import Availability, SnapshotMode, TakeOptions

GIB = 1024**3


def running_options(**overrides: object) -> TakeOptions:
    values: dict[str, object] = dict(
        domain="web",
        running=True,
        modes={
            SnapshotMode.INTERNAL_MEMORY: Availability(True),
            SnapshotMode.INTERNAL_DISK: Availability(
                False, "libvirt takes internal snapshots of a running VM only with its memory."
            ),
            SnapshotMode.EXTERNAL_MEMORY: Availability(True),
            SnapshotMode.EXTERNAL_DISK: Availability(True),
        },
        default_mode=SnapshotMode.INTERNAL_MEMORY,
        quiesce=Availability(False, "Quiescing needs the QEMU guest agent running in the VM."),
        live=Availability(True),
        memory_bytes=2 * GIB,
        existing_kinds=frozenset({"internal"}),
        default_name="snapshot-2026-11-25-1200",
    )
    values.update(overrides)
    return TakeOptions(**values)  # type: ignore[arg-type]


def test_take_dialog_offers_only_what_the_vm_allows_and_says_why(qtbot: QtBot) -> None:
    dialog = TakeSnapshotDialog(running_options(), existing={"base"})
    qtbot.addWidget(dialog)
    unavailable = dialog.mode_buttons[SnapshotMode.INTERNAL_DISK]
    assert not unavailable.isEnabled()
    assert "only with its memory" in unavailable.toolTip()
    assert dialog.mode_buttons[SnapshotMode.INTERNAL_MEMORY].isChecked()
    assert not dialog.quiesce_box.isEnabled()
    assert dialog.name_edit.text() == "snapshot-2026-11-25-1200"
    assert dialog.ok_button.isEnabled()


def test_take_dialog_validates_the_name_as_it_is_typed(qtbot: QtBot) -> None:
    dialog = TakeSnapshotDialog(running_options(), existing={"base"})
    qtbot.addWidget(dialog)
    dialog.name_edit.setText("base")
    assert not dialog.ok_button.isEnabled()
    assert dialog.name_problem.text() == "There is already a snapshot called 'base'."
    dialog.name_edit.setText("a/b")
    assert dialog.name_problem.text() == "A snapshot name cannot contain '/'."
    dialog.name_edit.setText("before upgrade")
    assert dialog.ok_button.isEnabled() and dialog.name_problem.isHidden()
    dialog.description_edit.setPlainText("line one\nline two")
    request = dialog.request()
    assert request.name == "before upgrade" and request.description == "line one\nline two"
    assert request.mode is SnapshotMode.INTERNAL_MEMORY


def test_take_dialog_weighs_memory_against_the_pool_and_warns_about_mixing(qtbot: QtBot) -> None:
    dialog = TakeSnapshotDialog(
        running_options(), existing=(), pool=PoolSpace("default", 100 * GIB, 1 * GIB)
    )
    qtbot.addWidget(dialog)
    assert "needs up to 2.00 GiB" in dialog.space_label.text()
    assert "not enough" in dialog.space_label.text()
    assert not dialog.ok_button.isEnabled()
    dialog.mode_buttons[SnapshotMode.EXTERNAL_DISK].setChecked(True)
    assert dialog.ok_button.isEnabled()
    assert dialog.mixing_label.isVisibleTo(dialog)
    assert "already has internal snapshots" in dialog.mixing_label.text()


def snapshot_with_memory() -> Snapshot:
    return Snapshot(
        "before-upgrade",
        None,
        1700000000,
        "running",
        memory=MemoryKind.INTERNAL,
        disks=(SnapshotDisk("vda", DiskKind.INTERNAL),),
    )


def test_revert_dialog_says_what_is_lost_and_takes_a_safety_snapshot_by_default(
    qtbot: QtBot,
) -> None:
    dialog = RevertDialog(
        "web", snapshot_with_memory(), "after", SnapshotUsage("Now", 4 * 1024 * 1024), running=True
    )
    qtbot.addWidget(dialog)
    texts = [w.text() for w in dialog.findChildren(type(dialog.refusal))]
    assert any("4.00 MiB of disk changes" in t and "since snapshot 'after'" in t for t in texts)
    assert dialog.safety_snapshot() is True
    assert "kept in a snapshot named before-revert-" in dialog.safety_note.text()
    dialog.safety_box.setChecked(False)
    assert "lost for good" in dialog.safety_note.text()
    dialog.safety_box.setChecked(True)
    assert dialog.end_state() is EndState.SAVED
    assert dialog.end_buttons[EndState.SAVED].text() == "as the snapshot was (running)"
    assert not dialog.force_box.isVisibleTo(dialog)
    dialog.end_buttons[EndState.PAUSED].setChecked(True)
    assert dialog.end_state() is EndState.PAUSED and not dialog.force()


def test_revert_dialog_refuses_with_the_reason_and_asks_for_force_when_needed(qtbot: QtBot) -> None:
    refused = RevertDialog(
        "web", snapshot_with_memory(), None, None, running=False, refusal="needs libvirt 9.9"
    )
    qtbot.addWidget(refused)
    assert not refused.ok_button.isEnabled()
    assert refused.refusal.text() == "needs libvirt 9.9"
    forced = RevertDialog(
        "web", snapshot_with_memory(), None, None, running=False, force_reason="the CPU changed"
    )
    qtbot.addWidget(forced)
    assert forced.force_box.isVisibleTo(forced) and not forced.ok_button.isEnabled()
    forced.force_box.setChecked(True)
    assert forced.ok_button.isEnabled() and forced.force()


def test_clone_dialog_validates_name_explains_linked_and_weighs_space(
    qtbot: QtBot, tmp_path: Path
) -> None:
    dialog = CloneDialog("web", "golden", {"web", "web-clone"}, str(tmp_path), linked_refusal=None)
    qtbot.addWidget(dialog)
    assert dialog.name_edit.text() == "web-clone-2"
    assert "must stay as long as the clone exists" in dialog.linked_note.text()
    assert "Measuring" in dialog.space_label.text()
    assert not dialog.ok_button.isEnabled()  # until measured (the folder may change too)
    dialog.set_estimate(1024)
    assert "A full copy needs 1.00 KiB" in dialog.space_label.text()
    assert dialog.ok_button.isEnabled()
    dialog.set_estimate(1 << 60)
    assert not dialog.ok_button.isEnabled()
    assert dialog.space_problem.text() == "There is not enough free space for a full copy."
    dialog.linked_button.setChecked(True)
    assert dialog.ok_button.isEnabled()
    dialog.name_edit.setText("web")
    assert dialog.name_problem.text() == "There is already a virtual machine called 'web'."
    dialog.name_edit.setText("web-test")
    dialog.start_box.setChecked(True)
    request = dialog.request()
    assert (request.new_name, request.snapshot, request.linked, request.start) == (
        "web-test",
        "golden",
        True,
        True,
    )
    assert request.target_dir == str(tmp_path)
    dialog.folder_edit.setText(str(tmp_path / "missing"))
    assert not dialog.ok_button.isEnabled()


def test_clone_dialog_offers_the_hosts_folder_pools_and_follows_the_folder(
    qtbot: QtBot, tmp_path: Path
) -> None:
    images, fast = tmp_path / "images", tmp_path / "fast"
    images.mkdir()
    fast.mkdir()
    dialog = CloneDialog("web", "golden", set(), str(images), linked_refusal=None)
    qtbot.addWidget(dialog)
    assert not dialog.pool_combo.isEnabled()  # still being listed
    dialog.set_folders(
        [CloneFolder("default", str(images), 10 * GIB), CloneFolder("fast", str(fast), GIB)]
    )
    combo = dialog.pool_combo
    assert [combo.itemText(i) for i in range(combo.count())] == [
        f"default — {images} (10.0 GiB free)",
        f"fast — {fast} (1.00 GiB free)",
        "No pool: the folder below",
    ]
    assert combo.currentIndex() == 0  # the folder the disks would go to is that pool's
    dialog.suggest_folder(str(fast))  # where the engine says the disks are
    assert dialog.folder_edit.text() == str(fast) and combo.currentIndex() == 1
    combo.setCurrentIndex(0)
    combo.activated.emit(0)  # as a user's pick
    assert dialog.folder_edit.text() == str(images)
    dialog.suggest_folder(str(fast))  # a choice made is kept
    assert dialog.folder_edit.text() == str(images)
    combo.setCurrentIndex(1)
    combo.activated.emit(1)
    assert dialog.folder_edit.text() == str(fast)
    assert dialog.request().target_dir == str(fast)
    dialog.folder_edit.setText(str(tmp_path))
    assert combo.currentIndex() == 2
    dialog.folder_edit.setText(str(images) + "/")
    assert combo.currentIndex() == 0


def test_clone_dialog_without_linked_says_why(qtbot: QtBot, tmp_path: Path) -> None:
    dialog = CloneDialog(
        "web",
        "inside",
        set(),
        str(tmp_path),
        linked_refusal="internal snapshots live inside the image",
    )
    qtbot.addWidget(dialog)
    assert not dialog.linked_button.isEnabled()
    assert (
        dialog.linked_note.text()
        == "Linked clone unavailable: internal snapshots live inside the image"
    )


def test_delete_dialog_lists_what_goes_and_cancel_is_the_default(qtbot: QtBot) -> None:
    plan = DeletePlan("a", DeleteMode.CHILDREN, ("a", "a1"), frees_bytes=3 * 1024 * 1024)
    dialog = DeleteDialog("web", plan)
    qtbot.addWidget(dialog)
    assert [dialog.list.item(i).text() for i in range(dialog.list.count())] == ["a", "a1"]
    assert dialog.ok_button.text() == "Delete 2 snapshots"
    assert dialog.ok_button.isEnabled() and not dialog.ok_button.isDefault()
    assert any("about 3.00 MiB" in w.text() for w in dialog.findChildren(type(dialog.refusal)))


def test_delete_dialog_refuses_what_libvirt_cannot_do(qtbot: QtBot) -> None:
    plan = DeletePlan(
        "e", DeleteMode.SNAPSHOT, ("e",), refusal="libvirt can merge its layer into one child only."
    )
    dialog = DeleteDialog("db", plan)
    qtbot.addWidget(dialog)
    assert not dialog.ok_button.isEnabled()
    assert dialog.refusal.text() == "libvirt can merge its layer into one child only."


def test_the_panel_shows_progress_and_cancels_what_can_be_cancelled(qtbot: QtBot) -> None:
    runner = JobRunner()
    panel = OperationsPanel(runner)
    qtbot.addWidget(panel)
    started = threading.Event()

    def copy(progress: ProgressCallback, cancel: CancelToken) -> str:
        progress(Progress("Copying disk vda (1 of 1)", 512, 1024, "bytes", True))
        started.set()
        cancel.wait(10)
        cancel.raise_if_cancelled()
        return "finished"

    job = runner.submit(copy, key="vm", description="Clone web")
    panel.track(job, "Clone 'web' from 'golden'", "web")
    qtbot.waitUntil(
        lambda: panel.row_text(job)["Phase"] == "Copying disk vda (1 of 1)", timeout=5000
    )
    cancel = panel.cancel_button(job)
    assert cancel is not None and cancel.isEnabled()
    qtbot.mouseClick(cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    assert job.state is JobState.CANCELLED
    assert panel.row_text(job)["Result"] == "Cancelled; nothing was changed."
    runner.shutdown()


def test_a_rows_cancel_button_does_not_keep_the_panel_alive(qtbot: QtBot) -> None:
    # The button's connection once held the panel: the button, deleted after its row
    # ended, then let go of the last reference to the panel, whose deletion deleted the
    # button a second time (a crash).
    runner = JobRunner()
    release = threading.Event()
    job = runner.submit(lambda progress, cancel: release.wait(10), key="vm", description="Wait")
    panel = OperationsPanel(runner)
    panel.track(job, "Wait on 'web'", "web")
    button = panel.cancel_button(job)
    assert button is not None
    alive = weakref.ref(panel)
    del panel, button
    gc.collect()
    assert alive() is None
    release.set()
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    runner.shutdown()


def test_the_panel_says_how_far_an_operation_is_without_animating(qtbot: QtBot) -> None:
    runner = JobRunner()
    panel = OperationsPanel(runner)
    qtbot.addWidget(panel)
    steps = [
        Progress("Saving memory and disks"),
        Progress("Copying disk vda (1 of 1)", 512, 1024, "bytes", True),
        Progress("Merging", 1, 4, "steps"),
    ]
    go = [threading.Event() for _ in steps]

    def work(progress: ProgressCallback, cancel: CancelToken) -> str:
        for step, event in zip(steps, go, strict=True):
            progress(step)
            event.wait(10)
        return "done"

    job = runner.submit(work, key="vm", description="Work")
    panel.track(job, "Work on 'web'", "web")
    bar = panel.progress_bar(job)
    assert bar is not None
    shown = []
    for step, event in zip(steps, go, strict=True):
        qtbot.waitUntil(lambda step=step: panel.row_text(job)["Phase"] == step.phase, timeout=5000)
        # Never a busy bar (range 0..0): Fusion animates those 60 times a second.
        assert bar.maximum() > bar.minimum()
        shown.append(bar.text())
        event.set()
    assert shown == ["working…", "50% (512 B of 1.00 KiB)", "25%"]
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    # An ended row is text only (widgets in long lists make every new row cost more).
    qtbot.waitUntil(lambda: panel.row_text(job)["Progress"] == "done", timeout=5000)
    assert panel.progress_bar(job) is None and panel.cancel_button(job) is None
    assert panel.tree.itemWidget(panel.tree.topLevelItem(0), 3) is None
    runner.shutdown()


def test_the_panel_shows_failures_in_one_sentence_with_details(qtbot: QtBot) -> None:
    from vmsnapgui.core.errors import UserError

    runner = JobRunner()
    panel = OperationsPanel(runner)
    qtbot.addWidget(panel)

    def fail(progress: ProgressCallback, cancel: CancelToken) -> None:
        raise UserError(
            "There is already a snapshot called 'x'.", detail="libvirt: snapshot exists"
        )

    job = runner.submit(fail, key="vm", description="Take")
    panel.track(job, "Take snapshot 'x'", "web")
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    assert panel.row_text(job)["Result"] == "There is already a snapshot called 'x'."
    panel.tree.setCurrentItem(panel.tree.topLevelItem(0))
    assert panel.details.toPlainText() == "libvirt: snapshot exists"
    panel.clear_finished()
    assert panel.tree.topLevelItemCount() == 0
    runner.shutdown()
