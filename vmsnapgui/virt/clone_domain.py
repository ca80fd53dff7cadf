"""Cloning a VM from one of its snapshots (or from "Now" of a shut-off VM).

- Full clone: a flattened copy of each disk as it was at the snapshot. An internal
  snapshot is read out with ``qemu-img convert -l snapshot.id=…,snapshot.name=…``, the
  entry chosen by the id in the image's own snapshot table; for an external one the
  frozen image (the layer that became read-only when it was taken) is copied with its
  whole backing chain flattened.
- Linked clone: a new qcow2 overlay whose backing file is the snapshot's frozen image.
  Only external snapshots have such an image; the snapshot must then stay.

The clone gets a new name, a new UUID and new MAC addresses (libvirt makes them), its
disks beside the source's (or in a chosen folder). Progress counts bytes copied.
Disks must be local files (this computer's libvirt).

The rules of DESIGN.md's "Data safety", as they apply here:

- **Stability of what we read.** Before copying, the snapshot's identity is noted (its
  name and creation time, each internal snapshot's entry in the qcow2 table, the device,
  inode, size and modification time of every frozen file, and which overlay stands on
  which). After copying, before the clone is defined, all of it is read again: a
  snapshot deleted, committed or replaced while ``qemu-img`` read it fails the clone.
- **Structured arguments.** ``qemu-img`` runs with argv lists (never a shell); every
  path is absolute, so no name is taken as a protocol (``nbd:…``, ``json:…``); values in
  option strings have their commas doubled, as QEMU escapes them.
- **New files.** Each disk and the NVRAM copy is created exclusively under a private
  hidden name beside its final one, never through a symlink (``O_EXCL | O_NOFOLLOW``,
  relative to the folder opened once), mode 0600; ``qemu-img`` writes to it through
  ``/proc/self/fd/N``: the open file, whatever happens to its name. Once complete it
  gets the mode and owner of what it copies (never the umask's) and is linked to its
  final name (``link`` never replaces what is there), so a disk's name never shows a
  half-written file. ``qemu-img`` runs in a session of its own: a terminal's Ctrl+C
  reaches only vmsnap, which stops it and cleans up.
- **Ownership and references.** On failure only files this clone created, still the
  same files, and used by nothing on the host are removed. When the host stops answering
  as the clone is defined, the clone waits for it and asks whether the clone exists
  before removing anything; when it does not come back, the files stay and the message
  says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import libvirt

from vmsnapgui.core.byte_source import FileByteSource
from vmsnapgui.core.domain_xml import ClonedDisk, clone_domain_xml, domain_disks, nvram_path
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.file_references import normal_path, resolve_backing_path
from vmsnapgui.core.progress import (
    Cancelled,
    CancelToken,
    Progress,
    ProgressCallback,
    ignore_progress,
)
from vmsnapgui.core.quoting import quoted, shortened
from vmsnapgui.core.snapshot import DiskKind, DomainState
from vmsnapgui.core.snapshot_xml import embedded_domain_xml, parse_snapshot_xml
from vmsnapgui.core.units import format_bytes
from vmsnapgui.core.validation import validate_description, validate_vm_name
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.host_files import (
    FileIdentity,
    HostReferences,
    Removal,
    read_host_references,
    remove_owned,
)
from vmsnapgui.virt.operations import (
    domain_state,
    file_stem,
    lookup_snapshot,
    resolve_domain,
)
from vmsnapgui.virt.recovery import (
    RECONNECT_SECONDS,
    OutcomeUnknown,
    host_after_failure,
    kept_files_sentence,
    remove_unused,
    wait_for_host,
)
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

if TYPE_CHECKING:
    from vmsnapgui.core.qcow2 import Qcow2Layout, Qcow2Snapshot

_log = logging.getLogger(__name__)
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
# Kept free beyond what the copy measures: the rest of the system must not find the
# file system full because of a clone.
SPACE_MARGIN = 64 * 1024 * 1024
# Deeper than this, a backing chain loops or is hostile.
_MAX_CHAIN = 256
# Paths in messages are whole unless absurdly long: one line, and a terminal's width or
# two, must hold the sentence around them (a 5,000-byte folder became a 414-character
# message at 300).
_PATH_TEXT_LIMIT = 160


@dataclass(frozen=True, slots=True)
class CloneRequest:
    """What to clone and how. ``snapshot`` None clones "Now" (VM must be shut off)."""

    new_name: str
    snapshot: str | None = None
    linked: bool = False
    target_dir: str | None = None
    start: bool = False
    description: str | None = None


@dataclass(frozen=True, slots=True)
class FileState:
    """A file whose bytes a copy reads and that must not change meanwhile: its identity
    and the marks any write leaves (size, modification time)."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileState:
        """The file at ``path`` now (raises OSError when it cannot be read)."""
        info = os.stat(path)
        return cls(path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def unchanged(self) -> bool:
        """True when ``path`` is still this file, neither written nor replaced."""
        try:
            return FileState.of(self.path) == self
        except OSError:
            return False


@dataclass(frozen=True, slots=True)
class DiskCopy:
    """One disk of the clone: read from ``source`` (at ``internal_snapshot``), write ``target``.

    ``snapshot_entry`` is the internal snapshot's entry in the image's table (chosen by
    its id); ``frozen`` the files whose bytes must not change while they are read;
    ``overlay`` the external snapshot's overlay, which must keep standing on ``source``.
    """

    target_dev: str
    source: str
    source_format: str
    target: str
    target_format: str
    internal_snapshot: str | None
    required_bytes: int
    snapshot_entry: Qcow2Snapshot | None = None
    frozen: tuple[FileState, ...] = ()
    overlay: str | None = None


@dataclass(frozen=True, slots=True)
class ClonePlan:
    """Everything decided before a byte is copied, and what must still hold after."""

    source_domain: str
    new_name: str
    linked: bool
    disks: tuple[DiskCopy, ...]
    domain_xml: str
    nvram: tuple[str, str] | None
    required_bytes: int
    available_bytes: int | None
    warnings: tuple[str, ...]
    source_uuid: str = ""
    source_running: bool = False
    snapshot: str | None = None
    snapshot_created: int | None = None
    exact_folders: frozenset[str] = frozenset()
    """Folders named by the user that must not be symlinks (opened with O_NOFOLLOW)."""


@dataclass(frozen=True, slots=True)
class CloneFolder:
    """A storage pool whose folder can hold a clone's disks."""

    pool: str
    path: str
    available: int


# Pool types whose target is a folder on this computer (clones are copied here).
_FOLDER_POOL_TYPES = frozenset({"dir", "fs", "netfs"})


@dataclass(frozen=True, slots=True)
class CloneResult:
    """The new VM."""

    name: str
    uuid: str
    files: tuple[str, ...]
    started: bool
    seconds: float
    note: str | None = None
    """Something the user should know although it worked (the connection dropped…)."""


class SourceChanged(VirtError):
    """What the clone read is no longer what it meant to read; the clone was not made."""


# --------------------------------------------------------------------------- planning


def plan_clone(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    request: CloneRequest,
    *,
    check_space: bool = True,
) -> ClonePlan:
    """Check everything and work out each disk's copy; raises with the reason when impossible.

    ``check_space=False`` only measures (a dialog weighing folders against the need).
    """
    dom = resolve_domain(loader, domain)
    _require_local(loader)
    conn = loader.connection.conn
    try:
        existing = {d.name() for d in conn.listAllDomains(0)}
        uuid = dom.UUIDString()
    except libvirt.libvirtError as exc:
        raise explain(exc, "listing the virtual machines") from None
    name = validate_vm_name(request.new_name, existing)
    description = validate_description(request.description) if request.description else None
    running = domain_state(dom).is_active
    warnings: list[str] = []
    snapshot_label = quoted(request.snapshot) if request.snapshot is not None else ""

    internal_name: str | None = None
    created: int | None = None
    external_layers: dict[str, tuple[str, str, str]] = {}  # target -> (frozen, format, overlay)
    if request.snapshot is None:
        if running:
            raise VirtError(
                "A running VM's disks cannot be copied consistently; shut it down, or take a "
                "snapshot and clone from that."
            )
        if request.linked:
            raise VirtError(
                'A linked clone needs an external snapshot to stand on; "Now" keeps '
                "changing. Take an external snapshot and clone from it."
            )
        try:
            source_xml = dom.XMLDesc(
                libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
            )
        except libvirt.libvirtError as exc:
            raise explain(exc, f"reading the definition of {quoted(dom.name())}") from None
    else:
        snap = lookup_snapshot(dom, request.snapshot)
        try:
            snapshot_xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        except libvirt.libvirtError as exc:
            raise explain(exc, f"reading snapshot {snapshot_label}") from None
        # Read now, not from the loader's cache: a snapshot deleted and taken again
        # under the same name is another snapshot.
        record = parse_snapshot_xml(snapshot_xml, request.snapshot)
        created = record.created
        embedded = embedded_domain_xml(snapshot_xml)
        if embedded is None:
            raise VirtError(
                f"Snapshot {snapshot_label} does not record the VM's definition, so it "
                "cannot be cloned."
            )
        source_xml = embedded
        kinds = {d.target: d for d in record.disks}
        for disk in domain_disks(source_xml):
            if not disk.snapshottable:
                continue
            recorded = kinds.get(disk.target)
            if recorded is None or recorded.kind is DiskKind.NONE:
                raise VirtError(
                    f"Disk {disk.target} was not part of snapshot {snapshot_label}, so "
                    "its contents at that moment are unknown."
                )
            if recorded.kind is DiskKind.EXTERNAL:
                if not recorded.file:
                    raise VirtError(f"Snapshot {snapshot_label} names no file for {disk.target}.")
                overlay_file = _absolute(recorded.file, f"the overlay of {disk.target}")
                frozen_file, frozen_format = _frozen_image(overlay_file, request.snapshot)
                external_layers[disk.target] = (frozen_file, frozen_format, overlay_file)
            elif recorded.kind is DiskKind.INTERNAL:
                internal_name = request.snapshot
        if request.linked and (internal_name is not None or not external_layers):
            raise VirtError(
                "Linked clones need an external snapshot: an internal snapshot lives inside "
                "the VM's own disk image, which keeps changing. Make a full clone instead."
            )
        if request.linked:
            warnings.append(
                f"The clone's disks stand on snapshot {snapshot_label}'s files: that "
                "snapshot must stay as long as the clone exists (deleting it would merge "
                "and change the files the clone reads)."
            )

    chosen = _absolute(request.target_dir, "the folder") if request.target_dir else None
    exact: set[str] = set()
    checked: set[str] = set()
    copies: list[DiskCopy] = []
    first_dir: str | None = None
    for disk in domain_disks(source_xml):
        if not disk.snapshottable:
            continue
        if disk.source_type != "file" or not disk.source:
            raise VirtError(f"Disk {disk.target} is not a file; only file disks can be cloned.")
        own_source = _absolute(disk.source, f"the disk image of {disk.target}")
        overlay: str | None = None
        if disk.target in external_layers:
            source, fmt, overlay = external_layers[disk.target]
        else:
            source, fmt = own_source, disk.driver_type or "raw"
        if not os.path.exists(source):
            raise VirtError(f"The disk image {_path_text(source)} of {disk.target} does not exist.")
        directory = chosen or os.path.dirname(own_source)
        # A folder the user named is taken as named: a symlink there could send the
        # disks anywhere. The folder the VM's own disks are in is the VM's already.
        strict = chosen is not None and normal_path(chosen) != normal_path(
            os.path.dirname(own_source)
        )
        if directory not in checked:
            _check_folder(directory, strict)
            checked.add(directory)
        if strict:
            exact.add(directory)
        first_dir = first_dir or directory
        target_format = "qcow2" if request.linked else fmt
        target = os.path.join(
            directory,
            f"{file_stem(name)}-{disk.target}.{'qcow2' if target_format == 'qcow2' else 'img'}",
        )
        _refuse_taken(target)
        entry: Qcow2Snapshot | None = None
        frozen: list[FileState]
        if disk.target in external_layers:
            frozen = _frozen_chain(source, fmt)
        elif internal_name is not None:
            entry = _internal_entry(source, internal_name)
            frozen = _frozen_chain(source, fmt)[1:]  # the image itself keeps changing
        else:
            frozen = _frozen_chain(source, fmt)  # "Now" of a shut-off VM
        required = 0 if request.linked else _measure(source, fmt, target_format, entry, running)
        copies.append(
            DiskCopy(
                disk.target,
                source,
                fmt,
                target,
                target_format,
                internal_name if entry is not None else None,
                required,
                entry,
                tuple(frozen),
                overlay,
            )
        )
    if not copies or first_dir is None:
        raise VirtError(f"{quoted(dom.name())} has no disks to clone.")

    nvram: tuple[str, str] | None = None
    nvram_source = nvram_path(source_xml)
    if nvram_source and os.path.exists(nvram_source):
        nvram_target = os.path.join(first_dir, f"{file_stem(name)}_VARS.fd")
        _refuse_taken(nvram_target)
        nvram = (_absolute(nvram_source, "the UEFI variables"), nvram_target)

    if description is None:
        origin = f"snapshot '{request.snapshot}'" if request.snapshot else "its state at the time"
        description = (
            f"{'Linked' if request.linked else 'Full'} clone of '{dom.name()}' from {origin}, "
            f"made by vmsnapgui on {time.strftime('%Y-%m-%d %H:%M')}."
        )
    clone_xml = clone_domain_xml(
        source_xml,
        name,
        {c.target_dev: ClonedDisk(c.target, c.target_format) for c in copies},
        nvram=nvram[1] if nvram else None,
        description=description,
    )
    required = sum(c.required_bytes for c in copies)
    available = _check_space(copies, first_dir, check_space)
    return ClonePlan(
        dom.name(),
        name,
        request.linked,
        tuple(copies),
        clone_xml,
        nvram,
        required,
        available,
        tuple(warnings),
        source_uuid=uuid,
        source_running=running,
        snapshot=request.snapshot,
        snapshot_created=created,
        exact_folders=frozenset(exact),
    )


def _absolute(path: str, what: str) -> str:
    """``path`` made absolute, so that qemu-img never reads a name as a protocol."""
    try:
        return os.path.abspath(path)
    except (OSError, ValueError) as exc:
        raise VirtError(f"The path of {what} cannot be used: {exc}.") from None


def _path_text(path: str) -> str:
    return shortened(path, _PATH_TEXT_LIMIT)


def _check_folder(folder: str, exact: bool) -> None:
    """Refuse, in one sentence, a folder the clone's files cannot go into.

    ``exact``: the folder is taken as named and must not be a symlink (say where it
    points, so the user can name the real folder).
    """
    shown = _path_text(folder)
    try:
        info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode):
            if exact:
                try:
                    points_to = os.readlink(folder)
                except OSError:
                    points_to = "somewhere else"
                raise VirtError(
                    f"The folder {shown} is a symbolic link to {_path_text(points_to)}; "
                    "name the real folder if the clone's disks should go there."
                )
            info = os.stat(folder)
    except FileNotFoundError:
        raise VirtError(f"The folder {shown} does not exist.") from None
    except NotADirectoryError:
        raise VirtError(
            f"The folder {shown} does not exist (a part of its path is a file)."
        ) from None
    except OSError as exc:
        raise _path_error(exc, folder, "folder") from None
    if not stat.S_ISDIR(info.st_mode):
        if stat.S_ISREG(info.st_mode):
            raise VirtError(f"{shown} is a file, not a folder.")
        raise VirtError(f"{shown} is not a folder.")
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError as exc:
        raise _path_error(exc, folder, "folder") from None
    if read_only:
        raise VirtError(f"The folder {shown} is read-only (its file system is mounted read-only).")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VirtError(f"You cannot write in {shown}.")


