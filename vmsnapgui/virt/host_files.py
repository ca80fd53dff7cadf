"""Files on a host: who still needs each one, and removing only what an operation owns.

The two rules of DESIGN.md's "Data safety" that every cleanup goes through:

- **References.** :func:`read_host_references` collects every file that any domain
  (live and inactive definitions) or any snapshot (disks, memory file, the definitions
  it recorded) on the host names, with whole backing chains: libvirt's XML where it
  gives them, and on this computer each qcow2 header's backing file too (a linked
  clone's overlay names its backing file only there). On this computer, a file some
  process holds open (QEMU writing to an overlay that libvirt lost track of when its
  daemon died) counts as needed too.
- **Ownership.** :func:`create_exclusive` makes a file that did not exist (never
  through a symlink) and records its identity; :func:`remove_owned` removes it only if
  it is still that same file and nothing references it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import libvirt

from vmsnapgui.core.byte_source import FileByteSource
from vmsnapgui.core.file_references import (
    FileReference,
    domain_references,
    normal_path,
    resolve_backing_path,
    snapshot_references,
)
from vmsnapgui.virt.errors import explain

_log = logging.getLogger(__name__)

# Deeper than this, a backing chain loops or is hostile; stop following it.
_MAX_CHAIN = 256


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A file as it was when this operation made it: its path, device and inode."""

    path: str
    device: int
    inode: int

    def is_same_file(self) -> bool:
        """True when ``path`` is still this very file (not removed, not replaced)."""
        try:
            now = os.lstat(self.path)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (self.device, self.inode)


@dataclass
class HostReferences:
    """Every file something on one host needs, with what needs it."""

    local: bool
    by_path: dict[str, list[FileReference]] = field(default_factory=lambda: defaultdict(list))
    by_identity: dict[tuple[int, int], list[FileReference]] = field(
        default_factory=lambda: defaultdict(list)
    )
    unknown: list[str] = field(default_factory=list)
    """What could not be read (a definition, a snapshot): the answer may be incomplete."""

    def add(self, reference: FileReference) -> None:
        """Record that ``reference.holder`` needs ``reference.path``."""
        known = self.by_path[reference.path]
        if reference not in known:
            known.append(reference)

    def references(self, path: str) -> list[FileReference]:
        """What names the file at ``path`` (or, on this computer, the same file by
        another path), backing chains through it included."""
        found = list(self.by_path.get(normal_path(path), ()))
        if self.local:
            try:
                info = os.stat(path)
            except OSError:
                return found
            for reference in self.by_identity.get((info.st_dev, info.st_ino), ()):
                if reference not in found:
                    found.append(reference)
        return found

    def holders(self, path: str, ignore_pids: frozenset[int] = frozenset()) -> list[str]:
        """Who needs the file at ``path``: definitions and snapshots naming it (or a file
        it is the same as), backing chains through it, and, on this computer, processes
        holding it open (but those in ``ignore_pids``)."""
        found = [r.holder for r in self.references(path)]
        if self.local:
            try:
                info = os.stat(path)
            except OSError:
                return found
            found.extend(
                text
                for pid, text in processes_holding((info.st_dev, info.st_ino))
                if pid not in ignore_pids
            )
        return found

    def holders_outside(self, path: str, vm: str) -> list[str]:
        """Who other than the VM ``vm`` (its definitions and snapshots) needs ``path``."""
        return [r.holder for r in self.references(path) if r.vm != vm]


def read_host_references(conn: libvirt.virConnect, *, local: bool) -> HostReferences:
    """Collect what every domain and snapshot on the host needs (see the module text).

    Raises :class:`~vmsnapgui.virt.errors.VirtError` when the host cannot be asked at
    all; a single definition that cannot be read is listed in ``unknown``.
    """
    references = HostReferences(local=local)
    try:
        domains = conn.listAllDomains(0)
    except libvirt.libvirtError as exc:
        raise explain(exc, "listing the virtual machines to see which files they use") from None
    for dom in domains:
        try:
            name = dom.name()
        except libvirt.libvirtError as exc:
            references.unknown.append(f"a virtual machine ({exc.get_error_message()})")
            continue
        for reference in _domain_files(dom, name, references):
            references.add(reference)
    if local:
        _follow_backing_headers(references)
        _index_identities(references)
    return references


