"""Linked clones: which VM's disks stand on another VM's files, worked out from plain data.

A linked clone's disk is an overlay whose backing chain goes down into a file that
belongs to another VM: usually the frozen image of one of its external snapshots (what
``vmsnap clone --linked`` makes), sometimes that VM's live disk (``qemu-img create -b``
by hand). Deleting or committing that snapshot changes the clone's disk, so the window
and ``vmsnap list`` show the relation both ways (issue 11: "Show linked clones as
linked").

Who a file belongs to comes from each VM's own records: the disk sources of its
definitions, and for each external snapshot the overlay it started and the image that
froze (the disk source of the definition the snapshot recorded). The chains themselves
come from ``virt/linked_clones.py`` (image headers on this computer, libvirt's XML
elsewhere); this module only reads XML and matches paths.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vmsnapgui.core.domain_xml import domain_disks
from vmsnapgui.core.file_references import normal_path
from vmsnapgui.core.quoting import quoted, shortened
from vmsnapgui.core.snapshot import DiskKind, Snapshot
from vmsnapgui.core.snapshot_xml import embedded_domain_xml

# A chain in XML deeper than this is a loop or hostile input, not a real VM.
MAX_CHAIN = 4096


class LayerRole(enum.StrEnum):
    """What a file is to the VM that owns it."""

    SNAPSHOT = "snapshot"  # the image that froze when the snapshot was taken
    DISK = "disk"  # the file the VM writes to now
    OVERLAY = "overlay"  # an overlay a snapshot started, no longer written to


# When two of a VM's records name the same file, the most telling one describes it.
_ROLE_ORDER = {LayerRole.SNAPSHOT: 0, LayerRole.DISK: 1, LayerRole.OVERLAY: 2}


@dataclass(frozen=True, slots=True)
class DiskChain:
    """One disk of a VM: the file it writes to, then its backing files, top down."""

    target: str
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OwnedFile:
    """``path`` is one of ``vm``'s own layers: its disk ``disk`` now (DISK), the image
    its snapshot ``snapshot`` froze (SNAPSHOT), or an overlay that snapshot started."""

    path: str
    vm: str
    role: LayerRole
    disk: str
    snapshot: str | None = None


@dataclass(frozen=True, slots=True)
class VmFiles:
    """What the matching needs to know about one VM."""

    name: str
    chains: tuple[DiskChain, ...] = ()
    owned: tuple[OwnedFile, ...] = ()


@dataclass(frozen=True, slots=True)
class BackingLink:
    """Disk ``disk`` of VM ``clone`` stands on ``file``, one of ``source``'s layers."""

    clone: str
    disk: str
    source: str
    role: LayerRole
    file: str
    source_disk: str
    snapshot: str | None = None


