"""Deleting snapshots and cloning VMs on real QEMU guests: virsh, files and bytes agree."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import (
    MIB,
    SESSION_PREFIX,
    SYSTEM_URI,
    Guest,
    GuestFactory,
    TmpfsFactory,
    fill_up,
    image_holds,
    internal_snapshots_in,
    virsh,
)
from tests.integration.virsh_view import virsh_snapshot_view
from vmsnapgui.core.domain_xml import domain_disks
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import Cancelled, CancelToken, Progress
from vmsnapgui.core.validation import ValidationError
from vmsnapgui.virt.clone_domain import CloneRequest, clone_domain, clone_folders
from vmsnapgui.virt.delete_snapshot import DeleteMode, delete_snapshot
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot


@pytest.fixture
def loader(system_loader: SnapshotLoader) -> SnapshotLoader:
    return system_loader


def branching_guest(make_guest: GuestFactory, loader: SnapshotLoader) -> Guest:
    """root -> (a -> a1, b): internal, shut off, each with its own bytes."""
    guest = make_guest()
    guest.write(0x10, 0, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("root"))
    guest.write(0x20, 1 * MIB, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("a"))
    guest.write(0x21, 2 * MIB, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("a1"))
    guest.dom.revertToSnapshot(guest.dom.snapshotLookupByName("root"), 0)
    guest.write(0x30, 3 * MIB, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("b"))
    return guest


# -- delete -----------------------------------------------------------------------


def test_deleting_one_snapshot_moves_its_children_up(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = branching_guest(make_guest, loader)
    plan = delete_snapshot(loader, guest.dom, "a")
    assert plan.removes == ("a",)
    view = virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]
    assert sorted(view) == ["a1", "b", "root"]
    assert view["a1"]["parent"] == "root"
    assert "a" not in internal_snapshots_in(guest.disks["vda"])
    assert guest.holds(0x30, 3 * MIB, 1 * MIB)  # Now untouched


def test_deleting_with_children_removes_the_whole_branch(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = branching_guest(make_guest, loader)
    plan = delete_snapshot(loader, guest.dom, "a", DeleteMode.CHILDREN)
    assert set(plan.removes) == {"a", "a1"}
    assert sorted(virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]) == ["b", "root"]
    assert sorted(internal_snapshots_in(guest.disks["vda"])) == ["b", "root"]


def test_deleting_children_only_keeps_the_snapshot(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = branching_guest(make_guest, loader)
    plan = delete_snapshot(loader, guest.dom, "root", DeleteMode.CHILDREN_ONLY)
    assert set(plan.removes) == {"a", "a1", "b"}
    assert list(virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]) == ["root"]
    assert internal_snapshots_in(guest.disks["vda"]) == ["root"]


def test_metadata_only_forgets_but_keeps_the_data_in_the_image(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = branching_guest(make_guest, loader)
    plan = delete_snapshot(loader, guest.dom, "b", DeleteMode.METADATA_ONLY)
    assert any("stays inside the disk image" in w for w in plan.warnings)
    assert "b" not in virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]
    assert "b" in internal_snapshots_in(guest.disks["vda"])


def test_deleting_an_external_snapshot_merges_and_keeps_every_byte(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    guest.write(0x41, 0, 1 * MIB)
    first = take_snapshot(loader, guest.dom, TakeRequest("e1", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x42, 1 * MIB, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("e2", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x43, 2 * MIB, 1 * MIB)
    if not loader.connection.capabilities.external_delete:
        pytest.skip("libvirt here cannot delete external snapshots")
    seen: list[Progress] = []
    plan = delete_snapshot(loader, guest.dom, "e1", progress=seen.append)
    assert plan.merges and "merged into its child 'e2'" in plan.merges[0]
    view = virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]
    assert list(view) == ["e2"]
    assert not os.path.exists(first.files[0])  # its layer was merged away
    for pattern, offset in ((0x41, 0), (0x42, 1 * MIB), (0x43, 2 * MIB)):
        assert guest.holds(pattern, offset, 1 * MIB)


def test_external_snapshots_with_the_children_flags_are_refused_untouched(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("x1", mode=SnapshotMode.EXTERNAL_DISK))
    take_snapshot(loader, guest.dom, TakeRequest("x2", mode=SnapshotMode.EXTERNAL_DISK))
    for mode in (DeleteMode.CHILDREN, DeleteMode.CHILDREN_ONLY):
        with pytest.raises(VirtError) as caught:
            delete_snapshot(loader, guest.dom, "x1", mode)
        assert caught.value.message.startswith(
            "libvirt cannot delete external snapshots together with their children"
        )
    assert sorted(virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]) == ["x1", "x2"]


# -- clone ------------------------------------------------------------------------


def test_a_full_clone_from_an_internal_snapshot_has_the_bytes_as_they_were(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    guest = make_guest(start=True, nic=True)
    guest.write(0x51, 0, 2 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("golden"))
    guest.write(0x52, 0, 2 * MIB)  # after the snapshot: must not be in the clone
    name = f"{guest.name}-clone"
    clones.append(name)
    seen: list[Progress] = []
    result = clone_domain(loader, guest.dom, CloneRequest(name, "golden"), seen.append)
    assert any(p.unit == "bytes" and p.total and p.total > 0 for p in seen)
    clone = loader.connection.conn.lookupByName(name)
    assert clone.UUIDString() != guest.dom.UUIDString()
    source_macs = [m for m in guest.dom.XMLDesc(0).split() if m.startswith("address='52:54")]
    clone_macs = [m for m in clone.XMLDesc(0).split() if m.startswith("address='52:54")]
    assert source_macs and clone_macs and set(source_macs).isdisjoint(clone_macs)
    disk = domain_disks(clone.XMLDesc(0))[0]
    assert disk.source == str(guest.directory / f"{name}-vda.qcow2")
    assert image_holds(disk.source, 0x51, 0, 2 * MIB)
    assert not image_holds(disk.source, 0x52, 0, 2 * MIB)
    assert internal_snapshots_in(Path(disk.source)) == []  # flattened, no history
    assert result.files == (disk.source,)


def test_a_full_clone_from_an_external_snapshot_boots_with_the_same_bytes(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    guest = make_guest(start=True)
    guest.write(0x61, 0, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("ext", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x62, 0, 1 * MIB)
    name = f"{guest.name}-full"
    clones.append(name)
    result = clone_domain(loader, guest.dom, CloneRequest(name, "ext", start=True))
    assert result.started
    clone = loader.connection.conn.lookupByName(name)
    assert clone.isActive()
    cloned = Guest(
        clone, guest.directory, {"vda": Path(domain_disks(clone.XMLDesc(0))[0].source or "")}
    )
    assert cloned.holds(0x61, 0, 1 * MIB)
    assert not cloned.holds(0x62, 0, 1 * MIB)


def test_a_linked_clone_stands_on_the_snapshots_frozen_image(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    guest = make_guest()
    guest.write(0x71, 0, 1 * MIB)
    base = guest.active_image()
    take_snapshot(loader, guest.dom, TakeRequest("frozen", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0x72, 0, 1 * MIB)
    name = f"{guest.name}-linked"
    clones.append(name)
    result = clone_domain(loader, guest.dom, CloneRequest(name, "frozen", linked=True))
    overlay = result.files[0]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", overlay], capture_output=True, check=True
        ).stdout
    )
    assert info["full-backing-filename"] == base
    assert os.path.getsize(overlay) < 1 * MIB  # an overlay, not a copy
    assert image_holds(overlay, 0x71, 0, 1 * MIB)
    assert not image_holds(overlay, 0x72, 0, 1 * MIB)


def test_linked_clones_of_internal_snapshots_are_refused_with_the_reason(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("inside"))
    with pytest.raises(VirtError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(f"{guest.name}-x", "inside", linked=True))
    assert caught.value.message.startswith("Linked clones need an external snapshot")


def test_clone_names_are_validated_and_must_be_new(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    with pytest.raises(ValidationError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(guest.name, "s"))
    assert caught.value.message == f"There is already a virtual machine called {guest.name!r}."
    with pytest.raises(ValidationError):
        clone_domain(loader, guest.dom, CloneRequest("bad/name", "s"))


def test_cancelling_a_clone_leaves_no_files_and_no_vm(
    make_guest: GuestFactory, loader: SnapshotLoader, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest(size="2G")
    guest.write(0x81, 0, 768 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("big"))
    before = sorted(os.listdir(guest.directory))
    cancel = CancelToken()

    def progress(update: Progress) -> None:
        if update.unit == "bytes" and update.done:
            cancel.cancel()

    name = f"{guest.name}-cancelled"
    with pytest.raises(Cancelled):
        clone_domain(loader, guest.dom, CloneRequest(name, "big"), progress, cancel)
    assert sorted(os.listdir(guest.directory)) == before
    assert name not in {d.name() for d in system_conn.listAllDomains(0)}


def test_a_clone_that_does_not_fit_is_refused_before_copying(
    make_guest: GuestFactory, loader: SnapshotLoader, small_disk: TmpfsFactory
) -> None:
    small = small_disk("4M")
    guest = make_guest()
    guest.write(0x91, 0, 16 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    with pytest.raises(VirtError) as caught:
        clone_domain(
            loader, guest.dom, CloneRequest(f"{guest.name}-nofit", "s", target_dir=str(small))
        )
    assert "is free in" in caught.value.message
    assert os.listdir(small) == []


def test_a_disk_that_fills_up_during_the_copy_is_said_plainly_and_nothing_remains(
    make_guest: GuestFactory,
    loader: SnapshotLoader,
    small_disk: TmpfsFactory,
    system_conn: libvirt.virConnect,
) -> None:
    small = small_disk("160M")
    guest = make_guest()
    guest.write(0x92, 0, 32 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    name = f"{guest.name}-filled"

    def progress(update: Progress) -> None:
        # The space check has passed and the copy is about to start: something else
        # takes the disk's space now.
        if update.unit == "bytes" and not (small / "filler").exists():
            fill_up(small, leave=2 * MIB)

    with pytest.raises(UserError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(name, "s", target_dir=str(small)), progress)
    assert caught.value.message == (
        f"The disk filled up while copying: no space is left in {small}."
    )
    assert "No space left on device" in (caught.value.detail or "")
    assert os.listdir(small) == ["filler"]
    assert name not in {d.name() for d in system_conn.listAllDomains(0)}


def test_clones_can_go_to_any_folder_pool_of_the_host(
    loader: SnapshotLoader, system_conn: libvirt.virConnect, tmp_path: Path
) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    name = f"{SESSION_PREFIX}pool"
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = name
    ET.SubElement(ET.SubElement(root, "target"), "path").text = str(folder)
    pool = system_conn.storagePoolCreateXML(ET.tostring(root, encoding="unicode"), 0)
    try:
        found = {f.pool: f for f in clone_folders(loader)}
        assert found[name].path == str(folder)
        stats = os.statvfs(folder)
        free = stats.f_bavail * stats.f_frsize
        # What a copy can use there, as the space check counts it (not libvirt's
        # figure, which includes the blocks reserved for root).
        assert abs(found[name].available - free) < 64 * MIB
    finally:
        pool.destroy()
    assert name not in {f.pool for f in clone_folders(loader)}  # only active pools


def test_cloning_now_of_a_running_vm_is_refused_with_what_to_do(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    with pytest.raises(VirtError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(f"{guest.name}-now", None))
    assert "take a snapshot and clone from that" in caught.value.message


def test_cloning_now_of_a_shut_off_vm_copies_its_current_disk(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    guest = make_guest()
    guest.write(0xA5, 0, 1 * MIB)
    name = f"{guest.name}-now"
    clones.append(name)
    result = clone_domain(loader, guest.dom, CloneRequest(name, None))
    assert image_holds(result.files[0], 0xA5, 0, 1 * MIB)
    assert virsh(SYSTEM_URI, "domstate", name).stdout.strip() == "shut off"
