"""libvirt errors as one sentence a user understands, the original kept as detail."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import libvirt

from vmsnapgui.core.errors import UserError


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
    if "no connection driver available" in lowered:
        message = f"No libvirt driver handles {uri!r}; check the URI or install the driver."
    elif "unable to parse uri" in lowered or ("unexpected" in lowered and "uri" in lowered):
        message = f"{uri!r} is not a valid libvirt URI (for example qemu:///system)."
    elif "permission denied" in lowered or code == libvirt.VIR_ERR_AUTH_FAILED:
        message = (
            f"Permission denied by the libvirt daemon on {host}; "
            "your user may need to be in the 'libvirt' group."
        )
    elif "authentication" in lowered or code == libvirt.VIR_ERR_AUTH_CANCELLED:
        message = f"Authentication with the libvirt daemon on {host} failed."
    elif "name or service not known" in lowered or "could not resolve" in lowered:
        message = f"The host {host!r} could not be found (unknown name)."
    elif (
        "no route to host" in lowered
        or "timed out" in lowered
        or "network is unreachable" in lowered
        or "host key verification" in lowered
    ):
        message = f"The host {host!r} cannot be reached."
    elif "connection refused" in lowered and host != "this computer":
        message = f"No libvirt daemon is listening on {host!r} (connection refused)."
    elif (
        "no such file or directory" in lowered
        or "connection refused" in lowered
        or "failed to connect socket" in lowered
    ):
        message = f"The libvirt daemon is not running on {host} (nothing listens on its socket)."
    elif (uri or "").startswith("test:") or "failed to parse xml document" in lowered:
        message = f"The test-driver file for {uri!r} could not be read as libvirt XML."
    else:
        message = f"Could not connect to {uri or 'the default hypervisor'}: {_sentence(raw)}"
    return VirtError(message, detail=raw, code=code)


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
