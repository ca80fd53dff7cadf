"""The fault-injection tier: operations on a daemon of our own that the tests kill.

Every test here runs an operation on real guests, breaks something at a chosen (or, in
``--soak`` mode, random) moment — the daemon killed, the connection cut, the disk full,
another client racing — and then checks the invariants of DESIGN.md's data safety with
tools independent of the code under test (virsh's XML, ``qemu-img info``, ``qemu-io``):

- every file any domain or snapshot references exists, with its whole backing chain
  (one exception, which libvirt cannot avoid and the message must name: a running VM's
  live definition may still list a file QEMU no longer uses, when the daemon died after
  a merge removed it and before it recorded the new chain);
- every byte pattern written before is still read back;
- nothing the operation created is left unless something references it (or a process
  still held it, and the message names it and the process);
- no image holds an internal snapshot libvirt does not list, and libvirt lists none
  that no image holds;
- the VM is in the state the message says, and it starts again;
- the message is one plain sentence.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from tests.integration.conftest import image_holds, qemu_img, unavailable
from tests.integration.faults.private_daemon import DaemonUnavailable, PrivateDaemon
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.errors import UserError
from vmsnapgui.virt.connection import Connection
from vmsnapgui.virt.event_loop import ensure_event_loop
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

MIB = 1024 * 1024


@pytest.fixture(scope="session")
def private_daemon(domain_type: str) -> Iterator[PrivateDaemon]:
    ensure_event_loop()
    daemon = PrivateDaemon()
    try:
        daemon.start()
    except (DaemonUnavailable, subprocess.CalledProcessError, libvirt.libvirtError) as exc:
        daemon.stop()
        unavailable(f"no private libvirt daemon for fault injection: {exc}")
    yield daemon
    daemon.stop()


@pytest.fixture(params=["window", "command"])
def fault_loader(
    request: pytest.FixtureRequest, private_daemon: PrivateDaemon
) -> Iterator[SnapshotLoader]:
    """A loader as the window has it (monitored, reconnecting) or as ``vmsnap`` has it."""
    monitored = request.param == "window"
    connection = Connection(private_daemon.uri, monitor=monitored, keepalive=(1, 3))
    connection.open()
    loader = SnapshotLoader(connection)
    yield loader
    loader.close()
    connection.close()


def ready(loader: SnapshotLoader) -> None:
    """Start a soak round connected, as a new ``vmsnap`` (or a window that reconnected)
    would: the last round's fault may have fired after its operation ended."""
    try:
        loader.connection.conn.getLibVersion()
    except (libvirt.libvirtError, UserError):
        loader.connection.connection_lost("found dead before the round")
        loader.connection.reopen(30)


