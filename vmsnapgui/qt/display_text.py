"""How values read on screen: sizes with their caveats, times, connection names and states.

Pure functions returning text, shared by the models, the details panel and the status
bar so that one number always reads the same everywhere.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from vmsnapgui.core.disk_usage import SnapshotUsage
from vmsnapgui.core.snapshot import DomainState
from vmsnapgui.core.units import format_bytes
from vmsnapgui.virt.connection import ConnectionState, ConnectionStatus

APPROXIMATE = "≈ "
MISSING = "—"
PENDING = "…"
MEASURING_TOOLTIP = "Measuring…"
STALE_NOTE = "QEMU has the VM's disks open: its active disk layer may be slightly stale."
"""The stale note when the VM's state is not known, only that it is active."""


def stale_note(state: DomainState | None = None) -> str:
    """Why Now's size may lag behind, naming ``state`` (paused, running…) when given."""
    if state is None:
        return STALE_NOTE
    return f"The VM is {state.value}: its active disk layer may be slightly stale."


@dataclass(frozen=True, slots=True)
class SizeText:
    """What a size cell shows and its tooltip."""

    text: str
    tooltip: str


def sizes_unavailable(reason: str) -> str:
    """The tooltip of every size cell when the sizes could not be measured at all."""
    if reason.startswith("Sizes are not available"):
        return reason
    return f"Sizes are not available: {reason}"


def size_text(
    usage: SnapshotUsage | None,
    value: int | None,
    *,
    what: str,
    unavailable: str | None = None,
    stale: bool | DomainState = False,
) -> SizeText:
    """One size cell: ``value`` of ``usage`` (``what`` names it in the tooltip).

    ``usage`` None means not measured yet (or the snapshot is newer than the
    measurement); ``unavailable`` is set when measuring failed for the whole VM.
    ``stale`` adds the note that an active VM's layer may lag: give the VM's state to
    have the note name it; True gives the note without a state; False or an inactive
    state adds nothing.
    """
    if unavailable is not None:
        return SizeText("", sizes_unavailable(unavailable))
    if usage is None:
        return SizeText(PENDING, MEASURING_TOOLTIP)
    if value is None:
        note = usage.note or f"The {what} is not known."
        return SizeText(MISSING, note)
    text = format_bytes(value)
    tooltip = f"{what.capitalize()}: {value:,} bytes"
    if usage.approximate:
        text = APPROXIMATE + text
        tooltip += " (approximate)"
    if usage.note:
        tooltip += f"\n{usage.note}"
    if isinstance(stale, DomainState):
        if stale.is_active:
            tooltip += f"\n{stale_note(stale)}"
    elif stale:
        tooltip += f"\n{STALE_NOTE}"
    return SizeText(text, tooltip)


def local_time(created: int | None) -> str:
    """A creation time as local date and minutes: ``2023-11-14 23:13``."""
    if created is None:
        return MISSING
    return dt.datetime.fromtimestamp(created).astimezone().strftime("%Y-%m-%d %H:%M")


def exact_time(created: int | None) -> str:
    """A creation time to the second with the time zone, for tooltips."""
    if created is None:
        return "The snapshot does not say when it was made."
    moment = dt.datetime.fromtimestamp(created).astimezone()
    return moment.strftime("%A %d %B %Y, %H:%M:%S %Z") + f" (Unix time {created})"


def connection_label(uri: str) -> str:
    """A short name for a connection in the left pane."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    scheme, _, transport = parts.scheme.partition("+")
    if scheme == "test":
        if parts.path in ("", "/default"):
            return "Test driver (built-in host)"
        return f"Test driver: {os.path.basename(parts.path)}"
    if scheme == "qemu" and parts.path == "/embed":
        root = parse_qs(parts.query).get("root", [""])[0]
        if root and "demo" in root:
            return "Demo lab"
        return f"Embedded QEMU: {unquote(root) or '?'}"
    where = parts.hostname
    user = parts.username
    kind = parts.path.strip("/") or "system"
    if not where:
        return f"This computer ({kind})" if scheme == "qemu" else f"{scheme} ({kind})"
    host = f"{user}@{where}" if user else where
    via = f" over {transport.upper()}" if transport else ""
    return f"{host} ({kind}{via})"


def status_text(status: ConnectionStatus) -> str:
    """The state of a connection in a few words, with the reason when it matters."""
    state = status.state
    if state is ConnectionState.CONNECTED:
        return "connected"
    if state is ConnectionState.CONNECTING:
        if status.attempt:
            return f"reconnecting (attempt {status.attempt})…"
        return "connecting…"
    if state is ConnectionState.LOST:
        reason = f": {status.reason}" if status.reason else ""
        return f"lost{reason}; reconnecting…"
    if state is ConnectionState.FAILED:
        reason = f": {status.reason}" if status.reason else ""
        return f"failed{reason}"
    if state is ConnectionState.CLOSED:
        return "closed"
    return "not connected"
