"""One libvirt connection that notices when it drops, or its host dies, and reopens itself.

Listeners are plain callables, called from whichever thread noticed the change (the
caller, the event loop thread, the reconnect thread or the watchdog); the Qt layer turns
them into queued signals. Nothing here imports Qt.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import socket
import sys
import threading
import time
import weakref
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import libvirt

from vmsnapgui.core.quoting import quoted
from vmsnapgui.virt.errors import VirtError, explain, explain_open_error, is_connection_lost
from vmsnapgui.virt.event_loop import ensure_event_loop, quiet_libvirt_errors

_log = logging.getLogger(__name__)

# Reverting to external snapshots arrived in libvirt 9.9 (QEMU driver); deleting them
# in 9.0. Newer daemons also advertise revert support in their capabilities XML.
EXTERNAL_REVERT_VERSION = (9, 9, 0)
EXTERNAL_DELETE_VERSION = (9, 0, 0)
RECONNECT_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
MAX_URI_LENGTH = 4096
_URI_SCHEME = re.compile(r"^[a-z][a-z0-9]*(\+[a-z0-9]+)?://", re.IGNORECASE)


class ConnectionState(enum.StrEnum):
    """Where a connection is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "lost"  # dropped; reconnecting by itself
    FAILED = "failed"  # could not open; waits for a retry
    CLOSED = "closed"  # closed on purpose


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the host behind a connection can do, read once per (re)connection."""

    uri: str
    hostname: str
    driver: str
    libvirt_version: tuple[int, int, int]
    hypervisor_version: tuple[int, int, int] | None
    external_revert: bool
    external_delete: bool

    @property
    def libvirt_version_text(self) -> str:
        """The daemon's libvirt version as ``major.minor.micro``."""
        return ".".join(str(part) for part in self.libvirt_version)


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """A snapshot of the connection's state, as handed to listeners."""

    uri: str
    state: ConnectionState
    reason: str | None = None
    detail: str | None = None
    attempt: int = 0


def split_version(number: int) -> tuple[int, int, int]:
    """libvirt packs versions as major * 1,000,000 + minor * 1,000 + micro."""
    return number // 1_000_000, (number // 1_000) % 1_000, number % 1_000


