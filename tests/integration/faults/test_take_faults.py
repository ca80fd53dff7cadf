"""Taking a snapshot while the daemon dies, the connection drops or another client races.

Issue 11, items 1 and 2: a take that lost its connection used to remove the overlay the
running VM had already switched to, and the loser of two takes with one name removed
the winner's overlay.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from tests.integration.faults.conftest import (
    FaultGuest,
    FaultWatch,
    GuestMaker,
    assert_host_intact,
    assert_restarts,
    discard,
    fault_rng,
    held_by,
    kill_and_restart,
    ready,
    soak_record,
    soak_rounds,
)
from tests.integration.faults.private_daemon import PrivateDaemon
from vmsnapgui.core.errors import UserError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, TakeResult, take_snapshot

MIB = 1024 * 1024


def overlay_of(guest: FaultGuest, name: str, target: str = "vda") -> str:
    return str(guest.directory / f"{guest.name}-{target}.{name}.qcow2")


def take_with_fault(
    loader: SnapshotLoader,
    guest: FaultGuest,
    request: TakeRequest,
    condition: Callable[[], bool],
    fault: Callable[[], None],
    fault_name: str = "daemon killed",
) -> TakeResult | UserError:
    watch = FaultWatch(condition, fault)
    outcome: TakeResult | UserError
    try:
        outcome = take_snapshot(loader, guest.name, request)
    except UserError as exc:
        outcome = exc
    finally:
        watch.stop()
        assert watch.error is None, watch.error
    soak_record(f"take {request.mode}", fault_name, watch.fired.is_set(), outcome)
    return outcome


def check_outcome(
    guest: FaultGuest, name: str, outcome: TakeResult | UserError, before: set[str]
) -> None:
    """Whatever happened, the host is intact; a success is a real snapshot the VM uses."""
    message = outcome.message if isinstance(outcome, UserError) else outcome.note
    assert_host_intact(guest, before, message)
    snapshots = {s.getName() for s in guest.dom().listAllSnapshots(0)}
    if isinstance(outcome, TakeResult):
        assert name in snapshots
    # New data lands in whatever the VM writes to now, and survives a restart.
    guest.write(0x77, 4 * MIB, MIB)
    assert_restarts(guest)


def status_names(guest: FaultGuest, overlay: str) -> bool:
    """True once libvirt's live status file says the disk is the overlay (QEMU switched)."""
    try:
        return overlay in (guest.daemon.base / "run" / "qemu" / f"{guest.name}.xml").read_text()
    except OSError:
        return False


def recorded(guest: FaultGuest, name: str) -> bool:
    """True once libvirt has written the snapshot's metadata (it is about to reply)."""
    return (guest.daemon.base / "lib" / "qemu" / "snapshot" / guest.name / f"{name}.xml").exists()


KILL_POINTS = {
    "as the call leaves": (lambda guest, overlay: True, 0.0),
    "once the overlay is written": (lambda guest, overlay: os.path.getsize(overlay) > 0, 0.0),
    "once QEMU opened the overlay": (
        lambda guest, overlay: held_by(guest.qemu_pid(), overlay),
        0.0,
    ),
    "5 ms after QEMU opened it": (lambda guest, overlay: held_by(guest.qemu_pid(), overlay), 0.005),
    "20 ms after QEMU opened it": (lambda guest, overlay: held_by(guest.qemu_pid(), overlay), 0.02),
    "once libvirt noted the overlay in its status": (status_names, 0.0),
    "once libvirt recorded the snapshot": (lambda guest, overlay: recorded(guest, "s1"), 0.0),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_disk_only_take_whose_daemon_dies_never_loses_the_running_disk(
    fault_loader: SnapshotLoader, fault_guest: GuestMaker, private_daemon: PrivateDaemon, point: str
) -> None:
    guest = fault_guest()
    before = guest.files()
    overlay = overlay_of(guest, "s1")
    condition, delay = KILL_POINTS[point]
    outcome = take_with_fault(
        fault_loader,
        guest,
        TakeRequest(name="s1", mode=SnapshotMode.EXTERNAL_DISK),
        lambda: os.path.exists(overlay) and condition(guest, overlay),
        kill_and_restart(private_daemon, delay),
    )
    check_outcome(guest, "s1", outcome, before)


def test_soak_takes_with_the_daemon_killed_at_random_moments(
    request: pytest.FixtureRequest,
    fault_loader: SnapshotLoader,
    fault_guest: GuestMaker,
    private_daemon: PrivateDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = fault_rng(request.config)
    rounds = soak_rounds(request.config, default=2)
    modes = [SnapshotMode.EXTERNAL_DISK, SnapshotMode.EXTERNAL_MEMORY, SnapshotMode.INTERNAL_MEMORY]
    # The random moment counts from when the take sends its snapshotCreateXML call
    # (the pre-checks take a few ms: counted from the start, most kills landed there).
    sent: list[float] = []
    create = libvirt.virDomain.snapshotCreateXML

    def spied(dom: libvirt.virDomain, xml: str, flags: int = 0) -> libvirt.virDomainSnapshot:
        sent.append(time.monotonic())
        return create(dom, xml, flags)

    monkeypatch.setattr(libvirt.virDomain, "snapshotCreateXML", spied)
    for round_number in range(rounds):
        ready(fault_loader)
        guest = fault_guest()
        before = guest.files()
        mode = rng.choice(modes)
        delay = rng.uniform(0, 0.06)
        name = f"r{round_number}"
        sent.clear()
        outcome = take_with_fault(
            fault_loader,
            guest,
            TakeRequest(name=name, mode=mode),
            lambda d=delay: bool(sent) and time.monotonic() - sent[0] >= d,
            kill_and_restart(private_daemon),
        )
        check_outcome(guest, name, outcome, before)
        discard(guest)


def test_two_takes_with_one_name_never_remove_each_others_files(
    private_daemon: PrivateDaemon, fault_guest: GuestMaker, tmp_path: Path
) -> None:
    from vmsnapgui.virt.connection import Connection

    guest = fault_guest()
    before = guest.files()
    outcomes: list[TakeResult | UserError] = []
    barrier = threading.Barrier(2)

    def take() -> None:
        connection = Connection(private_daemon.uri, monitor=False)
        connection.open()
        loader = SnapshotLoader(connection)
        barrier.wait()
        try:
            outcomes.append(
                take_snapshot(
                    loader, guest.name, TakeRequest(name="dup", mode=SnapshotMode.EXTERNAL_DISK)
                )
            )
        except UserError as exc:
            outcomes.append(exc)
        finally:
            loader.close()
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    won = [o for o in outcomes if isinstance(o, TakeResult)]
    lost = [o for o in outcomes if isinstance(o, UserError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "dup" in lost[0].message
    assert guest.active_image() in won[0].files
    assert_host_intact(guest, before, lost[0].message)
    assert_restarts(guest)
