"""Taking a snapshot: what this VM allows, and doing it safely with progress.

Four kinds, as libvirt/QEMU can make them:
- internal with memory (running VM, qcow2 disks): all inside the disk images;
- internal, disks only (shut-off VM, qcow2 disks);
- external with memory (running VM): a memory file plus a new overlay per disk;
- external, disks only: a new overlay per disk (any state).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from vmsnapgui.core.domain_xml import (
    DomainDisk,
    domain_disks,
    guest_agent_connected,
    has_pflash_firmware,
    memory_kib,
)
from vmsnapgui.core.progress import (
    Cancelled,
    CancelToken,
    Progress,
    ProgressCallback,
    ignore_progress,
)
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, SnapshotDisk
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.core.validation import ValidationError, validate_description, validate_snapshot_name
from vmsnapgui.virt.errors import explain
from vmsnapgui.virt.operations import (
    default_snapshot_name,
    domain_state,
    file_stem,
    remove_new_files,
    resolve_domain,
    run_watched,
    snapshot_names,
    unused_path,
)
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

_log = logging.getLogger(__name__)

# libvirt 10.x learned internal snapshots of UEFI guests (their NVRAM is raw).
UEFI_INTERNAL_VERSION = (10, 10, 0)


class SnapshotMode(enum.StrEnum):
    """The four kinds of snapshot a VM can get."""

    INTERNAL_MEMORY = "internal-memory"
    INTERNAL_DISK = "internal-disk"
    EXTERNAL_MEMORY = "external-memory"
    EXTERNAL_DISK = "external-disk"

    @property
    def external(self) -> bool:
        """True for overlay files (and a memory file), False for inside-the-image."""
        return self in (SnapshotMode.EXTERNAL_MEMORY, SnapshotMode.EXTERNAL_DISK)

    @property
    def with_memory(self) -> bool:
        """True when the guest's memory is saved too."""
        return self in (SnapshotMode.INTERNAL_MEMORY, SnapshotMode.EXTERNAL_MEMORY)

    @property
    def label(self) -> str:
        """How a person would call it."""
        return {
            SnapshotMode.INTERNAL_MEMORY: "internal, with memory",
            SnapshotMode.INTERNAL_DISK: "internal, disks only",
            SnapshotMode.EXTERNAL_MEMORY: "external, with memory (memory file)",
            SnapshotMode.EXTERNAL_DISK: "external, disks only",
        }[self]


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether an option may be chosen; ``reason`` says why not."""

    allowed: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class TakeOptions:
    """What a VM allows for a new snapshot, with reasons for what it does not."""

    domain: str
    running: bool
    modes: dict[SnapshotMode, Availability]
    default_mode: SnapshotMode | None
    quiesce: Availability
    live: Availability
    memory_bytes: int
    existing_kinds: frozenset[str]
    default_name: str
    disks: tuple[DomainDisk, ...] = ()

    def mixing_warning(self, mode: SnapshotMode) -> str | None:
        """A warning when ``mode`` would mix internal and external snapshots in one tree."""
        other = "internal" if mode.external else "external"
        if other in self.existing_kinds:
            return (
                f"This VM already has {other} snapshots. Mixing internal and external "
                "snapshots in one tree makes reverting and deleting unreliable in libvirt "
                "and is a known source of lost data in other tools."
            )
        return None


@dataclass(frozen=True, slots=True)
class TakeRequest:
    """What the user asked for. ``mode`` None picks the VM's default."""

    name: str | None = None
    description: str | None = None
    mode: SnapshotMode | None = None
    quiesce: bool = False
    live: bool = False
    memory_file: str | None = None
    overlay_dir: str | None = None
    allow_mixing: bool = True


@dataclass(frozen=True, slots=True)
class TakeResult:
    """The snapshot that now exists, and the files it made."""

    name: str
    mode: SnapshotMode
    files: tuple[str, ...] = field(default=())
    seconds: float = 0.0


