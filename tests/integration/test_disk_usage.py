"""Delta sizes of real guests on the system daemon, exact to the cluster.

Every guest gets data written at known offsets between its snapshots (through QEMU's
``qemu-io`` monitor command while it runs, with ``qemu-io`` on the active layer while it
is shut off). Images use 64 KiB clusters, so a write of N bytes at an aligned offset
takes N bytes rounded up to whole clusters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from tests.integration.conftest import SESSION_PREFIX, SYSTEM_URI, Guest, GuestFactory, qemu_img
from vmsnapgui.core.disk_usage import DiskUsage, DomainUsage, SnapshotUsage
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, SnapshotDisk
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.virt.connection import Connection
from vmsnapgui.virt.disk_usage import disk_chains, measure
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

KIB = 1024
MIB = 1024 * KIB
CLUSTER = 64 * KIB


def clusters(nbytes: int) -> int:
    """Host bytes a fresh write of ``nbytes`` takes: whole 64 KiB clusters."""
    return -(-nbytes // CLUSTER) * CLUSTER


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def loader(system_conn: libvirt.virConnect) -> Iterator[SnapshotLoader]:
    connection = Connection(SYSTEM_URI, monitor=False)
    connection.open()
    loader = SnapshotLoader(connection, max_threads=16)
    yield loader
    loader.close()
    connection.close()


PoolFactory = Callable[[Path], libvirt.virStoragePool]


@pytest.fixture
def make_pool(system_conn: libvirt.virConnect) -> Iterator[PoolFactory]:
    """Transient directory pools over test folders; destroyed (and so gone) afterwards."""
    pools: list[libvirt.virStoragePool] = []

    def factory(directory: Path) -> libvirt.virStoragePool:
        root = ET.Element("pool", type="dir")
        ET.SubElement(root, "name").text = f"{SESSION_PREFIX}pool-{uuid.uuid4().hex[:8]}"
        ET.SubElement(ET.SubElement(root, "target"), "path").text = str(directory)
        pool = system_conn.storagePoolCreateXML(ET.tostring(root, encoding="unicode"), 0)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        try:
            pool.destroy()
        except libvirt.libvirtError:
            pass


def usage(loader: SnapshotLoader, guest: Guest, **options: bool) -> DomainUsage:
    return measure(loader, loader.load(guest.name), **options)


def by_name(measured: DomainUsage) -> dict[str, SnapshotUsage]:
    return {snapshot.name: snapshot for snapshot in measured.snapshots}


def active_layer(guest: Guest, target: str = "vda") -> str:
    chain = next(c for c in disk_chains(guest.dom.XMLDesc(0)) if c.target == target)
    path = chain.layers[0].path
    assert path is not None
    return path


def write(guest: Guest, pattern: int, offset: int, length: int, target: str = "vda") -> None:
    """Write into the disk as the guest would: live, or with qemu-io on the active layer."""
    if guest.dom.isActive():
        guest.write(pattern, offset, length, target)
        return
    command = f"write -P {pattern:#x} {offset} {length}"
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, active_layer(guest, target)],
        check=True,
        capture_output=True,
    )


def flush(guest: Guest) -> None:
    """Make QEMU write its cached metadata, so the active layer on disk is current."""
    for index in range(len(guest.disks)):
        backend = f"/machine/peripheral/virtio-disk{index}/virtio-backend"
        reply = libvirt_qemu.qemuMonitorCommand(
            guest.dom,
            f'qemu-io -d {backend} "flush"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
        )
        assert reply.strip() == ""


def internal_snapshot(guest: Guest, name: str) -> None:
    """libvirt's default: internal, with memory when the guest runs."""
    guest.dom.snapshotCreateXML(snapshot_request_xml(name), 0)


def external_snapshot(guest: Guest, name: str, *, memory: bool) -> Path:
    """An external snapshot of vda (overlay beside the image); returns the memory file."""
    disk = SnapshotDisk("vda", DiskKind.EXTERNAL, str(guest.directory / f"vda.{name}"), "qcow2")
    memory_file = guest.directory / f"{name}.mem"
    if memory:
        xml = snapshot_request_xml(
            name, memory=MemoryKind.EXTERNAL, memory_file=str(memory_file), disks=(disk,)
        )
        guest.dom.snapshotCreateXML(xml, 0)
    else:
        xml = snapshot_request_xml(name, memory=MemoryKind.NONE, disks=(disk,))
        guest.dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
    return memory_file