def _domain_files(
    dom: libvirt.virDomain, name: str, references: HostReferences
) -> Iterable[FileReference]:
    """A domain's references: its definitions and every snapshot's."""
    found: list[FileReference] = []
    definitions = [0]
    try:
        if dom.isActive() and dom.isPersistent():
            definitions.append(libvirt.VIR_DOMAIN_XML_INACTIVE)
    except libvirt.libvirtError:
        definitions.append(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for flags in definitions:
        try:
            found.extend(domain_references(dom.XMLDesc(flags), name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return found  # undefined meanwhile: it needs nothing any more
            references.unknown.append(f"the definition of VM {name!r}")
        except Exception:  # malformed XML: say it could not be read, never guess
            references.unknown.append(f"the definition of VM {name!r}")
    try:
        snapshots = dom.listAllSnapshots(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_SUPPORT):
            references.unknown.append(f"the snapshots of VM {name!r}")
        return found
    for snapshot in snapshots:
        try:
            snap_name = snapshot.getName()
            xml = snapshot.getXMLDesc(0)
            found.extend(snapshot_references(xml, name, snap_name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                references.unknown.append(f"a snapshot of VM {name!r}")
        except Exception:
            references.unknown.append(f"a snapshot of VM {name!r}")
    return found


def _follow_backing_headers(references: HostReferences) -> None:
    """Add each local qcow2 file's backing file, and that one's, down the chain.

    libvirt's inactive definitions and snapshot records name only the top file; the
    chain below (a linked clone standing on another VM's frozen image) is written only in
    the images' headers. Every holder of a file needs its whole chain.
    """
    below: dict[str, str | None] = {}
    for path, named in list(references.by_path.items()):
        for reference in named:
            if reference.holder.startswith("the backing chain of "):
                continue  # already a chain: its start is walked from its own holder
            current = path
            for _ in range(_MAX_CHAIN):
                if current not in below:
                    below[current] = backing_file(current)
                backing = below[current]
                if backing is None or backing == path:
                    break
                references.add(
                    FileReference(backing, f"the backing chain of {reference.holder}", reference.vm)
                )
                current = backing


def backing_file(path: str) -> str | None:
    """The backing file a local qcow2 image's header names; None for anything else."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None  # a FIFO would block the read; devices hold no qcow2 chains here
    # Imported here: the qcow2 reader brings numpy, which the window's start must not wait for.
    from vmsnapgui.core.qcow2 import Qcow2Error, read_layout

    try:
        with FileByteSource(path) as source:
            layout = read_layout(source)
    except (OSError, Qcow2Error):
        return None
    if not layout.backing_file:
        return None
    return resolve_backing_path(path, layout.backing_file)


def _index_identities(references: HostReferences) -> None:
    for path, named in list(references.by_path.items()):
        try:
            info = os.stat(path)
        except OSError:
            continue
        known = references.by_identity[(info.st_dev, info.st_ino)]
        for reference in named:
            if reference not in known:
                known.append(reference)


def processes_holding(identity: tuple[int, int]) -> list[tuple[int, str]]:
    """Processes on this computer that have the file open: (pid, "process 1234 (qemu-…)")."""
    found: list[tuple[int, str]] = []
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                info = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if (info.st_dev, info.st_ino) == identity:
                found.append((int(pid), f"process {pid} ({_process_name(pid)})"))
                break
    return found


def _process_name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip() or "?"
    except OSError:
        return "?"


# --------------------------------------------------------------------------- owned files


class FileExists(OSError):
    """The path is taken already (a file, a symlink, anything)."""


def create_exclusive(path: str, *, like: str | None = None, mode: int = 0o600) -> FileIdentity:
    """Create an empty file at ``path`` that did not exist, never through a symlink.

    The new file gets the permission bits and owner of ``like`` (the file it copies or
    stands on) when given, else ``mode`` and the caller's owner; never the umask's.
    Raises :class:`FileExists` when anything is at ``path`` already.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FileExists(path) from None
    try:
        if like is not None:
            source = os.stat(like)
            mode = stat.S_IMODE(source.st_mode)
            with contextlib.suppress(PermissionError):
                os.fchown(fd, source.st_uid, source.st_gid)
        os.fchmod(fd, mode)
        info = os.fstat(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return FileIdentity(path, info.st_dev, info.st_ino)


@dataclass(frozen=True, slots=True)
class Removal:
    """What happened to one owned file at cleanup."""

    identity: FileIdentity
    removed: bool
    kept_because: tuple[str, ...] = ()


def remove_owned(
    identity: FileIdentity, references: HostReferences, ignore_pids: frozenset[int] = frozenset()
) -> Removal:
    """Remove a file this operation created, unless it changed or something needs it.

    A file that is gone already counts as removed; a file replaced by another (a
    different inode at the path) is left alone, as is one that any definition,
    snapshot, backing chain or process uses. ``ignore_pids`` are processes known to
    hold the file without using it (a QEMU that opened an overlay it never switched to).
    """
    try:
        now = os.lstat(identity.path)
    except FileNotFoundError:
        return Removal(identity, True)
    except OSError as exc:
        return Removal(identity, False, (f"it could not be checked ({exc.strerror})",))
    if (now.st_dev, now.st_ino) != (identity.device, identity.inode):
        return Removal(identity, False, ("another file has taken its place",))
    if references.unknown:
        unread = ", ".join(references.unknown[:3])
        return Removal(
            identity,
            False,
            (f"the host could not say whether it is in use ({unread} could not be read)",),
        )
    holders = references.holders(identity.path, ignore_pids)
    if holders:
        return Removal(identity, False, tuple(holders))
    try:
        os.unlink(identity.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return Removal(identity, False, (f"it could not be removed ({exc.strerror})",))
    return Removal(identity, True)