def take_options(loader: SnapshotLoader, domain: str | libvirt.virDomain) -> TakeOptions:
    """What this VM allows now, each refusal with its reason."""
    dom = resolve_domain(loader, domain)
    try:
        xml = dom.XMLDesc(0)
    except libvirt.libvirtError as exc:
        raise explain(exc, f"reading the definition of {dom.name()!r}") from None
    state = domain_state(dom)
    running = state.is_active
    disks = tuple(d for d in domain_disks(xml) if d.snapshottable)
    version = loader.connection.capabilities.libvirt_version

    not_qcow2 = [d for d in disks if d.driver_type != "qcow2"]
    not_files = [d for d in disks if d.source_type not in ("file", "block") or not d.source]
    internal = Availability(True)
    if not disks:
        internal = Availability(False, "The VM has no writable disks.")
    elif not_qcow2:
        disk = not_qcow2[0]
        internal = Availability(
            False,
            f"Disk {disk.target} is {disk.driver_type or 'not qcow2'}; only qcow2 disks can "
            "hold internal snapshots.",
        )
    elif has_pflash_firmware(xml) and version < UEFI_INTERNAL_VERSION:
        internal = Availability(
            False,
            "The VM boots with UEFI; libvirt "
            + ".".join(map(str, version))
            + " cannot take internal snapshots of UEFI VMs (10.10 or newer can).",
        )
    external = Availability(True)
    if not disks:
        external = Availability(False, "The VM has no writable disks.")
    elif not_files:
        external = Availability(False, f"Disk {not_files[0].target} is not a file or block device.")
    no_memory = Availability(False, "The VM is not running, so there is no memory to save.")
    modes = {
        SnapshotMode.INTERNAL_MEMORY: internal if running else no_memory,
        SnapshotMode.INTERNAL_DISK: internal
        if not running
        else Availability(
            False, "libvirt takes internal snapshots of a running VM only with its memory."
        ),
        SnapshotMode.EXTERNAL_MEMORY: external if running else no_memory,
        SnapshotMode.EXTERNAL_DISK: external,
    }
    if running:
        order = [
            SnapshotMode.INTERNAL_MEMORY,
            SnapshotMode.EXTERNAL_MEMORY,
            SnapshotMode.EXTERNAL_DISK,
        ]
    else:
        order = [SnapshotMode.INTERNAL_DISK, SnapshotMode.EXTERNAL_DISK]

    existing = loader.load(dom)
    kinds: set[str] = set()
    for snapshot in existing.tree:
        if snapshot.is_external:
            kinds.add("external")
        if snapshot.is_internal:
            kinds.add("internal")
    # Keep new snapshots of the kind the tree already has, where allowed.
    if "external" in kinds and "internal" not in kinds:
        order.sort(key=lambda m: not m.external)
    default = next((m for m in order if modes[m].allowed), None)

    if not running:
        quiesce = Availability(False, "Quiescing needs a running VM.")
    elif not guest_agent_connected(xml):
        quiesce = Availability(False, "Quiescing needs the QEMU guest agent running in the VM.")
    else:
        quiesce = Availability(True)
    live = (
        Availability(True)
        if running
        else Availability(False, "Live snapshots are for running VMs.")
    )
    return TakeOptions(
        domain=dom.name(),
        running=running,
        modes=modes,
        default_mode=default,
        quiesce=quiesce,
        live=live,
        memory_bytes=memory_kib(xml) * 1024 if running else 0,
        existing_kinds=frozenset(kinds),
        default_name=default_snapshot_name(set(existing.tree.names())),
        disks=disks,
    )


