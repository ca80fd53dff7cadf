"""Finding a host's linked clones: which VM's disks stand on which other VM's files.

Backing chains come from the image files themselves on this computer (a shut-off VM's
definition names only its top file; the chain below is written only in the qcow2
headers) and from libvirt's XML everywhere (``<backingStore>``, which libvirt gives
for running VMs). On a remote host only the XML can be asked: the answer says so in
its notes instead of guessing. The matching itself is plain data in
``core/linked_clones.py``.

Cheap first: one or two definitions per VM (and, here, a header per file). Snapshot
records are read only for VMs with a backing chain at all (on a remote host also for
VMs whose XML shows none, while some backing file is still nobody's), through the
loader (which caches them) or from trees the caller has loaded already. Blocks: run it
off the GUI thread.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field

import libvirt

from vmsnapgui.core.linked_clones import (
    MAX_CHAIN,
    DiskChain,
    HostLinks,
    LayerRole,
    OwnedFile,
    VmFiles,
    chain_below,
    definition_layers,
    find_links,
    snapshot_layers,
    xml_disk_chains,
)
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.snapshot import DiskKind
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.virt.connection import files_are_here
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.host_files import backing_file
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

_log = logging.getLogger(__name__)

REMOTE_NOTE = (
    "The host's image files are not on this computer: backing chains are read from "
    "libvirt's XML only, which names them for running VMs; a shut-off linked clone may "
    "not be shown."
)


@dataclass
class _Vm:
    dom: libvirt.virDomain
    name: str
    uuid: str
    chains: list[DiskChain] = field(default_factory=list)
    owned: list[OwnedFile] = field(default_factory=list)
    unreadable: bool = False

    @property
    def has_backing(self) -> bool:
        return any(len(chain.files) > 1 for chain in self.chains)


def read_linked_clones(
    loader: SnapshotLoader,
    *,
    trees: Mapping[str, SnapshotTree] | None = None,
    local: bool | None = None,
) -> HostLinks:
    """Every linked clone on the loader's host (see the module text).

    ``trees`` (by domain UUID) are snapshot trees the caller has loaded already; the
    others are loaded through ``loader``. ``local`` says whether the host's files are on
    this computer (worked out from the URI when not given). Raises
    :class:`~vmsnapgui.virt.errors.VirtError` when the host cannot be asked at all.
    """
    uri = loader.connection.display_uri
    here = files_are_here(uri) if local is None else local
    conn = loader.connection.conn
    try:
        domains = conn.listAllDomains(0)
    except libvirt.libvirtError as exc:
        raise explain(exc, "listing the virtual machines to find linked clones") from None
    notes: list[str] = []
    if not here and not uri.startswith("test:"):
        # The test driver's files are made up: its XML is all the truth there is.
        notes.append(REMOTE_NOTE)

    def describe(dom: libvirt.virDomain) -> _Vm | None:
        return _read_definitions(dom, here)

    try:
        found = loader.map_concurrently(describe, domains)
    except libvirt.libvirtError as exc:
        raise explain(exc, "reading the virtual machines to find linked clones") from None
    vms = [vm for vm in found if vm is not None]
    for vm in vms:
        if vm.unreadable:
            notes.append(f"The definition of {quoted(vm.name)} could not be read.")

    with_backing = [vm for vm in vms if vm.has_backing]
    if with_backing:
        # One VM after another: a load fetches its snapshots on the loader's threads
        # already, and waits on them (loads nested in those threads could starve).
        for vm in with_backing:
            problem = _read_snapshot_layers(loader, vm, (trees or {}).get(vm.uuid), here)
            if problem:
                notes.append(problem)
        # A backing file nobody owns yet may be a frozen image of a VM whose own chain
        # the XML does not show (shut off, on a remote host): ask the others' snapshots.
        # Here the headers show every chain, so an unowned file (a template image) is
        # nobody's, and no more snapshots need reading.
        rest = [] if here else [vm for vm in vms if not vm.has_backing]
        while rest and _unexplained(with_backing, vms):
            vm = rest.pop(0)
            problem = _read_snapshot_layers(loader, vm, (trees or {}).get(vm.uuid), here)
            if problem:
                notes.append(problem)

    links = find_links(
        VmFiles(vm.name, tuple(vm.chains), tuple(vm.owned)) for vm in vms if vm.chains
    )
    return HostLinks(links, tuple(notes), from_images=here)


def _unexplained(with_backing: list[_Vm], vms: list[_Vm]) -> bool:
    """True when some backing file is nobody's own layer (yet)."""
    owned = {layer.path for vm in vms for layer in vm.owned}
    return any(
        path not in owned for vm in with_backing for chain in vm.chains for path in chain.files[1:]
    )


def _read_definitions(dom: libvirt.virDomain, here: bool) -> _Vm | None:
    """A VM's disks, their chains and the files it writes to; None when it is gone."""
    try:
        name = str(dom.name())
        uuid = str(dom.UUIDString())
        xmls = [str(dom.XMLDesc(0))]
        if dom.isActive() and dom.isPersistent():
            xmls.append(str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None  # undefined meanwhile
        if is_connection_lost(exc):
            raise
        return None
    vm = _Vm(dom, name, uuid)
    chains: dict[str, DiskChain] = {}
    for xml in xmls:
        try:
            for chain in xml_disk_chains(xml):
                known = chains.get(chain.target)
                # The live definition comes first and has libvirt's backingStore.
                if known is None or (
                    known.files[0] == chain.files[0] and len(chain.files) > len(known.files)
                ):
                    chains[chain.target] = chain
            vm.owned.extend(definition_layers(name, xml))
        except ET.ParseError:
            vm.unreadable = True
    if here:
        chains = {target: _header_chain(chain) for target, chain in chains.items()}
    vm.chains = list(chains.values())
    return vm


def _header_chain(chain: DiskChain) -> DiskChain:
    """The chain the image headers name below the disk's top file; libvirt's XML chain
    where the headers tell less (an image this process cannot read)."""
    files = [chain.files[0]]
    seen = {chain.files[0]}
    while len(files) < MAX_CHAIN:
        below = backing_file(files[-1])
        if below is None or below in seen:
            break
        files.append(below)
        seen.add(below)
    if len(chain.files) > len(files):
        return chain
    return DiskChain(chain.target, tuple(files))


def _read_snapshot_layers(
    loader: SnapshotLoader, vm: _Vm, tree: SnapshotTree | None, here: bool
) -> str | None:
    """Add the files the VM's external snapshots made its own; a note when they could
    not be read."""
    if tree is None:
        try:
            tree = loader.load(vm.dom).tree
        except VirtError as exc:
            if not loader.connection.is_connected:
                raise
            return f"The snapshots of {quoted(vm.name)} could not be read ({exc.message})."
    below = chain_below(vm.chains)
    for snapshot in tree:
        layers = snapshot_layers(vm.name, snapshot, below)
        vm.owned.extend(layers)
        if not here:
            continue
        # A snapshot whose record lacks the definition it was taken with: the overlay's
        # header names the image that froze.
        frozen = {layer.disk for layer in layers if layer.role is LayerRole.SNAPSHOT}
        for disk in snapshot.disks:
            if disk.kind is not DiskKind.EXTERNAL or not disk.file or disk.target in frozen:
                continue
            image = backing_file(disk.file)
            if image is not None:
                vm.owned.append(
                    OwnedFile(image, vm.name, LayerRole.SNAPSHOT, disk.target, snapshot.name)
                )
    return None
