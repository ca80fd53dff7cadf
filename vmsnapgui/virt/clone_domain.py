"""Cloning a VM from one of its snapshots (or from "Now" of a shut-off VM).

- Full clone: a flattened copy of each disk as it was at the snapshot. An internal
  snapshot is read out with ``qemu-img convert -l snapshot.name=…``; for an external
  one the frozen image (the layer that became read-only when it was taken) is copied
  with its whole backing chain flattened.
- Linked clone: a new qcow2 overlay whose backing file is the snapshot's frozen image.
  Only external snapshots have such an image; the snapshot must then stay.

The clone gets a new name, a new UUID and new MAC addresses (libvirt makes them), its
disks beside the source's (or in a chosen folder). Progress counts bytes copied; cancel
or any failure removes every file and definition the clone made. ``qemu-img`` runs with
argv lists, never through a shell. Disks must be local files (this computer's libvirt).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import libvirt

from vmsnapgui.core.domain_xml import ClonedDisk, clone_domain_xml, domain_disks, nvram_path
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import (
    Cancelled,
    CancelToken,
    Progress,
    ProgressCallback,
    ignore_progress,
)
from vmsnapgui.core.snapshot import DiskKind
from vmsnapgui.core.snapshot_xml import embedded_domain_xml
from vmsnapgui.core.units import format_bytes
from vmsnapgui.core.validation import validate_description, validate_vm_name
from vmsnapgui.virt.errors import VirtError, explain
from vmsnapgui.virt.operations import (
    domain_state,
    file_stem,
    lookup_snapshot,
    remove_new_files,
    resolve_domain,
)
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

_log = logging.getLogger(__name__)
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
SPACE_MARGIN = 64 * 1024 * 1024


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
class DiskCopy:
    """One disk of the clone: read from ``source`` (at ``internal_snapshot``), write ``target``."""

    target_dev: str
    source: str
    source_format: str
    target: str
    target_format: str
    internal_snapshot: str | None
    required_bytes: int


@dataclass(frozen=True, slots=True)
class ClonePlan:
    """Everything decided before a byte is copied."""

    source_domain: str
    new_name: str
    linked: bool
    disks: tuple[DiskCopy, ...]
    domain_xml: str
    nvram: tuple[str, str] | None
    required_bytes: int
    available_bytes: int | None
    warnings: tuple[str, ...]


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
    except libvirt.libvirtError as exc:
        raise explain(exc, "listing the virtual machines") from None
    name = validate_vm_name(request.new_name, existing)
    description = validate_description(request.description) if request.description else None
    running = domain_state(dom).is_active
    warnings: list[str] = []

    internal_name: str | None = None
    external_layers: dict[str, tuple[str, str]] = {}  # target -> (frozen image, format)
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
            raise explain(exc, f"reading the definition of {dom.name()!r}") from None
    else:
        snap = lookup_snapshot(dom, request.snapshot)
        try:
            snapshot_xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        except libvirt.libvirtError as exc:
            raise explain(exc, f"reading snapshot {request.snapshot!r}") from None
        record = loader.load(dom).tree.get(request.snapshot)
        embedded = embedded_domain_xml(snapshot_xml)
        if record is None or embedded is None:
            raise VirtError(
                f"Snapshot {request.snapshot!r} does not record the VM's definition, so it "
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
                    f"Disk {disk.target} was not part of snapshot {request.snapshot!r}, so "
                    "its contents at that moment are unknown."
                )
            if recorded.kind is DiskKind.EXTERNAL:
                if not recorded.file:
                    raise VirtError(
                        f"Snapshot {request.snapshot!r} names no file for {disk.target}."
                    )
                external_layers[disk.target] = _frozen_image(recorded.file)
            elif recorded.kind is DiskKind.INTERNAL:
                internal_name = request.snapshot
        if request.linked and (internal_name is not None or not external_layers):
            raise VirtError(
                "Linked clones need an external snapshot: an internal snapshot lives inside "
                "the VM's own disk image, which keeps changing. Make a full clone instead."
            )
        if request.linked:
            warnings.append(
                f"The clone's disks stand on snapshot {request.snapshot!r}'s files: that "
                "snapshot must stay as long as the clone exists (deleting it would merge "
                "and change the files the clone reads)."
            )

    copies: list[DiskCopy] = []
    first_dir: Path | None = None
    for disk in domain_disks(source_xml):
        if not disk.snapshottable:
            continue
        if disk.source_type != "file" or not disk.source:
            raise VirtError(f"Disk {disk.target} is not a file; only file disks can be cloned.")
        source, fmt = external_layers.get(disk.target, (disk.source, disk.driver_type or "raw"))
        if not os.path.exists(source):
            raise VirtError(f"The disk image {source} of {disk.target} does not exist.")
        directory = Path(request.target_dir) if request.target_dir else Path(disk.source).parent
        first_dir = first_dir or directory
        target_format = "qcow2" if request.linked else fmt
        target = (
            directory
            / f"{file_stem(name)}-{disk.target}.{'qcow2' if target_format == 'qcow2' else 'img'}"
        )
        if target.exists():
            raise VirtError(f"The file {target} exists already; choose another name or folder.")
        snapshot_in_image = internal_name if disk.target not in external_layers else None
        required = (
            0
            if request.linked
            else _measure(source, fmt, target_format, snapshot_in_image, running)
        )
        copies.append(
            DiskCopy(
                disk.target, source, fmt, str(target), target_format, snapshot_in_image, required
            )
        )
    if not copies:
        raise VirtError(f"{dom.name()!r} has no disks to clone.")
    if first_dir is not None and not first_dir.is_dir():
        raise VirtError(f"The folder {first_dir} does not exist.")

    nvram: tuple[str, str] | None = None
    nvram_source = nvram_path(source_xml)
    if nvram_source and os.path.exists(nvram_source) and first_dir is not None:
        nvram_target = first_dir / f"{file_stem(name)}_VARS.fd"
        if nvram_target.exists():
            raise VirtError(f"The file {nvram_target} exists already.")
        nvram = (nvram_source, str(nvram_target))

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
    available = None
    if first_dir is not None:
        stats = os.statvfs(first_dir)
        available = stats.f_bavail * stats.f_frsize
        if check_space and required + SPACE_MARGIN > available:
            raise VirtError(
                f"The clone needs {format_bytes(required)} but only {format_bytes(available)} "
                f"is free in {first_dir}."
            )
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
    )


def clone_domain(
    loader: SnapshotLoader,
    domain: str | libvirt.virDomain,
    request: CloneRequest,
    progress: ProgressCallback = ignore_progress,
    cancel: CancelToken | None = None,
) -> CloneResult:
    """Make the clone; on failure or cancel, nothing of it remains."""
    started = time.monotonic()
    plan = plan_clone(loader, domain, request)
    running = domain_state(resolve_domain(loader, domain)).is_active
    created: list[Path] = []
    defined: libvirt.virDomain | None = None
    total = max(plan.required_bytes, 1)
    try:
        done_before = 0
        for index, copy in enumerate(plan.disks, start=1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            created.append(Path(copy.target))
            phase = f"Copying disk {copy.target_dev} ({index} of {len(plan.disks)})"
            if plan.linked:
                _run_qemu_img(
                    [
                        "qemu-img",
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-F",
                        copy.source_format,
                        "-b",
                        copy.source,
                        copy.target,
                    ],
                    cancel,
                )
                progress(Progress(phase, index, len(plan.disks), "steps", True))
                continue
            argv = ["qemu-img", "convert", "-p", "-O", copy.target_format]
            if running:
                argv.append("-U")  # the source is in use: read it without taking its lock
            if copy.internal_snapshot is not None:
                argv += ["-l", f"snapshot.name={copy.internal_snapshot}"]
            argv += ["-f", copy.source_format, copy.source, copy.target]

            def report(
                fraction: float,
                base: int = done_before,
                size: int = copy.required_bytes,
                label: str = phase,
            ) -> None:
                progress(Progress(label, base + int(size * fraction), total, "bytes", True))

            report(0.0)
            _run_qemu_img(argv, cancel, report)
            done_before += copy.required_bytes
        if plan.nvram is not None:
            created.append(Path(plan.nvram[1]))
            shutil.copyfile(*plan.nvram)
        if cancel is not None:
            cancel.raise_if_cancelled()
        progress(Progress("Defining the new VM", can_cancel=False))
        conn = loader.connection.conn
        try:
            defined = conn.defineXML(plan.domain_xml)
        except libvirt.libvirtError as exc:
            raise explain(exc, f"defining {plan.new_name!r}") from None
        uuid = defined.UUIDString()
        _refresh_pools(conn, {str(Path(c.target).parent) for c in plan.disks})
    except BaseException:
        _roll_back(defined, created)
        raise
    started_ok = False
    if request.start:
        progress(Progress(f"Starting {plan.new_name!r}", can_cancel=False))
        try:
            defined.create()
            started_ok = True
        except libvirt.libvirtError as exc:
            error = explain(exc, f"starting {plan.new_name!r}")
            raise VirtError(
                f"The clone {plan.new_name!r} was made but did not start: {error.message}",
                detail=error.detail,
            ) from None
    progress(Progress("Done", 1, 1, "steps"))
    return CloneResult(
        plan.new_name, uuid, tuple(str(p) for p in created), started_ok, time.monotonic() - started
    )


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


def _frozen_image(overlay: str) -> tuple[str, str]:
    """The image an external snapshot's overlay stands on (its frozen state) and its format."""
    info = _image_info(overlay)
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if not backing:
        raise VirtError(
            f"The overlay {overlay} has no backing file; its snapshot cannot be cloned."
        )
    fmt = info.get("backing-filename-format") or _image_info(str(backing)).get("format") or "raw"
    return str(backing), str(fmt)


