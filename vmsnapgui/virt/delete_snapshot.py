"""Deleting snapshots: say what will go first, refuse what libvirt cannot finish.

libvirt deletes external snapshots (since 9.0) one at a time by merging the layer into
its child, so it refuses the children flags for them and cannot merge one layer into
several children. Those cases are refused here with the reason, before anything is
touched, instead of failing halfway.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

import libvirt

from vmsnapgui.core.disk_usage import DomainUsage
from vmsnapgui.core.progress import Progress, ProgressCallback, ignore_progress
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.virt.connection import EXTERNAL_DELETE_VERSION, Capabilities
from vmsnapgui.virt.errors import VirtError, explain
from vmsnapgui.virt.operations import lookup_snapshot, resolve_domain, run_watched
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

_log = logging.getLogger(__name__)


class DeleteMode(enum.StrEnum):
    """The four ways libvirt deletes snapshots."""

    SNAPSHOT = "snapshot"  # this one; its children move up to its parent
    CHILDREN = "children"  # this one and everything below it
    CHILDREN_ONLY = "children-only"  # everything below it, keeping it
    METADATA_ONLY = "metadata-only"  # forget it; its data stays on disk

    @property
    def flags(self) -> int:
        """libvirt's flags for this mode."""
        flags: dict[DeleteMode, int] = {
            DeleteMode.SNAPSHOT: 0,
            DeleteMode.CHILDREN: libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN,
            DeleteMode.CHILDREN_ONLY: libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY,
            DeleteMode.METADATA_ONLY: libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY,
        }
        return flags[self]


@dataclass(frozen=True, slots=True)
class DeletePlan:
    """What a delete would do, decided before anything is touched."""

    snapshot: str
    mode: DeleteMode
    removes: tuple[str, ...]
    refusal: str | None = None
    merges: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    frees_bytes: int | None = None

    @property
    def allowed(self) -> bool:
        """False when libvirt cannot do it; ``refusal`` says why."""
        return self.refusal is None


def plan_delete(
    tree: SnapshotTree,
    snapshot: str,
    mode: DeleteMode,
    caps: Capabilities,
    usage: DomainUsage | None = None,
) -> DeletePlan:
    """Which snapshots go, what merging it causes, and whether libvirt can do it at all."""
    record = tree.get(snapshot)
    if record is None:
        return DeletePlan(snapshot, mode, (), refusal=f"There is no snapshot called {snapshot!r}.")
    below = tree.descendants(snapshot)
    removes = {
        DeleteMode.SNAPSHOT: [snapshot],
        DeleteMode.CHILDREN: [snapshot, *below],
        DeleteMode.CHILDREN_ONLY: below,
        DeleteMode.METADATA_ONLY: [snapshot],
    }[mode]
    if not removes:
        return DeletePlan(snapshot, mode, (), refusal=f"{snapshot!r} has no children to delete.")

    refusal: str | None = None
    merges: list[str] = []
    warnings: list[str] = []
    external = [name for name in removes if tree[name].is_external]
    if mode is DeleteMode.METADATA_ONLY:
        if record.is_external:
            warnings.append(
                "Only libvirt's record goes; the overlay and memory files stay on disk and "
                "the VM's disk chain still uses them."
            )
        if record.is_internal:
            warnings.append(
                "Only libvirt's record goes; the snapshot's data stays inside the disk "
                "image and keeps taking space (qemu-img snapshot -l still lists it)."
            )
    elif external:
        if mode in (DeleteMode.CHILDREN, DeleteMode.CHILDREN_ONLY):
            refusal = (
                "libvirt cannot delete external snapshots together with their children "
                f"({', '.join(repr(n) for n in external[:3])}"
                f"{'…' if len(external) > 3 else ''} are external); delete them one at a "
                "time, children first."
            )
        elif not caps.external_delete:
            refusal = (
                f"Deleting the external snapshot {snapshot!r} needs libvirt "
                f"{'.'.join(map(str, EXTERNAL_DELETE_VERSION))} or newer with QEMU; this "
                f"host runs libvirt {caps.libvirt_version_text} ({caps.driver})."
            )
        else:
            children = tree.children(snapshot)
            if len(children) > 1:
                refusal = (
                    f"The external snapshot {snapshot!r} has {len(children)} children; "
                    "libvirt can merge its layer into one child only. Delete all but one "
                    "branch first."
                )
            else:
                into = f"its child {children[0]!r}" if children else "the running disk"
                if snapshot == tree.current and not children:
                    into = "the VM's current disk (Now)"
                for disk in record.disks:
                    if disk.kind.value == "external":
                        merges.append(
                            f"disk {disk.target}: the data saved in {snapshot!r} is merged "
                            f"into {into}; this copies data and takes a while on large disks."
                        )
    if record.is_external and record.is_internal:
        warnings.append("This snapshot mixes internal and external disks.")

    frees: int | None = None
    if usage is not None and mode is not DeleteMode.METADATA_ONLY and not external:
        total = 0
        for name in removes:
            item = usage.get(name)
            if item is None or item.exclusive_bytes is None:
                total = -1
                break
            total += item.exclusive_bytes + (item.vmstate_bytes or 0)
        frees = total if total >= 0 else None
    return DeletePlan(
        snapshot, mode, tuple(removes), refusal, tuple(merges), tuple(warnings), frees
    )


def delete_snapshot(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    snapshot: str,
    mode: DeleteMode = DeleteMode.SNAPSHOT,
    progress: ProgressCallback = ignore_progress,
) -> DeletePlan:
    """Delete as planned; refuses (without touching anything) what libvirt cannot do."""
    dom = resolve_domain(loader, domain)
    loaded = loader.load(dom)
    plan = plan_delete(loaded.tree, snapshot, mode, loader.connection.capabilities)
    if not plan.allowed:
        raise VirtError(plan.refusal or "Cannot delete.")
    target = lookup_snapshot(dom, snapshot)
    phase = (
        "Merging the snapshot's data into the disk chain"
        if plan.merges
        else f"Deleting {len(plan.removes)} snapshot{'s' if len(plan.removes) != 1 else ''}"
    )
    progress(Progress(phase, can_cancel=False))
    disks = [d.target for d in loaded.tree[snapshot].disks if d.kind.value == "external"]

    def poll() -> Progress | None:
        # A merge runs as a block job on each disk; show the first one that reports.
        for target_disk in disks:
            info = dom.blockJobInfo(target_disk, 0)
            if info and info.get("end"):
                return Progress(phase, int(info["cur"]), int(info["end"]), "bytes", False)
        return None

    started = time.monotonic()
    try:
        run_watched(lambda: target.delete(mode.flags), poll, progress)
    except libvirt.libvirtError as exc:
        loader.invalidate(dom.UUIDString())
        raise explain(exc, f"deleting {snapshot!r}") from None
    loader.invalidate(dom.UUIDString())
    _log.info("deleted %s from %s in %.2f s", plan.removes, dom.name(), time.monotonic() - started)
    progress(Progress("Done", 1, 1, "steps"))
    return plan