def _path_error(exc: OSError, path: str, what: str) -> VirtError:
    shown = _path_text(path)
    if exc.errno == errno.ENAMETOOLONG:
        return VirtError(
            f"The {what} name {shown} is too long for this computer "
            "(at most 255 bytes for each name in a path).",
            detail=str(exc),
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return VirtError(f"You cannot use the {what} {shown}: permission denied.", str(exc))
    return VirtError(
        f"The {what} {shown} cannot be used: {(exc.strerror or str(exc)).lower()}.", str(exc)
    )


def _refuse_taken(path: str) -> None:
    """Refuse a path where anything is already (a file, a dangling symlink)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _path_error(exc, path, "file") from None
    raise VirtError(f"The file {_path_text(path)} exists already; choose another name or folder.")


def _check_space(copies: Sequence[DiskCopy], first_dir: str, check: bool) -> int | None:
    """Free bytes where the first disk goes; refuses (when ``check``) a file system that
    cannot hold its disks and the margin, saying which of the two does not fit."""
    by_device: dict[int, tuple[str, int]] = {}
    for copy in copies:
        folder = os.path.dirname(copy.target)
        device = os.stat(folder).st_dev
        known_folder, amount = by_device.get(device, (folder, 0))
        by_device[device] = (known_folder, amount + copy.required_bytes)
    available: int | None = None
    for folder, required in by_device.values():
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        if folder == first_dir:
            available = free
        if not check:
            continue
        shown = _path_text(folder)
        if required > free:
            raise VirtError(
                f"The clone needs {format_bytes(required)} but only {format_bytes(free)} "
                f"is free in {shown}."
            )
        if required + SPACE_MARGIN > free:
            raise VirtError(
                f"The clone needs {format_bytes(required)}, and {format_bytes(SPACE_MARGIN)} "
                f"more must stay free as a margin for the rest of the system, but only "
                f"{format_bytes(free)} is free in {shown}."
            )
    return available


def _frozen_image(overlay: str, snapshot: str) -> tuple[str, str]:
    """The image an external snapshot's overlay stands on (its frozen state) and its format,
    as the overlay's own header says."""
    layout = _layout(overlay)
    backing = resolve_backing_path(overlay, layout.backing_file or "")
    if not layout.backing_file:
        raise VirtError(
            f"The overlay {_path_text(overlay)} has no backing file; snapshot "
            f"{quoted(snapshot)} cannot be cloned."
        )
    if backing is None:
        raise VirtError(
            f"The overlay {_path_text(overlay)} stands on {quoted(layout.backing_file)}, "
            "which is not a file on this computer; only file disks can be cloned."
        )
    if not layout.backing_format:
        # Guessing would read a raw disk whose guest wrote a qcow2 header as qcow2.
        raise VirtError(
            f"The overlay {_path_text(overlay)} does not record the format of its backing "
            f"file {_path_text(backing)}, so snapshot {quoted(snapshot)} cannot be "
            "cloned safely."
        )
    return backing, layout.backing_format


def _layout(path: str) -> Qcow2Layout:
    # Imported here: the qcow2 reader brings numpy, which the window's start must not wait for.
    from vmsnapgui.core.qcow2 import Qcow2Error, read_layout

    try:
        with FileByteSource(path) as source:
            return read_layout(source)
    except OSError as exc:
        raise VirtError(
            f"The disk image {_path_text(path)} cannot be read: "
            f"{(exc.strerror or str(exc)).lower()}.",
            detail=str(exc),
        ) from None
    except Qcow2Error as exc:
        raise VirtError(
            f"The disk image {_path_text(path)} cannot be read as qcow2: {exc.message}",
            detail=exc.detail,
        ) from None


def _frozen_chain(image: str, fmt: str) -> list[FileState]:
    """``image`` and every backing file below it, as they are now."""
    chain: list[FileState] = []
    path, path_format = image, fmt
    for _ in range(_MAX_CHAIN):
        try:
            chain.append(FileState.of(path))
        except OSError as exc:
            raise _path_error(exc, path, "disk image") from None
        if path_format != "qcow2":
            return chain
        layout = _layout(path)
        if not layout.backing_file:
            return chain
        below = resolve_backing_path(path, layout.backing_file)
        if below is None:
            raise VirtError(
                f"The disk image {_path_text(path)} stands on {quoted(layout.backing_file)}, "
                "which is not a file on this computer; only file disks can be cloned."
            )
        path, path_format = below, layout.backing_format or "raw"
    raise VirtError(f"The backing chain of {_path_text(image)} is too deep (a loop?).")


def _internal_entry(image: str, name: str) -> Qcow2Snapshot:
    """The one entry called ``name`` in the image's snapshot table."""
    entries = [e for e in _layout(image).snapshots if e.name == name]
    if not entries:
        raise VirtError(
            f"The disk image {_path_text(image)} holds no internal snapshot called "
            f"{quoted(name)}, although libvirt lists one; it cannot be cloned."
        )
    if len(entries) > 1:
        raise VirtError(
            f"The disk image {_path_text(image)} holds {len(entries)} internal snapshots "
            f"called {quoted(name)}, so which one libvirt means is unknown; it is not cloned."
        )
    return entries[0]


def _entry_key(entry: Qcow2Snapshot) -> tuple[object, ...]:
    """What tells one internal snapshot from another taken later under the same name."""
    return (
        entry.id,
        entry.name,
        entry.date_sec,
        entry.date_nsec,
        entry.vm_clock_nsec,
        entry.l1_table_offset,
        entry.l1_size,
    )


def qemu_option_value(value: str) -> str:
    """``value`` for a QEMU option string: commas doubled, as QEMU's parser reads them."""
    return value.replace(",", ",,")


def _snapshot_option(entry: Qcow2Snapshot) -> str:
    """``-l`` selecting exactly this entry: by its id, and its name must match too."""
    return (
        f"snapshot.id={qemu_option_value(entry.id)},snapshot.name={qemu_option_value(entry.name)}"
    )


def _measure(
    source: str, fmt: str, target_format: str, entry: Qcow2Snapshot | None, running: bool
) -> int:
    """The bytes the copy will take (``qemu-img measure``), for space checks and progress."""
    argv = ["qemu-img", "measure", "--output=json", "-O", target_format, "-f", fmt]
    if running:
        argv.append("-U")
    if entry is not None:
        argv += ["-l", _snapshot_option(entry)]
    argv.append(source)
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, start_new_session=True
    )
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        raise VirtError(
            f"qemu-img could not measure {_path_text(source)}: {reason}",
            detail=" ".join(argv) + "\n" + result.stderr,
        )
    data = json.loads(result.stdout)
    return int(data.get("required", 0))


