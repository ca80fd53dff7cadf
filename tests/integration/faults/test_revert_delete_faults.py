"""Reverts and deletes while the daemon dies (issue 11, item 8 and the fault tier).

A revert interrupted while it saved its safety snapshot used to leave the VM paused and
an internal snapshot inside the qcow2 that libvirt did not know, with a message that
mentioned neither. Deletes merge layers with block jobs that a dying daemon abandons.
"""

from __future__ import annotations

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
    fresh_conn,
    kill_and_restart,
    ready,
    soak_record,
    soak_rounds,
)
from tests.integration.faults.private_daemon import PrivateDaemon
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.snapshot import DomainState
from vmsnapgui.virt.delete_snapshot import DeleteMode, DeletePlan, delete_snapshot
from vmsnapgui.virt.revert_snapshot import RevertResult, revert_snapshot
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot

MIB = 1024 * 1024


def metadata(guest: FaultGuest) -> Path:
    return guest.daemon.base / "lib" / "qemu" / "snapshot" / guest.name


def paused(guest: FaultGuest) -> bool:
    try:
        return fresh_conn(guest.daemon).lookupByName(guest.name).state(0)[0] == (
            libvirt.VIR_DOMAIN_PAUSED
        )
    except libvirt.libvirtError:
        return False


def safety_recorded(guest: FaultGuest) -> bool:
    return any(metadata(guest).glob("before-revert-*.xml"))


def after(delay: float) -> Callable[[], bool]:
    started = time.monotonic()
    return lambda: time.monotonic() - started >= delay


def state_of(guest: FaultGuest) -> DomainState:
    return DomainState.from_code(guest.dom().state(0)[0])


def check_revert(
    guest: FaultGuest, outcome: RevertResult | UserError, before: set[str], mode: SnapshotMode
) -> None:
    """Whatever the fault, the host is intact, the VM is as the message says, and the
    bytes are the snapshot's (reverted) or Now's (not reverted)."""
    message = outcome.message if isinstance(outcome, UserError) else outcome.note
    # Now's later bytes are there or not depending on the outcome: checked below.
    guest.patterns = [p for p in guest.patterns if p[2] != 2 * MIB]
    assert_host_intact(guest, before, message)
    state = state_of(guest)
    if isinstance(outcome, RevertResult):
        assert state is DomainState.RUNNING, (state, message)  # as the snapshot was
    elif state is not DomainState.RUNNING:
        assert message is not None and state.value in message, (state, message)
    if state is DomainState.PAUSED:
        guest.dom().resume()
    reverted = isinstance(outcome, RevertResult)
    holds_later = guest_holds(guest, 0x22, 2 * MIB, MIB)
    if reverted:
        assert not holds_later, "the revert reported success but Now's bytes are still there"
    assert guest_holds(guest, 0x21, MIB, MIB)  # written before 'base': in both states
    assert_restarts(guest)


def guest_holds(guest: FaultGuest, pattern: int, offset: int, length: int) -> bool:
    from tests.integration.conftest import image_holds

    guest.flush()
    return image_holds(guest.active_image(), pattern, offset, length)


REVERT_POINTS = {
    "as the safety snapshot starts": lambda guest: paused(guest),
    "once the safety snapshot is recorded": safety_recorded,
    "100 ms after the safety snapshot is recorded": lambda guest: safety_recorded(guest),
}


def revert_with_fault(
    loader: SnapshotLoader,
    guest: FaultGuest,
    condition: Callable[[], bool],
    fault: Callable[[], None],
) -> RevertResult | UserError:
    watch = FaultWatch(condition, fault)
    outcome: RevertResult | UserError
    try:
        outcome = revert_snapshot(loader, guest.name, "base")
    except UserError as exc:
        outcome = exc
    finally:
        watch.stop()
        assert watch.error is None, watch.error
    soak_record("revert", "daemon killed", watch.fired.is_set(), outcome)
    return outcome


def internal_guest(fault_guest: GuestMaker, loader: SnapshotLoader) -> FaultGuest:
    guest = fault_guest(memory_mib=256)
    guest.write(0x21, MIB, MIB)
    take_snapshot(loader, guest.name, TakeRequest("base", mode=SnapshotMode.INTERNAL_MEMORY))
    guest.write(0x22, 2 * MIB, MIB)
    return guest


@pytest.mark.parametrize("point", list(REVERT_POINTS))
def test_a_revert_whose_daemon_dies_leaves_no_hidden_snapshot_and_says_how_the_vm_is(
    fault_loader: SnapshotLoader, fault_guest: GuestMaker, private_daemon: PrivateDaemon, point: str
) -> None:
    guest = internal_guest(fault_guest, fault_loader)
    before = guest.files()
    condition = REVERT_POINTS[point]
    delay = 0.1 if point.startswith("100 ms") else 0.0
    outcome = revert_with_fault(
        fault_loader, guest, lambda: condition(guest), kill_and_restart(private_daemon, delay)
    )
    check_revert(guest, outcome, before, SnapshotMode.INTERNAL_MEMORY)


def test_soak_reverts_with_the_daemon_killed_at_random_moments(
    request: pytest.FixtureRequest,
    fault_loader: SnapshotLoader,
    fault_guest: GuestMaker,
    private_daemon: PrivateDaemon,
) -> None:
    rng = fault_rng(request.config)
    for _ in range(soak_rounds(request.config, default=2)):
        ready(fault_loader)
        guest = internal_guest(fault_guest, fault_loader)
        before = guest.files()
        outcome = revert_with_fault(
            fault_loader, guest, after(rng.uniform(0, 0.6)), kill_and_restart(private_daemon)
        )
        check_revert(guest, outcome, before, SnapshotMode.INTERNAL_MEMORY)
        discard(guest)


