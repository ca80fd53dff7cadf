"""libvirt errors as one sentence a user understands, the original kept as detail."""

from __future__ import annotations

import os
import pwd
import re
from urllib.parse import urlsplit

import libvirt

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.quoting import quoted, shortened


class VirtError(UserError):
    """A libvirt failure explained; ``code`` is libvirt's error number, if any."""

    def __init__(self, message: str, detail: str | None = None, code: int | None = None) -> None:
        super().__init__(message, detail)
        self.code = code


# Messages that mean the connection itself is gone (as opposed to one call failing).
_CONNECTION_LOST = re.compile(
    r"End of file while reading data|Cannot recv data|Cannot write data|"
    r"client socket is closed|Broken pipe|Connection reset by peer|"
    r"internal error: client socket|"
    r"connection closed due to keepalive timeout",
    re.IGNORECASE,
)


def host_of(uri: str | None) -> str:
    """The host part of a libvirt URI for messages ("this computer" when local)."""
    if not uri:
        return "this computer"
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        host = None
    return host or "this computer"


def is_connection_lost(exc: BaseException) -> bool:
    """True when the error means the connection dropped rather than one call failing."""
    if not isinstance(exc, libvirt.libvirtError):
        return False
    code = exc.get_error_code()
    if code in (libvirt.VIR_ERR_INVALID_CONN,):
        return True
    message = exc.get_error_message() or ""
    if code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INTERNAL_ERROR):
        return bool(_CONNECTION_LOST.search(message))
    return False


def explain_open_error(exc: libvirt.libvirtError, uri: str | None) -> VirtError:
    """Why a connection could not be opened, in one sentence."""
    raw = exc.get_error_message() or str(exc)
    code = exc.get_error_code()
    host = host_of(uri)
    lowered = raw.lower()
    named = quoted(uri) if uri else "the default URI"
    if "no connection driver available" in lowered:
        message = f"No libvirt driver handles {named}; check the URI or install the driver."
    elif "unable to parse uri" in lowered or ("unexpected" in lowered and "uri" in lowered):
        message = f"{named} is not a valid libvirt URI (for example qemu:///system)."
    elif (refusal := _ssh_refusal(raw, code, uri)) is not None:
        message = refusal
    elif (ssh_unreachable := _SSH_CONNECT_FAILED.search(raw)) is not None:
        message = (
            f"SSH could not reach {shortened(ssh_unreachable['host'])} port "
            f"{ssh_unreachable['port']}: {_sentence(ssh_unreachable['reason']).lower()}"
        )
    elif "permission denied" in lowered or code == libvirt.VIR_ERR_AUTH_FAILED:
        message = (
            f"Permission denied by the libvirt daemon on {shortened(host)}; "
            "your user may need to be in the 'libvirt' group."
        )
    elif "authentication" in lowered or code == libvirt.VIR_ERR_AUTH_CANCELLED:
        message = f"Authentication with the libvirt daemon on {shortened(host)} failed."
    elif "name or service not known" in lowered or "could not resolve" in lowered:
        message = f"The host {quoted(host)} could not be found (unknown name)."
    elif (
        "no route to host" in lowered
        or "timed out" in lowered
        or "network is unreachable" in lowered
        or "host key verification" in lowered
    ):
        message = f"The host {quoted(host)} cannot be reached."
    elif "connection refused" in lowered and host != "this computer":
        message = f"No libvirt daemon is listening on {quoted(host)} (connection refused)."
    elif (
        "no such file or directory" in lowered
        or "connection refused" in lowered
        or "failed to connect socket" in lowered
    ):
        message = (
            f"The libvirt daemon is not running on {shortened(host)} "
            "(nothing listens on its socket)."
        )
    elif (uri or "").startswith("test:") or "failed to parse xml document" in lowered:
        message = f"The test-driver file for {named} could not be read as libvirt XML."
    else:
        where = shortened(uri) if uri else "the default hypervisor"
        message = f"Could not connect to {where}: {_sentence(raw)}"
    return VirtError(message, detail=raw, code=code)


# What the ssh command prints when the server turns every offered method down:
# "root@host: Permission denied (publickey,password)." (libvirt passes it on).
_SSH_PERMISSION_DENIED = re.compile(
    r"(?:(?P<user>[^\s@:]+)@(?P<host>[^\s:]+): )?Permission denied \((?P<methods>[a-z0-9,@.-]+)\)"
)
_SSH_CONNECT_FAILED = re.compile(
    r"ssh: connect to host (?P<host>\S+) port (?P<port>\d+): (?P<reason>[^:]+)"
)
# URI transports that log in with SSH (the ssh command, libssh, libssh2).
_SSH_TRANSPORTS = frozenset({"ssh", "libssh", "libssh2"})