# --------------------------------------------------------------------------- cloning


def clone_domain(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    request: CloneRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> CloneResult:
    """Make the clone; on failure or cancel, nothing of it remains that nothing uses."""
    started = time.monotonic()
    plan = plan_clone(loader, domain, request)
    owned: list[FileIdentity] = []
    # Until defineXML is sent, the host has never heard of the new files.
    try:
        _copy_disks(plan, owned, progress, cancel)
        if cancel is not None:
            cancel.raise_if_cancelled()
        conn = _check_source(loader, plan, progress)
        _check_ours(owned)
    except BaseException as exc:
        _note_kept(exc, _discard_unannounced(loader, owned))
        raise
    progress(Progress("Defining the new VM", can_cancel=False))
    defined, conn, note = _define(loader, conn, plan, owned, progress)
    if plan.linked:
        # The clone now stands on the snapshot's files; check once more that they are
        # still the snapshot's (closing the moment between the check and the define).
        try:
            conn = _check_source(loader, plan, progress, conn)
        except UserError as exc:
            _undo_define(loader, defined, plan, owned, exc, progress)
            raise
    try:
        uuid = defined.UUIDString()
    except libvirt.libvirtError:
        uuid = ""
    _refresh_pools(conn, {os.path.dirname(c.target) for c in plan.disks})
    started_ok = False
    if request.start:
        started_ok, start_note = _start(loader, defined, plan, progress)
        note = " ".join(n for n in (note, start_note) if n) or None
    progress(Progress("Done", 1, 1, "steps"))
    return CloneResult(
        plan.new_name,
        uuid,
        tuple(i.path for i in owned),
        started_ok,
        time.monotonic() - started,
        note,
    )


def _copy_disks(
    plan: ClonePlan,
    owned: list[FileIdentity],
    progress: ProgressCallback,
    cancel: CancelToken | None,
) -> None:
    """Fill each new file under a private name, then link it into place; ``owned``
    grows as files appear (the private name first, the final one once linked)."""
    total = max(plan.required_bytes, 1)
    folders: dict[str, int] = {}
    try:
        done_before = 0
        for index, copy in enumerate(plan.disks, start=1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            # Taken since planning: fail now rather than after the whole copy.
            _refuse_taken(copy.target)
            phase = f"Copying disk {copy.target_dev} ({index} of {len(plan.disks)})"
            fd = _create_partial_file(copy.target, plan, folders, owned)
            try:
                if plan.linked:
                    argv = [
                        "qemu-img",
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-F",
                        copy.source_format,
                        "-b",
                        copy.source,
                        f"/proc/self/fd/{fd}",
                    ]
                    _run_qemu_img(argv, fd, copy.target, cancel)
                    progress(Progress(phase, index, len(plan.disks), "steps", True))
                else:
                    argv = ["qemu-img", "convert", "-p", "-O", copy.target_format]
                    if plan.source_running:
                        argv.append("-U")  # in use: read without taking its lock
                    if copy.snapshot_entry is not None:
                        argv += ["-l", _snapshot_option(copy.snapshot_entry)]
                    argv += ["-f", copy.source_format, copy.source, f"/proc/self/fd/{fd}"]

                    def report(
                        fraction: float,
                        base: int = done_before,
                        size: int = copy.required_bytes,
                        label: str = phase,
                    ) -> None:
                        progress(Progress(label, base + int(size * fraction), total, "bytes", True))

                    report(0.0)
                    _run_qemu_img(argv, fd, copy.target, cancel, report)
                    done_before += copy.required_bytes
                _finish_file(fd, copy.target, like=copy.source)
            finally:
                os.close(fd)
            _link_into_place(copy.target, folders, owned)
        if plan.nvram is not None:
            source, target = plan.nvram
            _refuse_taken(target)
            fd = _create_partial_file(target, plan, folders, owned)
            try:
                _copy_bytes(source, fd, target)
                _finish_file(fd, target, like=source)
            finally:
                os.close(fd)
            _link_into_place(target, folders, owned)
    finally:
        for folder_fd in folders.values():
            os.close(folder_fd)


def partial_name(name: str) -> str:
    """The private name a new file ``name`` is written under until it is complete:
    hidden, unique, never a name libvirt or the user gave anything."""
    return f".{name}.partial-{secrets.token_hex(4)}"


def _create_partial_file(
    path: str, plan: ClonePlan, folders: dict[str, int], owned: list[FileIdentity]
) -> int:
    """Create the file that becomes ``path`` under a new private name beside it, never
    through a symlink, private (0600) until complete. Returns its descriptor; its
    identity (under the private name) is added to ``owned``."""
    folder, name = os.path.split(path)
    folder_fd = folders.get(folder)
    if folder_fd is None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if folder in plan.exact_folders:
            flags |= os.O_NOFOLLOW
        try:
            folder_fd = os.open(folder, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise VirtError(
                    f"The folder {_path_text(folder)} became a symbolic link; the clone was "
                    "not made."
                ) from None
            raise _path_error(exc, folder, "folder") from None
        folders[folder] = folder_fd
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _attempt in range(8):
        partial = partial_name(name)
        try:
            fd = os.open(partial, flags, 0o600, dir_fd=folder_fd)
            break
        except FileExistsError:
            continue  # another's file, by a chance of one in four billion: draw again
        except OSError as exc:
            raise _path_error(exc, path, "file") from None
    else:
        raise VirtError(f"No private name for {_path_text(path)} could be made in its folder.")
    info = os.fstat(fd)
    owned.append(FileIdentity(os.path.join(folder, partial), info.st_dev, info.st_ino))
    return fd


def _link_into_place(path: str, folders: dict[str, int], owned: list[FileIdentity]) -> None:
    """Give the complete file (the last in ``owned``, under its private name) its final
    name ``path``. A link never replaces anything: whatever took the name meanwhile (a
    file, a symlink) stays, and the clone fails."""
    folder, name = os.path.split(path)
    folder_fd = folders[folder]
    partial = owned[-1]
    partial_base = os.path.basename(partial.path)
    try:
        os.link(
            partial_base, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=False
        )
    except FileExistsError:
        raise VirtError(
            f"The file {_path_text(path)} exists already; choose another name or folder."
        ) from None
    except OSError as exc:
        raise _path_error(exc, path, "file") from None
    owned[-1] = FileIdentity(path, partial.device, partial.inode)
    try:
        still = os.lstat(partial_base, dir_fd=folder_fd)
        if (still.st_dev, still.st_ino) == (partial.device, partial.inode):
            os.unlink(partial_base, dir_fd=folder_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # The disk is complete under its name; a second name is only untidy.
        _log.warning("could not remove %s: %s", partial.path, exc)


def _finish_file(fd: int, path: str, *, like: str) -> None:
    """Make the complete file durable, then give it the owner and mode of ``like`` (the
    file it copies or stands on), never the umask's; the owner can always read and write
    it, as a disk must be."""
    try:
        os.fsync(fd)
        source = os.stat(like)
        with contextlib.suppress(PermissionError):
            os.fchown(fd, source.st_uid, source.st_gid)
        os.fchmod(fd, (stat.S_IMODE(source.st_mode) & 0o777) | 0o600)
    except OSError as exc:
        raise VirtError(
            f"Finishing {_path_text(path)} failed: {(exc.strerror or str(exc)).lower()}.",
            detail=str(exc),
        ) from None


def _copy_bytes(source: str, fd: int, target: str) -> None:
    """Copy the file ``source`` into the open new file ``fd``."""
    try:
        with open(source, "rb") as reader:
            while chunk := reader.read(1024 * 1024):
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(
                f"The disk filled up while copying: no space is left in "
                f"{_path_text(os.path.dirname(target))}.",
                detail=str(exc),
            ) from None
        raise VirtError(
            f"Copying {_path_text(source)} failed: {(exc.strerror or str(exc)).lower()}.",
            detail=str(exc),
        ) from None


def _run_qemu_img(
    argv: list[str],
    fd: int,
    target: str,
    cancel: CancelToken | None,
    report: Callable[[float], None] | None = None,
) -> None:
    """Run qemu-img writing to the open file ``fd`` (``target``), passing its ``-p``
    percentages on; terminate it when cancelled.

    It runs in a session of its own: a terminal's Ctrl+C reaches only vmsnap, which
    cancels and cleans up, instead of killing qemu-img under it.
    """
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(fd,),
        start_new_session=True,
    ) as process:
        unregister = cancel.on_cancel(process.terminate) if cancel is not None else None
        try:
            assert process.stdout is not None and process.stderr is not None
            buffer = b""
            while chunk := os.read(process.stdout.fileno(), 4096):
                buffer = (buffer + chunk)[-256:]
                matches = _PERCENT.findall(buffer)
                if matches and report is not None:
                    report(float(matches[-1]) / 100)
            stderr = process.stderr.read().decode(errors="replace")
            code = process.wait()
        except BaseException:
            # Interrupted here (a KeyboardInterrupt, a failing progress callback):
            # stop qemu-img first, so the clean-up never races its writes.
            process.terminate()
            raise
        finally:
            if unregister is not None:
                unregister()
    if cancel is not None and cancel.cancelled:
        raise Cancelled("Cancelled; the clone's files were removed.")
    if code != 0:
        detail = " ".join(argv) + f"\n(writing {target})\n" + stderr
        if "No space left on device" in stderr:
            raise UserError(
                "The disk filled up while copying: no space is left in "
                f"{_path_text(os.path.dirname(target))}.",
                detail=detail,
            )
        last_line = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        raise UserError(f"Copying the disk failed: {last_line}", detail=detail)


# --------------------------------------------------------------------------- checking


def _check_source(
    loader: SnapshotLoader,
    plan: ClonePlan,
    progress: ProgressCallback,
    conn: libvirt.virConnect | None = None,
) -> libvirt.virConnect:
    """Raise :class:`SourceChanged` unless what was read is still what was meant.

    Asks the host (waiting for it when the connection was lost meanwhile) and reads the
    files again. Returns the live connection it asked.
    """
    what = f"snapshot {quoted(plan.snapshot)}" if plan.snapshot else quoted(plan.source_domain)
    progress(Progress(f"Checking that {what} did not change during the copy", can_cancel=False))
    doing = f"checking that {what} did not change during the copy"
    if conn is None:
        conn = _live_conn(loader, doing, progress)
    try:
        _check_host(conn, plan)
    except libvirt.libvirtError as exc:
        if not is_connection_lost(exc):
            raise explain(exc, doing) from None
        conn = _reconnected(loader, exc, doing, progress)
        try:
            _check_host(conn, plan)
        except libvirt.libvirtError as again:
            raise explain(again, doing) from None
    _check_files(plan)
    return conn


def _live_conn(
    loader: SnapshotLoader, doing: str, progress: ProgressCallback
) -> libvirt.virConnect:
    """The connection, waiting for the host when it was found lost meanwhile."""
    try:
        return loader.connection.conn
    except VirtError as lost:
        progress(Progress(f"Waiting for the host to answer again, {doing}", can_cancel=False))
        try:
            return loader.connection.reopen(RECONNECT_SECONDS)
        except VirtError as away:
            raise VirtError(
                f"The connection to the host was lost and it has not answered again, so "
                f"{doing} was impossible; the clone was not made.",
                detail=f"{lost.message}\n{away.message}",
            ) from None


def _reconnected(
    loader: SnapshotLoader, exc: libvirt.libvirtError, doing: str, progress: ProgressCallback
) -> libvirt.virConnect:
    """The connection again after ``exc`` lost it (no files were named to the host yet)."""
    try:
        return _host_again(loader, exc, doing, (), progress)
    except OutcomeUnknown as away:
        raise VirtError(
            f"The connection to the host was lost while {doing} and it has not answered "
            "again; the clone was not made.",
            detail=away.detail,
        ) from None


def _host_again(
    loader: SnapshotLoader,
    exc: libvirt.libvirtError,
    doing: str,
    files: Sequence[str],
    progress: ProgressCallback,
) -> libvirt.virConnect:
    """:func:`~vmsnapgui.virt.recovery.host_after_failure`, also when the error did not
    look like a lost connection but the connection was found lost meanwhile (a window's
    connection notices a dead host on its own): then too, wait for the host."""
    try:
        return host_after_failure(loader.connection, exc, doing, files, progress)
    except OutcomeUnknown:
        raise
    except VirtError:
        pass
    progress(Progress(f"Waiting for the host to answer again, {doing}", can_cancel=False))
    return wait_for_host(loader.connection, doing, files, explain(exc).detail)


def _check_host(conn: libvirt.virConnect, plan: ClonePlan) -> None:
    """The host's side: the VM and the snapshot are still the ones the copy read."""
    vm = quoted(plan.source_domain)
    try:
        dom = conn.lookupByUUIDString(plan.source_uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise SourceChanged(
                f"The virtual machine {vm} was removed while it was being copied, so the "
                "clone was not made."
            ) from None
        raise
    if plan.snapshot is None:
        state, _reason = dom.state(0)
        if DomainState.from_code(state).is_active:
            raise SourceChanged(
                f"The virtual machine {vm} was started while its disks were being copied, so "
                "the copy may not be consistent; the clone was not made."
            )
        return
    name = quoted(plan.snapshot)
    try:
        snapshot = dom.snapshotLookupByName(plan.snapshot, 0)
        xml = snapshot.getXMLDesc(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise SourceChanged(
                f"Snapshot {name} was deleted while it was being copied, so the copy may not "
                "hold its data; the clone was not made."
            ) from None
        raise
    record = parse_snapshot_xml(xml, plan.snapshot)
    files = {d.target: d.file for d in record.disks}
    replaced = record.created != plan.snapshot_created or any(
        copy.overlay is not None and normal_path(files.get(copy.target_dev) or "") != copy.overlay
        for copy in plan.disks
    )
    if replaced:
        raise SourceChanged(
            f"Snapshot {name} was replaced by another one of the same name while it was "
            "being copied, so the copy may not hold its data; the clone was not made."
        )


def _check_files(plan: ClonePlan) -> None:
    """The files' side: internal entries, frozen files and overlays as they were."""
    name = quoted(plan.snapshot) if plan.snapshot else ""
    for copy in plan.disks:
        if copy.snapshot_entry is not None:
            try:
                now = [
                    e for e in _layout(copy.source).snapshots if e.name == copy.snapshot_entry.name
                ]
            except VirtError:
                now = []
            if len(now) != 1 or _entry_key(now[0]) != _entry_key(copy.snapshot_entry):
                raise SourceChanged(
                    f"Snapshot {name} was deleted or changed inside {_path_text(copy.source)} "
                    "while it was being copied, so the copy may not hold its data; the clone "
                    "was not made."
                )
        for frozen in copy.frozen:
            if not frozen.unchanged():
                if plan.snapshot is None:
                    raise SourceChanged(
                        f"The disk image {_path_text(frozen.path)} of "
                        f"{quoted(plan.source_domain)} changed while it was being copied, so "
                        "the copy may not be consistent; the clone was not made."
                    )
                raise SourceChanged(
                    f"The file {_path_text(frozen.path)}, which holds snapshot {name}, changed "
                    "while it was being copied (merged or written by another program), so the "
                    "copy may not hold the snapshot's data; the clone was not made."
                )
        if copy.overlay is not None:
            try:
                layout = _layout(copy.overlay)
                below = resolve_backing_path(copy.overlay, layout.backing_file or "")
            except VirtError:
                below = None
            if below is None or normal_path(below) != normal_path(copy.source):
                raise SourceChanged(
                    f"Snapshot {name} was merged while it was being copied (its overlay "
                    f"{_path_text(copy.overlay)} no longer stands on {_path_text(copy.source)}), "
                    "so the copy may not hold its data; the clone was not made."
                )


def _check_ours(owned: Sequence[FileIdentity]) -> None:
    """Each new file is still at its path (nobody renamed it or put another there)."""
    for identity in owned:
        if not identity.is_same_file():
            raise VirtError(
                f"The new file {_path_text(identity.path)} was moved or replaced by another "
                "program while the clone was being made; the clone was not made."
            )


# --------------------------------------------------------------------------- defining


def _define(
    loader: SnapshotLoader,
    conn: libvirt.virConnect,
    plan: ClonePlan,
    owned: list[FileIdentity],
    progress: ProgressCallback,
) -> tuple[libvirt.virDomain, libvirt.virConnect, str | None]:
    """Define the clone. After a lost connection, ask the host (once it answers) whether
    the clone exists before removing anything; when it does not answer, leave the files."""
    doing = f"defining {quoted(plan.new_name)}"
    try:
        return conn.defineXML(plan.domain_xml), conn, None
    except libvirt.libvirtError as exc:
        failure = exc
    files = [i.path for i in owned]
    conn = _host_again(loader, failure, doing, files, progress)
    try:
        # Whatever the error said, the host may have made the clone before it: look.
        found = _find_clone(conn, plan)
        if found is not None:
            return (
                found,
                conn,
                "The connection to the host dropped as the clone was defined, but the "
                "host had made it.",
            )
        removals = remove_unused(conn, owned, local=True)
    except libvirt.libvirtError as again:
        raise OutcomeUnknown(
            f"Defining {quoted(plan.new_name)} failed, and then the host could not be asked "
            f"whether it had made it ({explain(again).message.rstrip('.')}). Nothing was "
            f"removed; these files may belong to it: {', '.join(files)}.",
            detail=explain(failure).detail,
        ) from None
    error = explain(failure, doing)
    if is_connection_lost(failure):
        message = (
            f"The connection to the host was lost while defining {quoted(plan.new_name)}; "
            "the host has not recorded it, so the clone was not made."
        )
    else:
        message = error.message
    if removals and all(r.removed for r in removals):
        message += " Its new files were removed."
    message += kept_files_sentence(removals)
    raise VirtError(message, detail=error.detail, code=error.code)


def _find_clone(conn: libvirt.virConnect, plan: ClonePlan) -> libvirt.virDomain | None:
    """The clone, if the host made it: a VM by its name whose disks are the new files."""
    try:
        dom = conn.lookupByName(plan.new_name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    disks = {
        normal_path(d.source)
        for d in domain_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        if d.source
    }
    if all(normal_path(c.target) in disks for c in plan.disks):
        return dom
    return None


def _undo_define(
    loader: SnapshotLoader,
    defined: libvirt.virDomain,
    plan: ClonePlan,
    owned: list[FileIdentity],
    error: UserError,
    progress: ProgressCallback,
) -> None:
    """Undefine the clone just made and remove its unused files; the outcome is added
    to ``error``'s message."""
    doing = f"removing {quoted(plan.new_name)} again"
    try:
        try:
            defined.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            if is_connection_lost(exc):
                conn = _host_again(loader, exc, doing, (), progress)
                defined = conn.lookupByName(plan.new_name)
                defined.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            elif exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                defined.undefine()
        conn = _live_conn(loader, doing, progress)
        removals = remove_unused(conn, owned, local=True)
    except (libvirt.libvirtError, UserError) as exc:
        reason = exc.message if isinstance(exc, UserError) else explain(exc).message
        _extend(
            error,
            f" It could not be removed again ({reason.rstrip('.')}); remove the VM "
            f"{quoted(plan.new_name)} and its files yourself.",
        )
        return
    _extend(error, kept_files_sentence(removals))


def _start(
    loader: SnapshotLoader, dom: libvirt.virDomain, plan: ClonePlan, progress: ProgressCallback
) -> tuple[bool, str | None]:
    """Start the clone; it was made whatever happens here, so nothing is removed."""
    name = quoted(plan.new_name)
    progress(Progress(f"Starting {name}", can_cancel=False))
    try:
        dom.create()
        return True, None
    except libvirt.libvirtError as exc:
        failure = exc
    if is_connection_lost(failure):
        try:
            conn = _host_again(loader, failure, f"starting {name}", (), progress)
            running = conn.lookupByName(plan.new_name).isActive()
        except (OutcomeUnknown, libvirt.libvirtError):
            raise OutcomeUnknown(
                f"The clone {name} was made, but the connection to the host was lost while "
                "starting it, so whether it runs is unknown.",
                detail=explain(failure).detail,
            ) from None
        if running:
            return True, "The connection to the host dropped as the clone started."
        raise VirtError(
            f"The clone {name} was made, but the connection to the host was lost while "
            "starting it and the host says it is not running.",
            detail=explain(failure).detail,
        )
    error = explain(failure, f"starting {name}")
    raise VirtError(
        f"The clone {name} was made but did not start: {error.message}",
        detail=error.detail,
    )


# --------------------------------------------------------------------------- cleaning up


def _discard_unannounced(loader: SnapshotLoader, owned: Sequence[FileIdentity]) -> list[Removal]:
    """Remove the new files of a clone that was never defined.

    The host never heard of them; it is still asked what it uses (a file that something
    names is never removed), but when it cannot answer (the connection is gone), each
    file is removed as long as it is unchanged and no process holds it: qemu-img has
    ended, and nothing else was ever told the name.
    """
    if not owned:
        return []
    try:
        references = read_host_references(loader.connection.conn, local=True)
    except (UserError, libvirt.libvirtError):
        references = HostReferences(local=True)
    return [remove_owned(identity, references) for identity in owned]


def _note_kept(exc: BaseException, removals: Sequence[Removal]) -> None:
    """Add to a failure's message the files that had to stay, and why."""
    kept = kept_files_sentence(removals)
    if kept and isinstance(exc, UserError):
        _extend(exc, kept)
    elif kept:
        _log.warning("after %r:%s", exc, kept)


def _extend(error: UserError, sentence: str) -> None:
    if sentence:
        error.message += sentence
        error.args = (error.message,)


# --------------------------------------------------------------------------- folders


def clone_folders(loader: SnapshotLoader) -> list[CloneFolder]:
    """The host's active storage pools that are folders, by name, with their free space."""
    conn = loader.connection.conn
    try:
        pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    except libvirt.libvirtError as exc:
        raise explain(exc, "listing the storage pools") from None
    folders = []
    for pool in pools:
        try:
            path = _pool_folder(pool)
            if path is None:
                continue
            # What the copy can really use: libvirt counts the blocks reserved for
            # root as free too (seen here: 245 GB "available" on a disk with 84 GB).
            stats = os.statvfs(path)
            available = stats.f_bavail * stats.f_frsize
            folders.append(CloneFolder(str(pool.name()), path, available))
        except (libvirt.libvirtError, ET.ParseError, OSError):
            continue  # a pool that went away or cannot be read is simply not offered
    return sorted(folders, key=lambda f: f.pool.casefold())


def _pool_folder(pool: libvirt.virStoragePool) -> str | None:
    """The folder a pool keeps its volumes in; None when its volumes are not files."""
    root = ET.fromstring(pool.XMLDesc(0))
    path = root.findtext("./target/path")
    return path if root.get("type") in _FOLDER_POOL_TYPES and path else None


def clone_refusal_for(uri: str) -> str | None:
    """Why VMs behind ``uri`` cannot be cloned here, or None when they can."""
    host = urlsplit(uri).hostname
    if host not in (None, "", "localhost", "127.0.0.1", "::1") or uri.startswith("test:"):
        return (
            "Cloning copies disk files with qemu-img on this computer, so it works only for "
            "VMs on this computer's libvirt."
        )
    return None


def _require_local(loader: SnapshotLoader) -> None:
    refusal = clone_refusal_for(loader.connection.display_uri)
    if refusal is not None:
        raise VirtError(refusal)


def _refresh_pools(conn: libvirt.virConnect, directories: set[str]) -> None:
    """Let storage pools over these folders see the new files (best effort)."""
    try:
        pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    except libvirt.libvirtError:
        return
    wanted = {os.path.normpath(d) for d in directories}
    for pool in pools:
        try:
            path = _pool_folder(pool)
            if path and os.path.normpath(path) in wanted:
                pool.refresh(0)
        except (libvirt.libvirtError, ET.ParseError):
            continue
