"""An SSH login refused is reported as SSH's refusal, not as a libvirt group problem.

A real sshd on a loopback port lets root log in with one key only; vmsnap connects
with ``qemu+ssh://`` (the ssh command) and ``qemu+libssh2://`` (the library) using
another key, and once with the right one to show the setup itself works.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import unavailable

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshServer:
    port: int
    good_key: Path
    bad_key: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd on 127.0.0.1 that accepts root with ``good_key`` only."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        unavailable("openssh-server is not installed (no /usr/sbin/sshd)")
    if os.geteuid() != 0:
        unavailable("an sshd that logs in root needs root")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "good_key", "bad_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True
        )
    (home / "authorized_keys").write_text((home / "good_key.pub").read_text())
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\n"
        "StrictModes no\n"  # the key lives under /tmp, which StrictModes refuses
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        f"PidFile {home / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                _, err = server.communicate()
                unavailable(f"sshd did not start: {err.decode(errors='replace').strip()}")
            time.sleep(0.05)
    try:
        yield SshServer(port, home / "good_key", home / "bad_key")
    finally:
        server.terminate()
        server.communicate(timeout=10)


def vmsnap(uri: str, *argv: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}  # no agent
    return subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", uri, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=environment,
    )


def test_the_right_key_logs_in(sshd: SshServer) -> None:
    uri = f"qemu+ssh://root@127.0.0.1:{sshd.port}/system?keyfile={sshd.good_key}&no_verify=1"
    result = vmsnap(uri, "list", "--json")
    assert result.returncode == 0, result.stderr


def test_a_key_ssh_refuses_is_reported_as_ssh_refusing_the_login(sshd: SshServer) -> None:
    uri = f"qemu+ssh://root@127.0.0.1:{sshd.port}/system?keyfile={sshd.bad_key}&no_verify=1"
    result = vmsnap(uri, "list")
    assert result.returncode == 1
    assert result.stderr == (
        f"vmsnap: SSH refused the login to 127.0.0.1:{sshd.port} as root "
        "(ssh: Permission denied (publickey)); check the key or password for that account.\n"
    )


def test_a_key_libssh2_gets_refused_is_reported_the_same_way(sshd: SshServer) -> None:
    uri = (
        f"qemu+libssh2://root@127.0.0.1:{sshd.port}/system?keyfile={sshd.bad_key}"
        "&known_hosts_verify=ignore"
    )
    result = vmsnap(uri, "list")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"vmsnap: SSH refused the login to 127.0.0.1:{sshd.port} as root ("
    )
    assert "libvirt' group" not in result.stderr


def test_nothing_answering_ssh_is_not_blamed_on_libvirt(sshd: SshServer) -> None:
    port = free_port()
    uri = f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={sshd.bad_key}&no_verify=1"
    result = vmsnap(uri, "list")
    assert result.returncode == 1
    assert (
        result.stderr == f"vmsnap: SSH could not reach 127.0.0.1 port {port}: connection refused.\n"
    )
