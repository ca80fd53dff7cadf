"""The usage records and the ``vmsnap du --json`` document they make."""

from __future__ import annotations

from vmsnapgui.core.disk_usage import DiskUsage, DomainUsage, PoolSpace, SnapshotUsage

MIB = 1024 * 1024


def test_the_json_document_has_the_documented_shape() -> None:
    usage = DomainUsage(
        domain="web",
        snapshots=(SnapshotUsage("base", 256 * MIB, 0, 0, disks={"vda": DiskUsage(256 * MIB, 0)}),),
        now=SnapshotUsage("Now", 4 * MIB, disks={"vda": DiskUsage(4 * MIB)}),
        pool=PoolSpace("default", 100 * 1024 * MIB, 50 * 1024 * MIB),
    )
    assert usage.to_json() == {
        "domain": "web",
        "complete": True,
        "snapshots": [
            {
                "name": "base",
                "delta_bytes": 268435456,
                "exclusive_bytes": 0,
                "vmstate_bytes": 0,
                "note": None,
                "disks": {"vda": {"delta_bytes": 268435456, "exclusive_bytes": 0}},
            }
        ],
        "now": {"delta_bytes": 4194304, "disks": {"vda": {"delta_bytes": 4194304}}},
        "total_bytes": 272629760,
        "pool": {"name": "default", "capacity": 107374182400, "available": 53687091200},
    }


def test_an_unknown_size_makes_the_total_unknown_not_smaller() -> None:
    usage = DomainUsage(
        domain="web",
        snapshots=(
            SnapshotUsage("a", 10, vmstate_bytes=5),
            SnapshotUsage("b", None, note="permission denied"),
        ),
        now=None,
    )
    assert usage.complete is False
    assert usage.total_bytes is None
    assert usage.get("a").total_bytes == 15  # type: ignore[union-attr]
    assert usage.to_json()["snapshots"][1]["note"] == "permission denied"