def take_snapshot(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    request: TakeRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> TakeResult:
    """Take a snapshot as asked; on failure or cancel nothing new is left behind."""
    started = time.monotonic()
    dom = resolve_domain(loader, domain)
    options = take_options(loader, dom)
    existing = snapshot_names(dom)
    name = request.name if request.name is not None else options.default_name
    validate_snapshot_name(name, existing)
    description = validate_description(request.description) if request.description else None

    mode = request.mode or options.default_mode
    if mode is None:
        raise ValidationError(
            "This VM cannot take any kind of snapshot: "
            + "; ".join(a.reason or "" for a in options.modes.values() if not a.allowed)
        )
    availability = options.modes[mode]
    if not availability.allowed:
        raise ValidationError(f"Cannot take a snapshot {mode.label}: {availability.reason}")
    if not request.allow_mixing and options.mixing_warning(mode):
        raise ValidationError(options.mixing_warning(mode) or "")
    if request.quiesce:
        if not options.quiesce.allowed:
            raise ValidationError(options.quiesce.reason or "Cannot quiesce.")
        if mode is not SnapshotMode.EXTERNAL_DISK:
            raise ValidationError("Quiescing works only with external, disk-only snapshots.")
    if request.live and mode is not SnapshotMode.EXTERNAL_MEMORY:
        raise ValidationError("Live snapshots need an external snapshot with memory.")

    new_files: list[Path] = []
    disks: tuple[SnapshotDisk, ...] = ()
    memory_file: str | None = None
    if mode.external:
        taken: set[str] = set()
        overlays = []
        for disk in options.disks:
            source = Path(disk.source or "")
            directory = Path(request.overlay_dir) if request.overlay_dir else source.parent
            # Named after the VM and disk, not the current layer, so chains of external
            # snapshots do not grow ever longer file names.
            stem = f"{file_stem(options.domain)}-{disk.target}.{file_stem(name)}"
            overlay = unused_path(directory, stem, ".qcow2", taken)
            taken.add(str(overlay))
            overlays.append(SnapshotDisk(disk.target, DiskKind.EXTERNAL, str(overlay), "qcow2"))
            new_files.append(overlay)
        disks = tuple(overlays)
        if mode is SnapshotMode.EXTERNAL_MEMORY:
            if request.memory_file:
                memory_path = Path(request.memory_file)
                if memory_path.exists():
                    raise ValidationError(f"The memory file {memory_path} exists already.")
            else:
                first = Path(options.disks[0].source or "")
                memory_path = unused_path(
                    first.parent, f"{file_stem(options.domain)}.{file_stem(name)}", ".mem"
                )
            memory_file = str(memory_path)
            new_files.append(memory_path)

    memory = {
        SnapshotMode.INTERNAL_MEMORY: MemoryKind.INTERNAL,
        SnapshotMode.INTERNAL_DISK: MemoryKind.NONE,
        SnapshotMode.EXTERNAL_MEMORY: MemoryKind.EXTERNAL,
        SnapshotMode.EXTERNAL_DISK: MemoryKind.NONE,
    }[mode]
    if mode is SnapshotMode.INTERNAL_DISK:
        disks = tuple(SnapshotDisk(d.target, DiskKind.INTERNAL) for d in options.disks)
    xml = snapshot_request_xml(
        name, description, memory=memory, memory_file=memory_file, disks=disks
    )
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    if mode is SnapshotMode.EXTERNAL_DISK:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    if request.quiesce:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    if request.live:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE

    cancellable = mode is SnapshotMode.EXTERNAL_MEMORY
    phase = {
        SnapshotMode.INTERNAL_MEMORY: "Saving memory and disks inside the images",
        SnapshotMode.INTERNAL_DISK: "Recording the disks inside the images",
        SnapshotMode.EXTERNAL_MEMORY: "Saving memory to a file",
        SnapshotMode.EXTERNAL_DISK: "Creating overlay files",
    }[mode]
    progress(Progress(phase, unit="bytes", can_cancel=cancellable))
    if cancel is not None:
        cancel.raise_if_cancelled()

    def poll() -> Progress | None:
        stats = dom.jobStats(0)
        processed = stats.get("memory_processed")
        total = stats.get("memory_total")
        if processed is None or not total:
            return Progress(phase, unit="bytes", can_cancel=cancellable)
        return Progress(phase, int(processed), int(total), "bytes", cancellable)

    def abort() -> None:
        try:
            dom.abortJob()
        except libvirt.libvirtError as exc:
            _log.info("aborting the snapshot job failed: %s", exc)

    try:
        run_watched(
            lambda: dom.snapshotCreateXML(xml, flags),
            poll,
            progress,
            cancel if cancellable else None,
            abort,
        )
    except libvirt.libvirtError as exc:
        remove_new_files(new_files)
        loader.forget(dom.UUIDString(), name)
        if cancel is not None and cancel.cancelled:
            raise Cancelled(
                "Cancelled; no snapshot was taken and its files were removed."
            ) from None
        raise explain(exc, f"taking snapshot {name!r}") from None
    if cancel is not None and cancel.cancelled:
        # Too late to abort: QEMU had finished. The snapshot exists; say so.
        _log.info("cancel arrived after snapshot %s was complete", name)
    progress(Progress("Done", 1, 1, "steps"))
    return TakeResult(
        name=name,
        mode=mode,
        files=tuple(str(p) for p in new_files),
        seconds=time.monotonic() - started,
    )
