"""The real tier: a libvirt daemon with tiny QEMU guests (no OS, tens of MiB of RAM).

Everything a test creates has a unique ``vmsnaptest-`` name and is removed afterwards.
Under CI (``VMSNAP_REQUIRE_REAL=1``) a missing daemon or QEMU fails the tests instead of
skipping them, so the tier can never silently not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from tests.conftest import open_loader
from vmsnapgui.core.domain_xml import DiskSpec, domain_disks, tiny_domain_xml
from vmsnapgui.virt.demo_lab import write_through_monitor
from vmsnapgui.virt.event_loop import ensure_event_loop
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

SYSTEM_URI = "qemu:///system"
PREFIX = "vmsnaptest-"
# Names carry the test process id, so a session removes only leftovers of sessions
# that are gone, never the guests of one running beside it.
SESSION_PREFIX = f"{PREFIX}{os.getpid()}-"
MIB = 1024 * 1024


def _is_orphan(name: str) -> bool:
    owner = name[len(PREFIX) :].split("-", 1)[0]
    if not owner.isdigit():
        return False
    return not os.path.exists(f"/proc/{owner}")


def unavailable(reason: str) -> None:
    if os.environ.get("VMSNAP_REQUIRE_REAL") == "1":
        pytest.fail(f"the real libvirt tier must run here but cannot: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def system_conn() -> Iterator[libvirt.virConnect]:
    """A connection to the system daemon; leftovers of crashed earlier runs are removed."""
    for tool in ("qemu-img", "qemu-io", "virsh"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    ensure_event_loop()
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError as exc:
        unavailable(f"no libvirt daemon at {SYSTEM_URI}: {exc.get_error_message()}")
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(PREFIX) and _is_orphan(dom.name()):
            remove_domain(dom)
    yield conn
    conn.close()


@pytest.fixture
def system_loader(system_conn: libvirt.virConnect) -> Iterator[SnapshotLoader]:
    """A loader with its own connection to the system daemon."""
    yield from open_loader(SYSTEM_URI)


@pytest.fixture(scope="session")
def guest_root() -> Iterator[Path]:
    """Where test images live: readable by QEMU, which runs as another user."""
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def domain_type(system_conn: libvirt.virConnect, guest_root: Path) -> str:
    """``kvm`` when a KVM guest really starts here, ``qemu`` (TCG) otherwise."""
    image = guest_root / "probe.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "16M")
    for kind in ("kvm", "qemu"):
        name = f"{SESSION_PREFIX}probe-{uuid.uuid4().hex[:6]}"
        dom = system_conn.defineXML(tiny_domain_xml(name, [DiskSpec(str(image))], domain_type=kind))
        try:
            dom.create()
            return kind
        except libvirt.libvirtError:
            continue
        finally:
            remove_domain(dom)
    unavailable("neither a KVM nor a TCG guest would start")
    raise AssertionError("unreachable")


def remove_domain(dom: libvirt.virDomain) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        )
    except libvirt.libvirtError:
        pass


def qemu_img(*argv: str) -> str:
    return subprocess.run(["qemu-img", *argv], check=True, capture_output=True, text=True).stdout


def virsh(uri: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-q", "-c", uri, *argv], check=check, capture_output=True, text=True
    )


@dataclass
class Guest:
    """A tiny QEMU guest on the system daemon, with helpers to write into its disks."""

    dom: libvirt.virDomain
    directory: Path
    disks: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.dom.name())

    def active_image(self, target: str = "vda") -> str:
        """The file the disk writes to now (the top overlay after external snapshots)."""
        for disk in domain_disks(self.dom.XMLDesc(0)):
            if disk.target == target and disk.source:
                return disk.source
        raise AssertionError(f"no disk {target}")

    def write(self, pattern: int, offset: int, length: int, target: str = "vda") -> None:
        """Write ``length`` bytes of ``pattern`` at ``offset`` (live, or with qemu-io)."""
        if self.dom.isActive():
            index = sorted(self.disks).index(target)
            write_through_monitor(self.dom, pattern, offset, length, device=f"virtio-disk{index}")
        else:
            qemu_io(self.active_image(target), f"write -P {pattern:#x} {offset} {length}")

    def holds(self, pattern: int, offset: int, length: int, target: str = "vda") -> bool:
        """True when the disk reads back ``pattern`` over the whole range, as the guest sees it."""
        if self.dom.isActive():
            # qemu-io's monitor output goes to QEMU's log, not the reply: flush the
            # device so the image file is complete, then read the file itself.
            index = sorted(self.disks).index(target)
            backend = f"/machine/peripheral/virtio-disk{index}/virtio-backend"
            libvirt_qemu.qemuMonitorCommand(
                self.dom,
                f'qemu-io -d {backend} "flush"',
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            )
        return image_holds(self.active_image(target), pattern, offset, length)


def qemu_io(path: str, command: str, *, read_only: bool = False) -> str:
    argv = ["qemu-io"]
    if read_only:
        argv += ["-r", "-U"]
    result = subprocess.run(
        [*argv, "-c", command, path], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"qemu-io {command!r} on {path} failed: {result.stderr or result.stdout}"
        )
    return result.stdout


def image_holds(path: str, pattern: int, offset: int, length: int) -> bool:
    """True when the image (with its backing chain) reads ``pattern`` over the range."""
    result = subprocess.run(
        ["qemu-io", "-r", "-U", "-c", f"read -P {pattern:#x} {offset} {length}", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if "Pattern verification failed" in result.stdout + result.stderr:
        return False
    if result.returncode != 0:
        raise AssertionError(f"qemu-io could not read {path}: {result.stderr or result.stdout}")
    return True


GuestFactory = Callable[..., Guest]


@pytest.fixture
def make_guest(
    system_conn: libvirt.virConnect, guest_root: Path, domain_type: str
) -> Iterator[GuestFactory]:
    """Create guests named ``vmsnaptest-…``; all are removed with their files afterwards."""
    made: list[Guest] = []

    def factory(
        *,
        disks: tuple[str, ...] = ("vda",),
        size: str = "128M",
        start: bool = False,
        memory_mib: int = 64,
        nic: bool = False,
        fmt: str = "qcow2",
    ) -> Guest:
        name = f"{SESSION_PREFIX}{uuid.uuid4().hex[:8]}"
        directory = guest_root / name
        directory.mkdir()
        directory.chmod(0o777)  # QEMU writes external snapshot overlays here
        paths = {}
        for target in disks:
            path = directory / f"{target}.{'qcow2' if fmt == 'qcow2' else 'img'}"
            qemu_img("create", "-q", "-f", fmt, str(path), size)
            paths[target] = path
        xml = tiny_domain_xml(
            name,
            [DiskSpec(str(p), target=t, driver_type=fmt) for t, p in paths.items()],
            memory_mib=memory_mib,
            domain_type=domain_type,
            nic=nic,
        )
        dom = system_conn.defineXML(xml)
        guest = Guest(dom, directory, paths)
        made.append(guest)
        if start:
            dom.create()
        return guest

    yield factory
    for guest in made:
        remove_domain(guest.dom)
        shutil.rmtree(guest.directory, ignore_errors=True)


TmpfsFactory = Callable[[str], Path]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[TmpfsFactory]:
    """Mount a tmpfs of the given size (``"48M"``), a disk that fills up; unmounted after."""
    mounted: list[Path] = []

    def factory(size: str) -> Path:
        point = tmp_path / f"small-{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            unavailable(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield factory
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill_up(folder: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the folder's file system with one file."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as out:
        os.posix_fallocate(out.fileno(), 0, max(free - leave, 0))
    return filler


@pytest.fixture
def clones(system_conn: libvirt.virConnect) -> Iterator[list[str]]:
    """Names of clones a test makes; removed with their disks afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            dom = system_conn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        files = [d.source for d in domain_disks(dom.XMLDesc(0)) if d.source]
        remove_domain(dom)
        for file in files:
            if "vmsnaptest" in file:
                Path(file).unlink(missing_ok=True)


def internal_snapshots_in(path: Path) -> list[str]:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True
        ).stdout
    )
    return [s["name"] for s in info.get("snapshots", [])]
