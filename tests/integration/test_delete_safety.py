"""Deleting snapshots without harming what stands on them (issue 11, items 5, 11, 12).

- A linked clone stands on the frozen image of an external snapshot: deleting that
  snapshot commits into the clone's backing file. The delete must name the clone and
  refuse, leaving every byte as it was.
- libvirt 9.0 leaves an external snapshot's memory file behind; the delete removes it.
- libvirt 9.0 reports success when ``qemu-img snapshot -d`` failed on a damaged image;
  the delete must say the snapshot is still inside the image.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import (
    MIB,
    SYSTEM_URI,
    Guest,
    GuestFactory,
    image_holds,
    internal_snapshots_in,
    qemu_img,
    remove_domain,
)
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, SnapshotDisk
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.virt.delete_snapshot import DeleteMode, delete_snapshot, find_dependents
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot


@pytest.fixture
def loader(system_loader: SnapshotLoader) -> SnapshotLoader:
    return system_loader


def digest(path: str) -> str:
    with open(path, "rb") as image:
        return hashlib.sha256(image.read()).hexdigest()


def linked_clone_of(
    guest: Guest, frozen: str, system_conn: libvirt.virConnect
) -> libvirt.virDomain:
    """A VM whose disk is an overlay on ``frozen``, made by hand as another tool would."""
    overlay = guest.directory / "linked-clone.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", frozen, str(overlay))
    name = f"{guest.name}-linked"
    return system_conn.defineXML(tiny_domain_xml(name, [DiskSpec(str(overlay))]))


def test_deleting_the_snapshot_a_linked_clone_stands_on_is_refused_naming_the_clone(
    make_guest: GuestFactory, loader: SnapshotLoader, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest()
    guest.write(0x51, 0, MIB)
    frozen = guest.active_image()
    take_snapshot(loader, guest.dom, TakeRequest("base", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x52, MIB, MIB)  # into base's overlay: what a commit would push down
    clone = linked_clone_of(guest, frozen, system_conn)
    try:
        before = digest(frozen)
        with pytest.raises(VirtError) as refused:
            delete_snapshot(loader, guest.dom, "base")
        assert clone.name() in refused.value.message
        assert frozen in refused.value.message
        assert [s.getName() for s in guest.dom.listAllSnapshots(0)] == ["base"]
        assert digest(frozen) == before
        clone_disk = str(guest.directory / "linked-clone.qcow2")
        assert image_holds(clone_disk, 0x51, 0, MIB)
        assert image_holds(clone_disk, 0x00, MIB, MIB)  # not the source's later data

        # The command line names the clone and refuses before asking anything.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "vmsnapgui.cli",
                "-c",
                SYSTEM_URI,
                "delete",
                guest.name,
                "base",
                "--yes",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, result
        assert clone.name() in result.stderr and "Traceback" not in result.stderr
        assert digest(frozen) == before

        # With the clone gone, the same delete goes ahead and keeps the VM's bytes.
        remove_domain(clone)
        assert (
            find_dependents(
                loader, guest.name, loader.load(guest.dom).tree, "base", DeleteMode.SNAPSHOT
            ).holders
            == ()
        )
        delete_snapshot(loader, guest.dom, "base")
        assert guest.holds(0x51, 0, MIB) and guest.holds(0x52, MIB, MIB)
    finally:
        remove_domain(clone)


def test_a_running_linked_clone_is_found_through_its_live_chain(
    make_guest: GuestFactory, loader: SnapshotLoader, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest(start=True)
    guest.write(0x61, 0, MIB)
    frozen = guest.active_image()
    take_snapshot(loader, guest.dom, TakeRequest("base", mode=SnapshotMode.EXTERNAL_DISK))
    clone = linked_clone_of(guest, frozen, system_conn)
    try:
        clone.create()
        with pytest.raises(VirtError) as refused:
            delete_snapshot(loader, guest.dom, "base")
        assert clone.name() in refused.value.message
        assert guest.holds(0x61, 0, MIB)
    finally:
        remove_domain(clone)


def test_deleting_an_external_memory_snapshot_removes_its_memory_file(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    taken = take_snapshot(loader, guest.dom, TakeRequest("mem", mode=SnapshotMode.EXTERNAL_MEMORY))
    memory = next(f for f in taken.files if f.endswith(".mem"))
    assert os.path.getsize(memory) > 0
    plan = delete_snapshot(loader, guest.dom, "mem")
    assert not os.path.exists(memory)
    assert plan.removed_files == (memory,)
    assert guest.dom.listAllSnapshots(0) == []


def test_a_memory_file_another_snapshot_names_is_kept(
    make_guest: GuestFactory, loader: SnapshotLoader, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest(start=True)
    taken = take_snapshot(loader, guest.dom, TakeRequest("mem", mode=SnapshotMode.EXTERNAL_MEMORY))
    memory = next(f for f in taken.files if f.endswith(".mem"))
    # Another VM's snapshot record naming the same memory file (as an imported record
    # would): that file is not ours to remove.
    own_disk = guest.directory / "twin.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(own_disk), "16M")
    twin = system_conn.defineXML(tiny_domain_xml(f"{guest.name}-twin", [DiskSpec(str(own_disk))]))
    try:
        twin.snapshotCreateXML(
            snapshot_request_xml(
                "held",
                memory=MemoryKind.EXTERNAL,
                memory_file=memory,
                disks=(SnapshotDisk("vda", DiskKind.NONE),),
                state="running",
                created=1_700_000_000,
                domain_xml=twin.XMLDesc(0),
            ),
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE,
        )
        plan = delete_snapshot(loader, guest.dom, "mem")
        assert os.path.exists(memory)
        assert plan.removed_files == ()
    finally:
        remove_domain(twin)


def test_a_metadata_only_delete_keeps_the_memory_file(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    taken = take_snapshot(loader, guest.dom, TakeRequest("mem", mode=SnapshotMode.EXTERNAL_MEMORY))
    memory = next(f for f in taken.files if f.endswith(".mem"))
    plan = delete_snapshot(loader, guest.dom, "mem", DeleteMode.METADATA_ONLY)
    assert os.path.exists(memory) and plan.removed_files == ()


def test_a_delete_that_leaves_the_snapshot_inside_a_damaged_image_says_so(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("s1", mode=SnapshotMode.INTERNAL_DISK))
    image = str(guest.disks["vda"])
    # QEMU's "corrupt" bit: images so marked open read-only, so qemu-img snapshot -d
    # fails, and libvirt 9.0 reports the delete as done anyway.
    with open(image, "r+b") as raw:
        raw.seek(72)
        features = int.from_bytes(raw.read(8), "big")
        raw.seek(72)
        raw.write((features | 2).to_bytes(8, "big"))
    with pytest.raises(VirtError) as caught:
        delete_snapshot(loader, guest.dom, "s1")
    assert image in caught.value.message and "still holds" in caught.value.message
    assert internal_snapshots_in(Path(image)) == ["s1"]
