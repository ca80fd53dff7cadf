"""Opening connections: capabilities, the event loop thread, and failures in plain words."""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from vmsnapgui.virt import connection as connection_module
from vmsnapgui.virt.connection import (
    Connection,
    ConnectionState,
    ConnectionStatus,
    HostAnswer,
    calls_in_flight,
    cut_socket,
    probe_host,
    split_version,
    validate_uri,
)
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.event_loop import ensure_event_loop, quiet_libvirt_errors


def test_opening_the_test_driver_reads_capabilities_once(lab_uri: str) -> None:
    seen: list[ConnectionStatus] = []
    connection = Connection(lab_uri)
    connection.add_status_listener(seen.append)
    connection.open()
    try:
        caps = connection.capabilities
        assert caps.uri == lab_uri
        assert caps.driver == "TEST"
        assert caps.libvirt_version >= (9, 0, 0)
        assert caps.external_delete is False  # only the QEMU driver deletes external snapshots
        assert connection.is_connected
        assert [s.state for s in seen] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
    finally:
        connection.close()
    assert connection.status.state is ConnectionState.CLOSED
    with pytest.raises(VirtError, match="Not connected"):
        _ = connection.conn


def test_closing_never_pulls_the_handle_from_under_a_call_in_flight(lab_uri: str) -> None:
    # A worker thread that took the handle before close() (a job still running at quit)
    # keeps a working connection until its call returns; libvirt takes no reference of
    # its own during a call, so closing under it used to free the driver it was in.
    connection = Connection(lab_uri)
    connection.open()
    in_flight = connection.conn
    gone = weakref.ref(in_flight)
    connection.close()
    assert connection.status.state is ConnectionState.CLOSED
    assert in_flight.getURI() == lab_uri  # still open for the call that holds it
    del in_flight
    assert gone() is None  # and closed the moment the last holder lets go


def test_a_closed_connection_lets_go_of_its_handle_at_once(lab_uri: str) -> None:
    connection = Connection(lab_uri)
    connection.open()
    gone = weakref.ref(connection.conn)
    connection.close()
    assert gone() is None


def test_the_event_loop_runs_on_its_own_thread_and_starts_once() -> None:
    loop = ensure_event_loop()
    assert ensure_event_loop() is loop
    assert loop.thread.is_alive()
    assert loop.thread is not threading.main_thread()
    assert loop.thread.daemon


def test_versions_unpack_like_libvirt_packs_them() -> None:
    assert split_version(9_009_000) == (9, 9, 0)
    assert split_version(11_003_001) == (11, 3, 1)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "The connection URI is empty; try qemu:///system."),
        ("   ", "The connection URI is empty; try qemu:///system."),
        ("qemu:///system\n", None),
        ("qemu:///sys\x07tem", "The connection URI contains control characters."),
        (
            "localhost",
            "'localhost' is not a libvirt URI; it should look like qemu:///system or qemu+ssh://user@host/system.",
        ),
        (
            "test://relative.xml",
            "A test-driver URI needs an absolute path: test:///path/to/file.xml.",
        ),
        ("test:///no/such/file.xml", "The test-driver file '/no/such/file.xml' does not exist."),
        ("q" * 5000 + "://x", "The connection URI is too long."),
    ],
)
def test_uris_are_validated_with_a_clear_message(uri: str, message: str | None) -> None:
    if message is None:
        assert validate_uri(uri) == uri.strip()
        return
    with pytest.raises(VirtError) as caught:
        validate_uri(uri)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "bogus:///x",
            "No libvirt driver handles 'bogus:///x'; check the URI or install the driver.",
        ),
        ("qemu://", "'qemu://' is not a valid libvirt URI (for example qemu:///system)."),
        (
            "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
            "The libvirt daemon is not running on this computer (nothing listens on its socket).",
        ),
        (
            "qemu+tcp://127.0.0.1:1/system",
            "No libvirt daemon is listening on '127.0.0.1' (connection refused).",
        ),
    ],
)
def test_connection_failures_are_one_sentence(uri: str, expected: str) -> None:
    connection = Connection(uri, reconnect=False)
    with pytest.raises(VirtError) as caught:
        connection.open()
    assert caught.value.message == expected
    assert caught.value.detail  # libvirt's own words are kept for the details view
    assert connection.status.state is ConnectionState.FAILED
    assert connection.status.reason == expected


