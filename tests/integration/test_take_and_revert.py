"""Taking and reverting snapshots on real QEMU guests, checked with virsh and disk bytes."""

from __future__ import annotations

import os

import libvirt
import pytest

from tests.integration.conftest import MIB, SYSTEM_URI, GuestFactory, virsh
from tests.integration.virsh_view import virsh_snapshot_view
from vmsnapgui.core.progress import Cancelled, CancelToken, Progress
from vmsnapgui.core.validation import ValidationError
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.revert_snapshot import EndState, revert_snapshot
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_options, take_snapshot


@pytest.fixture
def loader(system_loader: SnapshotLoader) -> SnapshotLoader:
    return system_loader


def state_of(dom: libvirt.virDomain) -> int:
    return int(dom.state()[0])


# -- take -------------------------------------------------------------------------


def test_a_shut_off_vm_takes_internal_and_external_disk_snapshots(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    options = take_options(loader, guest.dom)
    assert options.default_mode is SnapshotMode.INTERNAL_DISK
    assert options.modes[SnapshotMode.INTERNAL_MEMORY].reason == (
        "The VM is not running, so there is no memory to save."
    )
    internal = take_snapshot(loader, guest.dom, TakeRequest("offline-internal", "first"))
    assert internal.mode is SnapshotMode.INTERNAL_DISK
    external = take_snapshot(
        loader, guest.dom, TakeRequest("offline-external", mode=SnapshotMode.EXTERNAL_DISK)
    )
    view = virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]
    assert view["offline-internal"]["disks"][0]["kind"] == "internal"
    assert view["offline-internal"]["description"] == "first"
    assert view["offline-external"]["disks"][0]["kind"] == "external"
    assert view["offline-external"]["disks"][0]["file"] == external.files[0]
    assert os.path.exists(external.files[0])
    assert guest.active_image() == external.files[0]


@pytest.mark.parametrize(
    ("mode", "memory", "disk_kind"),
    [
        (SnapshotMode.INTERNAL_MEMORY, "internal", "internal"),
        (SnapshotMode.EXTERNAL_MEMORY, "external", "external"),
        (SnapshotMode.EXTERNAL_DISK, "no", "external"),
    ],
)
def test_a_running_vm_takes_each_kind_and_keeps_running(
    make_guest: GuestFactory,
    loader: SnapshotLoader,
    mode: SnapshotMode,
    memory: str,
    disk_kind: str,
) -> None:
    guest = make_guest(start=True)
    guest.write(0x5A, 0, 2 * MIB)
    seen: list[Progress] = []
    result = take_snapshot(loader, guest.dom, TakeRequest("live", mode=mode), seen.append)
    assert result.name == "live"
    assert seen[0].can_cancel is (mode is SnapshotMode.EXTERNAL_MEMORY)
    assert seen[-1].phase == "Done"
    snapshot = virsh_snapshot_view(SYSTEM_URI, guest.name)["snapshots"]["live"]
    assert snapshot["memory"] == memory
    assert snapshot["disks"][0]["kind"] == disk_kind
    assert snapshot["state"] == (
        "disk-snapshot" if mode is SnapshotMode.EXTERNAL_DISK else "running"
    )
    if memory == "external":
        assert os.path.getsize(snapshot["memory_file"]) > 0
    assert state_of(guest.dom) == libvirt.VIR_DOMAIN_RUNNING
    assert guest.holds(0x5A, 0, 2 * MIB)


