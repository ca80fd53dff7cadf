"""The size engine's notes name the VM's real state: a paused VM is never "running"."""

from __future__ import annotations

from vmsnapgui.virt.disk_usage import measure
from vmsnapgui.virt.snapshot_loader import SnapshotLoader


def every_note(loader: SnapshotLoader, domain: str) -> list[str]:
    usage = measure(loader, loader.load(domain))
    assert usage.now is not None
    notes = [*usage.notes, usage.now.note or ""]
    return notes + [s.note or "" for s in usage.snapshots]


def test_a_paused_vm_is_called_paused_in_now_and_in_the_vm_notes(
    lab_loader: SnapshotLoader,
) -> None:
    lab_loader.connection.conn.lookupByName("web").suspend()
    loaded = lab_loader.load("web")
    usage = measure(lab_loader, loaded)
    assert usage.now is not None and usage.now.note is not None
    assert "the VM is paused, so its active layer can lag behind" in usage.now.note
    assert usage.now.approximate is True
    # web has internal snapshots: their exclusive sizes can lag too, and it says why.
    assert any(note.startswith("The VM is paused: exclusive sizes") for note in usage.notes)
    assert not any("running" in note for note in every_note(lab_loader, "web"))


def test_a_running_vm_is_still_called_running(lab_loader: SnapshotLoader) -> None:
    usage = measure(lab_loader, lab_loader.load("web"))
    assert usage.now is not None and usage.now.note is not None
    assert "the VM is running, so its active layer can lag behind" in usage.now.note


def test_the_state_is_read_when_measuring_not_taken_from_the_load(
    lab_loader: SnapshotLoader,
) -> None:
    loaded = lab_loader.load("web")  # loaded while running
    lab_loader.connection.conn.lookupByName("web").suspend()
    usage = measure(lab_loader, loaded)
    assert usage.now is not None and usage.now.note is not None
    assert "the VM is paused" in usage.now.note


def test_a_shut_off_vm_has_no_note_about_lagging(lab_loader: SnapshotLoader) -> None:
    lab_loader.connection.conn.lookupByName("web").destroy()
    notes = every_note(lab_loader, "web")
    assert not any("lag behind" in note for note in notes)