@dataclass(frozen=True, slots=True)
class HostLinks:
    """Every linked clone on one host, and why the answer may be incomplete."""

    links: tuple[BackingLink, ...] = ()
    notes: tuple[str, ...] = ()
    from_images: bool = False
    """True when backing chains were read from the image files themselves (this
    computer); False when only libvirt's XML could be asked (a remote host)."""
    _by_clone: dict[str, tuple[BackingLink, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _by_source: dict[str, tuple[BackingLink, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_clone: dict[str, list[BackingLink]] = defaultdict(list)
        by_source: dict[str, list[BackingLink]] = defaultdict(list)
        for link in self.links:
            by_clone[link.clone].append(link)
            by_source[link.source].append(link)
        self._by_clone.update((k, tuple(v)) for k, v in by_clone.items())
        self._by_source.update((k, tuple(v)) for k, v in by_source.items())

    def stands_on(self, vm: str) -> tuple[BackingLink, ...]:
        """The links that make ``vm`` a linked clone (one per disk that is)."""
        return self._by_clone.get(vm, ())

    def clones_of(self, vm: str) -> tuple[BackingLink, ...]:
        """The other VMs' disks that stand on ``vm``'s files."""
        return self._by_source.get(vm, ())

    def clones_of_snapshot(self, vm: str, snapshot: str) -> tuple[BackingLink, ...]:
        """The other VMs' disks that stand on what ``vm``'s ``snapshot`` froze."""
        return tuple(
            link
            for link in self.clones_of(vm)
            if link.snapshot == snapshot and link.role is LayerRole.SNAPSHOT
        )


# -- reading the records --------------------------------------------------------------


def xml_disk_chains(domain_xml: str) -> list[DiskChain]:
    """Each disk's source and the backing chain libvirt's XML gives below it.

    libvirt writes ``<backingStore>`` for running VMs (and keeps what a definition
    states); a shut-off VM's definition usually names only the top file. Disks without
    a local path (network, pool volumes) are left out. Raises ``ET.ParseError`` on XML
    that is not well formed.
    """
    root = ET.fromstring(domain_xml)
    chains: list[DiskChain] = []
    for disk in root.findall("./devices/disk"):
        target_element = disk.find("target")
        target = target_element.get("dev", "") if target_element is not None else ""
        top = _source_path(disk)
        if not top:
            continue
        files = [top]
        store = disk.find("backingStore")
        while store is not None and len(files) < MAX_CHAIN:
            path = _source_path(store)
            if not path:
                break
            files.append(path)
            store = store.find("backingStore")
        chains.append(DiskChain(target, tuple(files)))
    return chains


def definition_layers(vm: str, domain_xml: str) -> list[OwnedFile]:
    """The files a VM's definition writes to now: its own layers, role DISK."""
    return [
        OwnedFile(chain.files[0], vm, LayerRole.DISK, chain.target)
        for chain in xml_disk_chains(domain_xml)
    ]


def snapshot_layers(
    vm: str, snapshot: Snapshot, below: Mapping[str, str] | None = None
) -> list[OwnedFile]:
    """The files an external snapshot made its VM's own: the image that froze when it
    was taken (the disk's source in the definition it recorded) and the overlay it
    started. Internal snapshots live inside the disk image and add nothing.

    ``below`` maps files of the VM's current chains to the file each stands on: an
    overlay found there names its frozen image without parsing the snapshot's XML
    (thousands of snapshots would otherwise be thousands of parses).
    """
    external = [d for d in snapshot.disks if d.kind is DiskKind.EXTERNAL]
    if not external:
        return []
    if below is not None and all(
        disk.file and normal_path(disk.file) in below for disk in external
    ):
        found: list[OwnedFile] = []
        for disk in external:
            overlay = normal_path(disk.file or "")
            found.append(
                OwnedFile(below[overlay], vm, LayerRole.SNAPSHOT, disk.target, snapshot.name)
            )
            found.append(OwnedFile(overlay, vm, LayerRole.OVERLAY, disk.target, snapshot.name))
        return found
    frozen = _recorded_sources(snapshot.xml)
    found = []
    for disk in external:
        # libvirt names a snapshot's disk by its target, or by its source path.
        source = frozen.get(disk.target) or next(
            (path for target, path in frozen.items() if path == normal_path(disk.target)), None
        )
        target = disk.target
        if source is not None:
            found.append(OwnedFile(source, vm, LayerRole.SNAPSHOT, target, snapshot.name))
        if disk.file:
            found.append(
                OwnedFile(normal_path(disk.file), vm, LayerRole.OVERLAY, target, snapshot.name)
            )
    return found


def _recorded_sources(snapshot_xml: str) -> dict[str, str]:
    if not snapshot_xml:
        return {}
    try:
        recorded = embedded_domain_xml(snapshot_xml)
        disks = domain_disks(recorded) if recorded else []
    except ET.ParseError:
        return {}
    return {disk.target: normal_path(disk.source) for disk in disks if disk.source}


def _source_path(element: ET.Element) -> str | None:
    source = element.find("source")
    if source is None:
        return None
    kind = element.get("type", "file")
    path = source.get("dev") if kind == "block" else source.get("file")
    return normal_path(path) if path else None


# -- matching -------------------------------------------------------------------------


def chain_below(chains: Iterable[DiskChain]) -> dict[str, str]:
    """Each file of the chains mapped to the file it stands on (for :func:`snapshot_layers`)."""
    return {
        upper: lower
        for chain in chains
        for upper, lower in zip(chain.files, chain.files[1:], strict=False)
    }


def find_links(vms: Iterable[VmFiles]) -> tuple[BackingLink, ...]:
    """For every VM, each disk whose backing chain reaches another VM's layer.

    The first file down a disk's chain that is not the VM's own and that another VM
    owns decides (what the disk stands on directly; further down is that VM's own
    history). A file that no VM owns (a template image outside every VM) links
    nothing; the walk goes on below it.
    """
    vms = list(vms)
    owners: dict[str, list[OwnedFile]] = defaultdict(list)
    for vm in vms:
        for owned in vm.owned:
            owners[owned.path].append(owned)
    links: list[BackingLink] = []
    for vm in vms:
        mine = {owned.path for owned in vm.owned}
        for chain in vm.chains:
            for path in chain.files[1:]:
                if path in mine:
                    continue
                others = [o for o in owners.get(path, ()) if o.vm != vm.name]
                if not others:
                    continue
                best = min(others, key=_preference)
                links.append(
                    BackingLink(
                        clone=vm.name,
                        disk=chain.target,
                        source=best.vm,
                        role=best.role,
                        file=path,
                        source_disk=best.disk,
                        snapshot=best.snapshot,
                    )
                )
                break
    return tuple(links)


def _preference(owned: OwnedFile) -> tuple[int, str, str]:
    return (_ROLE_ORDER[owned.role], owned.vm, owned.snapshot or "")


# -- words ----------------------------------------------------------------------------


def _vm_name(name: str) -> str:
    return shortened(name)


def _what(link: BackingLink) -> str:
    """What of its source a link stands on, from the source's point of view ("its …")."""
    if link.role is LayerRole.SNAPSHOT and link.snapshot is not None:
        return f"its snapshot {quoted(link.snapshot)}"
    if link.role is LayerRole.DISK:
        return f"its live disk {link.source_disk}, which it still writes to"
    if link.snapshot is not None:
        return f"an overlay its snapshot {quoted(link.snapshot)} started"
    return f"its file {link.file}"


def _on(link: BackingLink) -> str:
    """What a clone stands on, short, for a list of clones ("on 'base'")."""
    if link.role is LayerRole.SNAPSHOT and link.snapshot is not None:
        return f"on {quoted(link.snapshot)}"
    if link.role is LayerRole.DISK:
        return f"on the live disk {link.source_disk}"
    if link.snapshot is not None:
        return f"on an overlay of {quoted(link.snapshot)}"
    return f"on {link.file}"


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def stands_on_text(links: Sequence[BackingLink]) -> str | None:
    """One line for a linked clone: "Linked clone of web — stands on its snapshot 'base'".

    None for a VM that stands on nobody's files.
    """
    if not links:
        return None
    by_source: dict[str, list[BackingLink]] = defaultdict(list)
    for link in links:
        by_source[link.source].append(link)
    parts = []
    for source, own in by_source.items():
        whats = _unique(_what(link) for link in own)
        parts.append(f"{_vm_name(source)} — stands on {_join(whats)}")
    return "Linked clone of " + "; and of ".join(parts)


def clones_text(links: Sequence[BackingLink]) -> str | None:
    """One line for a VM others stand on: "Linked clones: web-test (on 'base')".

    None for a VM without linked clones.
    """
    if not links:
        return None
    by_clone: dict[str, list[BackingLink]] = defaultdict(list)
    for link in links:
        by_clone[link.clone].append(link)
    parts = [
        f"{_vm_name(clone)} ({', '.join(_unique(_on(link) for link in own))})"
        for clone, own in sorted(by_clone.items(), key=lambda item: item[0].casefold())
    ]
    return f"Linked clones: {', '.join(parts)}"


def vm_link_lines(links: HostLinks, vm: str) -> tuple[str, ...]:
    """What a VM's details say about linked clones: what it stands on, what stands on it."""
    found = (stands_on_text(links.stands_on(vm)), clones_text(links.clones_of(vm)))
    return tuple(line for line in found if line)


def link_details(links: HostLinks, vm: str) -> str:
    """The files behind :func:`vm_link_lines`, and why the answer may be incomplete."""
    lines = [
        f"Disk {link.disk} stands on {link.file}, a file of {_vm_name(link.source)}."
        for link in links.stands_on(vm)
    ]
    lines += [
        f"{_vm_name(link.clone)}'s disk {link.disk} stands on {link.file}."
        for link in links.clones_of(vm)
    ]
    if lines:
        lines.append(
            "Deleting or committing what a linked clone stands on would change the clone's "
            "disk: it is refused while the clone exists."
        )
    return "\n".join([*lines, *links.notes])


def short_marker(links: Sequence[BackingLink]) -> str | None:
    """A few words for a list column: "clone of web (on 'base')"."""
    if not links:
        return None
    sources = _unique(link.source for link in links)
    ons = _unique(_on(link) for link in links)
    return f"clone of {', '.join(_vm_name(s) for s in sources)} ({', '.join(ons)})"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def link_json(link: BackingLink) -> dict[str, str | None]:
    """A link as machine-readable fields (``vmsnap list --json``)."""
    return {
        "clone": link.clone,
        "disk": link.disk,
        "source": link.source,
        "kind": link.role.value,
        "snapshot": link.snapshot,
        "source_disk": link.source_disk,
        "file": link.file,
    }