def _ssh_refusal(raw: str, code: int, uri: str | None) -> str | None:
    """The sentence for an SSH server refusing the login, or None when it was not that.

    libvirt's own "Permission denied" (its socket, polkit) means the user may need the
    'libvirt' group; ssh's "Permission denied (publickey)" means the key or password
    was not accepted, which no group membership mends.
    """
    parts = _uri_parts(uri)
    over_ssh = parts is not None and parts[0] in _SSH_TRANSPORTS
    denied = _SSH_PERMISSION_DENIED.search(raw)
    if denied is not None and (over_ssh or denied["user"]):
        # ssh names the user it really tried (its config may choose one the URI does not).
        user = denied["user"] or (parts[1] if parts else None) or _local_user()
        host = (parts[2] if parts else None) or denied["host"] or host_of(uri)
        why = f"ssh: Permission denied ({denied['methods']})"
    elif over_ssh and code == libvirt.VIR_ERR_AUTH_FAILED and parts is not None:
        # libssh and libssh2 report a refused login as a libvirt authentication failure.
        user = parts[1] or _local_user()
        host = parts[2] or host_of(uri)
        why = re.sub(r"^authentication failed:\s*", "", _sentence(raw)).rstrip(".")
    else:
        return None
    return (
        f"SSH refused the login to {shortened(host)} as {shortened(user)} ({why}); "
        "check the key or password for that account."
    )


def _uri_parts(uri: str | None) -> tuple[str, str | None, str | None] | None:
    """(transport, user, host[:port]) of a libvirt URI such as qemu+ssh://u@h:22/system."""
    if not uri:
        return None
    try:
        split = urlsplit(uri)
        port = split.port
    except ValueError:
        return None
    transport = split.scheme.partition("+")[2].lower()
    host = split.hostname
    if host is not None and port is not None:
        host = f"{host}:{port}"
    return transport, split.username, host


def _local_user() -> str:
    """The login name ssh and libvirt use when the URI names none."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def explain(exc: BaseException, doing: str | None = None) -> VirtError:
    """Turn any libvirt failure into a :class:`VirtError` with a plain message.

    ``doing`` names the action in progress ("reading the snapshots of 'web'") and is
    put in front of the reason.
    """
    if isinstance(exc, VirtError):
        return exc
    if not isinstance(exc, libvirt.libvirtError):
        return VirtError(
            _prefix(doing, _sentence(str(exc) or type(exc).__name__)), detail=repr(exc)
        )
    raw = exc.get_error_message() or str(exc)
    code = exc.get_error_code()
    if is_connection_lost(exc):
        reason = "the connection to the host was lost."
    elif code == libvirt.VIR_ERR_NO_DOMAIN:
        reason = "that virtual machine does not exist (any more)."
    elif code == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
        reason = "that snapshot does not exist (any more)."
    elif code == libvirt.VIR_ERR_OPERATION_DENIED and "read only access" in raw.lower():
        # libvirt's "operation forbidden: read only access prevents virDomain…": the
        # connection was opened read-only, not a missing permission of the user's.
        reason = "the connection is read-only, and this needs a read-write connection."
    elif code == libvirt.VIR_ERR_OPERATION_DENIED or "permission denied" in raw.lower():
        reason = "permission denied."
    elif code == libvirt.VIR_ERR_NO_SUPPORT:
        reason = "this hypervisor does not support it."
    else:
        reason = _sentence(raw)
    return VirtError(_prefix(doing, reason), detail=raw, code=code)


def _prefix(doing: str | None, reason: str) -> str:
    if not doing:
        return reason[:1].upper() + reason[1:]
    return f"Failed {doing}: {reason}"


def _sentence(raw: str) -> str:
    """libvirt's text tidied: no 'internal error:' prefix, one line, a full stop."""
    text = re.sub(
        r"^(internal error|operation failed|XML error|Requested operation is not valid):\s*",
        "",
        raw.strip(),
        flags=re.IGNORECASE,
    )
    text = " ".join(text.split())
    if text and text[-1] not in ".!?":
        text += "."
    return text
