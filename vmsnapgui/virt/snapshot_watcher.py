"""Noticing snapshot changes made by other clients (virsh, scripts, other tools).

libvirt has no snapshot events. Lifecycle events carry ``*_FROM_SNAPSHOT`` details when
a domain is reverted, so those are reported at once; creates and deletes are seen only
by polling. Polling is cheap: per VM the snapshot names and the current snapshot (two
calls, all VMs concurrently), compared with what was seen last time.

A VM with thousands of snapshots is asked only for the count and the current one on most
rounds, and for every name on every :data:`NAMES_EVERY`-th round: listing 10,000 names
every two seconds made and compared 10,000 strings in this process each time, holding
the GIL the window needs. A create or a delete changes the count or the current
snapshot at once; only a delete and a create between two rounds that leave both as
they were wait for the next round with names.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from vmsnapgui.core.errors import UserError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader, SnapshotSignature

_log = logging.getLogger(__name__)

# (event, detail) pairs that mean "this domain was just reverted to a snapshot".
_REVERT_EVENTS = {
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT),
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT),
    (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT),
}


class ChangeKind(enum.StrEnum):
    """What changed about a domain."""

    SNAPSHOTS = "snapshots"  # created or deleted snapshots, or a new current one
    REVERTED = "reverted"  # reverted: cached snapshot data may be stale, refetch all
    STATE = "state"  # started, stopped, paused…
    DOMAINS = "domains"  # a domain appeared or disappeared


@dataclass(frozen=True, slots=True)
class DomainChange:
    """One change noticed, for one domain (or for the list when kind is DOMAINS)."""

    kind: ChangeKind
    uuid: str | None = None
    name: str | None = None


ChangeListener = Callable[[DomainChange], None]

# VMs with more snapshots than this get their names listed every NAMES_EVERY-th round.
MANY_SNAPSHOTS = 200
NAMES_EVERY = 10


class SnapshotWatcher:
    """Reports changes of a connection's domains and snapshots to a listener.

    The listener runs on the watcher's thread or the event loop thread; it must only
    hand the change on (for example emit a queued signal).
    """

    def __init__(
        self,
        loader: SnapshotLoader,
        listener: ChangeListener,
        interval: float = 2.0,
        *,
        many_snapshots: int = MANY_SNAPSHOTS,
        names_every: int = NAMES_EVERY,
    ) -> None:
        self.loader = loader
        self.listener = listener
        self.interval = interval
        self._many = many_snapshots
        self._names_every = max(1, names_every)
        self._round = 0
        self._seen: dict[str, SnapshotSignature] = {}
        self._names: dict[str, str] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        loader.connection.add_domain_event_listener(self._on_lifecycle)

    def start(self) -> None:
        """Start polling on a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop polling (returns at once; the thread ends within one interval)."""
        self._stop.set()
        self._wake.set()

    def poll_now(self) -> None:
        """Poll at once instead of waiting for the interval."""
        self._wake.set()

    def poll_once(self) -> list[DomainChange]:
        """One polling round: compare every domain's signature with the last one seen."""
        if not self.loader.connection.is_connected:
            return []
        conn = self.loader.connection.conn
        try:
            domains = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            _log.info("polling %s failed: %s", self.loader.connection.display_uri, exc)
            return []
        current = {dom.UUIDString(): dom for dom in domains}
        changes: list[DomainChange] = []
        first_round = not self._names
        if set(current) != set(self._names) and not first_round:
            changes.append(DomainChange(ChangeKind.DOMAINS))
        for uuid in set(self._seen) - set(current):
            del self._seen[uuid]
        self._names = {uuid: dom.name() for uuid, dom in current.items()}
        names_round = self._round % self._names_every == 0
        self._round += 1

        def signature(dom: libvirt.virDomain) -> tuple[str, SnapshotSignature | None]:
            uuid = dom.UUIDString()
            before = self._seen.get(uuid)
            with_names = names_round or before is None or before.count <= self._many
            try:
                sig = self.loader.signature(dom, names=with_names)
                if sig.names is None and before is not None and sig.differs_from(before):
                    # Changed: list the names now, so later rounds compare with them.
                    sig = self.loader.signature(dom)
            except UserError:
                return uuid, None  # vanished meanwhile; the next round says so
            return uuid, sig

        for uuid, sig in self.loader.map_concurrently(signature, list(current.values())):
            if sig is None:
                continue
            before = self._seen.get(uuid)
            if before is None and not first_round:
                # A domain that appeared since the last round: whatever snapshots it
                # has are news (virsh may have made one before we first looked).
                before = SnapshotSignature(0, None, frozenset())
            changed = before is not None and sig.differs_from(before)
            if sig.names is None and before is not None:
                # An unchanged round without names: keep the names to compare with.
                sig = SnapshotSignature(sig.count, sig.current, before.names)
            self._seen[uuid] = sig
            if changed:
                changes.append(DomainChange(ChangeKind.SNAPSHOTS, uuid, self._names[uuid]))
        return changes

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for change in self.poll_once():
                    self.listener(change)
            except Exception:
                _log.exception("snapshot polling failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    def _on_lifecycle(self, name: str, uuid: str, event: int, detail: int) -> None:
        if (event, detail) in _REVERT_EVENTS:
            kind = ChangeKind.REVERTED
        elif event in (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
            kind = ChangeKind.DOMAINS
        else:
            kind = ChangeKind.STATE
        self.listener(DomainChange(kind, uuid, name))
        if kind is not ChangeKind.STATE:
            self.poll_now()