def test_a_default_name_comes_from_the_time_and_is_unique(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    first = take_snapshot(loader, guest.dom, TakeRequest())
    second = take_snapshot(loader, guest.dom, TakeRequest())
    assert first.name.startswith("snapshot-20")
    assert second.name == f"{first.name}-2"


def test_bad_names_and_impossible_options_are_refused_before_libvirt_is_asked(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("exists"))
    for name, message in [
        ("exists", "There is already a snapshot called 'exists'."),
        ("a/b", "A snapshot name cannot contain '/'."),
        ("<x>", "A snapshot name cannot contain < > (they break XML and shell scripts)."),
    ]:
        with pytest.raises(ValidationError) as caught:
            take_snapshot(loader, guest.dom, TakeRequest(name))
        assert caught.value.message == message
    with pytest.raises(ValidationError, match="no memory to save"):
        take_snapshot(loader, guest.dom, TakeRequest("m", mode=SnapshotMode.INTERNAL_MEMORY))
    with pytest.raises(ValidationError, match="Quiescing needs a running VM"):
        take_snapshot(loader, guest.dom, TakeRequest("q", quiesce=True))
    assert virsh(SYSTEM_URI, "snapshot-list", guest.name, "--name").stdout.split() == ["exists"]


def test_raw_disks_cannot_hold_internal_snapshots_and_say_so(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(fmt="raw")
    options = take_options(loader, guest.dom)
    assert options.modes[SnapshotMode.INTERNAL_DISK].reason == (
        "Disk vda is raw; only qcow2 disks can hold internal snapshots."
    )
    assert options.default_mode is SnapshotMode.EXTERNAL_DISK


def test_quiesce_without_a_guest_agent_is_unavailable_with_the_reason(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    assert take_options(loader, guest.dom).quiesce.reason == (
        "Quiescing needs the QEMU guest agent running in the VM."
    )


def test_mixing_internal_and_external_is_warned_about(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("inside"))
    warning = take_options(loader, guest.dom).mixing_warning(SnapshotMode.EXTERNAL_DISK)
    assert warning is not None and "already has internal snapshots" in warning
    with pytest.raises(ValidationError, match="Mixing internal and external"):
        take_snapshot(
            loader,
            guest.dom,
            TakeRequest("outside", mode=SnapshotMode.EXTERNAL_DISK, allow_mixing=False),
        )


def test_cancelling_a_memory_snapshot_leaves_no_snapshot_and_no_files(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    # Saving memory no OS has touched is quick (QEMU skips zero pages): 0.25 s for
    # 4 GiB here, about one progress poll, so the cancel sometimes landed after the
    # save had finished. 16 GiB (never allocated on the host) takes 0.65-0.8 s.
    guest = make_guest(start=True, memory_mib=16384)
    before = sorted(os.listdir(guest.directory))
    cancel = CancelToken()
    reports: list[Progress] = []

    def progress(update: Progress) -> None:
        reports.append(update)
        if update.done:  # QEMU has started writing memory: cancel now
            cancel.cancel()

    with pytest.raises(Cancelled) as caught:
        take_snapshot(
            loader,
            guest.dom,
            TakeRequest("cancelled", mode=SnapshotMode.EXTERNAL_MEMORY),
            progress,
            cancel,
        )
    assert caught.value.message == "Cancelled; no snapshot was taken and its files were removed."
    assert any(r.total and r.total >= 16384 * MIB for r in reports)  # real byte progress
    assert virsh(SYSTEM_URI, "snapshot-list", guest.name, "--name").stdout.split() == []
    assert sorted(os.listdir(guest.directory)) == before
    assert state_of(guest.dom) == libvirt.VIR_DOMAIN_RUNNING


# -- revert -----------------------------------------------------------------------


def test_revert_keeps_a_safety_snapshot_of_now(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    guest.write(0xA1, 0, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("before-work"))
    guest.write(0xB2, 0, 1 * MIB)  # unsaved work
    result = revert_snapshot(loader, guest.dom, "before-work")
    assert result.safety_snapshot is not None
    assert result.safety_snapshot.startswith("before-revert-")
    assert guest.holds(0xA1, 0, 1 * MIB)  # the snapshot's data is back
    assert not guest.holds(0xB2, 0, 1 * MIB)
    view = virsh_snapshot_view(SYSTEM_URI, guest.name)
    assert view["current"] == "before-work"
    safety = view["snapshots"][result.safety_snapshot]
    assert "just before reverting to 'before-work'" in safety["description"]
    assert safety["parent"] == "before-work"
    # The safety snapshot really holds the unsaved work.
    revert_snapshot(loader, guest.dom, result.safety_snapshot, safety_snapshot=False)
    assert guest.holds(0xB2, 0, 1 * MIB)


@pytest.mark.parametrize(
    ("end_state", "expected"),
    [
        (EndState.SAVED, libvirt.VIR_DOMAIN_SHUTOFF),
        (EndState.RUNNING, libvirt.VIR_DOMAIN_RUNNING),
        (EndState.PAUSED, libvirt.VIR_DOMAIN_PAUSED),
    ],
)
def test_revert_ends_in_the_state_asked_for(
    make_guest: GuestFactory, loader: SnapshotLoader, end_state: EndState, expected: int
) -> None:
    guest = make_guest()
    guest.write(0xC3, 0, 1 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("cold"))  # shut off: no memory
    guest.write(0xD4, 0, 1 * MIB)
    revert_snapshot(loader, guest.dom, "cold", end_state=end_state, safety_snapshot=False)
    assert state_of(guest.dom) == expected
    assert guest.holds(0xC3, 0, 1 * MIB)
    assert not guest.holds(0xD4, 0, 1 * MIB)
    assert virsh(SYSTEM_URI, "snapshot-list", guest.name, "--name").stdout.split() == ["cold"]


def test_reverting_to_an_external_snapshot_on_old_libvirt_is_refused_with_the_version(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest(start=True)
    take_snapshot(loader, guest.dom, TakeRequest("ext", mode=SnapshotMode.EXTERNAL_DISK))
    caps = loader.connection.capabilities
    if caps.external_revert:
        pytest.skip("this libvirt can revert external snapshots")
    with pytest.raises(VirtError) as caught:
        revert_snapshot(loader, guest.dom, "ext")
    assert caught.value.message == (
        "Reverting to the external snapshot 'ext' needs libvirt 9.9 or newer on the host; "
        f"it runs {caps.libvirt_version_text}."
    )
    assert virsh(SYSTEM_URI, "snapshot-list", guest.name, "--name").stdout.split() == ["ext"]


def test_reverting_to_a_missing_snapshot_is_one_sentence(
    make_guest: GuestFactory, loader: SnapshotLoader
) -> None:
    guest = make_guest()
    with pytest.raises(VirtError) as caught:
        revert_snapshot(loader, guest.dom, "ghost")
    assert (
        caught.value.message
        == f"The virtual machine {guest.name!r} has no snapshot called 'ghost'."
    )