def validate_uri(uri: str) -> str:
    """Check a libvirt URI the user typed; return it stripped or raise :class:`VirtError`."""
    text = uri.strip()
    if not text:
        raise VirtError("The connection URI is empty; try qemu:///system.")
    if len(text) > MAX_URI_LENGTH:
        raise VirtError("The connection URI is too long.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise VirtError("The connection URI contains control characters.")
    refusal = (
        f"{quoted(text)} is not a libvirt URI; it should look like qemu:///system "
        "or qemu+ssh://user@host/system."
    )
    if not _URI_SCHEME.match(text):
        raise VirtError(refusal)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed '[' in the host
        raise VirtError(refusal) from None
    if parts.scheme == "test" and (parts.netloc or parts.path not in ("", "/default")):
        if parts.netloc or not os.path.isabs(parts.path):
            raise VirtError("A test-driver URI needs an absolute path: test:///path/to/file.xml.")
        # libvirt percent-decodes the path (test:///my%20lab.xml opens "my lab.xml").
        path = unquote_to_bytes(parts.path)
        if path != os.fsencode(parts.path) and os.path.isfile(parts.path):
            raise VirtError(
                f"libvirt reads '%' in a test-driver URI as an escape: it would open "
                f"{quoted(os.fsdecode(path), 300)}, not {quoted(parts.path, 300)}; write "
                "%25 for each '%' in the file name."
            )
        if not os.path.isfile(path):
            shown = os.fsdecode(path)
            raise VirtError(f"The test-driver file {quoted(shown, 300)} does not exist.")
    return text


def read_capabilities(conn: libvirt.virConnect) -> Capabilities:
    """Ask the host once what it is and what it supports.

    The six calls run side by side: over a slow link that is one round trip, not six.
    """

    def optional(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except libvirt.libvirtError:
            return None

    with ThreadPoolExecutor(6, thread_name_prefix="libvirt-caps") as pool:
        uri_f = pool.submit(conn.getURI)
        driver_f = pool.submit(conn.getType)
        version_f = pool.submit(conn.getLibVersion)
        hv_f = pool.submit(optional, conn.getVersion)
        host_f = pool.submit(optional, conn.getHostname)
        caps_f = pool.submit(optional, conn.getCapabilities)
        uri, driver, version_number = uri_f.result(), driver_f.result(), version_f.result()
        hv_number, hostname, caps_xml = hv_f.result(), host_f.result(), caps_f.result()
    version = split_version(version_number)
    advertised = False
    if caps_xml:
        try:
            advertised = ET.fromstring(caps_xml).find(".//externalSnapshot") is not None
        except ET.ParseError:
            pass
    is_qemu = str(driver).upper() == "QEMU"
    return Capabilities(
        uri=uri,
        hostname=hostname or urlsplit(uri).hostname or "localhost",
        driver=driver,
        libvirt_version=version,
        hypervisor_version=split_version(hv_number) if hv_number else None,
        external_revert=advertised or (is_qemu and version >= EXTERNAL_REVERT_VERSION),
        external_delete=is_qemu and version >= EXTERNAL_DELETE_VERSION,
    )


StatusListener = Callable[[ConnectionStatus], None]
DomainEventListener = Callable[[str, str, int, int], None]
# Told, in one sentence, that calls on a dead connection never returned (see _Watchdog).
StuckCallsHandler = Callable[[str], None]


class Connection:
    """A libvirt connection with keepalive, close detection and automatic reconnection.

    ``open()`` blocks (call it off the GUI thread). When the connection drops, listeners
    hear ``LOST`` and a background thread reopens it with growing pauses until it
    succeeds or :meth:`close` is called.

    ``monitor=False`` is for one-shot commands: no keepalive, close callback or domain
    events, whose set-up costs round trips a short-lived process does not need.
    Capabilities are read on first use.

    Either way a watchdog thread notices a dead host while calls wait for it (see
    :class:`_Watchdog`): a one-shot connection has no keepalive, so while calls run
    without a pause it asks the host now and then whether it is still there, and cuts
    the connection when it is not, so every waiting call fails with "connection lost".
    ``on_stuck_calls(sentence)`` hears when calls on a dead connection did not return
    even so: a command-line tool ends the process there (those threads never end).
    """

    def __init__(
        self,
        uri: str | None,
        *,
        read_only: bool = False,
        keepalive: tuple[int, int] = (5, 3),
        reconnect: bool = True,
        monitor: bool = True,
        on_stuck_calls: StuckCallsHandler | None = None,
    ) -> None:
        self.requested_uri = validate_uri(uri) if uri is not None else None
        self.read_only = read_only
        self._keepalive = keepalive
        self._reconnect = reconnect and monitor
        self._monitor = monitor
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        self._capabilities: Capabilities | None = None
        self._uri: str | None = None
        self._status = ConnectionStatus(self.display_uri, ConnectionState.DISCONNECTED)
        self._listeners: list[StatusListener] = []
        self._domain_listeners: list[DomainEventListener] = []
        self._event_ids: list[int] = []
        self._closing = threading.Event()
        self._wake = threading.Event()  # cuts a reconnect pause short
        self._reconnect_thread: threading.Thread | None = None
        self._generation = 0
        # The live handle's socket, (descriptor, inode), when it could be told apart.
        self._socket: tuple[int, int] | None = None
        # While libvirt.open runs: since when, and the sockets open before it started.
        self._opening: tuple[float, dict[int, int]] | None = None
        self._watchdog = _Watchdog(self, probe=not monitor, on_stuck_calls=on_stuck_calls)

    # -- public ------------------------------------------------------------------

    @property
    def display_uri(self) -> str:
        """The URI as the user knows it (the default one once known)."""
        return self._uri or self.requested_uri or "(default)"

    @property
    def status(self) -> ConnectionStatus:
        """The latest state, with the reason when lost or failed."""
        return self._status

    @property
    def capabilities(self) -> Capabilities:
        """What the host supports, read once per (re)connection on first use."""
        # Read without holding self._lock: a call that finds the connection dead runs
        # the close callback on its own thread, and that callback takes the lock.
        # Two threads asking at once may both read; the answers are the same.
        with self._lock:
            known, generation, conn = self._capabilities, self._generation, self._conn
        if known is not None:
            return known
        if conn is None:
            conn = self.conn  # raises, saying why
        try:
            capabilities = read_capabilities(conn)
        except libvirt.libvirtError as exc:
            raise explain(exc, "reading the host's capabilities") from None
        with self._lock:
            if generation == self._generation:
                self._capabilities = capabilities
        return capabilities

    @property
    def generation(self) -> int:
        """Counts successful opens, so caches can tell a reconnection happened."""
        return self._generation

    def add_status_listener(self, listener: StatusListener) -> None:
        """Call ``listener(status)`` on every state change (from any thread)."""
        self._listeners.append(listener)

    def add_domain_event_listener(self, listener: DomainEventListener) -> None:
        """Call ``listener(name, uuid, event, detail)`` for domain lifecycle events."""
        self._domain_listeners.append(listener)

    def open(self) -> libvirt.virConnect:
        """Open the connection (blocking); raise :class:`VirtError` on failure."""
        self._closing.clear()
        self._set_status(ConnectionState.CONNECTING)
        try:
            conn = self._open_once()
        except VirtError as exc:
            self._set_status(ConnectionState.FAILED, exc.message, exc.detail)
            raise
        return conn

    @property
    def conn(self) -> libvirt.virConnect:
        """The live libvirt handle; raises :class:`VirtError` when not connected."""
        conn = self._conn
        if conn is None:
            status = self._status
            reason = f" ({status.reason})" if status.reason else ""
            raise VirtError(f"Not connected to {self.display_uri}{reason}.")
        return conn

    @property
    def is_connected(self) -> bool:
        """True while the libvirt handle is open and alive."""
        return self._conn is not None and self._status.state is ConnectionState.CONNECTED

    def close(self) -> None:
        """Close on purpose; stops any reconnection."""
        self._closing.set()
        self._wake.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._teardown(conn)
        self._set_status(ConnectionState.CLOSED)

    def connection_lost(self, reason: str, detail: str | None = None) -> None:
        """Report that a call found the connection dead (close callbacks can lag)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        self._teardown(conn)
        self._on_lost(reason, detail)

    def reopen(self, timeout: float) -> libvirt.virConnect:
        """A working handle after a call found the connection dead.

        Waits up to ``timeout`` seconds for the host to come back (a daemon restarting
        takes a few): a monitoring connection's own reconnect thread is woken to try at
        once; a one-shot connection is reopened here. Raises :class:`VirtError` with the
        last reason when the host is still away.
        """
        deadline = time.monotonic() + timeout
        pause = 0.25
        while True:
            with self._lock:
                conn = self._conn
            if conn is not None and self._status.state is ConnectionState.CONNECTED:
                return conn
            if self._closing.is_set():
                raise VirtError(f"The connection to {self.display_uri} was closed.")
            if self._reconnect:
                self._wake.set()
            else:
                try:
                    return self._open_once()
                except VirtError as exc:
                    self._set_status(ConnectionState.LOST, exc.message, exc.detail)
            if time.monotonic() + pause > deadline:
                status = self._status
                reason = f" ({status.reason})" if status.reason else ""
                raise VirtError(
                    f"The host behind {self.display_uri} has not come back within "
                    f"{timeout:.0f} seconds{reason}.",
                    detail=status.detail,
                )
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    # -- internals -----------------------------------------------------------------

    def _open_once(self) -> libvirt.virConnect:
        uri = self.requested_uri
        quiet_libvirt_errors()
        if self._monitor or _needs_event_loop(uri or ""):
            # A one-shot connection (the vmsnap command) needs no events, keepalive or
            # close callbacks, and without an event loop every call is cheaper: with one
            # registered, libvirt's client hands each call's socket back to the loop,
            # which wakes (in Python) for every reply. Fetching 10,000 snapshot XMLs took
            # 4.4 s with the loop and 2.4 s without, on the same 2 CPUs.
            ensure_event_loop()
        watched = not _in_process(uri or "")
        sockets_before = _socket_inodes() if watched else {}
        started = time.monotonic()
        self._opening = (started, sockets_before)
        if watched:
            self._watchdog.ensure_running()
        try:
            conn = libvirt.openReadOnly(uri) if self.read_only else libvirt.open(uri)
        except libvirt.libvirtError as exc:
            verdict = self._watchdog.open_verdict(started)
            if verdict is not None:  # the watchdog cut an open the host never answered
                raise VirtError(
                    f"Could not connect to {self.display_uri}: {verdict}.",
                    detail=exc.get_error_message(),
                ) from None
            raise explain_open_error(exc, uri) from None
        finally:
            self._opening = None
        own_socket = _new_socket(sockets_before, uri) if watched else None
        try:
            # The canonical URI (what "default" resolved to) names the host everywhere.
            uri_now = conn.getURI()
        except libvirt.libvirtError as exc:
            conn.close()
            raise explain_open_error(exc, uri) from None
        generation = self._generation + 1
        event_ids = []
        if self._monitor:
            try:
                # Only remote transports support keepalive; local drivers refuse it.
                conn.setKeepAlive(*self._keepalive)
            except libvirt.libvirtError:
                pass
            if not _in_process(uri_now):
                # In-process drivers (test, embed) cannot drop, and libvirt accepts the
                # callback without keeping it: the binding's reference to it, and to the
                # handle, would never be let go.
                try:
                    conn.registerCloseCallback(self._on_close, generation)
                except libvirt.libvirtError:
                    pass
            try:
                event_ids.append(
                    conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                    )
                )
            except libvirt.libvirtError as exc:
                _log.info("no lifecycle events from %s: %s", uri, exc)
        with self._lock:
            self._conn = conn
            self._socket = own_socket
            self._uri = uri_now
            self._capabilities = None
            self._event_ids = event_ids
            self._generation = generation
        self._set_status(ConnectionState.CONNECTED)
        return conn

    def _found_dead(self, conn: libvirt.virConnect, reason: str) -> None:
        """The watchdog's verdict on ``conn``: report it lost (and reconnect) if still ours."""
        with self._lock:
            if self._conn is not conn or self._closing.is_set():
                return
            self._conn = None
        # Deregistering may wait on the dead socket until the cut reaches it: off-thread.
        threading.Thread(target=self._teardown, args=(conn,), daemon=True).start()
        self._on_lost(reason)

    def _watch_state(
        self,
    ) -> tuple[
        libvirt.virConnect | None, tuple[int, int] | None, tuple[float, dict[int, int]] | None
    ]:
        """What the watchdog looks at: the live handle, its socket and an open under way."""
        with self._lock:
            return self._conn, self._socket, self._opening

    def _has_work_for_watchdog(self) -> bool:
        """True while there is a handle or an open to watch (keeps no reference)."""
        with self._lock:
            return self._conn is not None or self._opening is not None

    def _probe_uri(self) -> str | None:
        """The URI a new connection to the same host is opened with (None: the default)."""
        return self.requested_uri if self.requested_uri is not None else self._uri

    def _teardown(self, conn: libvirt.virConnect) -> None:
        for event_id in self._event_ids:
            try:
                conn.domainEventDeregisterAny(event_id)
            except libvirt.libvirtError:
                pass
        self._event_ids = []
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        # No conn.close(): a worker thread may be inside a call on this handle right now
        # (libvirt's calls take no reference on the connection), and closing the last
        # reference under it frees the driver it is using: a SIGSEGV at quit, seen in
        # CI. Letting go of our reference closes the handle as soon as the last call in
        # flight returns (libvirt.virConnect.__del__), and at once when none is.
        del conn

    def _on_close(self, conn: libvirt.virConnect, reason: int, generation: Any) -> None:
        # Runs on the event loop thread: only hand the work on.
        if self._closing.is_set() or generation != self._generation:
            return
        reasons = {
            libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "the host closed the connection",
            libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "the host stopped answering",
            libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "a network error broke the connection",
        }
        with self._lock:
            dead, self._conn = self._conn, None
        if dead is None:
            return
        # Closing from inside the close callback would deadlock; do it off-thread.
        threading.Thread(target=self._teardown, args=(dead,), daemon=True).start()
        self._on_lost(reasons.get(reason, "the connection was closed"))

    def _on_lost(self, reason: str, detail: str | None = None) -> None:
        self._set_status(ConnectionState.LOST, reason, detail)
        if not self._reconnect or self._closing.is_set():
            return
        with self._lock:
            if self._reconnect_thread is not None and self._reconnect_thread.is_alive():
                return
            self._reconnect_thread = threading.Thread(
                target=self._reconnect_loop, args=(reason,), name="libvirt-reconnect", daemon=True
            )
            self._reconnect_thread.start()

    def _reconnect_loop(self, reason: str) -> None:
        attempt = 0
        while not self._closing.is_set():
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            self._wake.wait(delay)
            self._wake.clear()
            if self._closing.is_set():
                return
            self._set_status(ConnectionState.CONNECTING, reason, attempt=attempt)
            try:
                self._open_once()
                return
            except VirtError as exc:
                reason = exc.message
                self._set_status(ConnectionState.LOST, exc.message, exc.detail, attempt=attempt)

    def _on_lifecycle(
        self, conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _: Any
    ) -> None:
        try:
            name, uuid = dom.name(), dom.UUIDString()
        except libvirt.libvirtError:
            return
        for listener in list(self._domain_listeners):
            try:
                listener(name, uuid, event, detail)
            except Exception:
                _log.exception("domain event listener failed")

    def _set_status(
        self,
        state: ConnectionState,
        reason: str | None = None,
        detail: str | None = None,
        attempt: int = 0,
    ) -> None:
        status = ConnectionStatus(self.display_uri, state, reason, detail, attempt)
        self._status = status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                _log.exception("connection listener failed")


_LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})


