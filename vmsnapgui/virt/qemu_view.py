"""What a running QEMU itself says about its disks, for when libvirt may be wrong.

When the libvirt daemon dies in the middle of an external snapshot, QEMU may already
have opened the new overlay (a node libvirt added but never used) or even switched the
guest's disk to it, while the daemon restarts believing neither. Only QEMU knows; it is
asked through libvirt's monitor pass-through (read-only ``query-block``), which marks
the domain as "tainted" in libvirt's log, so this is used only on such recovery paths.
"""

from __future__ import annotations

import json
import logging
import os

import libvirt

from vmsnapgui.core.file_references import normal_path

_log = logging.getLogger(__name__)


def guest_disk_files(dom: libvirt.virDomain) -> dict[str, list[str]] | None:
    """Each guest disk's chain of files as QEMU uses it now, top first, keyed by the
    device's QEMU id; None when QEMU cannot be asked (not running, no permission)."""
    try:
        import libvirt_qemu
    except ImportError:
        return None
    try:
        reply = libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": "query-block"}), 0)
        devices = json.loads(reply)["return"]
    except (libvirt.libvirtError, ValueError, KeyError, TypeError) as exc:
        _log.info("could not ask QEMU about its disks: %s", exc)
        return None
    chains: dict[str, list[str]] = {}
    for device in devices:
        inserted = device.get("inserted")
        if not isinstance(inserted, dict):
            continue
        chain: list[str] = []
        image = inserted.get("image")
        while isinstance(image, dict) and len(chain) < 256:
            name = image.get("filename")
            if isinstance(name, str) and not name.startswith("json:"):
                chain.append(normal_path(name))
            image = image.get("backing-image")
        key = str(device.get("qdev") or device.get("device") or len(chains))
        chains[key] = chain
    return chains


def qemu_processes(uuid: str) -> set[int]:
    """Process ids on this computer of the QEMU running the domain with this UUID
    (libvirt always passes ``-uuid``)."""
    found: set[int] = set()
    wanted = uuid.lower().encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:
            continue
        for index, arg in enumerate(argv[:-1]):
            if arg == b"-uuid" and argv[index + 1].lower() == wanted:
                found.add(int(entry))
                break
    return found
