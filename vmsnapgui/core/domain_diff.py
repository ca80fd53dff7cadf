"""A readable difference between two domain definitions (libvirt domain XML).

Used to tell what a snapshot changed in a VM's configuration compared with its parent
(or with the VM as it is now): memory, vCPUs, disks, network interfaces and every
other device, in sentences a person reads, not an XML diff.

Pure Python; unreadable XML gives one :class:`ConfigChange` saying so, never an error.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vmsnapgui.core.units import format_bytes

# Multipliers of libvirt's memory units (domain XML "unit" attribute).
_MEMORY_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

# Top-level elements compared on their own (or not at all) rather than generically.
_SPECIAL_TOP_LEVEL = frozenset(
    {
        "name",
        "uuid",
        "memory",
        "currentMemory",
        "maxMemory",
        "vcpu",
        "cpu",
        "devices",
        "metadata",
        "description",
        "title",
        "genid",
    }
)

# Devices whose identity is an attribute of a child element; others match by position.
_DEVICE_LABELS = {
    "disk": "Disk",
    "interface": "Network interface",
    "controller": "Controller",
    "graphics": "Graphics",
    "video": "Video",
    "sound": "Sound card",
    "channel": "Channel",
    "serial": "Serial port",
    "console": "Console",
    "parallel": "Parallel port",
    "input": "Input device",
    "hostdev": "Host device",
    "filesystem": "Shared folder",
    "rng": "Random number generator",
    "tpm": "TPM",
    "watchdog": "Watchdog",
    "memballoon": "Memory balloon",
    "redirdev": "USB redirection",
    "smartcard": "Smartcard",
    "hub": "USB hub",
    "emulator": "Emulator",
    "panic": "Panic device",
    "shmem": "Shared memory",
    "memory": "Memory device",
    "iommu": "IOMMU",
    "vsock": "VM socket",
    "audio": "Audio backend",
    "lease": "Lease",
}

# Parts of a device that libvirt fills in or that change without the user changing
# anything (PCI addresses, aliases): ignored when deciding whether a device changed.
_VOLATILE_CHILDREN = frozenset({"address", "alias"})


class ChangeKind(enum.StrEnum):
    """How one item differs."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One difference between two definitions, e.g. memory 1 GiB -> 2 GiB.

    ``area`` groups changes for display ("Memory", "Disks", "Network", "Devices",
    "General"); ``item`` names what changed; ``before``/``after`` are display texts
    (None when the item is absent on that side).
    """

    area: str
    item: str
    kind: ChangeKind
    before: str | None = None
    after: str | None = None

    def describe(self) -> str:
        """The change as one line: ``Memory: 1.00 GiB → 2.00 GiB``."""
        if self.kind is ChangeKind.ADDED:
            return f"{self.item} added" + (f": {self.after}" if self.after else "")
        if self.kind is ChangeKind.REMOVED:
            return f"{self.item} removed" + (f" (was {self.before})" if self.before else "")
        if self.before is None or self.after is None:
            return f"{self.item} changed"
        return f"{self.item}: {self.before} → {self.after}"


def diff_domains(before_xml: str | None, after_xml: str | None) -> list[ConfigChange]:
    """What changed from ``before_xml`` to ``after_xml``, in a stable, readable order.

    An empty list means the definitions are equivalent for a user (addresses and
    aliases that libvirt assigns are ignored).
    """
    before = _parse(before_xml, "the older")
    after = _parse(after_xml, "the newer")
    if isinstance(before, ConfigChange):
        return [before]
    if isinstance(after, ConfigChange):
        return [after]
    changes: list[ConfigChange] = []
    changes.extend(_general_changes(before, after))
    changes.extend(_memory_changes(before, after))
    changes.extend(_cpu_changes(before, after))
    changes.extend(_device_changes(before, after))
    changes.extend(_other_top_level_changes(before, after))
    return changes


def describe_changes(changes: Iterable[ConfigChange]) -> list[str]:
    """Every change as a line, grouped by area in the order the areas first appear."""
    grouped: dict[str, list[str]] = {}
    for change in changes:
        grouped.setdefault(change.area, []).append(change.describe())
    lines: list[str] = []
    for area, items in grouped.items():
        lines.append(f"{area}:")
        lines.extend(f"  {item}" for item in items)
    return lines


# -- parsing ---------------------------------------------------------------------------


def _parse(xml: str | None, which: str) -> ET.Element | ConfigChange:
    if not xml:
        return ConfigChange(
            "General",
            f"Configuration of {which} state",
            ChangeKind.CHANGED,
            "not recorded",
            "cannot compare",
        )
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        return ConfigChange(
            "General",
            f"Configuration of {which} state",
            ChangeKind.CHANGED,
            "unreadable",
            f"cannot compare ({exc})",
        )
    if root.tag != "domain":
        found = root.find("domain")
        if found is None:
            return ConfigChange(
                "General",
                f"Configuration of {which} state",
                ChangeKind.CHANGED,
                f"<{root.tag}>",
                "cannot compare (no <domain>)",
            )
        root = found
    return root


def _text(element: ET.Element, path: str) -> str | None:
    found = element.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def memory_bytes(element: ET.Element | None) -> int | None:
    """Bytes of a ``<memory unit='…'>N</memory>``-style element (KiB when no unit)."""
    if element is None or element.text is None:
        return None
    try:
        value = int(element.text.strip())
    except ValueError:
        return None
    unit = element.get("unit", "KiB").lower()
    return value * _MEMORY_UNITS.get(unit, 1024)


def _changed(area: str, item: str, before: str | None, after: str | None) -> list[ConfigChange]:
    if before == after:
        return []
    if before is None:
        return [ConfigChange(area, item, ChangeKind.ADDED, None, after)]
    if after is None:
        return [ConfigChange(area, item, ChangeKind.REMOVED, before, None)]
    return [ConfigChange(area, item, ChangeKind.CHANGED, before, after)]


# -- areas -----------------------------------------------------------------------------


def _general_changes(before: ET.Element, after: ET.Element) -> list[ConfigChange]:
    changes = _changed("General", "Name", _text(before, "name"), _text(after, "name"))
    changes += _changed("General", "Title", _text(before, "title"), _text(after, "title"))
    before_type, after_type = before.get("type"), after.get("type")
    changes += _changed("General", "Hypervisor type", before_type, after_type)
    return changes


def _memory_text(element: ET.Element | None) -> str | None:
    value = memory_bytes(element)
    return None if value is None else format_bytes(value)


def _memory_changes(before: ET.Element, after: ET.Element) -> list[ConfigChange]:
    changes = _changed(
        "Memory", "Memory", _memory_text(before.find("memory")), _memory_text(after.find("memory"))
    )
    # The balloon target usually just follows the memory size: only worth a line
    # when it differs from it on either side.
    if any(
        memory_bytes(root.find("currentMemory")) not in (None, memory_bytes(root.find("memory")))
        for root in (before, after)
    ):
        changes += _changed(
            "Memory",
            "Current memory",
            _memory_text(before.find("currentMemory")),
            _memory_text(after.find("currentMemory")),
        )
    changes += _changed(
        "Memory",
        "Maximum memory",
        _memory_text(before.find("maxMemory")),
        _memory_text(after.find("maxMemory")),
    )
    return changes


def _vcpu_text(root: ET.Element) -> str | None:
    vcpu = root.find("vcpu")
    if vcpu is None or vcpu.text is None:
        return None
    count = vcpu.text.strip()
    current = vcpu.get("current")
    text = f"{count} vCPU" + ("" if count == "1" else "s")
    if current and current != count:
        text += f" ({current} online)"
    return text


def _cpu_text(root: ET.Element) -> str | None:
    cpu = root.find("cpu")
    if cpu is None:
        return None
    parts = []
    mode = cpu.get("mode")
    if mode:
        parts.append(f"mode {mode}")
    model = _text(cpu, "model")
    if model:
        parts.append(f"model {model}")
    topology = cpu.find("topology")
    if topology is not None:
        sockets = topology.get("sockets", "?")
        cores = topology.get("cores", "?")
        threads = topology.get("threads", "?")
        parts.append(f"{sockets} socket(s), {cores} core(s), {threads} thread(s)")
    features = sorted(
        f"{f.get('policy', 'require')} {f.get('name')}" for f in cpu.findall("feature")
    )
    if features:
        parts.append("features " + ", ".join(features))
    return "; ".join(parts) if parts else "default"


def _cpu_changes(before: ET.Element, after: ET.Element) -> list[ConfigChange]:
    changes = _changed("Processors", "vCPUs", _vcpu_text(before), _vcpu_text(after))
    changes += _changed("Processors", "CPU", _cpu_text(before), _cpu_text(after))
    return changes


# -- devices ---------------------------------------------------------------------------


def _canonical(element: ET.Element) -> str:
    """A stable text of an element without volatile parts, for equality checks."""
    parts = [element.tag]
    parts.extend(f"{key}={value}" for key, value in sorted(element.attrib.items()))
    text = (element.text or "").strip()
    if text:
        parts.append(repr(text))
    children = sorted(_canonical(child) for child in element if child.tag not in _VOLATILE_CHILDREN)
    if children:
        parts.append("[" + ",".join(children) + "]")
    return " ".join(parts)


Describe = Callable[[ET.Element], str]
KeyOf = Callable[[ET.Element, int], str]


def _disk_key(disk: ET.Element, index: int) -> str:
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    return dev or f"#{index + 1}"


def _disk_summary(disk: ET.Element) -> str:
    device = disk.get("device", "disk")
    source = disk.find("source")
    path = None
    if source is not None:
        path = source.get("file") or source.get("dev") or source.get("volume") or source.get("name")
    driver = disk.find("driver")
    fmt = driver.get("type") if driver is not None else None
    target = disk.find("target")
    bus = target.get("bus") if target is not None else None
    bits = [device]
    if bus:
        bits.append(bus)
    if fmt:
        bits.append(fmt)
    summary = " ".join(bits)
    return f"{summary}, {path}" if path else f"{summary}, no media"


def _interface_key(interface: ET.Element, index: int) -> str:
    mac = interface.find("mac")
    if mac is not None and mac.get("address"):
        return mac.get("address", "").lower()
    return f"#{index + 1}"


def _interface_summary(interface: ET.Element) -> str:
    kind = interface.get("type", "?")
    source = interface.find("source")
    where = None
    if source is not None:
        where = (
            source.get("network") or source.get("bridge") or source.get("dev") or source.get("path")
        )
    model = interface.find("model")
    model_type = model.get("type") if model is not None else None
    text = kind + (f" {where}" if where else "")
    return text + (f" ({model_type})" if model_type else "")


def _generic_key(device: ET.Element, index: int) -> str:
    bits = [device.tag]
    for attr in ("type", "model", "bus", "index"):
        value = device.get(attr)
        if value:
            bits.append(f"{attr}={value}")
    target = device.find("target")
    if target is not None:
        for attr in ("type", "name", "port", "dir"):
            value = target.get(attr)
            if value:
                bits.append(f"target {attr}={value}")
    return " ".join(bits)


def _generic_summary(device: ET.Element) -> str:
    bits = []
    for attr in ("type", "model", "bus"):
        value = device.get(attr)
        if value:
            bits.append(value)
    if device.tag == "emulator" and device.text:
        bits.append(device.text.strip())
    model = device.find("model")
    if model is not None and model.get("type"):
        bits.append(model.get("type", ""))
    return " ".join(bits) or device.tag


def _keyed(elements: list[ET.Element], key_of: KeyOf) -> dict[str, ET.Element]:
    result: dict[str, ET.Element] = {}
    for index, element in enumerate(elements):
        key = key_of(element, index)
        # Duplicates (two identical USB tablets) stay apart by a counter.
        unique, counter = key, 2
        while unique in result:
            unique = f"{key} ({counter})"
            counter += 1
        result[unique] = element
    return result


def _devices(root: ET.Element) -> list[ET.Element]:
    devices = root.find("devices")
    return [] if devices is None else list(devices)


def _device_changes(before: ET.Element, after: ET.Element) -> list[ConfigChange]:
    before_devices = _devices(before)
    after_devices = _devices(after)
    changes: list[ConfigChange] = []
    changes += _compare_group(
        "Disks",
        "Disk",
        _keyed([d for d in before_devices if d.tag == "disk"], _disk_key),
        _keyed([d for d in after_devices if d.tag == "disk"], _disk_key),
        _disk_summary,
    )
    changes += _compare_group(
        "Network",
        "Interface",
        _keyed([d for d in before_devices if d.tag == "interface"], _interface_key),
        _keyed([d for d in after_devices if d.tag == "interface"], _interface_key),
        _interface_summary,
    )
    others_before = [d for d in before_devices if d.tag not in ("disk", "interface")]
    others_after = [d for d in after_devices if d.tag not in ("disk", "interface")]
    changes += _compare_group(
        "Devices",
        None,
        _keyed(others_before, _generic_key),
        _keyed(others_after, _generic_key),
        _generic_summary,
    )
    return changes


def _compare_group(
    area: str,
    label: str | None,
    before: dict[str, ET.Element],
    after: dict[str, ET.Element],
    describe: Describe,
) -> list[ConfigChange]:
    def name_of(key: str, element: ET.Element) -> str:
        if label is not None:
            return f"{label} {key}"
        return _DEVICE_LABELS.get(element.tag, element.tag.capitalize())

    changes: list[ConfigChange] = []
    for key, element in before.items():
        if key not in after:
            changes.append(
                ConfigChange(area, name_of(key, element), ChangeKind.REMOVED, describe(element))
            )
    for key, element in after.items():
        old = before.get(key)
        if old is None:
            changes.append(
                ConfigChange(area, name_of(key, element), ChangeKind.ADDED, None, describe(element))
            )
        elif _canonical(old) != _canonical(element):
            old_text, new_text = describe(old), describe(element)
            if old_text == new_text:
                new_text = f"{new_text} (settings changed)"
            changes.append(
                ConfigChange(area, name_of(key, element), ChangeKind.CHANGED, old_text, new_text)
            )
    return changes


# -- the rest ----------------------------------------------------------------------------


def _other_top_level_changes(before: ET.Element, after: ET.Element) -> list[ConfigChange]:
    def by_tag(root: ET.Element) -> dict[str, str]:
        result: dict[str, str] = {}
        for child in root:
            if child.tag in _SPECIAL_TOP_LEVEL:
                continue
            result[child.tag] = result.get(child.tag, "") + _canonical(child)
        return result

    old, new = by_tag(before), by_tag(after)
    changes: list[ConfigChange] = []
    for tag in sorted(set(old) | set(new)):
        if tag not in new:
            changes.append(ConfigChange("Other settings", f"<{tag}>", ChangeKind.REMOVED))
        elif tag not in old:
            changes.append(ConfigChange("Other settings", f"<{tag}>", ChangeKind.ADDED))
        elif old[tag] != new[tag]:
            changes.append(ConfigChange("Other settings", f"<{tag}>", ChangeKind.CHANGED))
    return changes