def fresh_conn(daemon: PrivateDaemon) -> libvirt.virConnect:
    """A new connection for checking (the code under test's one may be dead)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return libvirt.open(daemon.uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class FaultGuest:
    """A tiny guest on the private daemon, with the patterns written into it."""

    daemon: PrivateDaemon
    name: str
    directory: Path
    targets: tuple[str, ...]
    patterns: list[tuple[str, int, int, int]] = field(default_factory=list)

    def dom(self) -> libvirt.virDomain:
        return fresh_conn(self.daemon).lookupByName(self.name)

    def qemu_pid(self) -> int | None:
        try:
            return int((self.daemon.base / "run" / "qemu" / f"{self.name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def active_image(self, target: str = "vda") -> str:
        root = ET.fromstring(self.dom().XMLDesc(0))
        for disk in root.findall("./devices/disk"):
            if disk.find("target").get("dev") == target:  # type: ignore[union-attr]
                return disk.find("source").get("file")  # type: ignore[union-attr,return-value]
        raise AssertionError(f"no disk {target}")

    def write(self, pattern: int, offset: int, length: int, target: str = "vda") -> None:
        dom = self.dom()
        device = f"virtio-disk{self.targets.index(target)}"
        if dom.isActive():
            backend = f"/machine/peripheral/{device}/virtio-backend"
            libvirt_qemu.qemuMonitorCommand(
                dom,
                f'qemu-io -d {backend} "write -P {pattern:#x} {offset} {length}"',
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            )
        else:
            subprocess.run(
                [
                    "qemu-io",
                    "-c",
                    f"write -P {pattern:#x} {offset} {length}",
                    self.active_image(target),
                ],
                check=True,
                capture_output=True,
            )
        self.patterns = [p for p in self.patterns if (p[0], p[2]) != (target, offset)]
        self.patterns.append((target, pattern, offset, length))

    def flush(self) -> None:
        dom = self.dom()
        if not dom.isActive():
            return
        for index in range(len(self.targets)):
            backend = f"/machine/peripheral/virtio-disk{index}/virtio-backend"
            libvirt_qemu.qemuMonitorCommand(
                dom,
                f'qemu-io -d {backend} "flush"',
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            )

    def files(self) -> set[str]:
        return {str(p) for p in self.directory.iterdir()}


GuestMaker = Callable[..., FaultGuest]


@pytest.fixture
def fault_guest(
    private_daemon: PrivateDaemon, guest_root: Path, domain_type: str
) -> Iterator[GuestMaker]:
    made: list[FaultGuest] = []

    def factory(
        *,
        disks: tuple[str, ...] = ("vda",),
        start: bool = True,
        memory_mib: int = 64,
        directory: Path | None = None,
    ) -> FaultGuest:
        name = f"vmsnapfault-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder = directory or guest_root / name
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)
        paths = {}
        for target in disks:
            path = folder / f"{target}.qcow2"
            qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
            paths[target] = path
        xml = tiny_domain_xml(
            name,
            [DiskSpec(str(p), target=t) for t, p in paths.items()],
            memory_mib=memory_mib,
            domain_type=domain_type,
        )
        conn = fresh_conn(private_daemon)
        dom = conn.defineXML(xml)
        guest = FaultGuest(private_daemon, name, folder, disks)
        made.append(guest)
        if start:
            dom.create()
        for index, target in enumerate(disks):
            guest.write(0x10 + index, 0, MIB, target)
        return guest

    yield factory
    conn = fresh_conn(private_daemon)
    for guest in made:
        try:
            dom = conn.lookupByName(guest.name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        shutil.rmtree(guest.directory, ignore_errors=True)


def discard(guest: FaultGuest) -> None:
    """Remove a soak round's guest at once: a long soak must not pile up running VMs
    (a hundred idle TCG guests take both CPUs)."""
    conn = fresh_conn(guest.daemon)
    try:
        dom = conn.lookupByName(guest.name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
    shutil.rmtree(guest.directory, ignore_errors=True)


# --------------------------------------------------------------------------- invariants


def referenced_files(conn: libvirt.virConnect) -> dict[str, str]:
    """Every file the host's definitions and snapshots name, with backing chains read by
    ``qemu-img`` (independent of the code under test), mapped to one holder each."""
    named: dict[str, str] = {}
    for dom in conn.listAllDomains(0):
        xmls = [dom.XMLDesc(0)]
        if dom.isActive():
            xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for snap in dom.listAllSnapshots(0):
            xmls.append(snap.getXMLDesc(0))
        for xml in xmls:
            root = ET.fromstring(xml)
            for element in root.iter():
                if element.tag == "source" and element.get("file"):
                    named.setdefault(element.get("file", ""), dom.name())
                if element.tag == "memory" and element.get("file"):
                    named.setdefault(element.get("file", ""), dom.name())
    chained = dict(named)
    for path, holder in named.items():
        for below in backing_chain(path)[1:]:
            chained.setdefault(below, holder)
    return chained


def qemu_files(dom: libvirt.virDomain) -> set[str]:
    """Every image file QEMU itself has open for the guest's disks (none when shut off)."""
    if not dom.isActive():
        return set()
    reply = libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": "query-block"}), 0)
    files: set[str] = set()
    for device in json.loads(reply)["return"]:
        image = (device.get("inserted") or {}).get("image")
        while image:
            files.add(image["filename"])
            image = image.get("backing-image")
    return files


def backing_chain(path: str) -> list[str]:
    """The image and its backing files, as ``qemu-img info --backing-chain`` reads them;
    raises AssertionError when a backing file is missing or unreadable."""
    if not os.path.exists(path):
        return [path]
    result = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"the backing chain of {path} is broken: {result.stderr.strip()}")
    return [entry["filename"] for entry in json.loads(result.stdout)]


