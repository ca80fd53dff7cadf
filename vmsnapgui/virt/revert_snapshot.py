"""Reverting to a snapshot, with a safety snapshot of "Now" taken first.

A revert throws away everything since the current snapshot. Unless the caller turns it
off, the current state is first saved as a snapshot named and described so a person
knows what it is; if the revert then fails while the VM is still as it was, that safety
snapshot is removed again so nothing changed at all.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

import libvirt

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import CancelToken, Progress, ProgressCallback, ignore_progress
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.snapshot import DomainState, Snapshot
from vmsnapgui.virt.connection import files_are_here
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.operations import domain_state, lookup_snapshot, resolve_domain, snapshot_names
from vmsnapgui.virt.recovery import host_after_failure, settle
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import (
    SnapshotMode,
    TakeRequest,
    mistaken_by_qemu,
    take_options,
    take_snapshot,
)

_log = logging.getLogger(__name__)


class EndState(enum.StrEnum):
    """How the VM should be after the revert."""

    SAVED = "saved"  # as the snapshot was (running if it saved memory of a running VM)
    RUNNING = "running"
    PAUSED = "paused"


class ForceRequired(UserError):
    """libvirt will only revert with ``force``; the message says why."""


@dataclass(frozen=True, slots=True)
class RevertResult:
    """Where the VM is now and the safety snapshot that holds what it left."""

    reverted_to: str
    safety_snapshot: str | None
    seconds: float
    note: str | None = None
    """Something the user should know although it worked (the connection dropped…)."""


def safety_snapshot_name(existing: set[str], target: str, now: float | None = None) -> str:
    """``before-revert-2026-11-25-141203``, unique among ``existing``."""
    stamp = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(now))
    base = f"before-revert-{stamp}"
    name, counter = base, 2
    while name in existing:
        name, counter = f"{base}-{counter}", counter + 1
    return name


def safety_description(target: str, now: float | None = None) -> str:
    """Tells whoever finds the safety snapshot later what it is and that it may go."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return (
        f"Saved automatically by vmsnapgui at {when}, just before reverting to "
        f"'{target}'. It holds the state the VM was in, including any unsaved work. "
        "Delete it once you are sure you do not need that state."
    )


