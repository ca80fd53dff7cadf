"""A lost connection is noticed, reported with a reason, and reopened by itself."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator

import libvirt
import pytest

from tests.integration.socket_forwarder import SocketForwarder
from vmsnapgui.virt.connection import Connection, ConnectionState, ConnectionStatus
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def forwarder(system_conn: object) -> Iterator[SocketForwarder]:
    forwarder = SocketForwarder()
    forwarder.start()
    yield forwarder
    forwarder.cut()


def test_a_dropped_connection_is_lost_then_reconnected(forwarder: SocketForwarder) -> None:
    seen: list[ConnectionStatus] = []
    connection = Connection(f"qemu+tcp://127.0.0.1:{forwarder.port}/system", keepalive=(1, 2))
    connection.add_status_listener(seen.append)
    connection.open()
    loader = SnapshotLoader(connection, max_threads=4)
    try:
        loader.list_domains()
        generation = connection.generation
        first_handle = weakref.ref(connection.conn)

        forwarder.cut()
        wait_for(lambda: connection.status.state is ConnectionState.LOST)
        # A cut socket reads as EOF or as an error, depending on how it closed.
        assert connection.status.reason in (
            "the host closed the connection",
            "a network error broke the connection",
        )
        with pytest.raises(VirtError):
            loader.list_domains()  # fails with a sentence, not a traceback

        # While the host is away the connection keeps trying, with growing pauses.
        time.sleep(1.5)
        assert connection.status.state in (ConnectionState.LOST, ConnectionState.CONNECTING)

        forwarder.start()  # the same port comes back
        wait_for(lambda: connection.status.state is ConnectionState.CONNECTED, timeout=30)
        assert connection.generation == generation + 1
        assert isinstance(loader.list_domains(), list)
        # The dead handle was let go of (and so closed), not kept alive by a callback.
        wait_for(lambda: first_handle() is None)
        states = [s.state for s in seen]
        assert states[:2] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
        assert ConnectionState.LOST in states
        assert states[-1] is ConnectionState.CONNECTED
    finally:
        loader.close()
        connection.close()
    assert connection.status.state is ConnectionState.CLOSED


def test_a_connection_lost_while_reading_capabilities_is_reported_not_stuck(
    forwarder: SocketForwarder,
) -> None:
    # The thread whose call finds the socket dead runs the close callback itself; the
    # capabilities reader once held the lock that callback needs: a deadlock, and the
    # host never showed as lost.
    connection = Connection(f"qemu+tcp://127.0.0.1:{forwarder.port}/system", reconnect=False)
    connection.open()
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(connection.capabilities)
        except VirtError as exc:
            outcome.append(exc)

    forwarder.hold()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # the six calls are on the wire, waiting for replies
    forwarder.cut()
    wait_for(lambda: connection.status.state is ConnectionState.LOST, timeout=10)
    reader.join(10)
    assert not reader.is_alive()
    assert isinstance(outcome[0], VirtError)
    connection.close()


def test_closing_on_purpose_closes_the_daemons_handle_at_once(system_conn: object) -> None:
    connection = Connection("qemu:///system")
    connection.open()
    handle = weakref.ref(connection.conn)
    connection.close()
    assert handle() is None


def test_closing_on_purpose_stops_reconnecting(forwarder: SocketForwarder) -> None:
    connection = Connection(f"qemu+tcp://127.0.0.1:{forwarder.port}/system", keepalive=(1, 2))
    connection.open()
    forwarder.cut()
    wait_for(lambda: connection.status.state is ConnectionState.LOST)
    connection.close()
    forwarder.start()
    time.sleep(2.5)
    assert connection.status.state is ConnectionState.CLOSED


def test_a_host_gone_silent_is_lost_within_seconds_then_reconnected(
    forwarder: SocketForwarder,
) -> None:
    # Bytes stop and the socket stays open: no end of file ever comes. Keepalive (here
    # 1 s x 2) fails the call in flight and the connection reports the host silent.
    connection = Connection(f"qemu+tcp://127.0.0.1:{forwarder.port}/system", keepalive=(1, 2))
    connection.open()
    try:
        handle = connection.conn
        forwarder.hold()
        outcome: list[object] = []

        def call() -> None:
            try:
                outcome.append(handle.listAllDomains(0))
            except libvirt.libvirtError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        started = time.monotonic()
        caller.start()
        caller.join(20)
        assert not caller.is_alive(), "the call still waits for a silent host"
        assert time.monotonic() - started < 20
        assert isinstance(outcome[0], libvirt.libvirtError)
        wait_for(lambda: connection.status.state is not ConnectionState.CONNECTED, timeout=5)
        assert connection.status.reason == "the host stopped answering"

        forwarder.cut()  # the held link goes; a new one flows
        forwarder.start()
        wait_for(lambda: connection.status.state is ConnectionState.CONNECTED, timeout=30)
        assert isinstance(connection.conn.listAllDomains(0), list)
    finally:
        connection.close()
