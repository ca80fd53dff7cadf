"""Reading and writing libvirt snapshot XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnapgui.core.snapshot import DiskKind, MemoryKind, SnapshotDisk
from vmsnapgui.core.snapshot_xml import (
    embedded_domain_xml,
    parse_snapshot_xml,
    snapshot_request_xml,
)

FULL = """<domainsnapshot>
  <name>after-upgrade</name>
  <description>Upgraded to 12.2 &amp; rebooted &lt;ok&gt;</description>
  <state>running</state>
  <parent>
    <name>base</name>
  </parent>
  <creationTime>1700000100</creationTime>
  <memory snapshot='external' file='/var/lib/libvirt/qemu/snapshot/web/after.mem'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='/var/lib/libvirt/images/web.after-upgrade'/>
    </disk>
    <disk name='vdb' snapshot='no'/>
    <disk name='sda' snapshot='internal'/>
  </disks>
  <domain type='kvm'>
    <name>web</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1930</uuid>
    <memory unit='KiB'>2097152</memory>
    <devices>
      <disk type='file' device='disk'>
        <source file='/var/lib/libvirt/images/web.qcow2'/>
        <target dev='vda' bus='virtio'/>
        <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
      </disk>
    </devices>
  </domain>
  <cookie>
    <cpu mode='custom'/>
  </cookie>
