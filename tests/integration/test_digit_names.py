"""Internal snapshots whose names are only digits (issue 11, hostile input).

QEMU finds an internal snapshot by number or by name, whichever matches first in the
image's table, and libvirt hands it the name (``loadvm``, ``delvm``, ``qemu-img snapshot
-a/-d``). A snapshot called "1" made by another tool, in an image whose snapshot number 1
is "base", would make a revert restore "base" and a delete remove "base". vmsnap refuses
such names for new snapshots and refuses to revert or delete the ones it finds.
"""

from __future__ import annotations

import libvirt
import pytest

from tests.integration.conftest import MIB, GuestFactory, internal_snapshots_in
from vmsnapgui.core.validation import ValidationError
from vmsnapgui.virt.delete_snapshot import delete_snapshot
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.revert_snapshot import revert_snapshot
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import TakeRequest, take_snapshot


def made_elsewhere(dom: libvirt.virDomain, name: str) -> None:
    """An internal snapshot taken as virsh would, without vmsnap's checks."""
    dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>", 0)


def test_a_digits_name_that_numbers_another_snapshot_is_neither_reverted_nor_deleted(
    make_guest: GuestFactory, system_loader: SnapshotLoader
) -> None:
    guest = make_guest()
    guest.write(0x11, 0, MIB)
    made_elsewhere(guest.dom, "base")  # number 1 in the image
    guest.write(0x22, 0, MIB)
    made_elsewhere(guest.dom, "1")  # number 2, called "1"
    guest.write(0x33, 0, MIB)
    image = guest.disks["vda"]
    assert internal_snapshots_in(image) == ["base", "1"]

    with pytest.raises(VirtError) as refused:
        revert_snapshot(system_loader, guest.dom, "1", safety_snapshot=False)
    assert refused.value.message == (
        f"Snapshot '1' cannot be reverted to safely: {image} numbers snapshot 'base' 1, "
        "and QEMU would act on that one instead."
    )
    assert guest.holds(0x33, 0, MIB)

    with pytest.raises(VirtError) as refused:
        delete_snapshot(system_loader, guest.dom, "1")
    assert refused.value.message.startswith("Snapshot '1' cannot be deleted safely: ")
    assert internal_snapshots_in(image) == ["base", "1"]
    assert {s.getName() for s in guest.dom.listAllSnapshots(0)} == {"base", "1"}


def test_a_digits_name_that_is_its_own_number_reverts(
    make_guest: GuestFactory, system_loader: SnapshotLoader
) -> None:
    guest = make_guest()
    guest.write(0x11, 0, MIB)
    made_elsewhere(guest.dom, "1")  # number 1 and called "1": no other to mistake
    guest.write(0x22, 0, MIB)
    revert_snapshot(system_loader, guest.dom, "1", safety_snapshot=False)
    assert guest.holds(0x11, 0, MIB)


@pytest.mark.parametrize("name", ["1", "0042", "@now", "@base"])
def test_new_names_qemu_or_vmsnap_could_mistake_are_refused(
    make_guest: GuestFactory, system_loader: SnapshotLoader, name: str
) -> None:
    guest = make_guest()
    with pytest.raises(ValidationError):
        take_snapshot(system_loader, guest.dom, TakeRequest(name))
    assert guest.dom.snapshotNum(0) == 0
