"""After a failed call: find out what really happened, then clean up only what is ours.

An error from libvirt after a call was sent does not always mean the call failed. When
the connection drops (the daemon killed, a network cut), the host may well have done
what was asked: an external snapshot switches the VM to its new overlay before the
reply comes back. So every operation's failure path goes through here:

1. :func:`host_after_failure` waits for the host to answer again when the connection
   was lost, and says plainly that the outcome is unknown when it does not come back.
2. The operation then asks the host what is true now (did the snapshot appear? does a
   VM use the new file?).
3. :func:`remove_unused` removes the files the operation created, each one only if it
   is unchanged and nothing on the host references it (:mod:`virt.host_files`).
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import libvirt

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import Progress, ProgressCallback
from vmsnapgui.virt.connection import Connection
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.host_files import FileIdentity, Removal, read_host_references, remove_owned

_log = logging.getLogger(__name__)

# How long a restarted daemon is given to take a domain back (see settle()).
SETTLE_SECONDS = 15.0
# How long a file that only a process holds is watched before it is kept.
HOLDERS_SETTLE_SECONDS = 10.0
# How long an operation waits for a lost host before it says the outcome is unknown.
# A libvirt daemon restarting takes a few seconds; a rebooting host far longer.
RECONNECT_SECONDS = 45.0


class OutcomeUnknown(VirtError):
    """The host stopped answering mid-operation and has not come back; nothing was
    cleaned up, and the message lists what may be left."""


def host_after_failure(
    connection: Connection,
    exc: BaseException,
    doing: str,
    files: Sequence[str],
    progress: ProgressCallback,
    timeout: float = RECONNECT_SECONDS,
) -> libvirt.virConnect:
    """The live connection to ask about the outcome of a call that raised ``exc``.

    When ``exc`` means the connection was lost, waits for the host to answer again;
    when it does not, raises :class:`OutcomeUnknown` naming ``files`` (left in place).
    """
    if not is_connection_lost(exc):
        return connection.conn
    error = explain(exc, doing)
    connection.connection_lost(error.message, error.detail)
    progress(
        Progress(
            f"The connection was lost while {doing}; waiting for the host to answer again",
            can_cancel=False,
        )
    )
    return wait_for_host(connection, doing, files, error.detail, timeout)


def wait_for_host(
    connection: Connection,
    doing: str,
    files: Sequence[str],
    detail: str | None,
    timeout: float = RECONNECT_SECONDS,
) -> libvirt.virConnect:
    """A live handle once the host answers again; :class:`OutcomeUnknown` naming
    ``files`` (left in place) when it does not within ``timeout``."""
    try:
        return connection.reopen(timeout)
    except VirtError as still_away:
        left = ""
        if files:
            left = " Nothing was removed; these files may belong to it: " + ", ".join(files) + "."
        raise OutcomeUnknown(
            f"The connection to the host was lost while {doing} and the host has not "
            f"answered again, so whether it happened is unknown.{left}",
            detail=f"{detail}\n{still_away.message}",
        ) from None


def settle(dom: libvirt.virDomain, timeout: float = SETTLE_SECONDS) -> None:
    """Wait until a restarted daemon has taken the domain back.

    A libvirt daemon that starts again reads each VM's state from its status file and
    only then, on a thread of its own, reconnects to QEMU and finishes or undoes what
    its predecessor left (resuming a VM a snapshot paused, cancelling a memory save).
    Calls made meanwhile see the state of the file, not QEMU's. A query that needs the
    domain's job (block info) waits for that reconnection; a job libvirt still runs
    for recovery is waited out too.
    """
    deadline = time.monotonic() + timeout
    try:
        target = ET.fromstring(dom.XMLDesc(0)).find("./devices/disk/target")
        if target is not None and dom.isActive():
            dom.blockInfo(target.get("dev", ""), 0)
    except (libvirt.libvirtError, ET.ParseError):
        pass
    while time.monotonic() < deadline:
        try:
            if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                return
        except libvirt.libvirtError:
            return
        time.sleep(0.1)


def remove_unused(
    conn: libvirt.virConnect,
    owned: Sequence[FileIdentity],
    *,
    local: bool,
    ignore_pids: frozenset[int] = frozenset(),
    settle: float = HOLDERS_SETTLE_SECONDS,
) -> list[Removal]:
    """Remove each file this operation created that nothing on the host uses now.

    When the host cannot list what uses them, nothing is removed. A file only a process
    holds is looked at again for up to ``settle`` seconds: a daemon that just restarted
    is still cancelling what its predecessor left running (a memory save's writer).
    """
    if not owned:
        return []
    deadline = time.monotonic() + settle
    pending = list(owned)
    done: list[Removal] = []
    while True:
        try:
            references = read_host_references(conn, local=local)
        except UserError as exc:
            reason = f"the host could not say whether it is in use ({exc.message})"
            return done + [Removal(identity, False, (reason,)) for identity in pending]
        attempt = [remove_owned(identity, references, ignore_pids) for identity in pending]
        only_processes = [
            r
            for r in attempt
            if not r.removed and all(h.startswith("process ") for h in r.kept_because)
        ]
        done += [r for r in attempt if r not in only_processes]
        if not only_processes or time.monotonic() >= deadline:
            removals = done + only_processes
            break
        pending = [r.identity for r in only_processes]
        time.sleep(0.25)
    for removal in removals:
        if not removal.removed:
            _log.warning("kept %s: %s", removal.identity.path, "; ".join(removal.kept_because))
    return removals


def kept_files_sentence(removals: Sequence[Removal]) -> str:
    """ " The file F was kept: it is used by …." for each file that stayed, or ""."""
    parts = []
    for removal in removals:
        if removal.removed:
            continue
        because = "; ".join(removal.kept_because[:3])
        parts.append(f" The file {removal.identity.path} was left in place: {because}.")
    return "".join(parts)