def assert_host_intact(guest: FaultGuest, before: set[str], message: str | None = None) -> None:
    """The invariants listed in the module text, for one guest's folder."""
    conn = fresh_conn(guest.daemon)
    named = referenced_files(conn)
    for path, holder in named.items():
        if path.startswith(str(guest.directory)) and not os.path.exists(path):
            stale_chain = "old disk chain until the VM is shut off and started again"
            assert message is not None and stale_chain in message, (
                f"{path}, used by {holder}, is gone"
            )
            assert path not in qemu_files(guest.dom()), f"QEMU uses {path}, which is gone"
    for path in guest.files() - before:
        # A file a process still held (libvirt's iohelper writing a memory state when its
        # daemon died) is kept rather than pulled from under it; the message names it.
        explained = message is not None and f"{path} was left in place: process" in message
        assert path in named or explained, (
            f"{path} was left behind and nothing uses it ({message!r})"
        )
    if message is not None:
        assert "\n" not in message and "Traceback" not in message, message
    snapshots = guest.dom().listAllSnapshots(0)
    listed = {s.getName() for s in snapshots}
    held: set[str] = set()
    for path in guest.files():
        if path.endswith(".qcow2"):
            inside = set(internal_snapshot_names(path))
            held |= inside
            hidden = inside - listed
            assert not hidden, f"{path} holds internal snapshots libvirt does not list: {hidden}"
    for snapshot in snapshots:
        disks = ET.fromstring(snapshot.getXMLDesc(0)).findall("./disks/disk")
        if any(disk.get("snapshot") == "internal" for disk in disks):
            assert snapshot.getName() in held, (
                f"libvirt lists the internal snapshot {snapshot.getName()!r}, which no image "
                f"holds ({message!r})"
            )
    guest.flush()
    for target, pattern, offset, length in guest.patterns:
        image = guest.active_image(target)
        assert image_holds(image, pattern, offset, length), (
            f"{target} lost pattern {pattern:#x} at {offset} (reads {image})"
        )


def internal_snapshot_names(path: str) -> list[str]:
    result = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path], capture_output=True, text=True
    )
    if result.returncode != 0:
        return []
    return [entry["name"] for entry in json.loads(result.stdout).get("snapshots", [])]


def assert_restarts(guest: FaultGuest) -> None:
    """The VM stops and starts again from what libvirt records, and its data is there."""
    dom = guest.dom()
    if dom.isActive():
        dom.destroy()
    dom.create()
    guest.flush()
    for target, pattern, offset, length in guest.patterns:
        assert image_holds(guest.active_image(target), pattern, offset, length), (
            f"after a restart {target} lost pattern {pattern:#x}"
        )


# --------------------------------------------------------------------------- faults


def kill_and_restart(daemon: PrivateDaemon, delay: float = 0.0) -> Callable[[], None]:
    """The fault: kill -9 the daemon (after ``delay``), and start it again 0.3 s later."""

    def fault() -> None:
        if delay:
            time.sleep(delay)
        daemon.kill()
        threading.Timer(0.3, daemon.restart).start()

    return fault


class FaultWatch:
    """Waits on a thread for a moment in an operation, then injects a fault."""

    def __init__(
        self, condition: Callable[[], bool], fault: Callable[[], None], timeout: float = 30
    ):
        self.fired = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()

        def watch() -> None:
            deadline = time.monotonic() + timeout
            try:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if condition():
                        fault()
                        self.fired.set()
                        return
                    time.sleep(0.0005)
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def held_by(pid: int | None, path: str) -> bool:
    """True when process ``pid`` has ``path`` open."""
    if pid is None:
        return False
    try:
        target = os.stat(path)
    except OSError:
        return False
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                info = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
                return True
    except OSError:
        return False
    return False


def soak_rounds(config: pytest.Config, default: int = 1) -> int:
    """How many randomised rounds a soak test runs: ``--soak N``, else ``default``."""
    return int(config.getoption("--soak") or default)


def fault_rng(config: pytest.Config) -> random.Random:
    """Randomness that a failing soak round can be replayed with (``--soak-seed``)."""
    seed = config.getoption("--soak-seed")
    return random.Random(int(seed) if seed is not None else time.time_ns())


def soak_record(operation: str, fault: str, fired: bool, outcome: object) -> None:
    """Append one soak round to the JSON-lines file ``$VMSNAP_SOAK_LOG`` names, if any,
    so a long soak's figures (faults injected, outcomes) can be counted afterwards."""
    path = os.environ.get("VMSNAP_SOAK_LOG")
    if not path:
        return
    kind = type(outcome).__name__
    text = getattr(outcome, "message", None) or getattr(outcome, "note", None)
    with open(path, "a", encoding="utf-8") as log:
        log.write(
            json.dumps(
                {
                    "time": time.time(),
                    "operation": operation,
                    "fault": fault,
                    "fired": fired,
                    "outcome": kind,
                    "message": text,
                }
            )
            + "\n"
        )