def is_local_uri(uri: str | None) -> bool:
    """True when a libvirt URI names this machine: no host part, or a loopback name."""
    if not uri:
        return True
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return False
    return host is None or host == "" or host.lower() in _LOOPBACK_HOSTS


def files_are_here(uri: str | None) -> bool:
    """True when the paths a host's definitions name are files on this computer.

    Local QEMU hosts, yes; the test driver's paths are made up, and a remote host's
    files are on that host.
    """
    return is_local_uri(uri) and not (uri or "").startswith("test:")


def _needs_event_loop(uri: str) -> bool:
    """True for drivers that cannot work without an event loop (the embedded QEMU one)."""
    return uri.split("?", 1)[0].rstrip("/").endswith("/embed")


def _in_process(uri: str) -> bool:
    """True for drivers that run inside this process (the test driver, embedded QEMU)."""
    return uri.startswith("test:") or _needs_event_loop(uri)


# -- noticing a dead host ---------------------------------------------------------------
#
# A call waits for its reply for as long as it takes. libvirt's remote client lets one
# calling thread poll the socket while the others sleep on condition variables; only
# the socket (end of file, an error) or the keepalive timer, run by an event loop, can
# wake them. The window's connections have keepalive; one-shot ones have no event loop
# (it made the CLI markedly slower), so a host that stops answering without closing
# the socket (hung, frozen, cut off behind a proxy or NAT) kept a command waiting
# forever. libvirt 9.0's client also computes the poll timeout keepalive needs and never
# uses it, and a wake-up sent while the polling thread is between two polls is lost, so
# even keepalive can, rarely, leave calls waiting on a connection libvirt itself has
# marked closed. The watchdog below looks from outside, costs nothing per call, and
# when the host is gone shuts the connection's socket down: the kernel then wakes the
# polling thread with end of file and libvirt fails every waiting call as for a host
# that closed the connection.