def revert(guest: Guest, name: str) -> None:
    guest.dom.revertToSnapshot(guest.dom.snapshotLookupByName(name, 0), 0)


def vm_state_sizes(image: str) -> dict[str, int]:
    """What ``qemu-img info`` says each internal snapshot's saved state takes."""
    info = json.loads(qemu_img("info", "-U", "--output=json", image))
    return {s["name"]: int(s["vm-state-size"]) for s in info.get("snapshots", [])}


# --------------------------------------------------------------------------- internal


def test_internal_branches_of_a_shut_off_guest_have_exact_deltas_and_exclusive_bytes(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest(size="256M")
    write(guest, 0x11, 0, 8 * MIB)
    internal_snapshot(guest, "base")
    write(guest, 0x12, 16 * MIB, 4 * MIB)
    write(guest, 0x13, 0, 1 * MIB)  # overwrites data that base keeps
    internal_snapshot(guest, "left")
    revert(guest, "base")
    write(guest, 0x14, 32 * MIB, 2 * MIB)
    internal_snapshot(guest, "right")
    write(guest, 0x15, 64 * MIB, 3 * MIB + 100)  # ends 100 bytes into a cluster

    measured = usage(loader, guest)
    snapshots = by_name(measured)
    assert [s.name for s in measured.snapshots] == ["base", "left", "right"]
    # base: all shared (left keeps 7 MiB of it, right and Now all of it)
    assert snapshots["base"] == SnapshotUsage(
        "base", 8 * MIB, 0, 0, disks={"vda": DiskUsage(8 * MIB, 0)}
    )
    # left: 4 MiB new and 1 MiB rewritten; nothing else sees any of it
    assert snapshots["left"] == SnapshotUsage(
        "left", 5 * MIB, 5 * MIB, 0, disks={"vda": DiskUsage(5 * MIB, 5 * MIB)}
    )
    # right: shared with Now, which descends from it
    assert snapshots["right"] == SnapshotUsage(
        "right", 2 * MIB, 0, 0, disks={"vda": DiskUsage(2 * MIB, 0)}
    )
    assert measured.now == SnapshotUsage(
        "Now",
        clusters(3 * MIB + 100),
        clusters(3 * MIB + 100),
        None,
        disks={"vda": DiskUsage(3 * MIB + CLUSTER, 3 * MIB + CLUSTER)},
    )
    assert measured.total_bytes == 18 * MIB + CLUSTER
    assert measured.complete is True


def test_internal_snapshots_of_a_running_guest_count_their_memory_once(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest(disks=("vda", "vdb"), start=True)
    write(guest, 0x21, 0, 4 * MIB)
    write(guest, 0x22, 0, 1 * MIB, target="vdb")
    internal_snapshot(guest, "one")
    write(guest, 0x23, 8 * MIB, 2 * MIB)
    internal_snapshot(guest, "two")
    revert(guest, "one")
    assert guest.dom.isActive()
    write(guest, 0x24, 8 * MIB, 3 * MIB, target="vdb")
    internal_snapshot(guest, "three")
    write(guest, 0x25, 16 * MIB, 1 * MIB)
    flush(guest)

    measured = usage(loader, guest)
    snapshots = by_name(measured)
    assert snapshots["one"].disks == {
        "vda": DiskUsage(4 * MIB, 0),
        "vdb": DiskUsage(1 * MIB, 0),
    }
    assert (snapshots["one"].delta_bytes, snapshots["one"].exclusive_bytes) == (5 * MIB, 0)
    assert snapshots["two"].disks == {"vda": DiskUsage(2 * MIB, 2 * MIB), "vdb": DiskUsage(0, 0)}
    assert snapshots["three"].disks == {"vda": DiskUsage(0, 0), "vdb": DiskUsage(3 * MIB, 0)}

    # QEMU saves the memory into the first disk's image only: counted once, exactly the
    # clusters of the state qemu-img reports.
    in_vda = vm_state_sizes(str(guest.disks["vda"]))
    in_vdb = vm_state_sizes(str(guest.disks["vdb"]))
    assert set(in_vdb.values()) == {0}
    for name in ("one", "two", "three"):
        assert in_vda[name] > 0
        assert snapshots[name].vmstate_bytes == clusters(in_vda[name])

    now = measured.now
    assert now is not None
    assert now.disks == {"vda": DiskUsage(1 * MIB, 1 * MIB), "vdb": DiskUsage(0, 0)}
    assert now.approximate is True  # running: QEMU could have been mid-write
    assert now.note is not None and "the VM is running" in now.note
    assert measured.total_bytes == 11 * MIB + sum(clusters(size) for size in in_vda.values())


# --------------------------------------------------------------------------- external


def test_an_external_chain_of_a_running_guest_puts_each_delta_in_its_frozen_layer(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest(start=True)
    write(guest, 0x31, 0, 4 * MIB)
    external_snapshot(guest, "disk-only", memory=False)
    write(guest, 0x32, 8 * MIB, 2 * MIB)
    memory_file = external_snapshot(guest, "with-memory", memory=True)
    write(guest, 0x33, 16 * MIB, 1 * MIB)
    flush(guest)

    measured = usage(loader, guest)
    snapshots = by_name(measured)
    external_note = "exclusive bytes are measured for internal snapshots only"
    assert snapshots["disk-only"] == SnapshotUsage(
        "disk-only", 4 * MIB, None, 0, note=external_note, disks={"vda": DiskUsage(4 * MIB)}
    )
    saved = os.stat(memory_file).st_blocks * 512
    assert saved > 0
    assert snapshots["with-memory"] == SnapshotUsage(
        "with-memory", 2 * MIB, None, saved, note=external_note, disks={"vda": DiskUsage(2 * MIB)}
    )
    assert measured.now is not None
    assert measured.now.disks == {"vda": DiskUsage(1 * MIB, 1 * MIB)}
    assert measured.now.approximate is True
    assert measured.total_bytes == 7 * MIB + saved

    # Shut off, nothing is in flight any more: the same numbers, no longer approximate.
    guest.dom.destroy()
    stopped = usage(loader, guest)
    assert stopped.to_json() == measured.to_json()
    assert stopped.now is not None
    assert (stopped.now.approximate, stopped.now.note) == (False, None)


def test_internal_snapshots_inside_an_external_chain_are_exact_too(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest(start=True)
    write(guest, 0x41, 0, 4 * MIB)
    internal_snapshot(guest, "inside")
    write(guest, 0x42, 8 * MIB, 2 * MIB)
    external_snapshot(guest, "outside", memory=False)
    write(guest, 0x43, 16 * MIB, 1 * MIB)
    internal_snapshot(guest, "inside-overlay")  # lives in the overlay
    write(guest, 0x44, 24 * MIB, 1 * MIB)
    flush(guest)

    measured = usage(loader, guest)
    snapshots = by_name(measured)
    assert [s.name for s in measured.snapshots] == ["inside", "outside", "inside-overlay"]
    assert snapshots["inside"].disks == {"vda": DiskUsage(4 * MIB, 0)}
    # what the base image gained after "inside", until "outside" froze it
    assert snapshots["outside"].disks == {"vda": DiskUsage(2 * MIB)}
    # the overlay started empty when "outside" was taken
    assert snapshots["inside-overlay"].disks == {"vda": DiskUsage(1 * MIB, 0)}
    assert measured.now is not None
    assert measured.now.disks == {"vda": DiskUsage(1 * MIB, 1 * MIB)}

    base = vm_state_sizes(str(guest.disks["vda"]))
    overlay = vm_state_sizes(str(guest.directory / "vda.outside"))
    assert snapshots["inside"].vmstate_bytes == clusters(base["inside"]) > 0
    assert snapshots["inside-overlay"].vmstate_bytes == clusters(overlay["inside-overlay"]) > 0
    assert snapshots["outside"].vmstate_bytes == 0
    assert measured.complete is True


def test_a_disk_added_after_a_snapshot_holds_nothing_of_it(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    write(guest, 0x51, 0, 2 * MIB)
    internal_snapshot(guest, "before")
    extra = guest.directory / "vdb.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(extra), "64M")
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=str(extra))
    ET.SubElement(disk, "target", dev="vdb", bus="virtio")
    guest.dom.attachDeviceFlags(
        ET.tostring(disk, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_CONFIG
    )
    write(guest, 0x52, 0, 1 * MIB, target="vdb")
    write(guest, 0x53, 4 * MIB, 1 * MIB)
    internal_snapshot(guest, "after")

    snapshots = by_name(usage(loader, guest))
    assert snapshots["before"].disks == {"vda": DiskUsage(2 * MIB, 0), "vdb": DiskUsage(0, 0)}
    assert snapshots["before"].note is None
    assert snapshots["after"].disks == {
        "vda": DiskUsage(1 * MIB, 0),
        "vdb": DiskUsage(1 * MIB, 0),
    }


def test_a_disk_removed_after_a_snapshot_leaves_its_share_unknown_not_zero(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest(disks=("vda", "vdb"))
    write(guest, 0x54, 0, 1 * MIB)
    write(guest, 0x55, 0, 2 * MIB, target="vdb")
    internal_snapshot(guest, "both")
    vdb = next(
        e
        for e in ET.fromstring(guest.dom.XMLDesc(0)).iter("disk")
        if e.find("target[@dev='vdb']") is not None
    )
    guest.dom.detachDeviceFlags(
        ET.tostring(vdb, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_CONFIG
    )

    (snapshot,) = usage(loader, guest).snapshots
    assert snapshot.disks == {"vda": DiskUsage(1 * MIB, 0), "vdb": DiskUsage(None, None)}
    assert snapshot.delta_bytes is None
    assert snapshot.note == "vdb: the VM no longer has this disk, so its share is not measured"


def test_a_chain_the_definition_does_not_spell_out_is_followed_through_the_headers(
    loader: SnapshotLoader, make_guest: GuestFactory, make_pool: PoolFactory
) -> None:
    guest = make_guest()
    write(guest, 0xA1, 0, 2 * MIB)
    internal_snapshot(guest, "in-base")  # found only by reading the overlay's header
    overlay = guest.directory / "overlay.qcow2"
    # A relative backing name, as tools often write: resolved against the overlay's folder.
    qemu_img("create", "-q", "-f", "qcow2", "-b", "vda.qcow2", "-F", "qcow2", str(overlay))
    old = next(iter(ET.fromstring(guest.dom.XMLDesc(0)).iter("disk")))
    guest.dom.detachDeviceFlags(
        ET.tostring(old, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_CONFIG
    )
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=str(overlay))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    guest.dom.attachDeviceFlags(
        ET.tostring(disk, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_CONFIG
    )
    (chain,) = disk_chains(guest.dom.XMLDesc(0))
    assert chain.complete is False  # libvirt has not looked behind the overlay

    write(guest, 0xA2, 4 * MIB, 1 * MIB)
    external_snapshot(guest, "ext", memory=False)
    write(guest, 0xA3, 8 * MIB, 3 * MIB)

    measured = usage(loader, guest)
    assert [(s.name, s.delta_bytes) for s in measured.snapshots] == [
        ("in-base", 2 * MIB),
        ("ext", 1 * MIB),
    ]
    assert measured.now is not None and measured.now.delta_bytes == 3 * MIB
    assert measured.complete is True
    assert measured.notes == (
        "The first disk is not in a storage pool, so its free space is not known.",
    )

    make_pool(guest.directory)
    assert usage(loader, guest, via_volume=True).snapshots == measured.snapshots


# --------------------------------------------------------------------------- sources


def test_reading_through_storage_volumes_gives_the_same_numbers_as_local_files(
    loader: SnapshotLoader, make_guest: GuestFactory, make_pool: PoolFactory
) -> None:
    guest = make_guest()
    pool = make_pool(guest.directory)
    write(guest, 0x61, 0, 2 * MIB)
    internal_snapshot(guest, "a")
    write(guest, 0x62, 4 * MIB, 1 * MIB)
    # The overlay appears after the pool's last refresh: the lookup must refresh it.
    external_snapshot(guest, "b", memory=False)
    write(guest, 0x63, 8 * MIB, 3 * MIB)

    local = usage(loader, guest, via_volume=False)
    remote = usage(loader, guest, via_volume=True)
    local_json, remote_json = local.to_json(), remote.to_json()
    # Free space is the one figure that differs: here the kernel's (what a file can
    # really take), through the pool libvirt's (which counts root's reserved blocks).
    local_free = local_json["pool"].pop("available")
    remote_free = remote_json["pool"].pop("available")
    assert remote_json == local_json
    stats = os.statvfs(guest.directory)
    assert abs(local_free - stats.f_bavail * stats.f_frsize) < 64 * MIB
    assert local_free <= remote_free
    assert [(s.name, s.delta_bytes) for s in remote.snapshots] == [("a", 2 * MIB), ("b", 1 * MIB)]
    assert remote.now is not None and remote.now.delta_bytes == 3 * MIB
    assert remote.pool is not None
    assert remote.pool.name == pool.name()
    _state, capacity, _allocation, _available = pool.info()
    assert remote.pool.capacity == capacity
    assert 0 < remote.pool.available <= capacity
    assert remote.notes == ()


def test_a_disk_neither_local_nor_in_a_pool_has_no_numbers_and_says_why(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    write(guest, 0x71, 0, 2 * MIB)
    internal_snapshot(guest, "a")
    write(guest, 0x72, 4 * MIB, 1 * MIB)
    image = str(guest.disks["vda"])

    measured = usage(loader, guest, via_volume=True)
    (snapshot,) = measured.snapshots
    assert snapshot.disks == {"vda": DiskUsage(None, None)}
    assert (snapshot.delta_bytes, snapshot.exclusive_bytes) == (None, None)
    assert snapshot.vmstate_bytes == 0  # a shut-off guest's snapshot saves no memory
    assert snapshot.note is not None
    assert snapshot.note.startswith(f"{image}: not in a storage pool (libvirt reports ")
    assert measured.now is not None and measured.now.delta_bytes is None
    assert measured.pool is None
    assert measured.complete is False
    assert measured.total_bytes is None
    assert "The first disk is not in a storage pool, so its free space is not known." in (
        measured.notes
    )


def test_a_missing_disk_file_is_named_in_every_note(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    write(guest, 0x81, 0, 1 * MIB)
    internal_snapshot(guest, "a")
    guest.disks["vda"].unlink()

    measured = usage(loader, guest)
    note = f"{guest.disks['vda']}: file missing"
    assert [(s.delta_bytes, s.note) for s in measured.snapshots] == [(None, note)]
    assert measured.now is not None
    assert (measured.now.delta_bytes, measured.now.note) == (None, note)


def test_vmsnap_du_json_prints_exactly_what_measure_finds(
    loader: SnapshotLoader, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    write(guest, 0x91, 0, 3 * MIB)
    internal_snapshot(guest, "only")
    write(guest, 0x92, 0, 1 * MIB)

    argv = [sys.executable, "-m", "vmsnapgui", "-c", SYSTEM_URI, "du", guest.name, "--json"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == usage(loader, guest).to_json()
    assert json.loads(result.stdout)["snapshots"][0]["delta_bytes"] == 3 * MIB

    # VMSNAP_DU_VIA_VOLUME=1 makes the command read as a remote client would: no pool
    # holds this disk, so it has no numbers, only the reason.
    env = dict(os.environ, VMSNAP_DU_VIA_VOLUME="1")
    remote = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    assert remote.returncode == 0, remote.stderr
    document = json.loads(remote.stdout)
    assert document == usage(loader, guest, via_volume=True).to_json()
    assert document["complete"] is False
    assert "not in a storage pool" in document["snapshots"][0]["note"]
