"""Linked clones are shown as linked (issue 11): ``vmsnap list``, its JSON and the window
name the VM and snapshot a clone stands on, and the clones standing on a VM.

Clones are made both ways a host gets them: by ``clone_domain(..., linked=True)`` and
by hand with ``qemu-img create -b`` as another tool would, in which case only the image
header names the backing file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt
import pytest
from pytestqt.qtbot import QtBot

from tests.integration.conftest import (
    MIB,
    SYSTEM_URI,
    Guest,
    GuestFactory,
    qemu_img,
    remove_domain,
)
from tests.integration.gui_support import show_vm
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.linked_clones import LayerRole
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.virt.clone_domain import CloneRequest, clone_domain
from vmsnapgui.virt.linked_clones import read_linked_clones
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot


def vmsnap(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", SYSTEM_URI, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def listed(name: str) -> dict[str, Any]:
    result = vmsnap("list", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["linked_clones_checked"]["from_images"] is True
    return next(d for d in document["domains"] if d["name"] == name)


def table_row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.split("  ")[0] == name)


@pytest.fixture
def source_with_base(make_guest: GuestFactory, system_loader: SnapshotLoader) -> tuple[Guest, str]:
    """A guest with an external snapshot 'base'; the image that froze."""
    guest = make_guest()
    guest.write(0x31, 0, MIB)
    frozen = guest.active_image()
    take_snapshot(system_loader, guest.dom, TakeRequest("base", mode=SnapshotMode.EXTERNAL_DISK))
    return guest, frozen


def test_a_clone_made_linked_is_listed_as_standing_on_its_snapshot(
    source_with_base: tuple[Guest, str], system_loader: SnapshotLoader, clones: list[str]
) -> None:
    guest, frozen = source_with_base
    name = f"{guest.name}-lc"
    clones.append(name)
    clone_domain(system_loader, guest.dom, CloneRequest(name, "base", linked=True))

    clone = listed(name)
    expected = {
        "clone": name,
        "disk": "vda",
        "source": guest.name,
        "kind": "snapshot",
        "snapshot": "base",
        "source_disk": "vda",
        "file": frozen,
    }
    assert clone["linked_clone_of"] == [expected]
    assert clone["linked_clones"] == []
    source = listed(guest.name)
    assert source["linked_clones"] == [expected]
    assert source["linked_clone_of"] == []

    text = vmsnap("list")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split() == [
        "NAME",
        "STATE",
        "SNAPSHOTS",
        "CURRENT",
        "LINKED",
    ]
    assert table_row(text.stdout, name).endswith(f"clone of {guest.name} (on 'base')")
    assert table_row(text.stdout, guest.name).endswith("1 linked clone")


def test_a_clone_made_by_hand_on_a_running_source_is_found_through_the_headers(
    source_with_base: tuple[Guest, str],
    system_loader: SnapshotLoader,
    system_conn: libvirt.virConnect,
) -> None:
    guest, frozen = source_with_base
    guest.dom.create()  # the source runs: its live XML has a chain, the clone's not
    overlay = guest.directory / "by-hand.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", frozen, str(overlay))
    name = f"{guest.name}-by-hand"
    clone = system_conn.defineXML(tiny_domain_xml(name, [DiskSpec(str(overlay))]))
    try:
        links = read_linked_clones(system_loader)
        (link,) = links.stands_on(name)
        assert (link.source, link.role, link.snapshot, link.file) == (
            guest.name,
            LayerRole.SNAPSHOT,
            "base",
            frozen,
        )
        assert links.clones_of(guest.name) == (link,)
        assert links.notes == ()
        # Not a clone of anything: the source's own chain stands on its own files.
        assert links.stands_on(guest.name) == ()
        assert listed(name)["linked_clone_of"][0]["snapshot"] == "base"
    finally:
        remove_domain(clone)


def test_a_disk_made_on_another_vms_live_disk_is_named_as_such(
    make_guest: GuestFactory, system_loader: SnapshotLoader, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest()  # no snapshots: the overlay stands on the disk it writes to
    overlay = guest.directory / "on-live.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", guest.active_image(), str(overlay))
    name = f"{guest.name}-on-live"
    clone = system_conn.defineXML(tiny_domain_xml(name, [DiskSpec(str(overlay))]))
    try:
        (link,) = read_linked_clones(system_loader).stands_on(name)
        assert (link.source, link.role, link.source_disk) == (guest.name, LayerRole.DISK, "vda")
        text = vmsnap("list")
        assert table_row(text.stdout, name).endswith(
            f"clone of {guest.name} (on the live disk vda)"
        )
    finally:
        remove_domain(clone)


def test_the_window_shows_the_clone_and_its_source(
    window: MainWindow,
    qtbot: QtBot,
    source_with_base: tuple[Guest, str],
    system_loader: SnapshotLoader,
    clones: list[str],
    tmp_path: Path,
) -> None:
    guest, _frozen = source_with_base
    name = f"{guest.name}-lc"
    clones.append(name)
    clone_domain(system_loader, guest.dom, CloneRequest(name, "base", linked=True))
    host = window.add_connection(SYSTEM_URI, remember=False)
    assert host is not None
    show_vm(qtbot, window, name)
    qtbot.waitUntil(lambda: window.details.links_label.isVisible(), timeout=60_000)
    assert window.details.links_label.text() == (
        f"Linked clone of {guest.name} — stands on its snapshot 'base'"
    )
    show_vm(qtbot, window, guest.name)
    qtbot.waitUntil(
        lambda: window.details.links_label.text() == f"Linked clones: {name} (on 'base')",
        timeout=20_000,
    )


def test_from_libvirts_xml_alone_a_running_clone_is_found_and_the_rest_is_not_guessed(
    source_with_base: tuple[Guest, str],
    system_loader: SnapshotLoader,
    clones: list[str],
    system_conn: libvirt.virConnect,
) -> None:
    """What a remote host allows: no image headers, only the XML libvirt gives."""
    guest, frozen = source_with_base
    running = f"{guest.name}-running"
    clones.append(running)
    clone_domain(system_loader, guest.dom, CloneRequest(running, "base", linked=True, start=True))
    overlay = guest.directory / "shut-off.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", frozen, str(overlay))
    shut_off = f"{guest.name}-shut-off"
    clone = system_conn.defineXML(tiny_domain_xml(shut_off, [DiskSpec(str(overlay))]))
    try:
        links = read_linked_clones(system_loader, local=False)
        (link,) = links.stands_on(running)  # its live XML has the chain
        assert (link.source, link.snapshot, link.file) == (guest.name, "base", frozen)
        assert links.stands_on(shut_off) == ()  # only its header names the chain
        assert links.from_images is False
        assert any("XML only" in note for note in links.notes)
        # Read from the files here, both are found.
        here = read_linked_clones(system_loader)
        assert {x.clone for x in here.clones_of(guest.name)} == {running, shut_off}
    finally:
        remove_domain(clone)
