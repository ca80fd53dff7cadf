"""A dead host is noticed within seconds, whatever the cause (issue 11 item 9).

``vmsnap tree`` over a slow TCP link to a VM with a thousand snapshots could wait forever
when the daemon died mid-load: every fetch thread and the main thread sat inside
libvirt calls, and a one-shot connection has no keepalive to notice a peer that went
quiet. Here the daemon is killed, or the link held (bytes stop, the socket stays open),
at moments spread over the load, and the command must end within a bound with exit
status 1 and one line on stderr. The window's connections (keepalive) and the engine's
one-shot ones must notice too: the call in flight fails and the connection says LOST.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import libvirt
import pytest

from tests.integration.conftest import qemu_img
from tests.integration.faults.conftest import FaultWatch, fault_rng, fresh_conn, soak_rounds
from tests.integration.faults.private_daemon import PrivateDaemon
from tests.integration.socket_forwarder import SocketForwarder
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.virt import connection as connection_module
from vmsnapgui.virt.connection import (
    Connection,
    ConnectionState,
    ConnectionStatus,
    calls_in_flight,
)
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

REPO = Path(__file__).resolve().parents[3]
TREE_SIZE = 1000
ONE_WAY_DELAY_S = 0.025
# From the fault to the command's end, or to the call's failure. The watchdog needs
# about 14 s for a silent host (3 s of calls without a pause, then 5 s for an answer on
# the connection and 5 s on a new one); keepalive (5 s x 3) about 20 s.
BOUND_S = 30.0
# Where in the load the daemon dies: shares of the bytes a whole load brings back, and
# the seconds after the command's start of the report (0.3-0.4 s).
KILL_SHARES = (0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
KILL_TIMES_S = (0.3, 0.35, 0.4)


def _load_latency_proxy() -> ModuleType:
    """bench/latency_proxy.py, the proxy the benchmarks measure the slow link with."""
    name = "latency_proxy"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "latency_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


latency_proxy = _load_latency_proxy()


# --------------------------------------------------------------------------- fixtures


def define_snapshot_tree(
    conn: libvirt.virConnect, name: str, image: str, count: int, domain_type: str
) -> None:
    """A shut-off VM with ``count`` snapshots redefined from metadata (no disk work):
    chains of ten, each forking from an earlier snapshot, every snapshot carrying the
    VM's definition as a real one does."""
    dom = conn.defineXML(tiny_domain_xml(name, [DiskSpec(image)], domain_type=domain_type))
    definition = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    names: list[str] = []
    for index in range(count):
        snap = ET.Element("domainsnapshot")
        ET.SubElement(snap, "name").text = f"snap-{index:04d}"
        ET.SubElement(snap, "description").text = f"Snapshot {index + 1} of {count}."
        ET.SubElement(snap, "state").text = "shutoff"
        if index:
            parent = names[index - 1] if index % 10 else names[index // 2]
            ET.SubElement(ET.SubElement(snap, "parent"), "name").text = parent
        ET.SubElement(snap, "creationTime").text = str(1_700_000_000 + index * 60)
        ET.SubElement(snap, "memory", snapshot="no")
        ET.SubElement(ET.SubElement(snap, "disks"), "disk", name="vda", snapshot="internal")
        snap.append(definition)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if index == count - 1:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        dom.snapshotCreateXML(ET.tostring(snap, encoding="unicode"), flags)
        names.append(f"snap-{index:04d}")


@pytest.fixture(scope="module")
def big_tree(private_daemon: PrivateDaemon, guest_root: Path, domain_type: str) -> Iterator[str]:
    """The name of a VM with a thousand snapshots on the private daemon."""
    name = f"vmsnapfault-{os.getpid()}-tree-{uuid.uuid4().hex[:8]}"
    image = guest_root / f"{name}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "64M")
    define_snapshot_tree(fresh_conn(private_daemon), name, str(image), TREE_SIZE, domain_type)
    yield name
    try:
        fresh_conn(private_daemon).lookupByName(name).undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
    finally:
        image.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def slow_link(private_daemon: PrivateDaemon) -> Iterator[Any]:
    """The latency proxy (25 ms each way) in front of the private daemon's socket."""
    proxy = latency_proxy.LatencyProxy(delay=ONE_WAY_DELAY_S, upstream_unix=private_daemon.socket)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def whole_load(slow_link: Any, big_tree: str) -> int:
    """How many bytes a whole ``vmsnap tree`` brings back over the slow link."""
    before = slow_link.stats.bytes_down
    result = subprocess.run(
        tree_command(slow_link.libvirt_uri, big_tree),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert len(json.loads(result.stdout)["snapshots"]) == TREE_SIZE
    return int(slow_link.stats.bytes_down - before)


@pytest.fixture
def forwarder(private_daemon: PrivateDaemon) -> Iterator[SocketForwarder]:
    """A link to the private daemon that a test can hold (bytes stop, sockets stay open)."""
    link = SocketForwarder(target=private_daemon.socket)
    link.start()
    yield link
    link.cut()


@pytest.fixture
def daemon_back(private_daemon: PrivateDaemon) -> Iterator[PrivateDaemon]:
    """The private daemon, running again after the test whatever it did to it."""
    yield private_daemon
    if private_daemon.pid is None or not _answers(private_daemon):
        private_daemon.restart()


def _answers(daemon: PrivateDaemon) -> bool:
    try:
        libvirt.open(daemon.uri).close()
        return True
    except libvirt.libvirtError:
        return False


# --------------------------------------------------------------------------- helpers


def tree_command(uri: str, domain: str) -> list[str]:
    return [sys.executable, "-m", "vmsnapgui.cli", "-c", uri, "tree", domain, "--json"]


@dataclass
class Ending:
    """How a command that lost its host ended."""

    status: int
    stdout: str
    stderr: str
    after_fault_s: float


def run_with_fault(
    argv: list[str], moment: Callable[[float], bool], fault: Callable[[], None]
) -> Ending:
    """Run ``argv``; call ``fault`` once ``moment(seconds since the start)`` is true; wait
    at most :data:`BOUND_S` after the fault for the command to end (a stack dump of the
    hung process in the failure message otherwise)."""
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    fault_at: list[float] = []

    def inject() -> None:
        fault()
        fault_at.append(time.monotonic())

    watch = FaultWatch(lambda: moment(time.monotonic() - started), inject)
    try:
        deadline = started + 60
        while not fault_at and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert fault_at, "the command ended before the fault could be injected"
        try:
            stdout, stderr = process.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            dump = _stacks(process.pid)
            process.kill()
            process.communicate()
            pytest.fail(f"the command still waited {BOUND_S:.0f} s after the fault:\n{dump}")
        return Ending(process.returncode, stdout, stderr, time.monotonic() - fault_at[0])
    finally:
        watch.stop()
        assert watch.error is None, watch.error
        if process.poll() is None:
            process.kill()
            process.communicate()


def _stacks(pid: int) -> str:
    try:
        return subprocess.run(
            ["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 8"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout[-6000:]
    except (OSError, subprocess.TimeoutExpired):
        return "(no stack dump: gdb is missing or took too long)"


def assert_one_line_failure(ending: Ending) -> None:
    assert ending.status == 1, (ending.status, ending.stderr)
    lines = ending.stderr.splitlines()
    assert len(lines) == 1, ending.stderr
    assert lines[0].startswith("vmsnap: ") and "Traceback" not in lines[0], lines[0]


def kill_during_load(
    daemon: PrivateDaemon, proxy: Any, domain: str, moment: Callable[[float, int], bool]
) -> Ending:
    """``vmsnap tree`` over the slow link; the daemon killed when ``moment(seconds since
    the start, bytes brought back so far)`` says so; the daemon started again after."""
    before = proxy.stats.bytes_down
    try:
        return run_with_fault(
            tree_command(proxy.libvirt_uri, domain),
            lambda seconds: moment(seconds, proxy.stats.bytes_down - before),
            daemon.kill,
        )
    finally:
        daemon.restart()


def call_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start ``call`` on a thread; the list gets what it returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize("share", KILL_SHARES)
def test_a_tree_load_whose_daemon_dies_midway_ends_in_one_line(
    daemon_back: PrivateDaemon, slow_link: Any, big_tree: str, whole_load: int, share: float
) -> None:
    ending = kill_during_load(
        daemon_back, slow_link, big_tree, lambda _seconds, got: got >= share * whole_load
    )
    assert_one_line_failure(ending)
    assert ending.after_fault_s < BOUND_S


@pytest.mark.parametrize("seconds", KILL_TIMES_S)
def test_a_tree_load_whose_daemon_dies_early_ends_in_one_line(
    daemon_back: PrivateDaemon, slow_link: Any, big_tree: str, seconds: float
) -> None:
    ending = kill_during_load(daemon_back, slow_link, big_tree, lambda at, _got: at >= seconds)
    assert_one_line_failure(ending)


def test_soak_tree_loads_whose_daemon_dies_at_random_moments(
    request: pytest.FixtureRequest,
    daemon_back: PrivateDaemon,
    slow_link: Any,
    big_tree: str,
    whole_load: int,
) -> None:
    rng = fault_rng(request.config)
    for _round in range(soak_rounds(request.config, default=1)):
        by_bytes = rng.random() < 0.5
        point = rng.uniform(0.0, 0.85) * whole_load if by_bytes else rng.uniform(0.25, 1.0)

        def moment(at: float, got: int, by_bytes: bool = by_bytes, point: float = point) -> bool:
            return (got if by_bytes else at) >= point

        ending = kill_during_load(daemon_back, slow_link, big_tree, moment)
        if ending.status == 0:  # the last reply was already on its way: a whole tree
            assert len(json.loads(ending.stdout)["snapshots"]) == TREE_SIZE
        else:
            assert_one_line_failure(ending)


def test_a_tree_load_whose_host_goes_silent_midway_ends_in_one_line(
    forwarder: SocketForwarder, big_tree: str, whole_load: int
) -> None:
    uri = f"qemu+tcp://127.0.0.1:{forwarder.port}/system"
    ending = run_with_fault(
        tree_command(uri, big_tree),
        lambda _seconds: forwarder.bytes_down >= whole_load // 5,
        forwarder.hold,
    )
    assert_one_line_failure(ending)
    assert "the connection to the host was lost" in ending.stderr


def test_a_command_whose_host_never_answers_ends_in_one_line(
    forwarder: SocketForwarder,
) -> None:
    uri = f"qemu+tcp://127.0.0.1:{forwarder.port}/system"
    forwarder.hold()
    ending = run_with_fault(
        [sys.executable, "-m", "vmsnapgui.cli", "-c", uri, "list"], lambda _s: True, lambda: None
    )
    assert_one_line_failure(ending)
    assert ending.stderr == (
        f"vmsnap: Could not connect to {uri}: the host stopped answering "
        "(no reply within 5 seconds).\n"
    )


# --------------------------------------------------------------------------- connections


def test_a_one_shot_connection_notices_a_host_gone_silent(
    forwarder: SocketForwarder, big_tree: str
) -> None:
    connection = Connection(f"qemu+tcp://127.0.0.1:{forwarder.port}/system", monitor=False)
    connection.open()
    loader = SnapshotLoader(connection)
    try:
        handle = connection.conn
        forwarder.hold()
        started = time.monotonic()
        thread, outcome = call_in_thread(lambda: loader.load(big_tree))
        wait_for(lambda: calls_in_flight()[id(handle)] > 0, 5)
        thread.join(BOUND_S)
        assert not thread.is_alive(), "the load still waits for a silent host"
        assert time.monotonic() - started < BOUND_S
        assert isinstance(outcome[0], VirtError)
        assert "the connection to the host was lost" in outcome[0].message
        assert connection.status.state is ConnectionState.LOST
        assert connection.status.reason == (
            "the host stopped answering (no reply within 5 seconds, "
            "on this connection or a new one)"
        )
    finally:
        loader.close()
        connection.close()


def test_a_slow_but_healthy_load_is_never_cut(
    slow_link: Any, big_tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watchdog asks early and often here (after 0.2 s of calls without a pause, 1 s
    # for an answer), over 25 ms each way with every fetch thread busy: the host
    # answers each time, so every load goes on to the end on the same connection.
    monkeypatch.setattr(connection_module, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(connection_module, "STALL_S", 0.2)
    monkeypatch.setattr(connection_module, "PROBE_TIMEOUT_S", 1.0)
    asked: list[str | None] = []
    ask = connection_module._Watchdog._ask

    def noted_ask(watchdog: Any, watch: Any, handle: libvirt.virConnect) -> str | None:
        verdict = ask(watchdog, watch, handle)
        asked.append(verdict)
        return verdict

    monkeypatch.setattr(connection_module._Watchdog, "_ask", noted_ask)
    connection = Connection(slow_link.libvirt_uri, monitor=False)
    connection.open()
    loader = SnapshotLoader(connection)
    try:
        generation = connection.generation
        for _load in range(3):
            assert loader.load(big_tree, refetch_all=True).fetched == TREE_SIZE
        assert asked, "the watchdog never asked: the test proves nothing"
        assert set(asked) == {None}  # the host answered every time
        assert connection.status.state is ConnectionState.CONNECTED
        assert connection.generation == generation
    finally:
        loader.close()
        connection.close()


def test_a_window_connection_notices_its_daemon_gone_behind_a_silent_link(
    forwarder: SocketForwarder, daemon_back: PrivateDaemon
) -> None:
    seen: list[ConnectionState] = []
    reasons: list[str | None] = []
    connection = Connection(f"qemu+tcp://127.0.0.1:{forwarder.port}/system")  # keepalive 5 s x 3

    def note(status: ConnectionStatus) -> None:
        reasons.append(status.reason)
        seen.append(status.state)

    connection.add_status_listener(note)
    connection.open()
    try:
        handle = connection.conn
        forwarder.hold()
        thread, outcome = call_in_thread(lambda: handle.listAllDomains(0))
        wait_for(lambda: calls_in_flight()[id(handle)] > 0, 5)
        daemon_back.kill()  # the end of file cannot pass the held link
        started = time.monotonic()
        thread.join(BOUND_S)
        forwarder.cut()  # before reconnecting tries the forwarder, whose target is gone
        assert not thread.is_alive(), "the call still waits for a dead daemon"
        assert time.monotonic() - started < BOUND_S
        assert isinstance(outcome[0], libvirt.libvirtError)
        wait_for(lambda: ConnectionState.LOST in seen, 5)
        lost = seen.index(ConnectionState.LOST)
        assert reasons[lost] == "the host stopped answering"
    finally:
        connection.close()
