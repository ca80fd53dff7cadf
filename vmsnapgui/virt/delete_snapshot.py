"""Deleting snapshots: say what will go first, refuse what libvirt cannot finish.

libvirt deletes external snapshots (since 9.0) one at a time by merging the layer into
its child, so it refuses the children flags for them and cannot merge one layer into
several children. Those cases are refused here with the reason, before anything is
touched, instead of failing halfway.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
import time
from dataclasses import dataclass, replace

import libvirt

from vmsnapgui.core.disk_usage import DomainUsage
from vmsnapgui.core.domain_xml import domain_disks, without_chains_through
from vmsnapgui.core.progress import Progress, ProgressCallback, ignore_progress
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.virt.connection import EXTERNAL_DELETE_VERSION, Capabilities, files_are_here
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.host_files import FileIdentity, backing_file, read_host_references
from vmsnapgui.virt.operations import lookup_snapshot, resolve_domain, run_watched
from vmsnapgui.virt.recovery import host_after_failure, remove_unused, settle
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import internal_entries, mistaken_by_qemu

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
    dependents: tuple[str, ...] = ()
    """What outside this VM stands on files the delete changes (linked clones…)."""
    removed_files: tuple[str, ...] = ()
    """Files removed after libvirt's delete (memory files libvirt leaves behind)."""

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
    dependents: DeleteDependents | None = None,
) -> DeletePlan:
    """Which snapshots go, what merging it causes, and whether libvirt can do it at all.

    ``dependents`` (from :func:`find_dependents`) names what else on the host stands on
    the files the delete would change; any makes the plan a refusal.
    """
    record = tree.get(snapshot)
    if record is None:
        return DeletePlan(
            snapshot, mode, (), refusal=f"There is no snapshot called {quoted(snapshot)}."
        )
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
    if dependents is not None:
        if dependents.mistaken and refusal is None:
            refusal = dependents.mistaken
        if dependents.unchecked:
            warnings.append(dependents.unchecked)
        if dependents.holders and refusal is None:
            names = "; ".join(dependents.holders[:4])
            more = (
                f" (and {len(dependents.holders) - 4} more)" if len(dependents.holders) > 4 else ""
            )
            refusal = (
                f"Deleting {snapshot!r} would change files that something else stands on: "
                f"{names}{more}. Delete that first, or make it independent of this VM's files."
            )

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
        snapshot,
        mode,
        tuple(removes),
        refusal,
        tuple(merges),
        tuple(warnings),
        frees,
        dependents.holders if dependents is not None else (),
    )


@dataclass(frozen=True, slots=True)
class DeleteDependents:
    """Who outside the VM needs the files a delete would change, found on the host."""

    holders: tuple[str, ...] = ()
    unchecked: str | None = None
    mistaken: str | None = None
    """Why QEMU could delete another internal snapshot than the one meant (a digits name)."""
    """Why the answer may be incomplete (a remote host's chains, unreadable records)."""


def changed_files(tree: SnapshotTree, snapshot: str, mode: DeleteMode, here: bool) -> list[str]:
    """The files libvirt writes or removes when it deletes ``snapshot`` this way.

    Deleting an external snapshot commits its overlay into the image below it (the frozen
    state it stands for) and removes the overlay: both change. Internal snapshots live in
    images whose current contents do not change, and metadata-only deletes touch nothing.
    """
    record = tree.get(snapshot)
    if record is None or mode is not DeleteMode.SNAPSHOT:
        return []
    files: list[str] = []
    for disk in record.disks:
        if disk.kind is not DiskKind.EXTERNAL or not disk.file:
            continue
        files.append(disk.file)
        below = backing_file(disk.file) if here else None
        if below is not None:
            files.append(below)
    return files


def find_dependents(
    loader: SnapshotLoader, domain: str, tree: SnapshotTree, snapshot: str, mode: DeleteMode
) -> DeleteDependents:
    """What outside ``domain`` stands on the files deleting ``snapshot`` changes (other VMs,
    their snapshots, linked clones through their backing chains). Blocks: run it off the
    GUI thread."""
    here = files_are_here(loader.connection.display_uri)
    mistaken = None
    if tree.get(snapshot) is not None and mode is not DeleteMode.METADATA_ONLY:
        removed = [tree[snapshot]] if mode is DeleteMode.SNAPSHOT else []
        if mode is not DeleteMode.SNAPSHOT:
            removed += [tree[name] for name in tree.descendants(snapshot)]
            if mode is DeleteMode.CHILDREN:
                removed.append(tree[snapshot])
        mistaken = mistaken_by_qemu(loader.lookup(domain), removed, "deleted", here)
    files = changed_files(tree, snapshot, mode, here)
    if not files:
        return DeleteDependents(mistaken=mistaken)
    references = read_host_references(loader.connection.conn, local=here)
    holders: list[str] = []
    for path in files:
        for holder in references.holders_outside(path, domain):
            text = f"{holder} (it uses {path})"
            if text not in holders:
                holders.append(text)
    unchecked = None
    if references.unknown:
        unchecked = (
            "Some records on the host could not be read, so not everything that might use "
            f"this snapshot's files was checked ({', '.join(references.unknown[:3])})."
        )
    elif not here:
        unchecked = (
            "Other VMs on a remote host are checked through libvirt's records only; a disk "
            "whose backing chain only its image file names cannot be seen from here."
        )
    return DeleteDependents(tuple(holders), unchecked, mistaken)