# --------------------------------------------------------------------------- delete


def delete_with_fault(
    loader: SnapshotLoader,
    guest: FaultGuest,
    name: str,
    condition: Callable[[], bool],
    fault: Callable[[], None],
    mode: DeleteMode = DeleteMode.SNAPSHOT,
) -> DeletePlan | UserError:
    watch = FaultWatch(condition, fault)
    outcome: DeletePlan | UserError
    try:
        outcome = delete_snapshot(loader, guest.name, name, mode)
    except UserError as exc:
        outcome = exc
    finally:
        watch.stop()
        assert watch.error is None, watch.error
    operation = "delete" if mode is DeleteMode.SNAPSHOT else f"delete {mode.value}"
    soak_record(operation, "daemon killed", watch.fired.is_set(), outcome)
    return outcome


def check_delete(
    guest: FaultGuest, name: str, outcome: DeletePlan | UserError, before: set[str]
) -> None:
    message = outcome.message if isinstance(outcome, UserError) else None
    assert_host_intact(guest, before, message)
    listed = {s.getName() for s in guest.dom().listAllSnapshots(0)}
    if isinstance(outcome, DeletePlan):
        assert name not in listed
    elif "still has" in outcome.message:
        assert name in listed
    elif "finished" in outcome.message:
        assert name not in listed
    assert_restarts(guest)


def external_chain(fault_guest: GuestMaker, loader: SnapshotLoader) -> FaultGuest:
    """e1 -> e2 -> Now, each layer with its own bytes, and enough of them that the merge
    of e1's layer takes a moment."""
    guest = fault_guest()
    take_snapshot(loader, guest.name, TakeRequest("e1", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x31, MIB, 24 * MIB)
    take_snapshot(loader, guest.name, TakeRequest("e2", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x32, 32 * MIB, MIB)
    return guest


DELETE_POINTS = {
    "as the call leaves": 0.0,
    "10 ms in": 0.01,
    "50 ms in": 0.05,
    "200 ms in": 0.2,
}


@pytest.mark.parametrize("point", list(DELETE_POINTS))
def test_an_external_delete_whose_daemon_dies_keeps_every_byte(
    fault_loader: SnapshotLoader, fault_guest: GuestMaker, private_daemon: PrivateDaemon, point: str
) -> None:
    guest = external_chain(fault_guest, fault_loader)
    before = guest.files()
    outcome = delete_with_fault(
        fault_loader, guest, "e1", after(DELETE_POINTS[point]), kill_and_restart(private_daemon)
    )
    check_delete(guest, "e1", outcome, before)


def test_an_internal_delete_of_a_running_vm_whose_daemon_dies_keeps_every_byte(
    fault_loader: SnapshotLoader, fault_guest: GuestMaker, private_daemon: PrivateDaemon
) -> None:
    guest = fault_guest()
    take_snapshot(fault_loader, guest.name, TakeRequest("i1", mode=SnapshotMode.INTERNAL_MEMORY))
    guest.write(0x41, MIB, MIB)
    before = guest.files()
    outcome = delete_with_fault(
        fault_loader, guest, "i1", after(0.0), kill_and_restart(private_daemon)
    )
    check_delete(guest, "i1", outcome, before)


def test_soak_deletes_with_the_daemon_killed_at_random_moments(
    request: pytest.FixtureRequest,
    fault_loader: SnapshotLoader,
    fault_guest: GuestMaker,
    private_daemon: PrivateDaemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = fault_rng(request.config)
    # The random moment counts from when the delete call is sent, not from the checks
    # before it (reading the host's references takes a while and would take the kills).
    sent: list[float] = []
    delete = libvirt.virDomainSnapshot.delete

    def spied(snapshot: libvirt.virDomainSnapshot, flags: int = 0) -> int:
        sent.append(time.monotonic())
        return delete(snapshot, flags)

    monkeypatch.setattr(libvirt.virDomainSnapshot, "delete", spied)
    for _ in range(soak_rounds(request.config, default=2)):
        ready(fault_loader)
        mode = DeleteMode.SNAPSHOT
        kind = rng.choice(["external", "internal", "internal with a child"])
        if kind == "external":
            guest, name = external_chain(fault_guest, fault_loader), "e1"
        else:
            guest, name = fault_guest(), "i1"
            take_snapshot(
                fault_loader, guest.name, TakeRequest(name, mode=SnapshotMode.INTERNAL_MEMORY)
            )
            guest.write(0x41, MIB, MIB)
            if kind == "internal with a child":
                take_snapshot(
                    fault_loader, guest.name, TakeRequest("i2", mode=SnapshotMode.INTERNAL_MEMORY)
                )
                guest.write(0x42, 2 * MIB, MIB)
                mode = DeleteMode.CHILDREN
        before = guest.files()
        sent.clear()
        # An internal delete takes tens of milliseconds; a merge, hundreds.
        delay = rng.uniform(0, 0.3 if kind == "external" else 0.04)
        outcome = delete_with_fault(
            fault_loader,
            guest,
            name,
            lambda d=delay: bool(sent) and time.monotonic() - sent[0] >= d,
            kill_and_restart(private_daemon),
            mode,
        )
        check_delete(guest, name, outcome, before)
        discard(guest)