WATCH_INTERVAL_S = 0.5
# Calls in flight without a pause for this long: ask whether the host is still there.
STALL_S = 3.0
# How long each question (on the connection itself, then on a new one) may take.
PROBE_TIMEOUT_S = 5.0
# How long calls may go on waiting on a connection libvirt has marked closed, or that
# was cut, before they count as stuck for good.
GRACE_S = 3.0
# A host that answers new connections while ours stays silent this many questions in a
# row: ours is what broke (a dropped NAT entry, a stalled proxy).
SILENT_ROUNDS = 3

_LIBVIRT_MODULES = frozenset({"libvirt", "libvirt_qemu", "libvirt_lxc"})
_WATCHDOG_THREAD = "libvirt-watchdog"
_OPENS = frozenset({"open", "openReadOnly", "openAuth"})
# What a connection that cannot be made because the host or its daemon is gone says.
_HOST_GONE = re.compile(
    r"Connection refused|No such file or directory|No route to host|Network is unreachable|"
    r"timed out|End of file|Connection reset|Broken pipe|Cannot recv data|Cannot write data",
    re.IGNORECASE,
)


def calls_in_flight() -> Counter[int]:
    """How many threads are inside a libvirt call right now, by ``id()`` of the
    connection (:class:`libvirt.virConnect`) each is on; 0 for opens (``libvirt.open``),
    which are on none yet.

    While libvirt-python's C function runs, the thread's innermost Python frame is the
    binding's wrapper, whose first argument is the object called, which names its
    connection. Left out: the watchdog's own threads, and the binding's event plumbing
    (``_dispatch…`` methods, the module's event functions), which the event loop thread
    passes through on its way to a callback, waiting for no host.
    """
    frames = sys._current_frames()
    # Listed after the frames: a thread started in between is in this set or not there.
    ours = {t.ident for t in threading.enumerate() if t.name.startswith(_WATCHDOG_THREAD)}
    counts: Counter[int] = Counter()
    for ident, frame in frames.items():
        if ident in ours or frame.f_globals.get("__name__") not in _LIBVIRT_MODULES:
            continue
        code = frame.f_code
        if code.co_name.startswith("_dispatch"):
            continue
        first = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        conn = _connection_of(first)
        if conn is not None:
            counts[id(conn)] += 1
        elif code.co_name in _OPENS:
            counts[0] += 1
    return counts


