"""A libvirt daemon of the tests' own, which they may kill -9 and start again.

Killing the system daemon would break every other test (and every other client) on
the machine, so the fault tier runs its own ``libvirtd`` and ``virtlogd`` in a private
mount namespace: ``/etc/libvirt``, ``/var/lib/libvirt``, ``/run/libvirt``,
``/var/cache/libvirt`` and ``/var/log/libvirt`` are bind-mounted from a scratch folder,
so its domains, snapshots and sockets are its own. QEMU runs as usual; disk images live
in ``/var/tmp`` where both namespaces see them. Clients connect to
``qemu+unix:///system?socket=<folder>/run/libvirt-sock``.

A process that sleeps in the namespace keeps it alive, so the daemon can be started
again into the same namespace with ``nsenter`` after it was killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import libvirt

PREFIX = "vmsnap-faults-"

# Bound over the system daemon's folders inside the namespace.
_MOUNTS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "run": "/run/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

_ANCHOR_SCRIPT = """
set -e
base=$1
mount --bind "$base/etc" /etc/libvirt
mount --bind "$base/lib" /var/lib/libvirt
mount --bind "$base/run" /run/libvirt
mount --bind "$base/cache" /var/cache/libvirt
mount --bind "$base/log" /var/log/libvirt
touch "$base/ready"
exec sleep infinity
"""


class DaemonUnavailable(RuntimeError):
    """A private daemon cannot run here (no mount namespaces, no libvirtd)."""


class PrivateDaemon:
    """Start with :meth:`start`; :meth:`kill` and :meth:`restart` inject faults."""

    def __init__(self) -> None:
        remove_stale_daemons()
        self.base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir="/var/tmp"))
        self.base.chmod(0o755)
        self._anchor: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.base / "run" / "libvirt-sock")

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def pid(self) -> int | None:
        return _read_pid(self.base / "run" / "libvirtd.pid")

    def start(self) -> None:
        for tool in ("unshare", "nsenter", "libvirtd", "virtlogd"):
            if shutil.which(tool) is None:
                raise DaemonUnavailable(f"{tool} is not installed")
        for name in _MOUNTS:
            (self.base / name).mkdir()
        # The system daemon's configuration, without its VMs, networks or pools.
        shutil.copytree("/etc/libvirt", self.base / "etc", dirs_exist_ok=True, symlinks=True)
        for leftover in (self.base / "etc" / "qemu").glob("*.xml"):
            leftover.unlink()
        for autostart in ("qemu/networks/autostart", "storage/autostart", "qemu/autostart"):
            shutil.rmtree(self.base / "etc" / autostart, ignore_errors=True)
        self._anchor = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                _ANCHOR_SCRIPT,
                "anchor",
                str(self.base),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not (self.base / "ready").exists():
            if self._anchor.poll() is not None or time.monotonic() > deadline:
                self._anchor.kill()
                error = (self._anchor.communicate()[1] or b"").decode(errors="replace")
                raise DaemonUnavailable(f"no private mount namespace here: {error.strip()}")
            time.sleep(0.02)
        (self.base / "anchor.pid").write_text(str(self._anchor.pid))
        self._inside("virtlogd", "-d", "-p", str(self.base / "run" / "virtlogd.pid"))
        self.restart()

    def _inside(self, *argv: str) -> None:
        assert self._anchor is not None
        subprocess.run(
            ["nsenter", "-t", str(self._anchor.pid), "-m", *argv],
            check=True,
            capture_output=True,
        )

    def restart(self, timeout: float = 30.0) -> None:
        """Start libvirtd (again) and wait until it answers."""
        self._inside("libvirtd", "-d", "-p", str(self.base / "run" / "libvirtd.pid"))
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = libvirt.open(self.uri)
                conn.getLibVersion()
                conn.close()
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """kill -9 the daemon, as an OOM killer or a crash would, and wait for it to go."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        # Its pid file stays behind, as after a real crash; libvirtd takes it over.

    def stop(self) -> None:
        """Destroy its guests, stop the daemons and let the namespace go."""
        try:
            conn = libvirt.open(self.uri)
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
            conn.close()
        except libvirt.libvirtError:
            pass
        _stop_daemons(self.base)
        if self._anchor is not None:
            self._anchor.kill()
            self._anchor.communicate()  # also closes its stderr pipe (else a ResourceWarning)
        shutil.rmtree(self.base, ignore_errors=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _stop_daemons(base: Path) -> None:
    for name in ("libvirtd.pid", "virtlogd.pid"):
        pid = _read_pid(base / "run" / name)
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
    anchor = _read_pid(base / "anchor.pid")
    if anchor is not None and _alive(anchor):
        with contextlib.suppress(ProcessLookupError):
            os.kill(anchor, signal.SIGKILL)


def remove_stale_daemons() -> None:
    """Stop private daemons (and their guests) left by test runs that are gone."""
    for base in Path("/var/tmp").glob(f"{PREFIX}*"):
        owner = base.name[len(PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        socket = base / "run" / "libvirt-sock"
        if socket.exists():
            with contextlib.suppress(libvirt.libvirtError):
                conn = libvirt.open(f"qemu+unix:///system?socket={socket}")
                for dom in conn.listAllDomains(0):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                conn.close()
        _stop_daemons(base)
        shutil.rmtree(base, ignore_errors=True)