def _image_info(path: str) -> dict[str, object]:
    result = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VirtError(f"qemu-img could not read {path}: {result.stderr.strip()}")
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _measure(source: str, fmt: str, target_format: str, snapshot: str | None, running: bool) -> int:
    """The bytes the copy will take (``qemu-img measure``), for space checks and progress."""
    argv = ["qemu-img", "measure", "--output=json", "-O", target_format, "-f", fmt]
    if running:
        argv.append("-U")
    if snapshot is not None:
        argv += ["-l", f"snapshot.name={snapshot}"]
    argv.append(source)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VirtError(f"qemu-img could not measure {source}: {result.stderr.strip()}")
    data = json.loads(result.stdout)
    return int(data.get("required", 0))


def _run_qemu_img(
    argv: list[str],
    cancel: CancelToken | None,
    report: Callable[[float], None] | None = None,
) -> None:
    """Run qemu-img, passing its ``-p`` percentages on; kill it when cancelled."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
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
        finally:
            if unregister is not None:
                unregister()
    if cancel is not None and cancel.cancelled:
        raise Cancelled("Cancelled; the clone's files were removed.")
    if code != 0:
        detail = " ".join(argv) + "\n" + stderr
        if "No space left on device" in stderr:
            folder = os.path.dirname(argv[-1]) or "."
            raise UserError(
                f"The disk filled up while copying: no space is left in {folder}.", detail=detail
            )
        last_line = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        raise UserError(f"Copying the disk failed: {last_line}", detail=detail)


def _roll_back(defined: libvirt.virDomain | None, created: list[Path]) -> None:
    if defined is not None:
        try:
            defined.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            try:
                defined.undefine()
            except libvirt.libvirtError as exc:
                _log.warning("could not undefine the partial clone: %s", exc)
    remove_new_files(created)


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
