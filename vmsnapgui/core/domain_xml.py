"""Domain XML: building small guests and reading the facts the app needs from a definition.

Built only with ElementTree, never by formatting strings, so any name or path is
escaped correctly.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
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
    read_only: bool = False

    @property
    def snapshottable(self) -> bool:
        """Writable disks are the ones snapshots capture (CD-ROMs and read-only ones not)."""
        return not self.read_only


def tiny_domain_xml(
    name: str,
    disks: Sequence[DiskSpec],
    *,
    memory_mib: int = 64,
    vcpus: int = 1,
    domain_type: str = "kvm",
    description: str | None = None,
    emulator: str | None = None,
    nic: bool = False,
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
    if nic:
        interface = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(interface, "model", type="virtio")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def memory_kib(domain_xml: str) -> int:
    """The guest's current memory in KiB (what a memory snapshot has to save)."""
    root = ET.fromstring(domain_xml)
    element = root.find("currentMemory")
    if element is None:
        element = root.find("memory")
    if element is None or not element.text:
        return 0
    value = int(element.text.strip())
    factors = {
        "b": 1 / 1024,
        "bytes": 1 / 1024,
        "kib": 1,
        "k": 1,
        "mib": 1024,
        "m": 1024,
        "gib": 1024**2,
        "g": 1024**2,
        "tib": 1024**3,
        "t": 1024**3,
        "kb": 1000 / 1024,
        "mb": 1000**2 / 1024,
        "gb": 1000**3 / 1024,
    }
    return int(value * factors.get(element.get("unit", "KiB").lower(), 1))


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
                read_only=disk.find("readonly") is not None
                or disk.get("device") in ("cdrom", "floppy"),
            )
        )
    return disks


def has_pflash_firmware(domain_xml: str) -> bool:
    """True for UEFI guests with a flash NVRAM (internal snapshots need newer libvirt)."""
    root = ET.fromstring(domain_xml)
    os_element = root.find("os")
    if os_element is None:
        return False
    loader = os_element.find("loader")
    return (loader is not None and loader.get("type") == "pflash") or os_element.get(
        "firmware"
    ) == "efi"


def guest_agent_connected(domain_xml: str) -> bool:
    """True when the QEMU guest agent channel exists and the agent is connected."""
    root = ET.fromstring(domain_xml)
    for channel in root.findall("./devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == "org.qemu.guest_agent.0":
            return target.get("state") == "connected"
    return False


def nvram_path(domain_xml: str) -> str | None:
    """The file holding a UEFI guest's variables, if any."""
    root = ET.fromstring(domain_xml)
    nvram = root.find("./os/nvram")
    if nvram is None:
        return None
    return nvram.text.strip() if nvram.text and nvram.text.strip() else nvram.get("file")


@dataclass(frozen=True, slots=True)
class ClonedDisk:
    """Where a cloned disk lives and in which format."""

    path: str
    driver_type: str


def clone_domain_xml(
    domain_xml: str,
    new_name: str,
    disks: dict[str, ClonedDisk],
    *,
    nvram: str | None = None,
    description: str | None = None,
) -> str:
    """A definition for a clone: new name, no UUID and no MACs (libvirt makes new ones),
    every writable disk pointing at its copy (``disks`` maps target -> copy).

    Raises KeyError naming a writable file disk that ``disks`` does not cover, so a
    clone can never silently share a disk with its source.
    """
    root = ET.fromstring(domain_xml)
    root.attrib.pop("id", None)
    _set_child_text(root, "name", new_name)
    for tag in ("uuid", "genid"):
        for element in root.findall(tag):
            root.remove(element)
    if description is not None:
        _set_child_text(root, "description", description)
    devices = root.find("devices")
    if devices is not None:
        for interface in devices.findall("interface"):
            for mac in interface.findall("mac"):
                interface.remove(mac)
            for tap in interface.findall("target"):
                interface.remove(tap)  # host tap names are per running guest
        for disk in devices.findall("disk"):
            target_element = disk.find("target")
            target = target_element.get("dev", "") if target_element is not None else ""
            read_only = disk.find("readonly") is not None or disk.get("device") in (
                "cdrom",
                "floppy",
            )
            if read_only:
                continue
            copy = disks[target]
            for tag in ("source", "backingStore"):
                for element in disk.findall(tag):
                    disk.remove(element)
            disk.set("type", "file")
            driver = disk.find("driver")
            if driver is None:
                driver = ET.SubElement(disk, "driver", name="qemu")
            driver.set("type", copy.driver_type)
            source = ET.Element("source", file=copy.path)
            disk.insert(list(disk).index(driver) + 1, source)
    os_element = root.find("os")
    if os_element is not None:
        for element in os_element.findall("nvram"):
            if nvram is None:
                os_element.remove(element)
            else:
                element.attrib.pop("file", None)
                element.text = nvram
    # Runtime-only parts of a live definition have no place in a new one.
    for tag in ("seclabel",):
        for element in root.findall(tag):
            if element.get("type") == "dynamic":
                root.remove(element)
    return ET.tostring(root, encoding="unicode")


def with_disk_sources(domain_xml: str, sources: dict[str, tuple[str, str]]) -> str:
    """The definition with the disks named in ``sources`` (target -> (file, format))
    pointing at those files, their recorded backing chains dropped (the files' headers
    give them)."""
    root = ET.fromstring(domain_xml)
    for disk in root.findall("./devices/disk"):
        target_element = disk.find("target")
        target = target_element.get("dev", "") if target_element is not None else ""
        if target not in sources:
            continue
        path, fmt = sources[target]
        for tag in ("source", "backingStore"):
            for element in disk.findall(tag):
                disk.remove(element)
        disk.set("type", "file")
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", fmt)
        disk.insert(list(disk).index(driver) + 1, ET.Element("source", file=path))
    return ET.tostring(root, encoding="unicode")


def without_chains_through(domain_xml: str, gone: Collection[str]) -> str:
    """The definition with the recorded backing chain dropped from every disk whose chain
    names a file in ``gone`` (libvirt then reads the chain from the images' headers).

    Unchanged (the same string) when no disk names one.
    """
    root = ET.fromstring(domain_xml)
    changed = False
    for disk in root.findall("./devices/disk"):
        if any(source.get("file") in gone for source in disk.iter("source")):
            for element in disk.findall("backingStore"):
                disk.remove(element)
                changed = True
    return ET.tostring(root, encoding="unicode") if changed else domain_xml


def _set_child_text(root: ET.Element, tag: str, text: str) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.Element(tag)
        root.insert(0 if tag == "name" else 1, element)
    element.text = text
