"""Name lengths on the real daemon: what the validator accepts, libvirt really takes.

libvirt stores a snapshot as ``/var/lib/libvirt/qemu/snapshot/VM/NAME.xml`` (written as
``NAME.xml.new`` first) and a VM as ``/etc/libvirt/qemu/NAME.xml``: a name's UTF-8 bytes
are what count. A name that is too long used to pass (it was counted in characters),
QEMU wrote the internal snapshot into the qcow2, libvirt failed to save its metadata,
and the snapshot stayed in the image as an orphan.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt
import pytest

from tests.integration.conftest import (
    MIB,
    SESSION_PREFIX,
    GuestFactory,
    internal_snapshots_in,
    remove_domain,
)
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.validation import (
    LIBVIRT_NAME_BYTES,
    MAX_NAME_BYTES,
    ValidationError,
    utf8_length,
    validate_snapshot_name,
    validate_vm_name,
)
from vmsnapgui.virt.delete_snapshot import delete_snapshot
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot

EMOJI = "\N{GRINNING FACE}"  # 4 bytes in UTF-8
SNOW = "\N{CJK UNIFIED IDEOGRAPH-96EA}"  # 3 bytes
HARPOON = "\N{COMBINING LEFT HARPOON ABOVE}"  # 3 bytes, a combining character
SNAPSHOT_DIR = Path("/var/lib/libvirt/qemu/snapshot")


def snapshot_table(image: Path) -> bytes:
    """The image's internal snapshot table as qemu-img lists it (raw: names may be cut)."""
    return subprocess.run(
        ["qemu-img", "snapshot", "-l", "-U", str(image)], capture_output=True, check=True
    ).stdout


def metadata_files(vm: str) -> list[str]:
    folder = SNAPSHOT_DIR / vm
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def padded_to(prefix: str, unit: str, size: int) -> str:
    """``prefix`` followed by ``unit`` repeated, then ASCII, to exactly ``size`` bytes."""
    count = (size - utf8_length(prefix)) // utf8_length(unit)
    name = prefix + unit * count
    return name + "x" * (size - utf8_length(name))


@pytest.fixture
def loader(system_loader: SnapshotLoader) -> SnapshotLoader:
    return system_loader


@pytest.mark.parametrize(
    "name",
    [
        EMOJI * (MAX_NAME_BYTES // 4),
        SNOW * (MAX_NAME_BYTES // 3),
        padded_to("a", HARPOON, MAX_NAME_BYTES),
    ],
    ids=["emoji", "cjk", "combining"],
)
def test_the_longest_name_the_validator_accepts_is_taken_and_deleted_by_libvirt(
    make_guest: GuestFactory, loader: SnapshotLoader, name: str
) -> None:
    assert utf8_length(name) == MAX_NAME_BYTES
    assert validate_snapshot_name(name) == name
    guest = make_guest()
    image = guest.disks["vda"]
    guest.write(0x5A, 0, MIB)
    description = EMOJI * 4000  # the longest description: 16,000 bytes
    result = take_snapshot(
        loader,
        guest.dom,
        TakeRequest(name, description=description, mode=SnapshotMode.INTERNAL_DISK),
    )
    assert result.name == name
    snapshot = guest.dom.snapshotLookupByName(name)
    assert snapshot.getName() == name
    assert f"<description>{escape(description)}</description>" in snapshot.getXMLDesc(0)
    assert internal_snapshots_in(image) == [name]  # byte for byte, not cut
    assert metadata_files(guest.name) == [f"{name}.xml"]

    delete_snapshot(loader, guest.dom, name)
    assert guest.dom.listAllSnapshots(0) == []
    assert internal_snapshots_in(image) == []
    assert metadata_files(guest.name) == []
    assert guest.holds(0x5A, 0, MIB)


def test_a_100_emoji_name_is_refused_before_anything_touches_the_disk(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    image = guest.disks["vda"]
    take_snapshot(loader, guest.dom, TakeRequest("kept", mode=SnapshotMode.INTERNAL_DISK))
    table, files = snapshot_table(image), metadata_files(guest.name)
    size, modified = image.stat().st_size, image.stat().st_mtime_ns
    name = EMOJI * 100
    with pytest.raises(ValidationError) as caught:
        take_snapshot(loader, guest.dom, TakeRequest(name, mode=SnapshotMode.INTERNAL_DISK))
    assert caught.value.message == (
        f"A snapshot name is 400 bytes in UTF-8 (100 characters); "
        f"libvirt allows at most {MAX_NAME_BYTES} bytes."
    )
    assert snapshot_table(image) == table
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (size, modified)
    assert metadata_files(guest.name) == files
    assert [s.getName() for s in guest.dom.listAllSnapshots(0)] == ["kept"]


def test_libvirt_itself_takes_the_measured_limit_and_orphans_one_byte_more(
    make_guest: GuestFactory,
) -> None:
    """The facts the limit rests on; should libvirt change them, this says so."""
    guest = make_guest()
    image = guest.disks["vda"]
    at_limit = EMOJI * (LIBVIRT_NAME_BYTES // 4) + "x" * (LIBVIRT_NAME_BYTES % 4)
    assert utf8_length(at_limit) == LIBVIRT_NAME_BYTES
    created = guest.dom.snapshotCreateXML(
        f"<domainsnapshot><name>{escape(at_limit)}</name></domainsnapshot>", 0
    )
    created.delete(0)
    over = at_limit + "x"
    with pytest.raises(libvirt.libvirtError, match="unable to save metadata"):
        guest.dom.snapshotCreateXML(
            f"<domainsnapshot><name>{escape(over)}</name></domainsnapshot>", 0
        )
    # What the validator prevents: QEMU kept the snapshot, libvirt does not know it.
    assert internal_snapshots_in(image) == [over]
    assert guest.dom.listAllSnapshots(0) == []


def test_a_vm_name_of_the_most_bytes_is_defined_started_and_removed(
    system_conn: libvirt.virConnect, guest_root: Path, domain_type: str
) -> None:
    image = guest_root / f"long-name-{uuid.uuid4().hex[:8]}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    prefix = f"{SESSION_PREFIX}{uuid.uuid4().hex[:6]}-"
    name = padded_to(prefix, EMOJI, MAX_NAME_BYTES)
    assert validate_vm_name(name) == name
    with pytest.raises(ValidationError):
        validate_vm_name(name + "x")
    xml = tiny_domain_xml(name, [DiskSpec(str(image))], domain_type=domain_type)
    dom = system_conn.defineXML(xml)
    log = Path("/var/log/libvirt/qemu") / f"{name}.log"
    try:
        assert dom.name() == name
        dom.create()  # the log file, pid file and status XML carry the name too
        assert dom.isActive()
        dom.snapshotCreateXML("<domainsnapshot><name>s</name></domainsnapshot>", 0).delete(0)
    finally:
        remove_domain(dom)
        log.unlink(missing_ok=True)
        image.unlink(missing_ok=True)
    assert name not in {d.name() for d in system_conn.listAllDomains(0)}
    over = padded_to(prefix, EMOJI, LIBVIRT_NAME_BYTES + 1)
    with pytest.raises(libvirt.libvirtError, match="Failed to create file"):
        system_conn.defineXML(
            tiny_domain_xml(over, [DiskSpec(str(image))], domain_type=domain_type)
        )
