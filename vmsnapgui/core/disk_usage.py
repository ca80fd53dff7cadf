"""How much disk each snapshot holds: the results of the delta engine, as plain data.

Definitions (DESIGN.md), per disk and summed over disks:
- ``delta_bytes``: host bytes of data that changed between the parent snapshot (or an
  empty disk, for a root) and this snapshot; for "Now", changed since the current one.
- ``exclusive_bytes`` (internal snapshots): host bytes that deleting only this snapshot
  frees (its vmstate not included; that is ``vmstate_bytes``).
- ``vmstate_bytes``: bytes of saved memory (internal vmstate area or external file).

``None`` always means "not known", never zero; ``note`` then says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """One disk's share of a snapshot's usage."""

    delta_bytes: int | None
    exclusive_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SnapshotUsage:
    """The usage of one snapshot (or of "Now")."""

    name: str
    delta_bytes: int | None
    exclusive_bytes: int | None = None
    vmstate_bytes: int | None = None
    approximate: bool = False
    note: str | None = None
    disks: Mapping[str, DiskUsage] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int | None:
        """Delta plus saved memory: what this snapshot adds to the disks."""
        if self.delta_bytes is None:
            return None
        return self.delta_bytes + (self.vmstate_bytes or 0)


@dataclass(frozen=True, slots=True)
class PoolSpace:
    """The storage pool holding a domain's disks."""

    name: str
    capacity: int
    available: int


@dataclass(frozen=True, slots=True)
class DomainUsage:
    """Every snapshot's usage for one domain, in tree order, plus "Now" and the pool."""

    domain: str
    snapshots: tuple[SnapshotUsage, ...]
    now: SnapshotUsage | None
    pool: PoolSpace | None = None
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every number is known."""
        items = [*self.snapshots, *([self.now] if self.now else [])]
        return all(item.delta_bytes is not None for item in items)

    @property
    def total_bytes(self) -> int | None:
        """All snapshot deltas and saved memory, plus Now; None when any is unknown."""
        total = 0
        for item in [*self.snapshots, *([self.now] if self.now else [])]:
            value = item.total_bytes
            if value is None:
                return None
            total += value
        return total

    def get(self, name: str) -> SnapshotUsage | None:
        """The usage of the snapshot called ``name``."""
        for item in self.snapshots:
            if item.name == name:
                return item
        return None

    def to_json(self) -> dict[str, Any]:
        """The ``vmsnap du --json`` document."""
        return {
            "domain": self.domain,
            "complete": self.complete,
            "snapshots": [
                {
                    "name": s.name,
                    "delta_bytes": s.delta_bytes,
                    "exclusive_bytes": s.exclusive_bytes,
                    "vmstate_bytes": s.vmstate_bytes,
                    "note": s.note,
                    "disks": {
                        target: {"delta_bytes": d.delta_bytes, "exclusive_bytes": d.exclusive_bytes}
                        for target, d in s.disks.items()
                    },
                }
                for s in self.snapshots
            ],
            "now": None
            if self.now is None
            else {
                "delta_bytes": self.now.delta_bytes,
                "disks": {
                    target: {"delta_bytes": d.delta_bytes} for target, d in self.now.disks.items()
                },
            },
            "total_bytes": self.total_bytes,
            "pool": None
            if self.pool is None
            else {
                "name": self.pool.name,
                "capacity": self.pool.capacity,
                "available": self.pool.available,
            },
        }