</domainsnapshot>
"""


def test_every_field_of_a_full_snapshot_is_read() -> None:
    snapshot = parse_snapshot_xml(FULL, fallback_name="after-upgrade")
    assert snapshot.name == "after-upgrade"
    assert snapshot.parent == "base"
    assert snapshot.created == 1700000100
    assert snapshot.state == "running"
    assert snapshot.description == "Upgraded to 12.2 & rebooted <ok>"
    assert snapshot.memory is MemoryKind.EXTERNAL
    assert snapshot.memory_file == "/var/lib/libvirt/qemu/snapshot/web/after.mem"
    assert snapshot.disks == (
        SnapshotDisk(
            "vda", DiskKind.EXTERNAL, "/var/lib/libvirt/images/web.after-upgrade", "qcow2"
        ),
        SnapshotDisk("vdb", DiskKind.NONE),
        SnapshotDisk("sda", DiskKind.INTERNAL),
    )
    assert snapshot.problems == ()
    assert snapshot.xml == FULL
    assert snapshot.is_external and snapshot.is_internal and snapshot.has_memory


def test_the_embedded_domain_is_kept_and_can_be_read_back() -> None:
    domain = embedded_domain_xml(parse_snapshot_xml(FULL).xml)
    assert domain is not None
    root = ET.fromstring(domain)
    assert root.tag == "domain"
    assert root.findtext("name") == "web"
    assert root.find("./devices/disk/target").get("dev") == "vda"  # type: ignore[union-attr]


def test_a_snapshot_without_optional_elements_still_parses() -> None:
    snapshot = parse_snapshot_xml("<domainsnapshot><name>bare</name></domainsnapshot>", "bare")
    assert snapshot.name == "bare"
    assert snapshot.parent is None
    assert snapshot.memory is MemoryKind.NONE
    assert snapshot.disks == ()
    assert snapshot.problems == ("its XML has no creation time",)
    assert embedded_domain_xml(snapshot.xml) is None


def test_unknown_elements_and_values_are_reported_not_fatal() -> None:
    xml = """<domainsnapshot><name>x</name><creationTime>12</creationTime>
      <state>levitating</state><memory snapshot='quantum'/><sparkles/>
      <disks><disk name='vda' snapshot='sideways'/><disk snapshot='internal'/></disks>
    </domainsnapshot>"""
    snapshot = parse_snapshot_xml(xml, "x")
    assert snapshot.name == "x"
    assert snapshot.memory is MemoryKind.NONE
    assert snapshot.disks == (SnapshotDisk("vda", DiskKind.NONE),)
    assert set(snapshot.problems) == {
        "unknown element <sparkles> ignored",
        "unknown state 'levitating'",
        "unknown memory snapshot kind 'quantum'",
        "disk vda: unknown snapshot kind 'sideways'",
        "a disk without a name was ignored",
    }


@pytest.mark.parametrize(
    "xml",
    ["", "<domainsnapshot>", "not xml at all", "<domainsnapshot><name>x</nam></domainsnapshot>"],
)
def test_unreadable_xml_still_gives_a_snapshot_under_its_listed_name(xml: str) -> None:
    snapshot = parse_snapshot_xml(xml, fallback_name="listed")
    assert snapshot.name == "listed"
    assert len(snapshot.problems) == 1
    assert snapshot.problems[0].startswith("its XML could not be read")


def test_a_name_that_differs_from_the_listing_is_reported() -> None:
    snapshot = parse_snapshot_xml("<domainsnapshot><name>a</name></domainsnapshot>", "b")
    assert snapshot.name == "a"
    assert any("libvirt lists it as 'b'" in p for p in snapshot.problems)


def test_a_bad_creation_time_is_reported() -> None:
    snapshot = parse_snapshot_xml(
        "<domainsnapshot><name>a</name><creationTime>soon</creationTime></domainsnapshot>"
    )
    assert snapshot.created is None
    assert snapshot.problems == ("creation time 'soon' is not a number",)


def test_text_that_looks_like_a_domain_tag_does_not_confuse_the_fast_path() -> None:
    # Escaped "<domain>" in a description must not be mistaken for the embedded domain.
    xml = """<domainsnapshot><name>n</name>
      <description>see &lt;domain type='kvm'&gt; and &lt;/domain&gt;</description>
      <creationTime>5</creationTime>
      <domain type='kvm'><name>web</name></domain>
      <inactiveDomain type='kvm'><name>web</name></inactiveDomain>
    </domainsnapshot>"""
    snapshot = parse_snapshot_xml(xml, "n")
    assert snapshot.description == "see <domain type='kvm'> and </domain>"
    assert snapshot.problems == ()


# Everything validation lets through: no surrogates, no U+FFFE/U+FFFF (not XML characters).
HOSTILE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff"),
    min_size=1,
    max_size=60,
).filter(lambda s: all(ch in "\t\n\r" or ord(ch) >= 32 for ch in s))


# Names never hold control characters (validation refuses them); descriptions may span lines.
HOSTILE_NAME = HOSTILE_TEXT.filter(lambda s: all(ord(ch) >= 32 for ch in s))


@given(name=HOSTILE_NAME, description=HOSTILE_TEXT)
def test_request_xml_escapes_any_name_and_description(name: str, description: str) -> None:
    xml = snapshot_request_xml(name, description)
    root = ET.fromstring(xml)
    assert root.findtext("name") == name
    # XML normalises a lone carriage return to a newline, as libvirt will see it.
    assert root.findtext("description") == description.replace("\r\n", "\n").replace("\r", "\n")


@given(name=HOSTILE_NAME)
def test_parsing_what_we_asked_for_round_trips_the_name(name: str) -> None:
    xml = snapshot_request_xml(name, None, memory=MemoryKind.NONE)
    snapshot = parse_snapshot_xml(
        xml.replace("</domainsnapshot>", "<creationTime>1</creationTime></domainsnapshot>")
    )
    assert snapshot.name == name
    assert snapshot.problems == ()


def test_request_xml_for_external_disks_and_memory() -> None:
    xml = snapshot_request_xml(
        "s",
        memory=MemoryKind.EXTERNAL,
        memory_file="/m/s.mem",
        disks=(
            SnapshotDisk("vda", DiskKind.EXTERNAL, "/i/s.qcow2", "qcow2"),
            SnapshotDisk("vdb", DiskKind.NONE),
        ),
    )
    root = ET.fromstring(xml)
    assert root.find("memory").attrib == {"snapshot": "external", "file": "/m/s.mem"}  # type: ignore[union-attr]
    disks = root.findall("./disks/disk")
    assert [d.attrib for d in disks] == [
        {"name": "vda", "snapshot": "external"},
        {"name": "vdb", "snapshot": "no"},
    ]
    assert disks[0].find("source").get("file") == "/i/s.qcow2"  # type: ignore[union-attr]
