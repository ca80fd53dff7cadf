"""Which files a domain definition or a snapshot names, and who names them.

Before anything is removed or merged, every file that something on the host still
needs is collected (DESIGN.md, "Data safety"). This module reads the definitions; the
host-wide sweep and the files' own backing chains live in ``virt/host_files.py``.

Every path is kept as written (libvirt writes absolute paths) and normalised with
``posixpath.normpath`` so that ``/a/./b`` and ``/a/b`` are the same file.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileReference:
    """``holder`` (a phrase: "disk vda of VM 'web'") needs the file at ``path``; ``vm``
    is the VM the holder belongs to (its definition or one of its snapshots)."""

    path: str
    holder: str
    vm: str = ""


def normal_path(path: str) -> str:
    """The form paths are compared in: normalised, never resolved through symlinks here."""
    return posixpath.normpath(path) if path else path


def domain_references(domain_xml: str, vm: str, *, as_of: str | None = None) -> list[FileReference]:
    """Files a domain definition uses: every disk's source and the backing chain the XML
    gives, and the UEFI variable store.

    ``as_of`` names where the definition comes from ("snapshot 'x'") for the holder text.
    Raises ``ET.ParseError`` on XML that is not well formed (a caller that cannot read
    the truth must not guess it).
    """
    root = ET.fromstring(domain_xml)
    owner = f"VM {vm!r}" if as_of is None else f"{as_of} of VM {vm!r}"
    found: list[FileReference] = []
    for disk in root.findall("./devices/disk"):
        target_element = disk.find("target")
        target = target_element.get("dev", "?") if target_element is not None else "?"
        holder = f"disk {target} of {owner}"
        path = _source_path(disk)
        if path:
            found.append(FileReference(normal_path(path), holder, vm))
        store = disk.find("backingStore")
        depth = 0
        while store is not None and depth < _MAX_XML_CHAIN:
            path = _source_path(store)
            if path:
                found.append(FileReference(normal_path(path), f"the backing chain of {holder}", vm))
            store = store.find("backingStore")
            depth += 1
    nvram = root.find("./os/nvram")
    if nvram is not None:
        path = (nvram.text or "").strip() or nvram.get("file") or ""
        if path:
            found.append(FileReference(normal_path(path), f"the UEFI variables of {owner}", vm))
    return found


def snapshot_references(snapshot_xml: str, vm: str, snapshot: str) -> list[FileReference]:
    """Files a snapshot names: each disk's file, its memory file, and the files of the
    definitions it recorded (``<domain>`` and ``<inactiveDomain>``)."""
    root = ET.fromstring(snapshot_xml)
    owner = f"snapshot {snapshot!r} of VM {vm!r}"
    found: list[FileReference] = []
    memory = root.find("memory")
    if memory is not None and memory.get("file"):
        found.append(
            FileReference(normal_path(memory.get("file", "")), f"the memory of {owner}", vm)
        )
    for disk in root.findall("./disks/disk"):
        path = _source_path(disk)
        if path:
            found.append(
                FileReference(normal_path(path), f"disk {disk.get('name', '?')} of {owner}", vm)
            )
    for tag in ("domain", "inactiveDomain"):
        recorded = root.find(tag)
        if recorded is None:
            continue
        recorded.tag = "domain"
        found.extend(
            domain_references(
                ET.tostring(recorded, encoding="unicode"), vm, as_of=f"snapshot {snapshot!r}"
            )
        )
    return found


def resolve_backing_path(image: str, backing: str) -> str | None:
    """Where a backing file named in an image's header lives; None for a protocol or
    ``json:`` name (not a local file)."""
    if not backing or backing.startswith("json:") or ":" in backing.split("/", 1)[0]:
        return None
    if posixpath.isabs(backing):
        return normal_path(backing)
    # QEMU resolves a relative name against the directory of the image naming it.
    return normal_path(posixpath.join(posixpath.dirname(image), backing))


# A chain in XML deeper than this is a loop or hostile input, not a real VM.
_MAX_XML_CHAIN = 256


def _source_path(element: ET.Element) -> str | None:
    source = element.find("source")
    if source is None:
        return None
    kind = element.get("type", "file")
    if kind == "block":
        return source.get("dev")
    if kind == "dir":
        return source.get("dir")
    if kind in ("file", ""):
        return source.get("file")
    # Network and pool-volume sources have no path on this host to protect.
    return source.get("file")
