"""libvirt's failures as one sentence: who refused what, and what would mend it.

The raw texts are the ones libvirt 9.0 gave on this machine (see the real SSH test in
tests/integration/test_cli_ssh_login.py, which makes them for real).
"""

from __future__ import annotations

import libvirt
import pytest

from vmsnapgui.virt.errors import explain, explain_open_error


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    """A libvirtError as libvirt-python raises it, with this code and message."""
    error = libvirt.libvirtError.__new__(libvirt.libvirtError)
    Exception.__init__(error, message)
    error.err = (code, 0, message, 2, None, None, None, -1, -1)
    return error


SSH_URI = "qemu+ssh://root@203.0.113.7:2222/system?keyfile=/k&no_verify=1"


@pytest.mark.parametrize(
    ("uri", "code", "raw", "expected"),
    [
        (
            SSH_URI,
            libvirt.VIR_ERR_SYSTEM_ERROR,
            "Cannot recv data: root@203.0.113.7: Permission denied (publickey).: "
            "Connection reset by peer",
            "SSH refused the login to 203.0.113.7:2222 as root "
            "(ssh: Permission denied (publickey)); check the key or password for that account.",
        ),
        (
            # No user in the URI: ssh says which one it tried (its config may pick one).
            "qemu+ssh://203.0.113.7/system",
            libvirt.VIR_ERR_SYSTEM_ERROR,
            "Cannot recv data: admin@203.0.113.7: Permission denied (publickey,password).: "
            "Connection reset by peer",
            "SSH refused the login to 203.0.113.7 as admin "
            "(ssh: Permission denied (publickey,password)); check the key or password for "
            "that account.",
        ),
        (
            "qemu+libssh2://root@203.0.113.7/system",
            libvirt.VIR_ERR_AUTH_FAILED,
            "authentication failed: All provided authentication methods with credentials "
            "were rejected by the server",
            "SSH refused the login to 203.0.113.7 as root (All provided authentication "
            "methods with credentials were rejected by the server); check the key or "
            "password for that account.",
        ),
        (
            "qemu+ssh://root@203.0.113.7:2222/system",
            libvirt.VIR_ERR_SYSTEM_ERROR,
            "Cannot recv data: ssh: connect to host 203.0.113.7 port 2222: Connection "
            "refused: Connection reset by peer",
            "SSH could not reach 203.0.113.7 port 2222: connection refused.",
        ),
    ],
)
def test_an_ssh_login_refused_is_not_blamed_on_the_libvirt_group(
    uri: str, code: int, raw: str, expected: str
) -> None:
    message = explain_open_error(libvirt_error(code, raw), uri).message
    assert message == expected
    assert "libvirt' group" not in message


@pytest.mark.parametrize(
    ("uri", "raw"),
    [
        # Logged in over SSH, but the remote user may not use libvirt's socket.
        (
            "qemu+ssh://bob@203.0.113.7/system",
            "Cannot recv data: Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
            "Permission denied: Connection reset by peer",
        ),
        (
            "qemu:///system",
            "Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied",
        ),
    ],
)
def test_libvirts_own_socket_refusal_still_points_at_the_group(uri: str, raw: str) -> None:
    message = explain_open_error(libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, raw), uri).message
    assert message.startswith("Permission denied by the libvirt daemon on ")
    assert message.endswith("your user may need to be in the 'libvirt' group.")


def test_a_long_uri_is_cut_in_the_message() -> None:
    uri = "test:///" + "x" * 5000
    error = libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "no connection driver available")
    message = explain_open_error(error, uri).message
    assert len(message) < 200
    assert "(5008 bytes)" in message


def test_a_write_on_a_read_only_connection_says_read_only(lab_uri: str) -> None:
    conn = libvirt.openReadOnly(lab_uri)
    try:
        dom = conn.lookupByName("web")
        with pytest.raises(libvirt.libvirtError) as caught:
            dom.snapshotCreateXML("<domainsnapshot><name>x</name></domainsnapshot>", 0)
    finally:
        conn.close()
    assert caught.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
    message = explain(caught.value, "taking snapshot 'x'").message
    assert message == (
        "Failed taking snapshot 'x': the connection is read-only, and this needs a "
        "read-write connection."
    )


def test_other_denied_operations_still_say_permission_denied() -> None:
    error = libvirt_error(
        libvirt.VIR_ERR_OPERATION_DENIED, "operation forbidden: access denied by policy"
    )
    assert explain(error, "taking snapshot 'x'").message == (
        "Failed taking snapshot 'x': permission denied."
    )
