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
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import libvirt

from vmsnapgui.core.byte_source import FileByteSource
from vmsnapgui.core.domain_xml import (
    DomainDisk,
    domain_disks,
    guest_agent_connected,
    has_pflash_firmware,
    memory_kib,
    with_disk_sources,
)
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.file_references import normal_path
from vmsnapgui.core.progress import (
    Cancelled,
    CancelToken,
    Progress,
    ProgressCallback,
    ignore_progress,
)
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.snapshot import DiskKind, DomainState, MemoryKind, Snapshot, SnapshotDisk
from vmsnapgui.core.snapshot_xml import parse_snapshot_xml, snapshot_request_xml
from vmsnapgui.core.units import format_bytes
from vmsnapgui.core.validation import ValidationError, validate_description, validate_snapshot_name
from vmsnapgui.virt.connection import files_are_here
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.host_files import FileExists, FileIdentity, Removal, create_exclusive
from vmsnapgui.virt.operations import (
    default_snapshot_name,
    domain_state,
    file_stem,
    resolve_domain,
    run_watched,
    snapshot_names,
)
from vmsnapgui.virt.qemu_view import guest_disk_files, qemu_processes
from vmsnapgui.virt.recovery import (
    OutcomeUnknown,
    host_after_failure,
    kept_files_sentence,
    remove_unused,
    settle,
)
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

