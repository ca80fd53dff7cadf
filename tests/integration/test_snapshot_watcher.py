"""Snapshot changes made by virsh behind our back are noticed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import SYSTEM_URI, GuestFactory, virsh
from vmsnapgui.virt.connection import Connection
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.snapshot_watcher import ChangeKind, DomainChange, SnapshotWatcher


class Recorder:
    def __init__(self) -> None:
        self.changes: list[DomainChange] = []
        self.event = threading.Event()

    def __call__(self, change: DomainChange) -> None:
        self.changes.append(change)
        self.event.set()

    def wait_for(self, kind: ChangeKind, name: str, timeout: float = 5.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if any(c.kind is kind and c.name == name for c in self.changes):
                return time.monotonic() - started
            self.event.wait(0.05)
            self.event.clear()
        raise AssertionError(f"no {kind} change for {name} within {timeout} s: {self.changes}")


@pytest.fixture
def watched(system_conn: object) -> Iterator[tuple[SnapshotWatcher, Recorder]]:
    connection = Connection(SYSTEM_URI)
    connection.open()
    loader = SnapshotLoader(connection, max_threads=8)
    recorder = Recorder()
    watcher = SnapshotWatcher(loader, recorder, interval=1.0)
    watcher.poll_once()  # the baseline
    watcher.start()
    yield watcher, recorder
    watcher.stop()
    loader.close()
    connection.close()


def test_virsh_creating_and_deleting_snapshots_is_seen_within_seconds(
    make_guest: GuestFactory, watched: tuple[SnapshotWatcher, Recorder]
) -> None:
    watcher, recorder = watched
    guest = make_guest()
    watcher.poll_now()
    recorder.wait_for(ChangeKind.DOMAINS, guest.name)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "from-virsh")
    assert recorder.wait_for(ChangeKind.SNAPSHOTS, guest.name) < 5.0
    recorder.changes.clear()
    virsh(SYSTEM_URI, "snapshot-delete", guest.name, "from-virsh")
    recorder.wait_for(ChangeKind.SNAPSHOTS, guest.name)


def test_a_revert_by_virsh_is_reported_at_once(
    make_guest: GuestFactory, watched: tuple[SnapshotWatcher, Recorder]
) -> None:
    _, recorder = watched
    guest = make_guest(start=True)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "one")
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "two")
    recorder.changes.clear()
    virsh(SYSTEM_URI, "snapshot-revert", guest.name, "one")
    assert recorder.wait_for(ChangeKind.REVERTED, guest.name, timeout=3.0) < 3.0