def _connection_of(obj: object) -> libvirt.virConnect | None:
    if isinstance(obj, libvirt.virConnect):
        return obj
    conn = getattr(obj, "_conn", None) if type(obj).__module__ in _LIBVIRT_MODULES else None
    return conn if isinstance(conn, libvirt.virConnect) else None


def _socket_inodes() -> dict[int, int]:
    """This process's open sockets: file descriptor -> socket inode."""
    found: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found[int(name)] = int(target[8:-1])
    return found


def _new_socket(before: dict[int, int], uri: str | None) -> tuple[int, int] | None:
    """The socket a connection to ``uri`` opened since ``before`` was listed, as
    (descriptor, inode); None unless exactly one new socket leads where ``uri`` does.

    Other threads open sockets too, even when only one is new (ours may not exist yet),
    so the far end is always checked: a socket that cannot be told to be ours is never
    taken for it.
    """
    peer = _expected_peer(uri)
    if peer is None:
        return None
    mine = [
        (fd, inode)
        for fd, inode in _socket_inodes().items()
        if before.get(fd) != inode and _peer_is(fd, peer)
    ]
    return mine[0] if len(mine) == 1 else None


class _Unnamed(enum.Enum):
    """The far end of a transport that runs a program (SSH): one end of a socket pair."""

    PAIR = "pair"