def delete_snapshot(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    snapshot: str,
    mode: DeleteMode = DeleteMode.SNAPSHOT,
    progress: ProgressCallback = ignore_progress,
) -> DeletePlan:
    """Delete as planned; refuses (without touching anything) what libvirt cannot do and
    what would change files something else stands on.

    Afterwards the result is checked against the images themselves: an internal snapshot
    that libvirt forgot but the image still holds is an error, and a memory file libvirt
    leaves behind (9.0 does) is removed when nothing uses it.
    """
    dom = resolve_domain(loader, domain)
    name = dom.name()
    loaded = loader.load(dom)
    here = files_are_here(loader.connection.display_uri)
    dependents = find_dependents(loader, name, loaded.tree, snapshot, mode)
    plan = plan_delete(
        loaded.tree, snapshot, mode, loader.connection.capabilities, dependents=dependents
    )
    if not plan.allowed:
        raise VirtError(plan.refusal or "Cannot delete.")
    target = lookup_snapshot(dom, snapshot)
    phase = (
        "Merging the snapshot's data into the disk chain"
        if plan.merges
        else f"Deleting {len(plan.removes)} snapshot{'s' if len(plan.removes) != 1 else ''}"
    )
    progress(Progress(phase, can_cancel=False))
    records = [loaded.tree[n] for n in plan.removes if n in loaded.tree]
    disks = [d.target for d in loaded.tree[snapshot].disks if d.kind.value == "external"]
    memory_files: dict[str, tuple[int, int] | None] = {
        r.memory_file: _identity(r.memory_file)
        for r in records
        if r.memory is MemoryKind.EXTERNAL
        and r.memory_file
        and here
        and mode is not DeleteMode.METADATA_ONLY  # "its data stays on disk"
    }
    images = _internal_images(dom, records) if here and mode is not DeleteMode.METADATA_ONLY else {}

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
        overlays = {
            r.name: [d.file for d in r.disks if d.kind is DiskKind.EXTERNAL and d.file]
            for r in records
        }
        raise _after_failed_delete(
            loader, dom.UUIDString(), name, plan, exc, progress, overlays if here else None, images
        ) from None
    loader.invalidate(dom.UUIDString())
    _log.info("deleted %s from %s in %.2f s", plan.removes, name, time.monotonic() - started)
    _check_images(images, plan)
    removed = _remove_memory_files(loader, memory_files) if memory_files else ()
    progress(Progress("Done", 1, 1, "steps"))
    return replace(plan, removed_files=removed)


def _identity(path: str | None) -> tuple[int, int] | None:
    try:
        info = os.lstat(path or "")
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None


def _internal_images(dom: libvirt.virDomain, records: list[Snapshot]) -> dict[str, list[str]]:
    """Each internal snapshot being deleted -> the disk images that hold it."""
    wanted = [r.name for r in records if r.is_internal]
    if not wanted:
        return {}
    try:
        xml = dom.XMLDesc(0)
    except libvirt.libvirtError:
        return {}
    sources = [d.source for d in domain_disks(xml) if d.snapshottable and d.source]
    images: dict[str, list[str]] = {}
    for path in sources:
        for entry in internal_entries(path) or ():
            if entry.name in wanted:
                images.setdefault(entry.name, []).append(path)
    return images


def _check_images(images: dict[str, list[str]], plan: DeletePlan) -> None:
    """libvirt runs ``qemu-img snapshot -d`` for shut-off VMs and, in 9.0, reports success
    even when that failed: make sure each image really lost the snapshot."""
    left: list[str] = []
    for snapshot, paths in images.items():
        for path in paths:
            entries = internal_entries(path)
            if entries is not None and any(e.name == snapshot for e in entries):
                left.append(f"{snapshot!r} in {path}")
    if left:
        raise VirtError(
            "libvirt removed its record of the snapshot, but the disk image still holds it: "
            + "; ".join(left)
            + ". It keeps taking space there; the image may be damaged (try 'qemu-img check')."
        )


