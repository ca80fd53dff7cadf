"""A TCP-to-UNIX-socket forwarder the tests can cut, to lose and restore a connection.

Clients connect with ``qemu+tcp://127.0.0.1:PORT/system``; bytes go to libvirtd's
local socket (or to ``target``, another daemon's), so no daemon reconfiguration is
needed. ``bytes_down`` counts what came back from the daemon, so that a test can hold
or cut the link midway through a load.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"


class SocketForwarder:
    def __init__(self, target: str = LIBVIRT_SOCKET) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.bytes_down = 0  # passed from the daemon to its clients

    def hold(self) -> None:
        """Stop passing bytes on: calls in flight wait for replies until the next cut()."""
        self._flowing.clear()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and break every forwarded connection, like a host going away."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        self._flowing.set()  # a restarted forwarder passes bytes again
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                # The daemon is away (restarting): refuse this client, as the daemon's
                # own socket would, and keep accepting the next ones.
                upstream.close()
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                while not self._flowing.wait(0.05):
                    if a.fileno() < 0 or b.fileno() < 0:
                        return  # cut while held
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
                    if sock is b:
                        with self._lock:
                            self.bytes_down += len(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
