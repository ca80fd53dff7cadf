"""Delete plans: what goes, and what libvirt cannot do, decided before touching anything."""

from __future__ import annotations

from vmsnapgui.core.disk_usage import DomainUsage, SnapshotUsage
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, Snapshot, SnapshotDisk
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.virt.connection import Capabilities
from vmsnapgui.virt.delete_snapshot import DeleteMode, plan_delete

NEW = Capabilities("qemu:///system", "h", "QEMU", (9, 0, 0), (7, 2, 0), False, True)
OLD = Capabilities("qemu:///system", "h", "QEMU", (8, 0, 0), (7, 2, 0), False, False)


def internal(name: str, parent: str | None, t: int) -> Snapshot:
    return Snapshot(name, parent, t, "shutoff", disks=(SnapshotDisk("vda", DiskKind.INTERNAL),))


def external(name: str, parent: str | None, t: int) -> Snapshot:
    return Snapshot(
        name,
        parent,
        t,
        "running",
        memory=MemoryKind.EXTERNAL,
        memory_file=f"/m/{name}",
        disks=(SnapshotDisk("vda", DiskKind.EXTERNAL, f"/i/{name}.qcow2"),),
    )


def test_internal_plans_list_what_goes_and_the_space_it_frees() -> None:
    tree = SnapshotTree([internal("r", None, 1), internal("a", "r", 2), internal("b", "a", 3)])
    usage = DomainUsage(
        "vm",
        (
            SnapshotUsage("r", 10, 1, 0),
            SnapshotUsage("a", 20, 5, 100),
            SnapshotUsage("b", 30, 7, 0),
        ),
        None,
    )
    plan = plan_delete(tree, "a", DeleteMode.CHILDREN, NEW, usage)
    assert plan.allowed and plan.removes == ("a", "b")
    assert plan.frees_bytes == 5 + 100 + 7
    only = plan_delete(tree, "r", DeleteMode.CHILDREN_ONLY, NEW)
    assert only.removes == ("a", "b") and only.frees_bytes is None


def test_an_external_snapshot_with_two_children_is_refused() -> None:
    tree = SnapshotTree([external("e", None, 1), external("c1", "e", 2), external("c2", "e", 3)])
    plan = plan_delete(tree, "e", DeleteMode.SNAPSHOT, NEW)
    assert plan.refusal == (
        "The external snapshot 'e' has 2 children; libvirt can merge its layer into one "
        "child only. Delete all but one branch first."
    )


def test_external_deletes_need_libvirt_9() -> None:
    tree = SnapshotTree([external("e", None, 1)])
    plan = plan_delete(tree, "e", DeleteMode.SNAPSHOT, OLD)
    assert plan.refusal == (
        "Deleting the external snapshot 'e' needs libvirt 9.0.0 or newer with QEMU; this "
        "host runs libvirt 8.0.0 (QEMU)."
    )


def test_external_merge_work_is_described() -> None:
    tree = SnapshotTree([external("e", None, 1), external("f", "e", 2)], current="f")
    plan = plan_delete(tree, "e", DeleteMode.SNAPSHOT, NEW)
    assert plan.allowed
    assert plan.merges == (
        "disk vda: the data saved in 'e' is merged into its child 'f'; this copies data "
        "and takes a while on large disks.",
    )
    last = plan_delete(tree, "f", DeleteMode.SNAPSHOT, NEW)
    assert "into the VM's current disk (Now)" in last.merges[0]


def test_children_flags_with_external_snapshots_are_refused() -> None:
    tree = SnapshotTree([internal("r", None, 1), external("e", "r", 2)])
    plan = plan_delete(tree, "r", DeleteMode.CHILDREN_ONLY, NEW)
    assert plan.refusal is not None and plan.refusal.startswith(
        "libvirt cannot delete external snapshots together with their children ('e' are external)"
    )


def test_metadata_only_is_always_possible_and_warns_what_stays() -> None:
    tree = SnapshotTree([external("e", None, 1), external("c1", "e", 2), external("c2", "e", 3)])
    plan = plan_delete(tree, "e", DeleteMode.METADATA_ONLY, OLD)
    assert plan.allowed and plan.removes == ("e",)
    assert "overlay and memory files stay on disk" in plan.warnings[0]


def test_missing_snapshots_and_childless_children_only_are_refused() -> None:
    tree = SnapshotTree([internal("r", None, 1)])
    assert (
        plan_delete(tree, "x", DeleteMode.SNAPSHOT, NEW).refusal
        == "There is no snapshot called 'x'."
    )
    assert (
        plan_delete(tree, "r", DeleteMode.CHILDREN_ONLY, NEW).refusal
        == "'r' has no children to delete."
    )
