"""The configuration diff shown beside a snapshot: what changed, in words."""

from __future__ import annotations

from vmsnapgui.core.domain_diff import (
    ChangeKind,
    ConfigChange,
    describe_changes,
    diff_domains,
)

BASE = """
<domain type='kvm'>
  <name>web</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e1930</uuid>
  <memory unit='MiB'>1024</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/web.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:00:01'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <graphics type='vnc' port='-1'/>
  </devices>
</domain>
"""


def edited(xml: str, *replacements: tuple[str, str]) -> str:
    for old, new in replacements:
        assert old in xml, old
        xml = xml.replace(old, new)
    return xml


def lines(before: str, after: str) -> list[str]:
    return [change.describe() for change in diff_domains(before, after)]


def test_identical_definitions_have_no_differences() -> None:
    assert diff_domains(BASE, BASE) == []


def test_addresses_and_aliases_libvirt_assigns_are_not_changes() -> None:
    moved = edited(BASE, ("slot='0x04'", "slot='0x07'"))
    moved = edited(
        moved,
        (
            "<target dev='vda' bus='virtio'/>",
            "<target dev='vda' bus='virtio'/><alias name='virtio-disk0'/>",
        ),
    )
    assert diff_domains(BASE, moved) == []


def test_memory_is_compared_in_bytes_whatever_the_unit() -> None:
    same = edited(BASE, ("<memory unit='MiB'>1024</memory>", "<memory unit='GiB'>1</memory>"))
    assert diff_domains(BASE, same) == []
    bigger = edited(BASE, ("<memory unit='MiB'>1024</memory>", "<memory unit='MiB'>2048</memory>"))
    assert diff_domains(BASE, bigger) == [
        ConfigChange("Memory", "Memory", ChangeKind.CHANGED, "1.00 GiB", "2.00 GiB")
    ]
    assert lines(BASE, bigger) == ["Memory: 1.00 GiB → 2.00 GiB"]


def test_vcpu_count_and_cpu_model_changes_are_named() -> None:
    after = edited(
        BASE,
        ("<vcpu>1</vcpu>", "<vcpu current='2'>4</vcpu><cpu mode='host-passthrough'/>"),
    )
    assert lines(BASE, after) == [
        "vCPUs: 1 vCPU → 4 vCPUs (2 online)",
        "CPU added: mode host-passthrough",
    ]


def test_a_disk_added_removed_or_repointed_is_reported_by_its_target() -> None:
    second_disk = (
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        "<source file='/iso/debian.iso'/><target dev='sda' bus='sata'/></disk>"
    )
    added = edited(BASE, ("<interface", second_disk + "<interface"))
    assert lines(BASE, added) == ["Disk sda added: cdrom sata raw, /iso/debian.iso"]
    assert lines(added, BASE) == ["Disk sda removed (was cdrom sata raw, /iso/debian.iso)"]
    repointed = edited(BASE, ("/images/web.qcow2", "/images/web.s1"))
    assert lines(BASE, repointed) == [
        "Disk vda: disk virtio qcow2, /images/web.qcow2 → disk virtio qcow2, /images/web.s1"
    ]


def test_network_interfaces_match_by_mac_address() -> None:
    bridged = edited(
        BASE, ("type='network'", "type='bridge'"), ("network='default'", "bridge='br0'")
    )
    assert lines(BASE, bridged) == [
        "Interface 52:54:00:aa:00:01: network default (virtio) → bridge br0 (virtio)"
    ]
    new_mac = edited(BASE, ("52:54:00:aa:00:01", "52:54:00:aa:00:02"))
    assert sorted(lines(BASE, new_mac)) == [
        "Interface 52:54:00:aa:00:01 removed (was network default (virtio))",
        "Interface 52:54:00:aa:00:02 added: network default (virtio)",
    ]


def test_other_devices_added_or_removed_are_named_plainly() -> None:
    with_sound = edited(BASE, ("<graphics", "<sound model='ich9'/><graphics"))
    assert lines(BASE, with_sound) == ["Sound card added: ich9"]
    without_graphics = edited(BASE, ("<graphics type='vnc' port='-1'/>", ""))
    assert lines(BASE, without_graphics) == ["Graphics removed (was vnc)"]


def test_a_device_whose_settings_change_but_summary_does_not_still_shows() -> None:
    after = edited(BASE, ("port='-1'", "port='5901'"))
    assert lines(BASE, after) == ["Graphics: vnc → vnc (settings changed)"]


def test_other_top_level_sections_are_reported_by_element() -> None:
    after = edited(BASE, ("<features><acpi/></features>", "<features><acpi/><apic/></features>"))
    assert lines(BASE, after) == ["<features> changed"]
    assert lines(BASE, edited(BASE, ("<features><acpi/></features>", ""))) == ["<features> removed"]


def test_the_domain_inside_a_snapshot_document_is_found() -> None:
    snapshot = f"<domainsnapshot><name>s</name>{BASE}</domainsnapshot>"
    assert diff_domains(snapshot, BASE) == []


def test_missing_or_unreadable_xml_says_it_cannot_compare_instead_of_raising() -> None:
    assert lines("", BASE) == ["Configuration of the older state: not recorded → cannot compare"]
    broken = lines(BASE, "<domain><name>")
    assert len(broken) == 1 and broken[0].startswith("Configuration of the newer state: unreadable")


def test_changes_are_grouped_by_area_for_display() -> None:
    after = edited(
        BASE,
        ("<memory unit='MiB'>1024</memory>", "<memory unit='MiB'>512</memory>"),
        ("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"),
        ("<graphics type='vnc' port='-1'/>", ""),
    )
    assert describe_changes(diff_domains(BASE, after)) == [
        "Memory:",
        "  Memory: 1.00 GiB → 512 MiB",
        "Processors:",
        "  vCPUs: 1 vCPU → 2 vCPUs",
        "Devices:",
        "  Graphics removed (was vnc)",
    ]
