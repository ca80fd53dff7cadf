"""Snapshot XML in and out: the one place that reads and writes libvirt's snapshot XML.

Reading never raises on surprising input: a snapshot whose XML is odd still becomes a
:class:`Snapshot`, with each oddity described in ``problems`` so the user can see it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from vmsnapgui.core.snapshot import DiskKind, MemoryKind, Snapshot, SnapshotDisk

# Elements libvirt documents for <domainsnapshot>; anything else is reported, not fatal.
_KNOWN_ELEMENTS = frozenset(
    {
        "name",
        "description",
        "state",
        "parent",
        "creationTime",
        "memory",
        "disks",
        "domain",
        "inactiveDomain",
        "active",
        "cookie",
    }
)
# Plain dict lookups: Enum(value) costs more than the rest of the parse per disk.
_MEMORY_KINDS = {kind.value: kind for kind in MemoryKind}
_DISK_KINDS = {kind.value: kind for kind in DiskKind}
_KNOWN_STATES = frozenset(
    {
        "nostate",
        "running",
        "blocked",
        "paused",
        "shutdown",
        "shutoff",
        "crashed",
        "pmsuspended",
        "disk-snapshot",
    }
)


# The embedded domain definitions are nine tenths of a snapshot's XML and nothing in
# the record needs them, so they are cut out before parsing (five times faster on a
# 10,000-snapshot tree). In well-formed XML a "<" in text or attributes is escaped, so
# these patterns can only match real tags; when the cut fails the whole text is parsed.
_EMBEDDED_DOMAINS = (
    (re.compile(r"<domain[\s/>]"), "</domain>"),
    (re.compile(r"<inactiveDomain[\s/>]"), "</inactiveDomain>"),
)


def _without_embedded_domains(xml: str) -> str:
    for start_pattern, end_tag in _EMBEDDED_DOMAINS:
        match = start_pattern.search(xml)
        if match is None:
            continue
        start = match.start()
        tag_end = xml.find(">", start)
        if tag_end > 0 and xml[tag_end - 1] == "/":
            end = tag_end + 1
        else:
            close = xml.find(end_tag, start)
            if close < 0:
                continue
            end = close + len(end_tag)
        xml = xml[:start] + xml[end:]
    return xml


def parse_snapshot_xml(xml: str, fallback_name: str | None = None) -> Snapshot:
    """Parse one snapshot's XML (``virDomainSnapshotGetXMLDesc``) into a record.

    ``fallback_name`` is the name libvirt listed the snapshot under; it is used when the
    XML is unreadable or lacks a name, so the snapshot still appears in the tree.
    """
    problems: list[str] = []
    try:
        root = ET.fromstring(_without_embedded_domains(xml))
    except ET.ParseError:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            name = fallback_name or "(unnamed)"
            return Snapshot(name=name, xml=xml, problems=(f"its XML could not be read ({exc})",))

    if root.tag != "domainsnapshot":
        problems.append(f"its XML starts with <{root.tag}> instead of <domainsnapshot>")

    xml_name = _text(root, "name")
    if not xml_name:
        name = fallback_name or "(unnamed)"
        problems.append("its XML has no name")
    else:
        name = xml_name
        if fallback_name is not None and name != fallback_name:
            problems.append(f"libvirt lists it as {fallback_name!r} but its XML names it {name!r}")

    for child in root:
        if child.tag not in _KNOWN_ELEMENTS:
            problems.append(f"unknown element <{child.tag}> ignored")

    parent_element = root.find("parent")
    parent = _text(parent_element, "name") if parent_element is not None else None

    created = _parse_created(_text(root, "creationTime"), problems)

    state = _text(root, "state")
    if state is not None and state not in _KNOWN_STATES:
        problems.append(f"unknown state {state!r}")

    memory, memory_file = _parse_memory(root.find("memory"), problems)
    disks = _parse_disks(root.find("disks"), problems)

    return Snapshot(
        name=name,
        parent=parent or None,
        created=created,
        state=state,
        description=_text(root, "description"),
        memory=memory,
        memory_file=memory_file,
        disks=disks,
        xml=xml,
        problems=tuple(problems),
    )


def embedded_domain_xml(snapshot_xml: str) -> str | None:
    """The domain definition a snapshot carries (``<domain>`` inside it), or None."""
    try:
        root = ET.fromstring(snapshot_xml)
    except ET.ParseError:
        return None
    domain = root.find("domain")
    if domain is None:
        return None
    domain.tail = None
    return ET.tostring(domain, encoding="unicode")


def _text(element: ET.Element | None, tag: str) -> str | None:
    if element is None:
        return None
    found = element.find(tag)
    if found is None or found.text is None:
        return None
    return found.text


def _parse_created(text: str | None, problems: list[str]) -> int | None:
    if text is None:
        problems.append("its XML has no creation time")
        return None
    try:
        return int(text.strip())
    except ValueError:
        problems.append(f"creation time {text!r} is not a number")
        return None


def _parse_memory(element: ET.Element | None, problems: list[str]) -> tuple[MemoryKind, str | None]:
    if element is None:
        return MemoryKind.NONE, None
    raw = element.get("snapshot", "no")
    kind = _MEMORY_KINDS.get(raw)
    if kind is None:
        problems.append(f"unknown memory snapshot kind {raw!r}")
        kind = MemoryKind.NONE
    return kind, element.get("file") or None


def _parse_disks(element: ET.Element | None, problems: list[str]) -> tuple[SnapshotDisk, ...]:
    if element is None:
        return ()
    disks: list[SnapshotDisk] = []
    for disk in element.findall("disk"):
        target = disk.get("name")
        if not target:
            problems.append("a disk without a name was ignored")
            continue
        raw_kind = disk.get("snapshot")
        if raw_kind is None:
            # libvirt omits the attribute only on disks it did not snapshot.
            kind = DiskKind.NONE
        else:
            found = _DISK_KINDS.get(raw_kind)
            if found is None:
                problems.append(f"disk {target}: unknown snapshot kind {raw_kind!r}")
            kind = found or DiskKind.NONE
        source = disk.find("source")
        file = None
        if source is not None:
            file = source.get("file") or source.get("dev") or source.get("name")
        driver = disk.find("driver")
        driver_type = driver.get("type") if driver is not None else None
        disks.append(SnapshotDisk(target=target, kind=kind, file=file, driver_type=driver_type))
    return tuple(disks)


def snapshot_request_xml(
    name: str | None = None,
    description: str | None = None,
    *,
    memory: MemoryKind | None = None,
    memory_file: str | None = None,
    disks: tuple[SnapshotDisk, ...] = (),
    state: str | None = None,
    created: int | None = None,
    domain_xml: str | None = None,
) -> str:
    """The ``<domainsnapshot>`` document asking libvirt to create a snapshot.

    Everything left None is left to libvirt's defaults (for a running guest with qcow2
    disks: internal, with memory). Values are escaped by ElementTree, never formatted.
    ``state``, ``created`` and ``domain_xml`` are for redefining (recording a snapshot
    that exists in the disk images but that libvirt lost, see take_snapshot.py).
    """
    root = ET.Element("domainsnapshot")
    if name is not None:
        ET.SubElement(root, "name").text = name
    if description is not None:
        ET.SubElement(root, "description").text = description
    if state is not None:
        ET.SubElement(root, "state").text = state
    if created is not None:
        ET.SubElement(root, "creationTime").text = str(int(created))
    if memory is not None:
        attributes = {"snapshot": memory.value}
        if memory is MemoryKind.EXTERNAL and memory_file:
            attributes["file"] = memory_file
        ET.SubElement(root, "memory", attributes)
    if disks:
        disks_element = ET.SubElement(root, "disks")
        for disk in disks:
            element = ET.SubElement(
                disks_element, "disk", name=disk.target, snapshot=disk.kind.value
            )
            if disk.kind is DiskKind.EXTERNAL:
                if disk.driver_type:
                    ET.SubElement(element, "driver", type=disk.driver_type)
                if disk.file:
                    ET.SubElement(element, "source", file=disk.file)
    if domain_xml is not None:
        root.append(ET.fromstring(domain_xml))
    return ET.tostring(root, encoding="unicode")


def with_description(snapshot_xml: str, description: str | None) -> str:
    """The same snapshot XML with its description replaced (or removed when None).

    Used to redefine a snapshot after the user edits its description.
    """
    root = ET.fromstring(snapshot_xml)
    element = root.find("description")
    if description is None or description == "":
        if element is not None:
            root.remove(element)
    else:
        if element is None:
            element = ET.Element("description")
            name = root.find("name")
            position = list(root).index(name) + 1 if name is not None else 0
            root.insert(position, element)
        element.text = description
    return ET.tostring(root, encoding="unicode")
