"""``vmsnap take|revert|delete|clone`` end to end on real guests, hostile input included."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import wait

import libvirt

from tests.integration.conftest import MIB, SYSTEM_URI, GuestFactory, remove_domain, virsh
from vmsnapgui.virt.connection import Connection
from vmsnapgui.virt.operation_queue import OperationQueue
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import TakeRequest, take_snapshot


def vmsnap(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", SYSTEM_URI, *argv],
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
    )


def names(domain: str) -> list[str]:
    return virsh(SYSTEM_URI, "snapshot-list", domain, "--name").stdout.split("\n")[:-1]


def test_take_revert_delete_round_trip_with_json(make_guest: GuestFactory) -> None:
    guest = make_guest(start=True)
    guest.write(0x11, 0, MIB)
    taken = vmsnap("take", guest.name, "first", "--description", "a <b> & c", "--json")
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout) == {
        "domain": guest.name,
        "snapshot": "first",
        "mode": "internal-memory",
        "files": [],
        "note": None,
    }
    guest.write(0x22, 0, MIB)
    reverted = vmsnap("revert", guest.name, "first", "--json")
    assert reverted.returncode == 0, reverted.stderr
    document = json.loads(reverted.stdout)
    assert document["reverted_to"] == "first"
    safety = document["safety_snapshot"]
    assert sorted(names(guest.name)) == sorted(["first", safety])
    assert guest.holds(0x11, 0, MIB)
    deleted = vmsnap("delete", guest.name, safety, "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["deleted"] == [safety]
    assert names(guest.name) == ["first"]


def test_take_with_options(make_guest: GuestFactory) -> None:
    guest = make_guest(start=True)
    result = vmsnap("take", guest.name, "mem", "--memory", "external", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mode"] == "external-memory"
    only = vmsnap("take", guest.name, "disk", "--disk-only", "--json")
    assert json.loads(only.stdout)["mode"] == "external-disk"
    conflict = vmsnap("take", guest.name, "x", "--disk-only", "--memory", "internal")
    assert conflict.returncode == 1
    assert conflict.stderr == "vmsnap: --disk-only saves no memory; leave out --memory.\n"


def test_hostile_names_get_one_clear_line_and_change_nothing(make_guest: GuestFactory) -> None:
    guest = make_guest()
    for name, message in [
        ("", "A snapshot name cannot be empty."),
        ("../../etc/passwd", "A snapshot name cannot contain '/'."),
        (".hidden", "A snapshot name cannot start with '.'."),
        (
            "two\nlines",
            "A snapshot name cannot contain control characters (such as tabs or line breaks).",
        ),
        (
            "<domain>&amp;",
            "A snapshot name cannot contain & < > (they break XML and shell scripts).",
        ),
        ("$(reboot)'", "A snapshot name cannot contain ' (they break XML and shell scripts)."),
        ("x" * 300, "A snapshot name is too long (300 characters; at most 100)."),
    ]:
        result = vmsnap("take", guest.name, name)
        assert result.returncode == 1
        assert result.stderr == f"vmsnap: {message}\n"
    assert names(guest.name) == []
    ok = vmsnap("take", guest.name, "ünïcode ✓ (ok)")
    assert ok.returncode == 0, ok.stderr
    assert names(guest.name) == ["ünïcode ✓ (ok)"]


def test_delete_asks_first_and_refuses_without_a_terminal(make_guest: GuestFactory) -> None:
    guest = make_guest()
    assert vmsnap("take", guest.name, "keep-me").returncode == 0
    refused = vmsnap("delete", guest.name, "keep-me", stdin="y\n")
    assert refused.returncode == 1
    assert "refusing to delete without confirmation" in refused.stderr
    assert names(guest.name) == ["keep-me"]


def test_usage_errors_exit_2_and_failures_exit_1(make_guest: GuestFactory) -> None:
    guest = make_guest()
    assert vmsnap("revert", guest.name).returncode == 2
    assert vmsnap("delete", guest.name, "x", "--children", "--children-only").returncode == 2
    missing = vmsnap("revert", guest.name, "ghost")
    assert missing.returncode == 1
    assert (
        missing.stderr
        == f"vmsnap: The virtual machine {guest.name!r} has no snapshot called 'ghost'.\n"
    )


def test_clone_through_the_cli(make_guest: GuestFactory, system_conn: libvirt.virConnect) -> None:
    guest = make_guest()
    guest.write(0x33, 0, MIB)
    assert vmsnap("take", guest.name, "base").returncode == 0
    clone_name = f"{guest.name}-cli"
    try:
        result = vmsnap("clone", guest.name, "base", clone_name, "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["clone"] == clone_name and document["linked"] is False
        assert virsh(SYSTEM_URI, "domstate", clone_name).stdout.strip() == "shut off"
        again = vmsnap("clone", guest.name, "base", clone_name)
        assert again.returncode == 1
        assert (
            again.stderr == f"vmsnap: There is already a virtual machine called {clone_name!r}.\n"
        )
    finally:
        try:
            remove_domain(system_conn.lookupByName(clone_name))
        except libvirt.libvirtError:
            pass


def test_two_operations_on_one_vm_queue_in_order_and_two_vms_run_at_once(
    make_guest: GuestFactory,
) -> None:
    first, second = make_guest(start=True), make_guest(start=True)
    connection = Connection(SYSTEM_URI)
    connection.open()
    loader = SnapshotLoader(connection, max_threads=8)
    queue = OperationQueue(max_workers=4)
    try:
        jobs = [
            queue.submit(
                first.dom.UUIDString(),
                lambda: take_snapshot(loader, first.name, TakeRequest("one")),
            ),
            queue.submit(
                first.dom.UUIDString(),
                lambda: take_snapshot(loader, first.name, TakeRequest("two")),
            ),
            queue.submit(
                second.dom.UUIDString(),
                lambda: take_snapshot(loader, second.name, TakeRequest("solo")),
            ),
        ]
        done, _ = wait(jobs, timeout=120)
        assert len(done) == 3 and all(j.exception() is None for j in jobs)
        # "two" was taken after "one": it is its child.
        assert virsh(SYSTEM_URI, "snapshot-parent", first.name, "two").stdout.strip() == "one"
        assert names(second.name) == ["solo"]
    finally:
        queue.shutdown()
        loader.close()
        connection.close()
