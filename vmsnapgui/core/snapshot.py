"""Snapshot records: immutable facts about one libvirt snapshot, free of Qt and libvirt."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class MemoryKind(enum.StrEnum):
    """Where a snapshot keeps the guest's memory (libvirt's ``<memory snapshot=…>``)."""

    NONE = "no"
    INTERNAL = "internal"
    EXTERNAL = "external"


class DiskKind(enum.StrEnum):
    """How a snapshot captured one disk (libvirt's ``<disk snapshot=…>``)."""

    NONE = "no"
    INTERNAL = "internal"
    EXTERNAL = "external"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class SnapshotDisk:
    """One disk as a snapshot recorded it."""

    target: str
    kind: DiskKind
    file: str | None = None
    driver_type: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot as its XML describes it.

    ``parent`` is the name the XML gives, which may name a snapshot that no longer
    exists; :class:`~vmsnapgui.core.snapshot_tree.SnapshotTree` resolves that.
    ``xml`` is the full document, kept so the embedded domain XML can be read when a
    diff or a clone needs it without holding a parsed tree for every snapshot.
    """

    name: str
    parent: str | None = None
    created: int | None = None
    state: str | None = None
    description: str | None = None
    memory: MemoryKind = MemoryKind.NONE
    memory_file: str | None = None
    disks: tuple[SnapshotDisk, ...] = ()
    xml: str = field(default="", repr=False, compare=False)
    problems: tuple[str, ...] = ()

    @property
    def is_external(self) -> bool:
        """True when any disk or the memory lives in a file outside the disk image."""
        return self.memory is MemoryKind.EXTERNAL or any(
            d.kind is DiskKind.EXTERNAL for d in self.disks
        )

    @property
    def is_internal(self) -> bool:
        """True when some disk holds this snapshot inside its own qcow2 file."""
        return any(d.kind is DiskKind.INTERNAL for d in self.disks)

    @property
    def is_disk_only(self) -> bool:
        """True for a snapshot without memory state (libvirt's ``disk-snapshot`` state)."""
        return self.state == "disk-snapshot"

    @property
    def has_memory(self) -> bool:
        """True when the snapshot saved the guest's memory (it can resume running)."""
        return self.memory is not MemoryKind.NONE


class DomainState(enum.StrEnum):
    """A domain's run state, named as ``virsh domstate`` names it."""

    NOSTATE = "no state"
    RUNNING = "running"
    BLOCKED = "idle"
    PAUSED = "paused"
    SHUTDOWN = "in shutdown"
    SHUTOFF = "shut off"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"

    @classmethod
    def from_code(cls, code: int) -> DomainState:
        """Map libvirt's ``virDomainState`` number (0…7) to a state."""
        order = list(cls)
        return order[code] if 0 <= code < len(order) else cls.NOSTATE

    @property
    def is_active(self) -> bool:
        """True when the domain has a running QEMU process (running, paused, …)."""
        return self not in (DomainState.SHUTOFF, DomainState.NOSTATE, DomainState.CRASHED)

    @property
    def json_name(self) -> str:
        """A single-word name for machine-readable output (``shutoff``, ``running``…)."""
        return _JSON_STATE_NAMES[self]


_JSON_STATE_NAMES = {
    DomainState.NOSTATE: "nostate",
    DomainState.RUNNING: "running",
    DomainState.BLOCKED: "blocked",
    DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "shutdown",
    DomainState.SHUTOFF: "shutoff",
    DomainState.CRASHED: "crashed",
    DomainState.PMSUSPENDED: "pmsuspended",
}


@dataclass(frozen=True, slots=True)
class DomainSummary:
    """What the domain list shows about one VM."""

    name: str
    uuid: str
    state: DomainState
    persistent: bool = True
    snapshot_count: int | None = None
    current_snapshot: str | None = None
