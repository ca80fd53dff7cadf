"""Domain XML: building small guests and reading the facts the app needs from a definition.

Built only with ElementTree, never by formatting strings, so any name or path is
escaped correctly.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """A file-backed disk for :func:`tiny_domain_xml`."""

    path: str
    target: str = "vda"
    driver_type: str = "qcow2"


@dataclass(frozen=True, slots=True)
class DomainDisk:
    """A disk as a domain definition describes it."""

    target: str
    device: str
    source: str | None
    driver_type: str | None
    source_type: str


def tiny_domain_xml(
    name: str,
    disks: Sequence[DiskSpec],
    *,
    memory_mib: int = 64,
    vcpus: int = 1,
    domain_type: str = "kvm",
    description: str | None = None,
    emulator: str | None = None,
) -> str:
    """A minimal x86 guest with no OS: enough for QEMU to run and snapshots to work.

    Used by the demo lab and the test harness. Disks are virtio; the first one gets the
    device alias ``virtio-disk0`` that QEMU's ``qemu-io`` monitor command can address.
    """
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = name
    if description:
        ET.SubElement(domain, "description").text = description
    ET.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vcpus)
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    if emulator:
        ET.SubElement(devices, "emulator").text = emulator
    for disk in disks:
        element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(element, "driver", name="qemu", type=disk.driver_type)
        ET.SubElement(element, "source", file=disk.path)
        ET.SubElement(element, "target", dev=disk.target, bus="virtio")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def domain_disks(domain_xml: str) -> list[DomainDisk]:
    """The disks (and CD-ROMs) of a domain definition, in definition order."""
    root = ET.fromstring(domain_xml)
    disks = []
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        driver = disk.find("driver")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("volume")
        disks.append(
            DomainDisk(
                target=target.get("dev", "") if target is not None else "",
                device=disk.get("device", "disk"),
                source=path,
                driver_type=driver.get("type") if driver is not None else None,
                source_type=disk.get("type", "file"),
            )
        )
    return disks
