"""What every snapshot operation shares: finding things, naming files, watching long calls.

The operations themselves live in take_snapshot.py, revert_snapshot.py,
delete_snapshot.py and clone_domain.py. Every function there blocks; callers run them
off the GUI thread. Each validates its input first, fails with a
:class:`~vmsnapgui.core.errors.UserError` whose message a user understands, and leaves
the VM and its snapshots as they were when it fails.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import libvirt

from vmsnapgui.core.progress import CancelToken, Progress, ProgressCallback
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.snapshot import DomainState
from vmsnapgui.core.snapshot_xml import with_description
from vmsnapgui.core.validation import unstorable, validate_description
from vmsnapgui.virt.errors import VirtError, explain
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
POLL_SECONDS = 0.2


def resolve_domain(loader: SnapshotLoader, domain: str | libvirt.virDomain) -> libvirt.virDomain:
    """A domain object from a name, a UUID or a domain object."""
    return loader.lookup(domain) if isinstance(domain, str) else domain


def domain_state(dom: libvirt.virDomain) -> DomainState:
    """The domain's run state right now."""
    try:
        code, _reason = dom.state(0)
    except libvirt.libvirtError as exc:
        raise explain(exc, f"reading the state of {quoted(dom.name())}") from None
    return DomainState.from_code(code)


def lookup_snapshot(dom: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    """The libvirt snapshot object, or a one-sentence error naming what is missing."""
    problem = unstorable(name)
    if problem:
        raise VirtError(
            f"The virtual machine {quoted(dom.name())} has no snapshot called {quoted(name)} "
            f"({problem})."
        )
    try:
        return dom.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise VirtError(
                f"The virtual machine {quoted(dom.name())} has no snapshot called {quoted(name)}.",
                detail=exc.get_error_message(),
            ) from None
        raise explain(exc, f"looking up snapshot {quoted(name)}") from None


def snapshot_names(dom: libvirt.virDomain) -> set[str]:
    """Names of all the domain's snapshots."""
    try:
        return {snap.getName() for snap in dom.listAllSnapshots(0)}
    except libvirt.libvirtError as exc:
        raise explain(exc, f"listing the snapshots of {quoted(dom.name())}") from None


def default_snapshot_name(
    existing: set[str], prefix: str = "snapshot", now: float | None = None
) -> str:
    """A unique, readable name from the local time: ``snapshot-2026-11-25-1412``."""
    stamp = time.strftime("%Y-%m-%d-%H%M", time.localtime(now))
    name = f"{prefix}-{stamp}"
    counter = 2
    candidate = name
    while candidate in existing:
        candidate = f"{name}-{counter}"
        counter += 1
    return candidate


_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+-]+")


def file_stem(name: str) -> str:
    """A snapshot or VM name made safe for a file name (spaces and symbols become _)."""
    stem = _UNSAFE_FILE_CHARACTERS.sub("_", name).strip("._") or "snapshot"
    return stem[:80]


def unused_path(directory: Path, stem: str, suffix: str, taken: set[str] | None = None) -> Path:
    """``directory/stem.suffix``, or ``stem-2.suffix``… when that exists already."""
    candidate = directory / f"{stem}{suffix}"
    counter = 2
    while candidate.exists() or (taken is not None and str(candidate) in taken):
        candidate = directory / f"{stem}-{counter}{suffix}"
        counter += 1
    return candidate


def run_watched(
    call: Callable[[], _T],
    poll: Callable[[], Progress | None],
    progress: ProgressCallback,
    cancel: CancelToken | None = None,
    abort: Callable[[], None] | None = None,
) -> _T:
    """Run a blocking libvirt call on a helper thread, reporting ``poll()`` meanwhile.

    When ``cancel`` fires and ``abort`` is given, ``abort()`` is called (for example
    ``virDomainAbortJob``); the call then fails and its error propagates.
    """
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    worker = threading.Thread(target=target, name="libvirt-operation", daemon=True)
    unregister = cancel.on_cancel(abort) if (cancel is not None and abort is not None) else None
    worker.start()
    try:
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            if worker.is_alive():
                try:
                    update = poll()
                except libvirt.libvirtError:
                    update = None
                if update is not None:
                    progress(update)
    finally:
        if unregister is not None:
            unregister()
    if failure:
        raise failure[0]
    return outcome[0]


def remove_new_files(paths: list[Path]) -> None:
    """Delete files an operation created before it failed (never pre-existing ones)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.warning("could not remove %s: %s", path, exc)


def set_description(
    loader: SnapshotLoader, domain: str | libvirt.virDomain, snapshot: str, description: str | None
) -> None:
    """Change a snapshot's description by redefining its metadata (no disk work).

    The snapshot stays current if it was current.
    """
    text = validate_description(description) if description else None
    dom = resolve_domain(loader, domain)
    doing = f"changing the description of {quoted(snapshot)}"
    problem = unstorable(snapshot)
    if problem:
        raise VirtError(f"Failed {doing}: that snapshot does not exist ({problem}).")
    try:
        snap = dom.snapshotLookupByName(snapshot, 0)
        xml = snap.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if snap.isCurrent(0):
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        dom.snapshotCreateXML(with_description(xml, text), flags)
    except libvirt.libvirtError as exc:
        raise explain(exc, doing) from None
    loader.forget(dom.UUIDString(), snapshot)