def revert_snapshot(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    snapshot: str,
    *,
    end_state: EndState = EndState.SAVED,
    force: bool = False,
    safety_snapshot: bool = True,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> RevertResult:
    """Revert ``domain`` to ``snapshot``; see the module docstring for the safety net."""
    started = time.monotonic()
    dom = resolve_domain(loader, domain)
    uuid = dom.UUIDString()
    lookup_snapshot(dom, snapshot)
    state_before = domain_state(dom)
    loaded = loader.load(dom)
    record = loaded.tree.get(snapshot)
    if record is None:
        raise VirtError(
            f"The virtual machine {quoted(dom.name())} has no snapshot called {quoted(snapshot)}."
        )
    mistaken = mistaken_by_qemu(
        dom, [record], "reverted to", files_are_here(loader.connection.display_uri)
    )
    if mistaken:
        raise VirtError(mistaken)
    caps = loader.connection.capabilities
    if record.is_external and not caps.external_revert:
        raise VirtError(
            f"Reverting to the external snapshot {snapshot!r} needs libvirt 9.9 or newer "
            f"on the host; it runs {caps.libvirt_version_text}."
        )

    safety: str | None = None
    notes: list[str] = []
    if safety_snapshot:
        if cancel is not None:
            cancel.raise_if_cancelled()
        progress(Progress("Saving the current state as a safety snapshot", can_cancel=False))
        safety, note = _take_safety_snapshot(loader, dom, record)
        if note:
            notes.append(note)

    if safety is not None:
        # The take may have had to reconnect: ask the connection as it is now.
        try:
            dom = loader.connection.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            raise VirtError(
                f"Nothing was reverted: {explain(exc).message[:1].lower()}"
                f"{explain(exc).message[1:]} The safety snapshot {safety!r} holds the "
                "state the VM is in.",
                detail=explain(exc).detail,
            ) from None
    try:
        target = lookup_snapshot(dom, snapshot)
    except UserError as exc:
        held = f" The safety snapshot {safety!r} holds the state the VM is in." if safety else ""
        raise VirtError(f"Nothing was reverted: {exc.message}{held}", detail=exc.detail) from None

    flags = 0
    if end_state is EndState.RUNNING:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
    elif end_state is EndState.PAUSED:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
    if force:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE

    progress(Progress(f"Reverting to {snapshot!r}", can_cancel=False))
    try:
        dom.revertToSnapshot(target, flags)
    except libvirt.libvirtError as exc:
        if is_connection_lost(exc):
            loader.invalidate(uuid)
            outcome = _after_lost_revert(loader, uuid, snapshot, safety, flags, exc, progress)
            loader.invalidate(uuid)
            return RevertResult(
                snapshot, safety, time.monotonic() - started, " ".join([*notes, outcome])
            )
        kept = _undo_safety(dom, safety, state_before)
        loader.invalidate(dom.UUIDString())
        detail = exc.get_error_message()
        if exc.get_error_code() == libvirt.VIR_ERR_SNAPSHOT_REVERT_RISKY:
            raise ForceRequired(
                f"libvirt reverts to {snapshot!r} only when forced: {detail}", detail=detail
            ) from None
        error = explain(exc, f"reverting to {snapshot!r}")
        if kept:
            error = VirtError(
                f"{error.message} The VM may have changed; the safety snapshot {safety!r} "
                "holds the state it was in.",
                detail=error.detail,
            )
        raise error from None
    loader.invalidate(dom.UUIDString())
    progress(Progress("Done", 1, 1, "steps"))
    return RevertResult(
        snapshot, safety, time.monotonic() - started, " ".join(notes) if notes else None
    )


def _after_lost_revert(
    loader: SnapshotLoader,
    uuid: str,
    snapshot: str,
    safety: str | None,
    flags: int,
    exc: libvirt.libvirtError,
    progress: ProgressCallback,
) -> str:
    """The connection dropped during the revert. Returns a note when the host finished
    it, or when it did not and a second try (once the host answers again) did; raises
    saying exactly how the VM is when neither.

    Trying again is safe: whatever the VM held before is in the safety snapshot (or the
    user chose to drop it), and an interrupted revert leaves only a half-done revert to
    lose — a VM shut off between the old QEMU's end and the new one's start, or paused
    with memory of unknown provenance.
    """
    doing = f"reverting to {snapshot!r}"
    conn = host_after_failure(loader.connection, exc, doing, (), progress)
    kept = (
        f" The safety snapshot {safety!r} holds the state the VM was in before." if safety else ""
    )
    try:
        dom = conn.lookupByUUIDString(uuid)
        settle(dom)
        now = DomainState.from_code(dom.state(0)[0])
        current = _current_name(dom)
    except libvirt.libvirtError as again:
        raise VirtError(
            f"The connection to the host was lost while {doing}, and the host could not say "
            f"afterwards how the VM is ({explain(again).message.rstrip('.')}).{kept}"
        ) from None
    if current == snapshot and now is not DomainState.PAUSED:
        return "The connection to the host dropped during the revert, but the host finished it."
    progress(Progress(f"Reverting to {snapshot!r} again", can_cancel=False))
    try:
        dom.revertToSnapshot(dom.snapshotLookupByName(snapshot, 0), flags)
    except libvirt.libvirtError as again:
        try:
            now = DomainState.from_code(dom.state(0)[0])
            current = _current_name(dom)
        except libvirt.libvirtError:
            pass
        paused = ""
        if now is DomainState.PAUSED:
            paused = (
                " It is paused; whether its memory and disks are already the snapshot's "
                "cannot be told from here, so it was not resumed."
            )
        raise VirtError(
            f"The connection to the host was lost while {doing}, and trying again failed "
            f"({explain(again).message.rstrip('.')}). The VM is {now.value} and libvirt "
            f"lists {current!r} as its current snapshot.{paused}{kept}",
            detail=explain(exc).detail,
        ) from None
    return (
        "The connection to the host dropped during the revert, which did not finish; it "
        "was done again once the host answered."
    )


def _current_name(dom: libvirt.virDomain) -> str | None:
    try:
        return str(dom.snapshotCurrent(0).getName())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def _take_safety_snapshot(
    loader: SnapshotLoader, dom: libvirt.virDomain, target: Snapshot
) -> tuple[str, str | None]:
    """Save Now in the same family (internal/external) as the snapshot reverted to;
    returns its name and what the take had to say (a dropped connection…)."""
    options = take_options(loader, dom)
    wanted = (
        [SnapshotMode.EXTERNAL_MEMORY, SnapshotMode.EXTERNAL_DISK]
        if target.is_external
        else [SnapshotMode.INTERNAL_MEMORY, SnapshotMode.INTERNAL_DISK]
    )
    mode = next((m for m in wanted if options.modes[m].allowed), None)
    if mode is None:
        reasons = "; ".join(options.modes[m].reason or "" for m in wanted)
        raise VirtError(
            "Could not take a safety snapshot of the current state before reverting "
            f"({reasons}). Revert without a safety snapshot if you are sure."
        )
    name = safety_snapshot_name(snapshot_names(dom), target.name)
    try:
        taken = take_snapshot(
            loader,
            dom,
            TakeRequest(name=name, description=safety_description(target.name), mode=mode),
        )
    except UserError as exc:
        raise VirtError(
            f"Could not take a safety snapshot before reverting, so nothing was reverted: "
            f"{exc.message}",
            detail=exc.detail,
        ) from None
    return name, taken.note


def _undo_safety(dom: libvirt.virDomain, safety: str | None, state_before: object) -> bool:
    """After a failed revert: drop the safety snapshot if the VM is untouched.

    Returns True when the safety snapshot was kept (the VM may have changed).
    """
    if safety is None:
        return False
    try:
        unchanged = domain_state(dom) == state_before and (
            dom.snapshotCurrent(0).getName() == safety
        )
    except (libvirt.libvirtError, UserError):
        unchanged = False
    if not unchanged:
        return True
    try:
        dom.snapshotLookupByName(safety, 0).delete(0)
    except libvirt.libvirtError as exc:
        _log.warning("could not remove safety snapshot %s: %s", safety, exc)
        return True
    return False