def _expected_peer(uri: str | None) -> int | str | _Unnamed | None:
    """Where a connection to ``uri`` leads: a TCP port, a UNIX socket's file name ("":
    any), a socket pair to a program (ssh, ext), or None when that cannot be told."""
    parts = urlsplit(uri or "")
    transport = parts.scheme.partition("+")[2] or ("unix" if not parts.hostname else "tls")
    if transport in ("tcp", "tls", "libssh", "libssh2"):
        defaults = {"tcp": 16509, "tls": 16514}
        try:
            return parts.port or defaults.get(transport, 22)
        except ValueError:
            return None
    if transport == "unix":
        for key, _eq, value in (item.partition("=") for item in parts.query.split("&")):
            if key == "socket" and value:
                return os.path.basename(value)
        return ""  # the daemon's usual socket, whichever daemon it is
    if transport in ("ssh", "ext"):
        return _Unnamed.PAIR
    return None


def _peer_is(fd: int, peer: int | str | _Unnamed) -> bool:
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        with socket.socket(fileno=duplicate) as sock:
            duplicate = -1  # the socket object closes it
            family, name = sock.family, sock.getpeername()
    except OSError:
        return False
    finally:
        if duplicate >= 0:
            os.close(duplicate)
    if isinstance(peer, int):
        return isinstance(name, tuple) and len(name) >= 2 and name[1] == peer
    if family != socket.AF_UNIX:
        return False
    if peer is _Unnamed.PAIR:
        return not name
    return isinstance(name, str) and bool(name) and (not peer or os.path.basename(name) == peer)


def cut_socket(fd: int, inode: int) -> bool:
    """Shut a connection's socket down so that every call waiting on it sees end of file.

    ``inode`` makes sure it is still the same socket and not a new one that was given
    its descriptor number. The descriptor stays open: it is libvirt's to close.
    """
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(duplicate).st_ino != inode:
            return False
        with socket.socket(fileno=duplicate) as sock:
            duplicate = -1  # the socket object closes it
            sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        if duplicate >= 0:
            os.close(duplicate)


def _within(call: Callable[[], object], timeout: float) -> tuple[bool, BaseException | None]:
    """Run ``call`` on a thread of its own: (whether it ended in time, what it raised).

    A call that does not end is left behind on its daemon thread.
    """
    raised: list[BaseException | None] = []
    ended = threading.Event()

    def run() -> None:
        try:
            call()
            raised.append(None)
        except BaseException as exc:
            raised.append(exc)
        finally:
            ended.set()

    threading.Thread(target=run, name=f"{_WATCHDOG_THREAD}-probe", daemon=True).start()
    if not ended.wait(timeout):
        return False, None
    return True, raised[0]


class HostAnswer(enum.Enum):
    """What a new connection to a host found."""

    ANSWERED = "answered"  # or could not tell: a refused login says nothing of health
    SILENT = "silent"  # no answer in time
    GONE = "gone"  # nothing listens, or the link is down


