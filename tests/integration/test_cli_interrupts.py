"""Ctrl+C and odd input given to real ``vmsnap`` processes working on real guests.

Ctrl+C is sent as a terminal sends it: SIGINT to the whole foreground process group,
so vmsnap and the qemu-img it started both get it. Whatever the moment, vmsnap must
undo what it made, say so in one line and exit 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import SYSTEM_URI, GuestFactory, qemu_io, virsh

GIB = 1024**3


def start_vmsnap(*argv: str) -> subprocess.Popen[str]:
    """``vmsnap`` in a process group of its own, as a shell starts a foreground job."""
    return subprocess.Popen(
        [sys.executable, "-m", "vmsnapgui", "-c", SYSTEM_URI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def press_ctrl_c(process: subprocess.Popen[str], times: int = 1) -> None:
    """The terminal's Ctrl+C: SIGINT to every process of the foreground group."""
    for _ in range(times):
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"vmsnap ended first ({process.returncode}): {out}{err}")
        assert time.monotonic() < deadline, "the operation never got going"
        time.sleep(0.005)


def copy_has_begun(folder: Path) -> Callable[[], bool]:
    """True once qemu-img has written 64 MiB into a file in ``folder``."""

    def check() -> bool:
        return any(entry.stat().st_blocks * 512 >= 64 * 1024**2 for entry in folder.iterdir())

    return check


def defined(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


@pytest.mark.parametrize("presses", [1, 3])
def test_ctrl_c_during_a_clone_removes_the_partial_disk_and_says_so_in_one_line(
    make_guest: GuestFactory,
    system_conn: libvirt.virConnect,
    clones: list[str],
    presses: int,
) -> None:
    guest = make_guest(size="2G")
    qemu_io(str(guest.disks["vda"]), f"write -P 0xab 0 {GIB}")  # a copy of about a second
    target = guest.directory / "clone-disks"
    target.mkdir()
    clone_name = f"{guest.name}-interrupted"
    clones.append(clone_name)

    process = start_vmsnap("clone", guest.name, "@now", clone_name, "--target-dir", str(target))
    wait_until(copy_has_begun(target), process)
    press_ctrl_c(process, presses)  # more presses land while it removes the disk
    out, err = process.communicate(timeout=120)

    assert process.returncode == 1, err
    assert out == ""
    assert err == "vmsnap: Cancelled; the clone's files were removed.\n"
    assert list(target.iterdir()) == []
    assert not defined(system_conn, clone_name)


def test_ctrl_c_during_a_memory_snapshot_leaves_no_snapshot_and_no_files(
    make_guest: GuestFactory,
) -> None:
    # 16 GiB of RAM (never touched, so never allocated on the host) takes QEMU about
    # 0.7 s to save: long enough to interrupt in the middle.
    guest = make_guest(start=True, memory_mib=16384)
    before = sorted(os.listdir(guest.directory))

    def saving() -> bool:
        # libvirt writes its header, then QEMU streams memory into the file.
        return any(
            entry.suffix == ".mem" and entry.stat().st_size > 1024**2
            for entry in guest.directory.iterdir()
        )

    process = start_vmsnap("take", guest.name, "interrupted", "--memory", "external")
    wait_until(saving, process)
    press_ctrl_c(process)
    out, err = process.communicate(timeout=120)

    assert process.returncode == 1, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("vmsnap: Cancelled")
    assert "Traceback" not in err
    assert virsh(SYSTEM_URI, "snapshot-list", guest.name, "--name").stdout.split() == []
    assert sorted(os.listdir(guest.directory)) == before
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_take_with_the_name_two_dashes_takes_exactly_that_name(make_guest: GuestFactory) -> None:
    guest = make_guest()
    result = subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", SYSTEM_URI, "take", guest.name, "--", "--"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Took snapshot '--' of ")
    assert virsh(SYSTEM_URI, "snapshot-list", guest.name, "--name").stdout.split() == ["--"]


def test_a_folder_name_too_long_for_the_file_system_is_one_line(
    make_guest: GuestFactory, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest()
    folder = "/var/tmp/" + "n" * 5000
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmsnapgui",
            "-c",
            SYSTEM_URI,
            "clone",
            guest.name,
            "@now",
            f"{guest.name}-long",
            "--target-dir",
            folder,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert len(result.stderr) < 300
    assert not defined(system_conn, f"{guest.name}-long")


def test_du_of_a_paused_vm_says_paused_and_never_running(make_guest: GuestFactory) -> None:
    guest = make_guest(start=True)
    guest.dom.suspend()
    result = subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", SYSTEM_URI, "du", guest.name],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"{guest.name} (paused) on ")
    assert "running" not in result.stdout