def test_a_malformed_test_driver_file_is_explained(tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<node><domain>")
    connection = Connection(f"test://{broken}", reconnect=False)
    with pytest.raises(VirtError, match="could not be read as libvirt XML"):
        connection.open()


# -- noticing a dead host (issue 11 item 9) ----------------------------------------------


class SilentHost:
    """A UNIX socket that accepts libvirt clients and never says a word."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted.append(client)

    def close(self) -> None:
        """Hang up on everyone: whatever still waits sees end of file."""
        self._listener.close()
        for client in self.accepted:
            client.close()


@pytest.fixture
def silent_host(tmp_path: Path) -> Iterator[SilentHost]:
    host = SilentHost(tmp_path / "sock")
    yield host
    host.close()


@pytest.fixture
def quick_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog's pauses shortened, so that a dead host is found in about a second."""
    monkeypatch.setattr(connection_module, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(connection_module, "STALL_S", 0.3)
    monkeypatch.setattr(connection_module, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(connection_module, "GRACE_S", 0.3)


def test_calls_in_flight_counts_a_thread_waiting_inside_libvirt(silent_host: SilentHost) -> None:
    quiet_libvirt_errors()
    failures: list[BaseException] = []

    def open_and_wait() -> None:
        try:
            libvirt.open(silent_host.uri)
        except libvirt.libvirtError as exc:
            failures.append(exc)

    opener = threading.Thread(target=open_and_wait, daemon=True)
    opener.start()
    deadline = time.monotonic() + 5
    while calls_in_flight()[0] == 0 or not silent_host.accepted:
        assert time.monotonic() < deadline, "the waiting open was not seen"
        time.sleep(0.01)
    assert calls_in_flight()[0] == 1  # an open belongs to no connection yet
    silent_host.close()
    opener.join(5)
    assert failures and not opener.is_alive()
    assert calls_in_flight()[0] == 0


def test_an_open_the_host_never_answers_is_cut_and_explained(
    silent_host: SilentHost, quick_watchdog: None
) -> None:
    connection = Connection(silent_host.uri, monitor=False)
    started = time.monotonic()
    with pytest.raises(VirtError) as caught:
        connection.open()
    assert time.monotonic() - started < 10
    assert caught.value.message == (
        f"Could not connect to {silent_host.uri}: the host stopped answering "
        "(no reply within 0.5 seconds)."
    )
    assert connection.status.state is ConnectionState.FAILED


def test_a_host_gone_for_good_is_told_from_a_silent_and_a_live_one(
    silent_host: SilentHost, tmp_path: Path, lab_uri: str
) -> None:
    gone, why = probe_host(
        f"qemu+unix:///system?socket={tmp_path / 'nobody'}", read_only=False, timeout=5
    )
    assert gone is HostAnswer.GONE
    assert why == (
        "The libvirt daemon is not running on this computer (nothing listens on its socket)."
    )
    assert probe_host(silent_host.uri, read_only=False, timeout=0.3) == (HostAnswer.SILENT, "")
    assert probe_host(lab_uri, read_only=True, timeout=5) == (HostAnswer.ANSWERED, "")


def test_cutting_a_socket_wakes_its_reader_and_spares_a_newcomer() -> None:
    ours, peer = socket.socketpair()
    try:
        inode = os.fstat(ours.fileno()).st_ino
        assert not cut_socket(ours.fileno(), inode + 1)  # another socket took the number
        peer.sendall(b"x")
        assert ours.recv(1) == b"x"  # untouched
        assert cut_socket(ours.fileno(), inode)
        assert ours.recv(1) == b""  # end of file, as a waiting libvirt call sees it
        assert ours.fileno() >= 0  # the descriptor is still its owner's to close
    finally:
        ours.close()
        peer.close()


def test_a_new_socket_is_taken_for_ours_only_when_it_leads_to_the_host() -> None:
    before = connection_module._socket_inodes()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()  # new too, but its far end is the client's port
    elsewhere, pair_end = socket.socketpair()  # another thread's business
    try:
        found = connection_module._new_socket(before, f"qemu+tcp://127.0.0.1:{port}/system")
        assert found == (client.fileno(), os.fstat(client.fileno()).st_ino)
        # Alone among the new sockets, a socket to another place is still not ours.
        assert connection_module._new_socket(before, "qemu+tcp://127.0.0.1:1/system") is None
        # Two socket pairs could each be an SSH connection's: neither is taken.
        assert connection_module._new_socket(before, "qemu+ssh://host/system") is None
        assert connection_module._new_socket(before, "qemu+what://host/system") is None
    finally:
        for sock in (listener, client, served, elsewhere, pair_end):
            sock.close()