def _remove_memory_files(
    loader: SnapshotLoader, memory_files: dict[str, tuple[int, int] | None]
) -> tuple[str, ...]:
    """Remove the memory files of deleted snapshots that libvirt left behind, each only
    if it is the same file as before the delete and nothing on the host uses it."""
    owned = [
        FileIdentity(path, identity[0], identity[1])
        for path, identity in memory_files.items()
        if path and identity is not None and os.path.lexists(path)
    ]
    if not owned:
        return ()
    removals = remove_unused(loader.connection.conn, owned, local=True, settle=0)
    return tuple(r.identity.path for r in removals if r.removed)


def _after_failed_delete(
    loader: SnapshotLoader,
    uuid: str,
    name: str,
    plan: DeletePlan,
    exc: libvirt.libvirtError,
    progress: ProgressCallback,
    overlays: dict[str, list[str]] | None,
    images: dict[str, list[str]],
) -> VirtError:
    """What to tell after a failed delete; when the connection dropped, what the host
    says now (the delete may have finished, or the daemon's restart stopped the merge).

    ``overlays``: each external snapshot's overlay files, when they can be checked here.
    libvirt removes an overlay once QEMU has merged it and only then records the result:
    a daemon killed in between restarts still listing the snapshot, whose data is merged
    and whose overlay is gone. That snapshot is finished here (its record removed).
    ``images``: the local images that held each internal snapshot before the delete; one
    that none of them holds any more was deleted by QEMU, and its record goes too.
    """
    doing = f"deleting {quoted(plan.snapshot)}"
    if not is_connection_lost(exc):
        return explain(exc, doing)
    conn = host_after_failure(loader.connection, exc, doing, (), progress)
    try:
        dom = conn.lookupByUUIDString(uuid)
        settle(dom)
        still = set(dom.snapshotListNames(0)) & set(plan.removes)
        merged = sorted(
            n
            for n in still
            if overlays is not None
            and overlays.get(n)
            and not any(os.path.lexists(path) for path in overlays[n])
        )
        merged += sorted(n for n in still if n in images and _gone_from(images[n], n))
        for snapshot in merged:
            dom.snapshotLookupByName(snapshot, 0).delete(
                libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
            )
        still -= set(merged)
        removed_files = {path for n in merged for path in (overlays or {}).get(n, [])}
        if removed_files and dom.isPersistent():
            # libvirt records the chain in the saved definition too; one naming the
            # removed overlay would not start ("Cannot access backing file").
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
            saved = dom.XMLDesc(flags)
            fixed = without_chains_through(saved, removed_files)
            if fixed != saved:
                conn.defineXML(fixed)
    except libvirt.libvirtError as again:
        return VirtError(
            f"The connection to the host was lost while {doing}, and the host could not "
            f"say afterwards whether it finished ({explain(again).message})"
        )
    external_done = [n for n in merged if n not in images]
    internal_done = [n for n in merged if n in images]
    stale = ""
    if external_done:
        stale += (
            " Its data had been merged and its overlay removed, so vmsnap removed libvirt's "
            f"record of {', '.join(quoted(n) for n in external_done)} and the removed file "
            "from the VM's saved definition as well; libvirt shows the running VM's old disk "
            "chain until the VM is shut off and started again."
        )
    if internal_done:
        stale += (
            f" QEMU had removed {', '.join(quoted(n) for n in internal_done)} from the disk "
            "images, so vmsnap removed libvirt's record as well."
        )
    if not still:
        return VirtError(
            f"The connection to the host was lost while {doing}, but the host finished: "
            f"{', '.join(quoted(n) for n in plan.removes)} "
            f"{'is' if len(plan.removes) == 1 else 'are'} gone.{stale}",
            code=DELETE_FINISHED_ANYWAY,
        )
    gone = [n for n in plan.removes if n not in still]
    partly = f" {', '.join(quoted(n) for n in gone)} went.{stale}" if gone else ""
    external = [n for n in still if overlays is None or overlays.get(n)]
    caveat = (
        " The VM's disks read as before, but a merge may have begun: reverting to "
        f"{', '.join(quoted(n) for n in sorted(external))} may not give exactly the saved "
        "state; delete it again to finish."
        if external
        else " Its disks are as before the delete."
    )
    return VirtError(
        f"The connection to the host was lost while {doing}; {quoted(name)} still has "
        f"{', '.join(quoted(n) for n in sorted(still))}.{caveat}{partly}"
    )


def _gone_from(paths: list[str], snapshot: str) -> bool:
    """True when every image in ``paths`` can be read and none holds ``snapshot``."""
    for path in paths:
        entries = internal_entries(path)
        if entries is None or any(e.name == snapshot for e in entries):
            return False
    return True


# A VirtError code (not libvirt's) for "the connection dropped but the delete completed".
DELETE_FINISHED_ANYWAY = -11