def probe_host(uri: str | None, *, read_only: bool, timeout: float) -> tuple[HostAnswer, str]:
    """Open a new connection to ``uri`` and ask one question, waiting ``timeout`` seconds.

    Returns the answer and, when the host is gone, why (one sentence). SSH is told not
    to prompt for a password: nobody is there to type it.
    """
    target = _unattended(uri)

    def ask() -> None:
        conn = libvirt.openReadOnly(target) if read_only else libvirt.open(target)
        try:
            conn.getLibVersion()
        finally:
            conn.close()

    quiet_libvirt_errors()
    ended, error = _within(ask, timeout)
    if not ended:
        return HostAnswer.SILENT, ""
    if isinstance(error, libvirt.libvirtError) and _HOST_GONE.search(
        error.get_error_message() or ""
    ):
        return HostAnswer.GONE, explain_open_error(error, uri).message
    return HostAnswer.ANSWERED, ""


def _unattended(uri: str | None) -> str | None:
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.scheme.partition("+")[2] != "ssh" or "no_tty=" in parts.query:
        return uri
    query = f"{parts.query}&no_tty=1" if parts.query else "no_tty=1"
    return urlunsplit(parts._replace(query=query))


def _is_alive(conn: libvirt.virConnect) -> bool:
    """libvirt's own view (no round trip): False once it has marked the connection closed."""
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return True  # cannot tell; the questions decide


@dataclass
class _Watch:
    """What the watchdog knows of one libvirt handle with calls on it."""

    handle: weakref.ref[libvirt.virConnect]
    socket: tuple[int, int] | None
    busy_since: float | None = None  # calls in flight since, without a pause
    closed_since: float | None = None  # libvirt has marked it closed since
    asked: float = 0.0  # when the host last answered a question (or was asked)
    silent_rounds: int = 0
    dead_since: float | None = None
    reason: str = ""
    given_up: bool = False