if TYPE_CHECKING:
    from vmsnapgui.core.qcow2 import Qcow2Snapshot

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
    note: str | None = None
    """Something the user should know although it worked (the connection dropped…)."""


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
    """Take a snapshot as asked; on failure or cancel nothing new is left behind.

    On this computer the new files (overlays, memory file) are created by us first,
    empty and exclusively, so that a failure can tell them from anyone else's: libvirt
    fills a zero-length file it finds in place. When the connection drops mid-call, the
    host is asked again what happened before anything is removed (``virt/recovery.py``).
    """
    started = time.monotonic()
    started_wall = time.time()
    dom = resolve_domain(loader, domain)
    uuid = dom.UUIDString()
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

    here = files_are_here(loader.connection.display_uri)
    if here and not mode.external:
        _refuse_unlisted_internal(options.disks, name)
    check_take_space(loader, options, mode, request, here)
    state_before = domain_state(dom)

    # From here on, files exist that only this call knows about: no libvirt call may
    # come between making them and handing them to snapshotCreateXML.
    owned: list[FileIdentity] = []
    try:
        disks, memory_file = _new_files(options, name, mode, request, here, owned)
    except BaseException:
        _remove_fresh(owned)
        raise
    memory = {
        SnapshotMode.INTERNAL_MEMORY: MemoryKind.INTERNAL,
        SnapshotMode.INTERNAL_DISK: MemoryKind.NONE,
        SnapshotMode.EXTERNAL_MEMORY: MemoryKind.EXTERNAL,
        SnapshotMode.EXTERNAL_DISK: MemoryKind.NONE,
    }[mode]
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
    if cancel is not None and cancel.cancelled:
        _remove_fresh(owned)
        raise Cancelled("Cancelled; no snapshot was taken.")

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

    attempt = _Attempt(
        loader,
        uuid,
        name,
        mode,
        description,
        tuple(owned),
        tuple(d.file for d in disks if d.file) + ((memory_file,) if memory_file else ()),
        options,
        disks,
        state_before,
        started_wall,
        here,
    )
    try:
        run_watched(
            lambda: dom.snapshotCreateXML(xml, flags),
            poll,
            progress,
            cancel if cancellable else None,
            abort,
        )
    except libvirt.libvirtError as exc:
        loader.forget(uuid, name)
        outcome = attempt.after_failure(exc, progress, cancel)
        progress(Progress("Done", 1, 1, "steps"))
        return replace(outcome, seconds=time.monotonic() - started)
    if cancel is not None and cancel.cancelled:
        # Too late to abort: QEMU had finished. The snapshot exists; say so.
        _log.info("cancel arrived after snapshot %s was complete", name)
    progress(Progress("Done", 1, 1, "steps"))
    return TakeResult(
        name=name,
        mode=mode,
        files=attempt.files,
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------- new files


def _new_files(
    options: TakeOptions,
    name: str,
    mode: SnapshotMode,
    request: TakeRequest,
    here: bool,
    owned: list[FileIdentity],
) -> tuple[tuple[SnapshotDisk, ...], str | None]:
    """Each disk's part of the request and the memory file's path; on this computer the
    files are made now (empty, exclusively) and appended to ``owned``."""
    if mode is SnapshotMode.INTERNAL_DISK:
        return tuple(SnapshotDisk(d.target, DiskKind.INTERNAL) for d in options.disks), None
    if not mode.external:
        return (), None
    overlays = []
    for disk in options.disks:
        source = disk.source or ""
        directory = request.overlay_dir or os.path.dirname(source)
        # Named after the VM and disk, not the current layer, so chains of external
        # snapshots do not grow ever longer file names.
        stem = f"{file_stem(options.domain)}-{disk.target}.{file_stem(name)}"
        path = _claim(directory, stem, ".qcow2", here, owned, like=source)
        overlays.append(SnapshotDisk(disk.target, DiskKind.EXTERNAL, path, "qcow2"))
    memory_file = None
    if mode is SnapshotMode.EXTERNAL_MEMORY:
        if request.memory_file:
            memory_file = os.path.abspath(request.memory_file)
            if here:
                try:
                    owned.append(create_exclusive(memory_file, mode=0o600))
                except FileExists:
                    raise ValidationError(
                        f"The memory file {memory_file} exists already."
                    ) from None
                except OSError as exc:
                    raise ValidationError(
                        f"The memory file {memory_file} cannot be created: {exc.strerror}."
                    ) from None
        else:
            first = os.path.dirname(options.disks[0].source or "")
            stem = f"{file_stem(options.domain)}.{file_stem(name)}"
            # Guest memory holds secrets: readable by its owner only, whatever the disks.
            memory_file = _claim(first, stem, ".mem", here, owned, mode=0o600)
    return tuple(overlays), memory_file


def _claim(
    directory: str,
    stem: str,
    suffix: str,
    here: bool,
    owned: list[FileIdentity],
    *,
    like: str | None = None,
    mode: int = 0o600,
) -> str:
    """A free path ``directory/stem[-N]suffix``; made (empty) on this computer, where
    another client racing for the same name gets the next number instead."""
    directory = os.path.abspath(directory or ".")
    if not here:
        return os.path.join(directory, f"{stem}{suffix}")
    for counter in range(1, 1000):
        path = os.path.join(directory, f"{stem}{suffix if counter == 1 else f'-{counter}{suffix}'}")
        try:
            owned.append(create_exclusive(path, like=like if _readable(like) else None, mode=mode))
            return path
        except FileExists:
            continue
        except OSError as exc:
            raise ValidationError(
                f"Cannot create a snapshot file in {directory}: {exc.strerror}."
            ) from None
    raise ValidationError(f"Too many files called {stem}… in {directory}.")


def _readable(path: str | None) -> bool:
    return bool(path) and os.path.exists(path or "")


def _remove_fresh(owned: list[FileIdentity]) -> None:
    """Remove files made a moment ago that nothing was told about yet."""
    for identity in owned:
        if identity.is_same_file():
            try:
                os.unlink(identity.path)
            except OSError as exc:
                _log.warning("could not remove %s: %s", identity.path, exc)


# --------------------------------------------------------------------------- space


# What a snapshot needs beyond the guest's memory: overlay headers, new L1 and refcount
# tables, libvirt's metadata; generous, since running out half way costs far more.
DISK_MARGIN = 16 * 1024 * 1024
MEMORY_MARGIN = 64 * 1024 * 1024


def check_take_space(
    loader: SnapshotLoader,
    options: TakeOptions,
    mode: SnapshotMode,
    request: TakeRequest,
    here: bool,
) -> None:
    """Refuse, with the numbers, a snapshot that cannot fit where it will be written.

    An internal memory snapshot grows the first disk image by about the guest's memory,
    and QEMU does not give that space back when it fails; an external one writes a file
    of that size. Only folders whose free space can be known are checked (this
    computer's, or a storage pool's on a remote host).
    """
    if not options.disks:
        return
    first = options.disks[0].source or ""
    needs: dict[str, int] = {}

    def need(folder: str, amount: int) -> None:
        folder = os.path.abspath(folder or ".")
        needs[folder] = needs.get(folder, 0) + amount

    if mode is SnapshotMode.INTERNAL_MEMORY:
        need(os.path.dirname(first), options.memory_bytes + MEMORY_MARGIN)
    elif mode is SnapshotMode.INTERNAL_DISK:
        need(os.path.dirname(first), DISK_MARGIN)
    else:
        for disk in options.disks:
            need(request.overlay_dir or os.path.dirname(disk.source or ""), DISK_MARGIN)
        if mode is SnapshotMode.EXTERNAL_MEMORY:
            memory_dir = (
                os.path.dirname(os.path.abspath(request.memory_file))
                if request.memory_file
                else os.path.dirname(first)
            )
            need(memory_dir, options.memory_bytes + MEMORY_MARGIN)
    for folder, amount in needs.items():
        free = free_space(loader, folder, here)
        if free is not None and free < amount:
            what = "the snapshot"
            if mode.with_memory:
                what = f"the snapshot (about {format_bytes(options.memory_bytes)} of memory)"
            raise ValidationError(
                f"Not enough space for {what}: it needs {format_bytes(amount)} in {folder} "
                f"but only {format_bytes(free)} is free."
            )


def free_space(loader: SnapshotLoader, folder: str, here: bool) -> int | None:
    """Bytes free for new files in ``folder``, or None when that cannot be known."""
    if here:
        try:
            stats = os.statvfs(folder)
        except OSError:
            return None
        return stats.f_bavail * stats.f_frsize
    try:
        pool = loader.connection.conn.storagePoolLookupByTargetPath(folder)
        return int(pool.info()[3])
    except (libvirt.libvirtError, AttributeError, IndexError):
        return None


# --------------------------------------------------------------------------- internal


def _refuse_unlisted_internal(disks: tuple[DomainDisk, ...], name: str) -> None:
    """Refuse a name that a disk image already holds as an internal snapshot libvirt
    does not list: QEMU would replace that snapshot with the new one."""
    for disk in disks:
        entries = internal_entries(disk.source)
        if entries is not None and any(entry.name == name for entry in entries):
            raise ValidationError(
                f"The disk image {disk.source} already holds an internal snapshot called "
                f"{name!r} that libvirt does not list; taking another one by that name "
                "would replace it. Choose another name."
            )


def internal_entries(path: str | None) -> list[Qcow2Snapshot] | None:
    """The internal snapshots in a local qcow2 image's table; None when unreadable."""
    # Imported here: the qcow2 reader brings numpy, which the window's start must not wait for.
    from vmsnapgui.core.qcow2 import Qcow2Error, read_layout

    if not path:
        return None
    try:
        with FileByteSource(path) as source:
            return list(read_layout(source).snapshots)
    except (OSError, Qcow2Error):
        return None


def mistaken_by_qemu(
    dom: libvirt.virDomain, snapshots: Sequence[Snapshot], doing: str, here: bool
) -> str | None:
    """Why an internal snapshot whose name is only digits cannot be ``doing`` safely.

    QEMU (``loadvm``, ``delvm``, ``qemu-img snapshot -a/-d``, which libvirt runs) finds an
    internal snapshot by number or by name, whichever matches first in the image's table:
    a snapshot called "2" made elsewhere (vmsnap refuses such names) may stand for
    snapshot number 2, another one. None when no such name is involved.
    """
    suspects = [
        s.name for s in snapshots if s.is_internal and s.name.isascii() and s.name.isdigit()
    ]
    if not suspects:
        return None
    try:
        sources = [d.source for d in domain_disks(dom.XMLDesc(0)) if d.snapshottable]
    except libvirt.libvirtError as exc:
        reason = explain(exc).message
        return f"Could not read the VM's disks to check snapshot {quoted(suspects[0])}: {reason}"
    for name in suspects:
        for path in sources:
            entries = internal_entries(path) if here else None
            if entries is None:
                return (
                    f"Snapshot {quoted(name)} cannot be {doing} safely: its name is only "
                    "digits, QEMU may take it for the number of another snapshot, and the "
                    f"disk image {path} cannot be read from here to rule that out."
                )
            for entry in entries:
                if entry.id == name and entry.name != name:
                    return (
                        f"Snapshot {quoted(name)} cannot be {doing} safely: {path} numbers "
                        f"snapshot {quoted(entry.name)} {name}, and QEMU would act on that "
                        "one instead."
                    )
    return None


# --------------------------------------------------------------------------- failure


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One snapshotCreateXML call, with what is needed to tell afterwards what it did."""

    loader: SnapshotLoader
    uuid: str
    name: str
    mode: SnapshotMode
    description: str | None
    owned: tuple[FileIdentity, ...]
    files: tuple[str, ...]
    options: TakeOptions
    disks: tuple[SnapshotDisk, ...]
    state_before: DomainState
    started_wall: float
    here: bool

    def after_failure(
        self, exc: libvirt.libvirtError, progress: ProgressCallback, cancel: CancelToken | None
    ) -> TakeResult:
        """Return the result when the snapshot was taken after all; otherwise remove what
        is ours and unused, and raise the error, saying how the VM is now."""
        doing = f"taking snapshot {self.name!r}"
        conn = host_after_failure(self.loader.connection, exc, doing, self.files, progress)
        try:
            outcome = self._reconcile(conn, exc, cancel)
        except (UserError, libvirt.libvirtError) as again:
            if isinstance(again, OutcomeUnknown):
                raise
            reason = again.message if isinstance(again, UserError) else explain(again).message
            left = ""
            if self.files:
                left = f" These files may belong to it and were left: {', '.join(self.files)}."
            raise OutcomeUnknown(
                f"Taking snapshot {self.name!r} failed, and then the host could not be asked "
                f"what it had done ({reason.rstrip('.')}).{left}",
                detail=explain(exc).detail,
            ) from None
        if isinstance(outcome, UserError):
            raise outcome
        return outcome

    def _reconcile(
        self, conn: libvirt.virConnect, exc: libvirt.libvirtError, cancel: CancelToken | None
    ) -> TakeResult | UserError:
        """What happened, from the host's answers now; files are removed only here."""
        lost = is_connection_lost(exc)
        dom = conn.lookupByUUIDString(self.uuid)
        if lost:
            settle(dom)
        if lost and self._was_taken(dom):
            return TakeResult(
                self.name,
                self.mode,
                self.files,
                note="The connection to the host dropped during the snapshot, but the host "
                "finished it.",
            )
        if lost and not self.mode.external:
            adopted = self._adopt_internal(dom)
            if adopted is not None:
                return adopted
        ignore: frozenset[int] = frozenset()
        if lost and self.here and self.mode.external and dom.isActive():
            chains = guest_disk_files(dom)
            if chains is not None:
                used = {path for chain in chains.values() for path in chain}
                switched = [path for path in self.files if normal_path(path) in used]
                if switched:
                    return self._record_switched(conn, dom, switched)
                # QEMU may hold an overlay libvirt added but never switched to: that open
                # file is no use to anyone.
                ignore = frozenset(qemu_processes(self.uuid))
        removals = remove_unused(conn, self.owned, local=self.here, ignore_pids=ignore)
        error = explain(exc, f"taking snapshot {self.name!r}")
        cancelled = cancel is not None and cancel.cancelled and not lost
        all_removed = all(r.removed for r in removals)
        if cancelled:
            message = "Cancelled; no snapshot was taken"
            message += " and its files were removed." if all_removed else "."
        elif lost:
            message = (
                f"The connection to the host was lost while taking snapshot {self.name!r}; "
                "the host has not recorded it, so it was not taken."
            )
        else:
            message = error.message
        if all_removed and removals and not cancelled:
            message += " Its new files were removed."
        message += kept_files_sentence(removals)
        message += self._state_sentence(dom, removals)
        if cancelled:
            return Cancelled(message)
        return VirtError(message, detail=error.detail, code=error.code)

    def _record_switched(
        self, conn: libvirt.virConnect, dom: libvirt.virDomain, switched: list[str]
    ) -> TakeResult:
        """QEMU switched the guest's disks to the new overlays, but the daemon died before
        it wrote that down. Record the snapshot and point the VM's saved definition at
        the overlays, so that its next start uses the disks it really writes to."""
        by_path = {d.file: d for d in self.disks if d.file}
        disks = tuple(by_path[path] for path in switched if path in by_path)
        xml = snapshot_request_xml(
            self.name,
            self.description,
            memory=MemoryKind.NONE,
            disks=disks,
            state="disk-snapshot",
            created=int(self.started_wall),
            domain_xml=dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE),
        )
        dom.snapshotCreateXML(
            xml,
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
        )
        if dom.isPersistent():
            saved = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            conn.defineXML(
                with_disk_sources(saved, {d.target: (d.file or "", "qcow2") for d in disks})
            )
        memory = [i for i in self.owned if i.path not in switched]
        removals = remove_unused(conn, memory, local=self.here) if memory else []
        note = (
            "The connection to the host dropped just as the VM switched to its new overlay; "
            "the snapshot was recorded again (without memory), and libvirt will show the "
            "new disk files once the VM restarts."
        ) + kept_files_sentence(removals)
        return TakeResult(self.name, SnapshotMode.EXTERNAL_DISK, tuple(switched), note=note)

    def _was_taken(self, dom: libvirt.virDomain) -> bool:
        """True when the host lists the snapshot and it is the one this call made."""
        try:
            snapshot = dom.snapshotLookupByName(self.name, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                return False
            raise
        record = parse_snapshot_xml(snapshot.getXMLDesc(0), self.name)
        if self.mode.external:
            return {d.file for d in record.disks if d.file} >= {
                f for f in self.files if not f.endswith(".mem")
            }
        return record.created is None or record.created >= int(self.started_wall) - 1

    def _adopt_internal(self, dom: libvirt.virDomain) -> TakeResult | None:
        """An internal snapshot QEMU finished but libvirt never recorded (its daemon died
        in between): record it, so the user has it and it is not a hidden orphan."""
        if self.mode.external or not self.here:
            return None
        made = []
        for disk in self.options.disks:
            entries = internal_entries(disk.source)
            mine = [
                e
                for e in entries or ()
                if e.name == self.name and e.date_sec >= int(self.started_wall) - 1
            ]
            made.append(mine[0] if mine else None)
        if not any(made):
            return None
        if not all(made):
            partial = [
                d.source or d.target for d, e in zip(self.options.disks, made, strict=True) if e
            ]
            raise VirtError(
                f"The connection to the host was lost while taking snapshot {self.name!r}; "
                f"the snapshot was saved inside {', '.join(partial)} but not in the other "
                "disks, and libvirt does not list it. Remove it with 'qemu-img snapshot -d' "
                "once the VM is shut off."
            )
        first = next(e for e in made if e is not None)
        try:
            domain_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
            xml = snapshot_request_xml(
                self.name,
                self.description,
                memory=MemoryKind.INTERNAL if self.mode.with_memory else MemoryKind.NONE,
                disks=tuple(SnapshotDisk(d.target, DiskKind.INTERNAL) for d in self.options.disks),
                state="running" if self.state_before.is_active else "shutoff",
                created=first.date_sec,
                domain_xml=domain_xml,
            )
            dom.snapshotCreateXML(
                xml,
                libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
            )
        except libvirt.libvirtError as exc:
            raise explain(
                exc, f"recording snapshot {self.name!r}, which QEMU saved but libvirt lost"
            ) from None
        note = (
            "The connection to the host dropped during the snapshot; QEMU finished it and "
            "it was recorded again."
        )
        resumed = self._resume_if_we_paused(dom)
        if resumed:
            note += " " + resumed
        return TakeResult(self.name, self.mode, (), note=note)

    def _resume_if_we_paused(self, dom: libvirt.virDomain) -> str | None:
        """Resume a VM that was running and that the snapshot left paused."""
        try:
            state, reason = dom.state(0)
        except libvirt.libvirtError:
            return None
        if not (
            self.state_before is DomainState.RUNNING
            and state == libvirt.VIR_DOMAIN_PAUSED
            and reason in _SNAPSHOT_PAUSE_REASONS
        ):
            return None
        try:
            dom.resume()
        except libvirt.libvirtError as exc:
            return f"The VM was left paused and could not be resumed: {explain(exc).message}"
        return "The VM, which the snapshot had paused, was resumed."

    def _state_sentence(self, dom: libvirt.virDomain, removals: list[Removal]) -> str:
        """How the VM is now, when the failure changed it (left paused)."""
        # When a file stays, QEMU may be writing to one libvirt does not know: the VM is
        # left as it is. Otherwise a pause the snapshot caused is undone.
        if all(r.removed for r in removals):
            resumed = self._resume_if_we_paused(dom)
            if resumed:
                return f" {resumed}"
        try:
            state = DomainState.from_code(dom.state(0)[0])
        except libvirt.libvirtError:
            return ""
        if state is not self.state_before:
            return f" The VM is {state.value} now (it was {self.state_before.value})."
        return ""


# Paused by libvirt for the snapshot (or a save that was its memory part).
_SNAPSHOT_PAUSE_REASONS = frozenset(
    {
        libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT,
        libvirt.VIR_DOMAIN_PAUSED_SAVE,
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
        libvirt.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT,
        libvirt.VIR_DOMAIN_PAUSED_UNKNOWN,
    }
)
