#!/usr/bin/env python3
"""A user-space TCP proxy on loopback that adds a fixed one-way delay.

The kernel on the benchmark machines has no ``netem`` qdisc, so latency is
simulated here instead: the proxy listens on ``127.0.0.1:PORT`` and forwards
each accepted connection either to a TCP address or to a UNIX socket path.
Every chunk of bytes read from one side at time *t* is written to the other
side at *t + delay*, in order. The byte stream stays pipelined: a chunk never
waits for an earlier chunk's delay beyond keeping the order, so many requests
in flight overlap on the "wire" exactly as they would over a real slow link
(bandwidth is not limited).

Forwarding to libvirtd's UNIX socket (``/var/run/libvirt/libvirt-sock``) lets
clients use ``qemu+tcp://127.0.0.1:PORT/system`` without reconfiguring the
daemon: libvirt speaks the same RPC protocol on both transports and the daemon
sees a UNIX-socket client whose peer credentials are the proxy's.

Use as a module::

    with LatencyProxy(upstream_unix="/var/run/libvirt/libvirt-sock",
                      delay=0.025) as proxy:
        uri = f"qemu+tcp://127.0.0.1:{proxy.port}/system"
        ...

or from the command line::

    python bench/latency_proxy.py --listen 127.0.0.1:16600 \\
        --unix /var/run/libvirt/libvirt-sock --delay-ms 25

Add ``--check`` to measure (through libvirt) that the delay is really added and
that concurrent calls overlap, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TextIO

DEFAULT_LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"
CHUNK_SIZE = 256 * 1024


@dataclass
class ProxyStats:
    """Counters for what went through the proxy (updated on the loop thread)."""

    connections: int = 0
    active: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    errors: list[str] = field(default_factory=list)


class LatencyProxy:
    """Forward TCP connections to an upstream address with a one-way delay.

    Exactly one of ``upstream_unix`` (a UNIX socket path) or ``upstream_tcp``
    (a ``(host, port)`` pair) must be given. ``delay`` is the one-way delay in
    seconds, applied to each direction separately (a request/response round
    trip therefore costs ``2 * delay`` extra). ``listen_port=0`` picks a free
    port; read it from :attr:`port` once started.
    """

    def __init__(
        self,
        *,
        delay: float,
        upstream_unix: str | None = None,
        upstream_tcp: tuple[str, int] | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if (upstream_unix is None) == (upstream_tcp is None):
            raise ValueError("give exactly one of upstream_unix or upstream_tcp")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay
        self.upstream_unix = upstream_unix
        self.upstream_tcp = upstream_tcp
        self.listen_host = listen_host
        self.port = listen_port
        self.stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- asyncio
    async def start_server(self) -> None:
        """Bind the listening socket (on the running loop) and record the port."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(
            self._handle_client, self.listen_host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve(self) -> None:
        """Serve until :meth:`stop` is called (or the task is cancelled)."""
        if self._server is None:
            await self.start_server()
        assert self._stopped is not None and self._server is not None
        try:
            await self._stopped.wait()
        finally:
            self._server.close()
            for task in list(self._conn_tasks):
                task.cancel()
            if self._conn_tasks:
                await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _open_upstream(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream_unix is not None:
            return await asyncio.open_unix_connection(self.upstream_unix, limit=CHUNK_SIZE)
        assert self.upstream_tcp is not None
        host, port = self.upstream_tcp
        return await asyncio.open_connection(host, port, limit=CHUNK_SIZE)

    async def _handle_client(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self.stats.connections += 1
        self.stats.active += 1
        u_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            try:
                u_reader, u_writer = await self._open_upstream()
            except OSError as exc:
                self.stats.errors.append(f"upstream connect failed: {exc}")
                print(f"latency_proxy: cannot reach upstream: {exc}", file=sys.stderr)
                return
            pumps = [
                asyncio.create_task(self._pump(c_reader, u_writer, "up")),
                asyncio.create_task(self._pump(u_reader, c_writer, "down")),
            ]
            # Both directions end on EOF (half-close is forwarded); an error in
            # one ends the connection.
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                failure = None if t.cancelled() else t.exception()
                if failure is not None and not isinstance(failure, ConnectionError):
                    self.stats.errors.append(repr(failure))
        except asyncio.CancelledError:
            pass  # only stop() cancels: the proxy is shutting down
        finally:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self.stats.active -= 1
            for w in (c_writer, u_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
            self._conn_tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        """Copy one direction, delivering each chunk ``delay`` after it arrived.

        A reader task stamps chunks with their due time and queues them; this
        coroutine writes them out when due. Due times are non-decreasing, so
        order is kept and each chunk waits only for its own delay.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        delay = self.delay

        async def receive() -> None:
            while True:
                try:
                    data = await reader.read(CHUNK_SIZE)
                except (ConnectionError, OSError):
                    data = b""
                queue.put_nowait((loop.time() + delay, data or None))
                if not data:
                    return

        receiver = asyncio.create_task(receive())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver

    def _request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    # -------------------------------------------------------------- threading
    def start(self) -> LatencyProxy:
        """Run the proxy on a private event loop in a daemon thread.

        Returns once the listening socket is bound (so :attr:`port` is valid).
        """
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await self.start_server()
            except BaseException as exc:  # reported to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self.serve()

        self._thread = threading.Thread(
            target=asyncio.run, args=(main(),), name="latency-proxy", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop a proxy started with :meth:`start` and wait for its thread."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def libvirt_uri(self) -> str:
        """The ``qemu+tcp`` URI that reaches the system daemon through the proxy."""
        return f"qemu+tcp://{self.listen_host}:{self.port}/system"


# ------------------------------------------------------------------ helpers
def check_unix_socket(path: str) -> None:
    """Raise a clear error if ``path`` is not a UNIX socket accepting connects."""
    if not os.path.exists(path):
        raise SystemExit(
            f"error: {path} does not exist - is libvirtd running? Start it with:\n"
            "  mkdir -p /var/log/libvirt; virtlogd -d; libvirtd -d"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError as exc:
            raise SystemExit(
                f"error: cannot connect to {path} ({exc}) - is libvirtd running? "
                "Start it with:\n  mkdir -p /var/log/libvirt; virtlogd -d; libvirtd -d"
            ) from exc


def spawn_proxy_process(
    *,
    delay_ms: float,
    port: int,
    upstream_unix: str | None = None,
    upstream_tcp: str | None = None,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """Start this file as a separate proxy process and wait until it listens."""
    argv = [
        python,
        os.path.abspath(__file__),
        "--listen",
        f"127.0.0.1:{port}",
        "--delay-ms",
        str(delay_ms),
        "--quiet",
    ]
    if upstream_unix is not None:
        argv += ["--unix", upstream_unix]
    elif upstream_tcp is not None:
        argv += ["--connect", upstream_tcp]
    else:
        raise ValueError("give upstream_unix or upstream_tcp")
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy process exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("proxy process did not start listening within 10 s")


@dataclass
class DelayCheck:
    """What :func:`measure_libvirt` found."""

    connect_s: float
    round_trip_s: float  # median of single sequential calls
    sequential_s: float  # `calls` calls one after another
    concurrent_s: float  # the same calls from `threads` threads at once
    calls: int
    threads: int
    virsh_version_s: float | None


def measure_libvirt(
    uri: str,
    *,
    calls: int = 100,
    threads: int = 50,
    pings: int = 10,
    domain: str | None = None,
) -> DelayCheck:
    """Measure round trips through ``uri`` with libvirt-python (and virsh).

    Times ``pings`` sequential ``getLibVersion`` calls (each one round trip),
    then ``calls`` ``getXMLDesc`` calls (on ``domain`` or the first domain,
    falling back to ``getLibVersion`` if there is none) one after another and
    from a pool of ``threads`` threads sharing the connection. Over a link
    with one-way delay *d*, pipelining works if the concurrent batch takes a
    few ``2*d`` rather than ``calls * 2*d``.
    """
    import libvirt  # local: the proxy itself does not need libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    t0 = time.perf_counter()
    conn = libvirt.open(uri)
    connect_s = time.perf_counter() - t0
    try:
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            conn.getLibVersion()
            rtts.append(time.perf_counter() - t)
        dom = None
        if domain is not None:
            dom = conn.lookupByName(domain)
        else:
            doms = conn.listAllDomains()
            dom = doms[0] if doms else None

        def one_call(_: int) -> int:
            if dom is not None:
                return len(dom.XMLDesc(0))
            return int(conn.getLibVersion())

        seq_calls = min(calls, 20)  # enough to show the per-call cost
        t = time.perf_counter()
        for i in range(seq_calls):
            one_call(i)
        sequential_s = (time.perf_counter() - t) * calls / seq_calls
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one_call, range(threads)))  # warm the threads up
            t = time.perf_counter()
            list(pool.map(one_call, range(calls)))
            concurrent_s = time.perf_counter() - t
    finally:
        conn.close()
    virsh_s: float | None = None
    if shutil.which("virsh"):
        t = time.perf_counter()
        res = subprocess.run(
            ["virsh", "-c", uri, "version"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        virsh_s = time.perf_counter() - t
        if res.returncode != 0:
            raise RuntimeError(
                f"virsh -c {uri} version failed: {res.stderr.decode(errors='replace').strip()}"
            )
    return DelayCheck(
        connect_s, statistics.median(rtts), sequential_s, concurrent_s, calls, threads, virsh_s
    )


def print_check(check: DelayCheck, delay: float, out: TextIO | None = None) -> None:
    """Print a :class:`DelayCheck` with the expected values beside it."""
    rtt = 2 * delay

    def p(text: str) -> None:
        print(text, file=out or sys.stdout)

    p(f"  connect (libvirt.open)            {check.connect_s * 1000:8.1f} ms")
    p(
        f"  one round trip (getLibVersion)    {check.round_trip_s * 1000:8.1f} ms"
        f"   (expected >= {rtt * 1000:.0f} ms)"
    )
    p(
        f"  {check.calls} calls one after another     {check.sequential_s:8.3f} s"
        f"    (extrapolated from 20; expected ~{check.calls * rtt:.1f} s)"
    )
    p(
        f"  {check.calls} calls from {check.threads} threads       "
        f"{check.concurrent_s:8.3f} s    (pipelined: a few round trips)"
    )
    if check.virsh_version_s is not None:
        p(f"  virsh version (whole command)     {check.virsh_version_s:8.3f} s")


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        description="TCP proxy on loopback adding a one-way delay to each direction."
    )
    ap.add_argument(
        "--listen",
        type=_parse_hostport,
        default=("127.0.0.1", 16600),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:16600)",
    )
    target = ap.add_mutually_exclusive_group()
    target.add_argument(
        "--unix",
        metavar="PATH",
        help=f"forward to a UNIX socket (default {DEFAULT_LIBVIRT_SOCKET})",
    )
    target.add_argument(
        "--connect",
        type=_parse_hostport,
        metavar="HOST:PORT",
        help="forward to a TCP address instead",
    )
    ap.add_argument(
        "--delay-ms",
        type=float,
        default=25.0,
        help="one-way delay per direction in ms (default 25)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="measure through libvirt that the delay is added and that "
        "concurrent calls overlap, then exit",
    )
    ap.add_argument("--quiet", action="store_true", help="print nothing while serving")
    args = ap.parse_args(argv)

    unix = args.unix
    if args.connect is None and unix is None:
        unix = DEFAULT_LIBVIRT_SOCKET
    if unix is not None:
        check_unix_socket(unix)
    delay = args.delay_ms / 1000.0
    host, port = args.listen
    proxy = LatencyProxy(
        delay=delay,
        upstream_unix=unix,
        upstream_tcp=args.connect,
        listen_host=host,
        listen_port=port,
    )
    upstream = unix if unix is not None else f"{args.connect[0]}:{args.connect[1]}"

    if args.check:
        with proxy:
            print(f"proxy {host}:{proxy.port} -> {upstream}, one-way delay {args.delay_ms:g} ms")
            print(f"through the proxy ({proxy.libvirt_uri}):")
            print_check(measure_libvirt(proxy.libvirt_uri), delay)
            if unix is not None:
                print("direct on the UNIX socket (qemu:///system):")
                print_check(measure_libvirt("qemu:///system"), 0.0)
        return 0

    async def serve_forever() -> None:
        await proxy.start_server()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, proxy._request_stop)
        if not args.quiet:
            print(
                f"listening on {host}:{proxy.port} -> {upstream}, one-way delay "
                f"{args.delay_ms:g} ms; libvirt URI {proxy.libvirt_uri}",
                flush=True,
            )
        await proxy.serve()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())
    return 0


if __name__ == "__main__":
    sys.exit(main())
