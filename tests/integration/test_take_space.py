"""Snapshots that cannot fit are refused with the numbers (issue 11, item 6).

An internal memory snapshot grows the first disk image by about the guest's memory, and
QEMU keeps that space when it fails half way: on a nearly full file system the image
used to grow until the disk was full, and the guest then got ENOSPC.
"""

from __future__ import annotations

import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import (
    MIB,
    SESSION_PREFIX,
    fill_up,
    internal_snapshots_in,
    qemu_img,
    remove_domain,
    unavailable,
)
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.validation import ValidationError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot


@pytest.fixture
def guest_on_small_disk(
    system_conn: libvirt.virConnect, guest_root: Path, domain_type: str
) -> Iterator[tuple[libvirt.virDomain, Path]]:
    """A running 256 MiB guest whose disk image lives on a 400 MiB file system (where
    QEMU, running as another user, can reach it)."""
    folder = guest_root / f"small-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400M,mode=0777", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    image = folder / "vda.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "64M")
    name = f"{SESSION_PREFIX}space-{uuid.uuid4().hex[:6]}"
    # Guest memory full of random bytes, as a busy guest's is: QEMU's device loader puts
    # a 200 MiB file into RAM at start, so the saved memory state really is that big.
    blob = guest_root / f"{name}-ram.bin"
    with open(blob, "wb") as out:
        for _ in range(200):
            out.write(os.urandom(MIB))
    blob.chmod(0o644)
    xml = tiny_domain_xml(name, [DiskSpec(str(image))], memory_mib=256, domain_type=domain_type)
    dom = system_conn.defineXML(with_ram_loaded_from(xml, blob))
    dom.create()
    yield dom, image
    remove_domain(dom)
    subprocess.run(["umount", "-l", str(folder)], check=False)
    blob.unlink()


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def with_ram_loaded_from(domain_xml: str, blob: Path) -> str:
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(domain_xml)
    extra = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    ET.SubElement(extra, f"{{{QEMU_NS}}}arg", value="-device")
    ET.SubElement(extra, f"{{{QEMU_NS}}}arg", value=f"loader,file={blob},addr=0x1000000")
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize(
    "mode", [SnapshotMode.INTERNAL_MEMORY, SnapshotMode.EXTERNAL_MEMORY], ids=lambda m: m.value
)
def test_a_memory_snapshot_that_cannot_fit_is_refused_with_the_numbers_and_touches_nothing(
    guest_on_small_disk: tuple[libvirt.virDomain, Path],
    system_loader: SnapshotLoader,
    mode: SnapshotMode,
) -> None:
    dom, image = guest_on_small_disk
    fill_up(image.parent, leave=150 * MIB)  # room for the disks, not for 256 MiB of memory
    size_before = os.stat(image).st_blocks
    files_before = set(os.listdir(image.parent))
    with pytest.raises(ValidationError) as refused:
        take_snapshot(system_loader, dom, TakeRequest("full", mode=mode))
    message = refused.value.message
    assert message.startswith("Not enough space for the snapshot (about 256 MiB of memory)")
    assert str(image.parent) in message and "is free" in message
    assert os.stat(image).st_blocks == size_before
    assert set(os.listdir(image.parent)) == files_before
    assert internal_snapshots_in(image) == []
    assert dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING
    assert dom.listAllSnapshots(0) == []


def test_a_disk_only_snapshot_still_fits_where_memory_would_not(
    guest_on_small_disk: tuple[libvirt.virDomain, Path], system_loader: SnapshotLoader
) -> None:
    dom, image = guest_on_small_disk
    fill_up(image.parent, leave=150 * MIB)
    taken = take_snapshot(system_loader, dom, TakeRequest("disks", mode=SnapshotMode.EXTERNAL_DISK))
    assert [s.getName() for s in dom.listAllSnapshots(0)] == ["disks"]
    assert all(Path(f).parent == image.parent for f in taken.files)
