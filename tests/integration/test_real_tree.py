"""``vmsnap tree`` on real QEMU guests agrees with virsh, snapshot by snapshot."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.conftest import MIB, SYSTEM_URI, GuestFactory
from tests.integration.virsh_view import assert_tree_matches_virsh
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, SnapshotDisk
from vmsnapgui.core.snapshot_xml import snapshot_request_xml


def vmsnap_tree(uri: str, domain: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", uri, "tree", domain, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_internal_branches_with_memory_match_virsh(make_guest: GuestFactory) -> None:
    guest = make_guest(start=True)
    dom = guest.dom
    guest.write(0x11, 0, 4 * MIB)
    dom.snapshotCreateXML(snapshot_request_xml("base", "first & <only>"), 0)
    guest.write(0x22, 4 * MIB, 2 * MIB)
    dom.snapshotCreateXML(snapshot_request_xml("branch-a"), 0)
    dom.revertToSnapshot(dom.snapshotLookupByName("base"), 0)
    guest.write(0x33, 8 * MIB, 1 * MIB)
    hostile = "ünïcode 'quotes' \"double\" & <angle> ;$(echo no)"
    dom.snapshotCreateXML(snapshot_request_xml(hostile, "line one\nline two"), 0)

    document = vmsnap_tree(SYSTEM_URI, guest.name)
    assert document["current"] == hostile
    by_name = {s["name"]: s for s in document["snapshots"]}
    assert by_name["base"]["children"] == ["branch-a", hostile]
    assert by_name["base"]["memory"] == "internal"
    assert by_name[hostile]["description"] == "line one\nline two"
    assert_tree_matches_virsh(document, SYSTEM_URI, guest.name)


def test_external_disk_only_and_memory_snapshots_match_virsh(make_guest: GuestFactory) -> None:
    guest = make_guest(start=True)
    dom = guest.dom
    guest.write(0x44, 0, 2 * MIB)
    overlay1 = guest.directory / "vda.ext1.qcow2"
    dom.snapshotCreateXML(
        snapshot_request_xml(
            "ext-disk-only",
            memory=MemoryKind.NONE,
            disks=(SnapshotDisk("vda", DiskKind.EXTERNAL, str(overlay1), "qcow2"),),
        ),
        0x10 | 0x80,  # DISK_ONLY | ATOMIC
    )
    guest.write(0x55, 2 * MIB, 2 * MIB)
    overlay2 = guest.directory / "vda.ext2.qcow2"
    memory_file = guest.directory / "ext2.mem"
    dom.snapshotCreateXML(
        snapshot_request_xml(
            "ext-with-memory",
            memory=MemoryKind.EXTERNAL,
            memory_file=str(memory_file),
            disks=(SnapshotDisk("vda", DiskKind.EXTERNAL, str(overlay2), "qcow2"),),
        ),
        0,
    )
    document = vmsnap_tree(SYSTEM_URI, guest.name)
    by_name = {s["name"]: s for s in document["snapshots"]}
    assert by_name["ext-disk-only"]["state"] == "disk-snapshot"
    assert by_name["ext-disk-only"]["disks"] == [
        {"target": "vda", "kind": "external", "file": str(overlay1)}
    ]
    assert by_name["ext-with-memory"]["memory_file"] == str(memory_file)
    assert document["current"] == "ext-with-memory"
    assert_tree_matches_virsh(document, SYSTEM_URI, guest.name)


def test_a_shut_off_guest_with_two_disks(make_guest: GuestFactory) -> None:
    guest = make_guest(disks=("vda", "vdb"))
    guest.write(0x66, 0, 1 * MIB, target="vdb")
    guest.dom.snapshotCreateXML(snapshot_request_xml("offline"), 0)
    document = vmsnap_tree(SYSTEM_URI, guest.name)
    assert document["domain"]["state"] == "shutoff"
    assert [d["target"] for d in document["snapshots"][0]["disks"]] == ["vda", "vdb"]
    assert_tree_matches_virsh(document, SYSTEM_URI, guest.name)
