"""Snapshot operations: the write side of the engine, used by the GUI and by ``vmsnap``.

Every function here blocks; callers run them off the GUI thread. Each one validates its
input first, fails with a :class:`~vmsnapgui.core.errors.UserError` whose message a user
understands, and leaves the VM and its snapshots as they were when it fails.
"""

from __future__ import annotations

import logging

import libvirt

from vmsnapgui.core.snapshot_xml import with_description
from vmsnapgui.core.validation import validate_description
from vmsnapgui.virt.errors import explain
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

_log = logging.getLogger(__name__)


def set_description(
    loader: SnapshotLoader, domain: str | libvirt.virDomain, snapshot: str, description: str | None
) -> None:
    """Change a snapshot's description by redefining its metadata (no disk work).

    The snapshot stays current if it was current.
    """
    text = validate_description(description) if description else None
    dom = loader.lookup(domain) if isinstance(domain, str) else domain
    doing = f"changing the description of {snapshot!r}"
    try:
        snap = dom.snapshotLookupByName(snapshot, 0)
        xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if snap.isCurrent(0):
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        dom.snapshotCreateXML(with_description(xml, text), flags)
    except libvirt.libvirtError as exc:
        raise explain(exc, doing) from None
    loader.forget(dom.UUIDString(), snapshot)