class _Watchdog:
    """Notices, from outside, a dead host that calls on a connection are waiting for.

    Every half second it sees which threads are inside libvirt calls and on which
    connection. When libvirt has marked a connection with calls in flight closed for
    more than a moment, or — on one-shot connections, which have no keepalive — calls
    have run without a pause for a few seconds and neither the connection nor a new
    one to the same host answers within :data:`PROBE_TIMEOUT_S`, the host counts as
    dead: the connection's socket is shut down, which wakes every waiting call with
    end of file, and the connection reports itself lost. Calls still waiting
    :data:`GRACE_S` later never will; ``on_stuck_calls`` hears of them. A libvirt.open
    that hangs the same way is judged alike. A host that is merely slow (a long
    snapshot) answers the question and is left alone; asking costs one round trip
    every few seconds, only while calls keep running.
    """

    def __init__(
        self, owner: Connection, *, probe: bool, on_stuck_calls: StuckCallsHandler | None
    ) -> None:
        self._owner = owner
        self._probe = probe
        self._on_stuck_calls = on_stuck_calls
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._watches: dict[int, _Watch] = {}
        self._open_judged: float | None = None  # the open being judged (its start)
        self._open_asked = 0.0
        self._open_dead_since: float | None = None
        self._open_reason = ""
        self._open_given_up = False

    def ensure_running(self) -> None:
        """Start the watchdog thread unless it runs (it ends when nothing is left to watch)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=_WATCHDOG_THREAD, daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            try:
                busy = self._tick(time.monotonic())
            except Exception:  # the watchdog must outlive any surprise
                _log.exception("connection watchdog failed")
                busy = True
            with self._lock:
                if not busy and not self._owner._has_work_for_watchdog():
                    self._thread = None
                    self._watches.clear()
                    return

    def _tick(self, now: float) -> bool:
        """One look; True while calls are in flight on a handle being watched."""
        current, own_socket, opening = self._owner._watch_state()
        if current is not None and id(current) not in self._watches:
            self._watches[id(current)] = _Watch(weakref.ref(current), own_socket)
        counts = calls_in_flight()
        busy = False
        for key, watch in list(self._watches.items()):
            handle = watch.handle()
            if handle is None or id(handle) != key:
                del self._watches[key]
                continue
            if counts.get(key, 0) == 0:
                if handle is current:
                    watch.busy_since = watch.closed_since = None
                    watch.silent_rounds = 0
                else:
                    del self._watches[key]
                continue
            busy = True
            if watch.busy_since is None:
                watch.busy_since = now
            self._judge(watch, handle, now)
            del handle
        if opening is None:
            self._open_judged = None
        elif self._probe:
            self._judge_open(opening, now)
        return busy

    def _judge(self, watch: _Watch, handle: libvirt.virConnect, now: float) -> None:
        if watch.dead_since is not None:
            if not watch.given_up and now - watch.dead_since >= GRACE_S:
                watch.given_up = True
                self._give_up(watch.reason)
            return
        if not _is_alive(handle):
            if watch.closed_since is None:
                watch.closed_since = now
            elif now - watch.closed_since >= GRACE_S:
                self._declare_dead(watch, handle, "the connection to the host was lost")
            return
        assert watch.busy_since is not None
        if not self._probe or now - max(watch.busy_since, watch.asked) < STALL_S:
            return
        reason = self._ask(watch, handle)
        watch.asked = time.monotonic()
        if reason is not None:
            self._declare_dead(watch, handle, reason)

    def _ask(self, watch: _Watch, handle: libvirt.virConnect) -> str | None:
        """Whether the host is gone: None when it answers, else why (a phrase)."""
        ended, error = _within(handle.getLibVersion, PROBE_TIMEOUT_S)
        if ended:
            watch.silent_rounds = 0
            if error is not None and is_connection_lost(error):
                return "the connection to the host was lost"
            return None
        answer, why = probe_host(
            self._owner._probe_uri(), read_only=self._owner.read_only, timeout=PROBE_TIMEOUT_S
        )
        if answer is HostAnswer.SILENT:
            return _silence(PROBE_TIMEOUT_S)
        if answer is HostAnswer.GONE:
            return _phrase(why)
        watch.silent_rounds += 1
        if watch.silent_rounds >= SILENT_ROUNDS:
            return (
                f"the connection stopped answering, {watch.silent_rounds} times in a row, "
                "although the host answers new ones"
            )
        return None

    def _declare_dead(self, watch: _Watch, handle: libvirt.virConnect, reason: str) -> None:
        watch.dead_since = time.monotonic()
        watch.reason = reason
        _log.info("%s: %s", self._owner.display_uri, reason)
        self._owner._found_dead(handle, reason)  # LOST is said before calls fail
        if watch.socket is not None:
            cut_socket(*watch.socket)

    def _judge_open(self, opening: tuple[float, dict[int, int]], now: float) -> None:
        """libvirt.open has no timeout: judge one that takes long like calls in flight."""
        since, sockets_before = opening
        if self._open_judged != since:
            self._open_judged, self._open_asked = since, since
            self._open_dead_since, self._open_given_up = None, False
        if self._open_dead_since is not None:
            if not self._open_given_up and now - self._open_dead_since >= GRACE_S:
                self._open_given_up = True
                self._give_up(self._open_reason, opening=True)
            return
        if now - self._open_asked < STALL_S:
            return
        # Listed before the question opens a socket of its own.
        own_socket = _new_socket(sockets_before, self._owner._probe_uri())
        answer, why = probe_host(
            self._owner._probe_uri(), read_only=self._owner.read_only, timeout=PROBE_TIMEOUT_S
        )
        self._open_asked = time.monotonic()
        if answer is HostAnswer.ANSWERED:
            return
        self._open_reason = (
            _silence(PROBE_TIMEOUT_S, connected=False)
            if answer is HostAnswer.SILENT
            else _phrase(why)
        )
        self._open_dead_since = self._open_asked
        _log.info("%s: %s", self._owner.display_uri, self._open_reason)
        if own_socket is not None:
            cut_socket(*own_socket)  # the open then fails with end of file

    def open_verdict(self, since: float) -> str | None:
        """Why the open that started at ``since`` was judged dead and cut, if it was."""
        if self._open_judged == since and self._open_dead_since is not None:
            return self._open_reason
        return None

    def _give_up(self, reason: str, *, opening: bool = False) -> None:
        where = self._owner.display_uri
        if opening:
            sentence = f"Could not connect to {where}: {reason}."
        else:
            sentence = f"Calls to {where} never returned after the connection died: {reason}."
        _log.info("%s", sentence)
        if self._on_stuck_calls is not None:
            self._on_stuck_calls(sentence)


def _silence(seconds: float, *, connected: bool = True) -> str:
    where = ", on this connection or a new one" if connected else ""
    return f"the host stopped answering (no reply within {seconds:g} seconds{where})"


def _phrase(sentence: str) -> str:
    """A sentence made into a phrase that follows a colon or sits in brackets."""
    text = sentence.strip().rstrip(".")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text
