"""Delta sizes on libvirt's test driver, whose disks exist nowhere: nothing is guessed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmsnapgui.core.disk_usage import DomainUsage
from vmsnapgui.virt.connection import Connection
from vmsnapgui.virt.disk_usage import measure
from vmsnapgui.virt.snapshot_loader import SnapshotLoader


@pytest.fixture
def loader(lab_uri: str) -> Iterator[SnapshotLoader]:
    connection = Connection(lab_uri, monitor=False)
    connection.open()
    loader = SnapshotLoader(connection, max_threads=8)
    yield loader
    loader.close()
    connection.close()


def usage_of(loader: SnapshotLoader, domain: str) -> DomainUsage:
    return measure(loader, loader.load(domain))


def test_missing_internal_images_give_no_sizes_and_name_the_missing_file(
    loader: SnapshotLoader,
) -> None:
    usage = usage_of(loader, "web")
    assert [s.name for s in usage.snapshots] == list(loader.load("web").tree.names())
    for snapshot in usage.snapshots:
        assert snapshot.delta_bytes is None
        assert snapshot.exclusive_bytes is None
        assert snapshot.note is not None
        assert "/var/lib/libvirt/images/web.qcow2: file missing" in snapshot.note
    assert usage.now is not None and usage.now.delta_bytes is None
    assert usage.complete is False
    assert usage.total_bytes is None


def test_saved_memory_inside_a_missing_image_is_unknown_but_no_memory_is_none_saved(
    loader: SnapshotLoader,
) -> None:
    by_name = {s.name: s for s in usage_of(loader, "web").snapshots}
    assert by_name["nginx-installed"].vmstate_bytes is None  # memory='internal'
    assert by_name["before-upgrade"].vmstate_bytes is None
    assert by_name["base"].vmstate_bytes == 0  # memory='no': the XML says none was saved


def test_external_snapshots_name_their_missing_overlays_and_memory_files(
    loader: SnapshotLoader,
) -> None:
    usage = usage_of(loader, "db")
    first, second, third = usage.snapshots
    assert first.note == (
        "vda: its overlay /var/lib/libvirt/images/db.s1: file missing; "
        "exclusive bytes are measured for internal snapshots only"
    )
    assert second.vmstate_bytes is None
    assert second.note is not None
    assert "memory file /var/lib/libvirt/qemu/snapshot/db/s2.mem: file missing" in second.note
    assert third.note is not None
    assert third.note.startswith("vda: /var/lib/libvirt/images/db.s3: file missing")
    for snapshot in usage.snapshots:
        assert snapshot.delta_bytes is None
        assert snapshot.exclusive_bytes is None


def test_a_disk_left_out_of_every_snapshot_holds_nothing_of_them(loader: SnapshotLoader) -> None:
    for snapshot in usage_of(loader, "db").snapshots:
        assert snapshot.disks["vdb"].delta_bytes == 0  # snapshot='no' for vdb
        assert snapshot.disks["vda"].delta_bytes is None


def test_now_of_a_running_vm_with_missing_disks_is_unknown_and_says_why(
    loader: SnapshotLoader,
) -> None:
    now = usage_of(loader, "db").now
    assert now is not None
    assert now.delta_bytes is None
    assert now.disks["vda"].delta_bytes is None
    assert now.disks["vdb"].delta_bytes is None
    assert now.note is not None
    assert "/var/lib/libvirt/images/db.s3: file missing" in now.note
    assert "the VM is running" in now.note
    assert now.approximate is True


def test_no_pool_holds_the_disks_and_the_usage_says_so(loader: SnapshotLoader) -> None:
    usage = usage_of(loader, "web")
    assert usage.pool is None
    assert "The first disk is not in a storage pool, so its free space is not known." in usage.notes
    assert usage.to_json()["pool"] is None


def test_a_vm_without_disks_or_snapshots_holds_exactly_nothing(loader: SnapshotLoader) -> None:
    usage = usage_of(loader, "build")
    assert usage.snapshots == ()
    assert usage.now is not None and usage.now.delta_bytes == 0
    assert usage.complete is True
    assert usage.total_bytes == 0
