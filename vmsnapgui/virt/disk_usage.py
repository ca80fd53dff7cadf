"""How much disk every snapshot of one VM holds: the delta engine over libvirt.

For each disk of the live domain this finds the files behind it (the active layer and its
backing chain, from the domain XML and, where the XML stops, from each file's qcow2
header) and reads their metadata with the qcow2 reader:

- *Internal* snapshots live inside one qcow2 file; the reader compares each snapshot's
  cluster map with its parent's (delta), counts clusters no other layer shares
  (exclusive) and the clusters past the virtual disk (vmstate).
- An *external* snapshot made the file that was active until then read-only and put a
  new overlay on top: that frozen file (the backing file of the snapshot's overlay) holds
  what changed between the snapshot's parent and the snapshot, so its data is the delta.
  Its memory, if saved, is a separate file: its allocation is the vmstate.
- "Now" is the active layer measured against the current snapshot.

Bytes come from the local file when this process can read it and the connection is to
this machine; otherwise through the storage volume that holds the file (libvirt's
download API, also over remote connections); otherwise there is no number, only a note
saying why. Everything runs on worker threads and blocks; call :func:`measure` off the
GUI thread. See DESIGN.md, "Delta sizes".
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import stat
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import libvirt

from vmsnapgui.core.byte_source import ByteSource, FileByteSource
from vmsnapgui.core.disk_usage import DiskUsage, DomainUsage, PoolSpace, SnapshotUsage
from vmsnapgui.core.file_references import resolve_backing_path
from vmsnapgui.core.qcow2 import Qcow2Error, Qcow2Usage, analyse
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.snapshot import DiskKind, DomainState, MemoryKind, Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.core.units import format_bytes
from vmsnapgui.virt.analysis_process import analyse_file
from vmsnapgui.virt.connection import is_local_uri
from vmsnapgui.virt.errors import VirtError, explain, is_connection_lost
from vmsnapgui.virt.snapshot_loader import DomainSnapshots, SnapshotLoader
from vmsnapgui.virt.volume_source import (
    DEFAULT_READ_THREADS,
    VolumeByteSource,
    VolumeReadError,
)

__all__ = [
    "VIA_VOLUME_ENV",
    "ChainLayer",
    "DiskChain",
    "disk_chains",
    "is_local_uri",
    "measure",
]

_log = logging.getLogger(__name__)

VIA_VOLUME_ENV = "VMSNAP_DU_VIA_VOLUME"
"""Set to 1 to read every file through its storage volume even when it is local (tests,
benchmarks, and checking what a remote client would see)."""

NOW = "Now"
_QCOW2_MAGIC = b"QFI\xfb"
# A chain deeper than this is a loop of backing files or a hostile image, not a real VM.
_MAX_CHAIN = 256

FILE_MISSING = "file missing"
PERMISSION_DENIED = "permission denied"
NOT_IN_POOL = "not in a storage pool"


# --------------------------------------------------------------------------- the disks


@dataclass(frozen=True, slots=True)
class ChainLayer:
    """One file (or other source) in a disk's backing chain."""

    path: str | None
    """The file or block device; None for sources that are not a path (network, volume)."""
    format: str | None
    """``qcow2``, ``raw``, …; None when nobody said (then the file's first bytes decide)."""
    kind: str = "file"
    """libvirt's source type: ``file``, ``block``, ``network``, ``volume``, ``dir``."""
    label: str = ""
    """What to call the source in a message when it has no path."""

    @property
    def name(self) -> str:
        """The path, or the label of a source without one."""
        return self.path or self.label or f"a {self.kind} source"


@dataclass(frozen=True, slots=True)
class DiskChain:
    """A disk of the domain and the layers behind it, the active layer first."""

    target: str
    layers: tuple[ChainLayer, ...]
    complete: bool
    """True when the XML marks where the chain ends; otherwise the qcow2 headers decide."""


def disk_chains(domain_xml: str) -> list[DiskChain]:
    """The hard disks of a domain definition with the backing chains the XML knows.

    CD-ROMs, floppies and disks without a source are left out: they hold no snapshots.
    libvirt 9.0 writes a running domain's whole chain as nested ``<backingStore>``
    elements ending in an empty one; an inactive definition may stop earlier or give none.
    """
    root = ET.fromstring(domain_xml)
    chains: list[DiskChain] = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        target_element = disk.find("target")
        target = target_element.get("dev", "") if target_element is not None else ""
        driver = disk.find("driver")
        top = _layer(disk, driver.get("type") if driver is not None else None)
        if top is None or not target:
            continue
        layers = [top]
        complete = False
        store = disk.find("backingStore")
        while store is not None:
            if len(store) == 0 and not store.attrib:
                complete = True  # <backingStore/>: nothing below
                break
            format_element = store.find("format")
            layer = _layer(
                store, format_element.get("type") if format_element is not None else None
            )
            if layer is None:
                break
            layers.append(layer)
            store = store.find("backingStore")
        chains.append(DiskChain(target, tuple(layers), complete))
    return chains


def _layer(element: ET.Element, fmt: str | None) -> ChainLayer | None:
    kind = element.get("type", "file")
    source = element.find("source")
    if source is None:
        return None
    if kind in ("file", "block", "dir"):
        path = source.get({"file": "file", "block": "dev", "dir": "dir"}[kind])
        return ChainLayer(path, fmt, kind) if path else None
    if kind == "volume":
        label = f"volume {source.get('volume', '?')} of pool {source.get('pool', '?')}"
        return ChainLayer(None, fmt, kind, label)
    protocol = source.get("protocol", kind)
    return ChainLayer(None, fmt, kind, f"{protocol} source {source.get('name', '')}".strip())


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class _Access:
    """How the bytes of one path can be read, or why they cannot."""

    local: bool = False
    volume: Any = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class _LayerKey:
    """One analysis: a layer, read as Now against ``current`` (a snapshot name)."""

    path: str
    format: str | None
    current: str | None


@dataclass(frozen=True, slots=True)
class _LayerResult:
    """What one file holds: a qcow2 analysis, or a raw file's allocation, or a reason."""

    usage: Qcow2Usage | None = None
    allocation: int | None = None
    backing: ChainLayer | None = None
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.reason is None


@dataclass
class _Notes:
    """Notes for one row, without repeats, in the order they were found."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str | None) -> None:
        if text and text not in self.items:
            self.items.append(text)

    def text(self) -> str | None:
        return "; ".join(self.items) if self.items else None


# --------------------------------------------------------------------------- measuring


def measure(
    loader: SnapshotLoader,
    loaded: DomainSnapshots,
    *,
    via_volume: bool | None = None,
) -> DomainUsage:
    """Measure every snapshot's delta, exclusive and vmstate bytes, Now, and the pool.

    Blocking: run it off the GUI thread. ``loaded`` is the tree :meth:`SnapshotLoader.load`
    returned; the domain's live XML is read again here (one call) for its disks.
    ``via_volume`` forces reading through storage volumes even where a local file is
    readable; None reads the ``VMSNAP_DU_VIA_VOLUME`` environment variable.

    Numbers are exact where the files could be read; where not, they are None and the
    row's ``note`` says why. Raises :class:`VirtError` when the domain is gone or the
    connection drops.
    """
    if via_volume is None:
        via_volume = os.environ.get(VIA_VOLUME_ENV, "").strip().lower() in ("1", "yes", "true")
    run = _Measurement(loader, loaded, via_volume=via_volume)
    try:
        return run.measure()
    finally:
        run.close()


class _Measurement:
    """One run of :func:`measure`; holds the caches its worker threads share."""

    def __init__(self, loader: SnapshotLoader, loaded: DomainSnapshots, *, via_volume: bool):
        self.loader = loader
        self.loaded = loaded
        self.tree: SnapshotTree = loaded.tree
        self.conn = loader.connection.conn
        self.local_uri = is_local_uri(loader.connection.display_uri)
        self.read_locally = self.local_uri and not via_volume
        self.parents = {name: self.tree.parent(name) for name in self.tree.names()}
        self._lock = threading.Lock()
        self._access: dict[str, Future[_Access]] = {}
        self._pool_locks: dict[str, threading.Lock] = {}
        self._refreshed_pools: set[str] = set()
        self._volume_pools_made: list[ThreadPoolExecutor] = []
        self.domain_notes = _Notes()

    def close(self) -> None:
        with self._lock:
            pools, self._volume_pools_made = self._volume_pools_made, []
        for pool in pools:
            pool.shutdown(wait=True)

    # -- the steps ----------------------------------------------------------------------

    def measure(self) -> DomainUsage:
        dom = self._domain()
        xml, stats = self._concurrently([partial(self._domain_xml, dom), partial(self._stats, dom)])
        chains = disk_chains(xml)
        state = self._state(stats)

        memory_files = {
            s.memory_file for s in self.tree if s.memory is MemoryKind.EXTERNAL and s.memory_file
        }
        first = chains[0].layers[0] if chains else None
        extra: list[Callable[[], Any]] = [partial(self._pool_space, first)]
        extra += [partial(self._allocated, path) for path in sorted(memory_files)]
        results: dict[_LayerKey, _LayerResult] = {}
        by_path: dict[str, _LayerResult] = {}
        # Each round analyses every layer known so far, all at once (the pool and memory
        # files ride along with the first); a further round is needed only where the XML
        # does not give the whole chain, or an overlay has left the chain.
        extra_results: list[Any] | None = None
        for _round in range(_MAX_CHAIN):
            plan = _Plan(self.tree, self.parents, chains, by_path)
            missing = [key for key in plan.keys if key not in results]
            if not missing and extra_results is not None:
                break
            jobs: list[Callable[[], Any]] = [partial(self._layer, key) for key in missing]
            done = self._concurrently(jobs + (extra if extra_results is None else []))
            for key, result in zip(missing, done[: len(missing)], strict=True):
                results[key] = result
                by_path.setdefault(key.path, result)
            if extra_results is None:
                extra_results = done[len(missing) :]
        else:
            raise VirtError("The disks' backing chains do not end; a backing file loops.")

        pool, pool_note = extra_results[0]
        memory = dict(zip(sorted(memory_files), extra_results[1:], strict=True))
        plan = _Plan(self.tree, self.parents, chains, by_path)
        usage = _assemble(
            self.tree,
            plan,
            results,
            memory,
            state=state,
            layer_note=partial(self._layer_note, _block_allocations(stats)),
        )
        self.domain_notes.add(pool_note)
        for path, result in by_path.items():
            if result.usage is not None:
                for note in result.usage.notes:
                    self.domain_notes.add(f"{path}: {note}")
        self._cross_check(plan, stats)
        return DomainUsage(
            domain=self.loaded.domain.name,
            snapshots=usage.snapshots,
            now=usage.now,
            pool=pool,
            notes=tuple([*usage.notes, *self.domain_notes.items]),
        )

    def _domain(self) -> Any:
        try:
            return self.conn.lookupByUUIDString(self.loaded.domain.uuid)
        except libvirt.libvirtError as exc:
            raise self._explain(exc, f"finding {quoted(self.loaded.domain.name)}") from None

    def _domain_xml(self, dom: Any) -> str:
        try:
            return str(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise self._explain(
                exc, f"reading the definition of {quoted(self.loaded.domain.name)}"
            ) from None

    def _stats(self, dom: Any) -> dict[str, Any]:
        """Block statistics of the whole chain and the run state, in one call."""
        try:
            records = self.conn.domainListGetStats(
                [dom],
                libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_STATE,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING,
            )
        except libvirt.libvirtError as exc:
            if is_connection_lost(exc):
                raise self._explain(exc, "reading disk statistics") from None
            return {}  # a driver without block statistics: they only cross-check
        return dict(records[0][1]) if records else {}

    def _state(self, stats: Mapping[str, Any]) -> DomainState:
        """The domain's state now (fresher than at load time): active means QEMU has the
        disks open, and the notes name the state as it is (paused, not "running")."""
        state = stats.get("state.state")
        if isinstance(state, int):
            return DomainState.from_code(state)
        return self.loaded.domain.state

    def _concurrently(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        return self.loader.map_concurrently(_call, jobs)

    # -- reaching the bytes -------------------------------------------------------------

    def _resolve(self, path: str) -> _Access:
        """Decide once per path whether to read it here, through a volume, or not at all.

        Threads asking about the same path wait for the first one's answer.
        """
        with self._lock:
            future = self._access.get(path)
            first = future is None
            if future is None:
                future = self._access[path] = Future()
        if first:
            try:
                future.set_result(self._find_access(path))
            except BaseException as exc:
                future.set_exception(exc)
                raise
        return future.result()

    def _find_access(self, path: str) -> _Access:
        if self.read_locally and os.access(path, os.R_OK):
            return _Access(local=True)
        volume = self._lookup_volume(path)
        if volume is not None:
            return _Access(volume=volume)
        if not self.local_uri:
            return _Access(reason=NOT_IN_POOL)
        if not os.path.lexists(path):
            return _Access(reason=FILE_MISSING)
        if not os.access(path, os.R_OK):
            return _Access(reason=PERMISSION_DENIED)
        return _Access(reason=NOT_IN_POOL)

    def _lookup_volume(self, path: str) -> Any:
        """The storage volume holding ``path``, refreshing its pool once if need be.

        A pool only knows the files it saw at its last refresh, and an external snapshot
        adds overlays behind its back; so when a directory pool covers the file's
        directory but does not list the file, refresh that pool and look again.
        """
        try:
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if is_connection_lost(exc):
                raise self._explain(exc, f"looking up the storage volume of {path}") from None
        try:
            pool = self.conn.storagePoolLookupByTargetPath(posixpath.dirname(path))
            name = str(pool.name())
            with self._lock:
                pool_lock = self._pool_locks.setdefault(name, threading.Lock())
            with pool_lock:
                if name not in self._refreshed_pools:
                    self._refreshed_pools.add(name)
                    pool.refresh(0)
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if is_connection_lost(exc):
                raise self._explain(exc, f"looking up the storage volume of {path}") from None
            return None

    def _open(self, path: str, access: _Access, kind: str) -> ByteSource:
        if access.local:
            return _BlockDeviceSource(path) if kind == "block" else FileByteSource(path)
        downloads, finishes = self._volume_pools()
        source = VolumeByteSource(
            self.conn, access.volume, path=path, executor=downloads, finisher=finishes
        )
        source.prefetch_head()
        return source

    def _volume_pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """The threads every volume source of this run shares: downloads, finishes."""
        with self._lock:
            if not self._volume_pools_made:
                self._volume_pools_made = [
                    ThreadPoolExecutor(DEFAULT_READ_THREADS, thread_name_prefix=name)
                    for name in ("libvirt-volume", "libvirt-finish")
                ]
            return self._volume_pools_made[0], self._volume_pools_made[1]

    # -- the jobs -----------------------------------------------------------------------

    def _layer(self, key: _LayerKey) -> _LayerResult:
        """Analyse one layer (a worker-thread job); failures become reasons, not errors."""
        access = self._resolve(key.path)
        if access.reason is not None:
            return _LayerResult(reason=access.reason)
        kind = "block" if access.local and _is_block_device(key.path) else "file"
        fmt = (key.format or "").lower() or None
        try:
            if fmt == "raw":
                return self._raw_layer(key.path, access, kind)
            if fmt not in (None, "qcow2"):
                return _LayerResult(reason=f"{fmt} images are not measured")
            source = self._open(key.path, access, kind)
            try:
                if fmt is None and source.read(0, 4) != _QCOW2_MAGIC:
                    return self._raw_layer(key.path, access, kind)
                if access.local and kind == "file":
                    usage = analyse_file(key.path, self.parents, key.current)
                else:
                    usage = analyse(source, self.parents, key.current)
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
        except Qcow2Error as exc:
            return _LayerResult(reason=exc.message.rstrip("."))
        except OSError as exc:
            return _LayerResult(reason=_os_reason(exc))
        except VolumeReadError as exc:
            if exc.connection_lost:
                self.loader.connection.connection_lost(exc.message, exc.detail)
                raise
            return _LayerResult(reason=exc.message.rstrip("."))
        backing = None
        if usage.layout.backing_file:
            resolved = resolve_backing_path(key.path, usage.layout.backing_file)
            backing = ChainLayer(
                resolved,
                usage.layout.backing_format,
                "file" if resolved else "network",
                usage.layout.backing_file,
            )
        return _LayerResult(usage=usage, backing=backing)

    def _raw_layer(self, path: str, access: _Access, kind: str) -> _LayerResult:
        if kind == "block":
            return _LayerResult(reason="a raw block device's used space is not known")
        allocated, reason = self._allocation(path, access)
        return _LayerResult(allocation=allocated, reason=reason)

    def _allocated(self, path: str) -> tuple[int | None, str | None]:
        """Host bytes allocated to a file (a memory file, a raw disk): job for a thread."""
        if self.read_locally:
            try:
                return os.stat(path).st_blocks * 512, None
            except OSError:
                pass  # not visible here: perhaps the volume is
        return self._allocation(path, self._resolve(path))

    def _allocation(self, path: str, access: _Access) -> tuple[int | None, str | None]:
        if access.reason is not None:
            return None, access.reason
        if access.local:
            try:
                return os.stat(path).st_blocks * 512, None
            except OSError as exc:
                return None, _os_reason(exc)
        try:
            return int(access.volume.info()[2]), None
        except libvirt.libvirtError as exc:
            if is_connection_lost(exc):
                raise self._explain(exc, f"reading the size of {path}") from None
            return None, explain(exc).message.rstrip(".")

    def _pool_space(self, first: ChainLayer | None) -> tuple[PoolSpace | None, str | None]:
        """The storage pool of the first disk's active layer: job for a thread."""
        if first is None:
            return None, None
        if first.path is None:
            return None, f"The first disk ({first.name}) is not a file, so no pool is known."
        access = self._resolve(first.path)
        volume = access.volume if access.volume is not None else self._lookup_volume(first.path)
        if volume is None:
            return None, f"The first disk is {NOT_IN_POOL}, so its free space is not known."
        try:
            pool = volume.storagePoolLookupByVolume()
            info = pool.info()
            available = int(info[3])
            if access.local:
                # libvirt counts root's reserved blocks as free (seen here: 245 GB on
                # a disk with 84 GB usable); where the file is here, ask the kernel.
                with contextlib.suppress(OSError):
                    stats = os.statvfs(os.path.dirname(first.path))
                    available = min(available, stats.f_bavail * stats.f_frsize)
            return PoolSpace(str(pool.name()), int(info[1]), available), None
        except libvirt.libvirtError as exc:
            if is_connection_lost(exc):
                raise self._explain(exc, "reading the storage pool") from None
            return None, f"The storage pool could not be read: {explain(exc).message}"

    # -- notes ----------------------------------------------------------------------------

    def _layer_note(self, allocations: Mapping[str, int], layer: ChainLayer, reason: str) -> str:
        """Why a layer has no number, with libvirt's allocation figure when it has one."""
        text = f"{layer.name}: {reason}"
        if layer.path is not None and layer.path in allocations:
            text += f" (libvirt reports an allocation of {format_bytes(allocations[layer.path])})"
        return text

    def _cross_check(self, plan: _Plan, stats: Mapping[str, Any]) -> None:
        """Note files libvirt's block statistics list that the chains here do not."""
        ours = {layer.path for chain in plan.chains.values() for layer in chain if layer.path}
        for index in range(int(stats.get("block.count", 0) or 0)):
            path = stats.get(f"block.{index}.path")
            target = stats.get(f"block.{index}.name")
            if isinstance(path, str) and path not in ours and target in plan.chains:
                self.domain_notes.add(
                    f"{target}: libvirt lists {path} in the backing chain, but it was not "
                    "found from the disk's files; its data is not counted."
                )

    def _explain(self, exc: libvirt.libvirtError, doing: str) -> VirtError:
        error = explain(exc, doing)
        if is_connection_lost(exc):
            self.loader.connection.connection_lost(error.message, error.detail)
        return error


def _call(job: Callable[[], Any]) -> Any:
    return job()


def _block_allocations(stats: Mapping[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for index in range(int(stats.get("block.count", 0) or 0)):
        path = stats.get(f"block.{index}.path")
        allocation = stats.get(f"block.{index}.allocation")
        if isinstance(path, str) and isinstance(allocation, int):
            found.setdefault(path, allocation)
    return found


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return FILE_MISSING
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PERMISSION_DENIED
    return exc.strerror or str(exc)


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class _BlockDeviceSource(FileByteSource):
    """A block device: ``fstat`` reports no size for one, so seek to its end once."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._device_size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)

    def size(self) -> int:
        return self._device_size


# --------------------------------------------------------------------------- the plan


class _Plan:
    """Which file belongs to which snapshot, from the tree and what is known so far."""

    def __init__(
        self,
        tree: SnapshotTree,
        parents: Mapping[str, str | None],
        chains: Iterable[DiskChain],
        by_path: Mapping[str, _LayerResult],
    ) -> None:
        self.tree = tree
        self.parents = parents
        self.chains: dict[str, list[ChainLayer]] = {}
        self.chain_end: dict[str, str | None] = {}
        """Per disk: None when the whole chain is known, else why it stops early."""
        self._keys: dict[_LayerKey, None] = {}  # a dict keeps the order and finds fast
        self._by_path = by_path
        self._overlays: dict[str, dict[str, str]] = {}
        for snapshot in tree:
            for disk in snapshot.disks:
                if disk.kind is DiskKind.EXTERNAL and disk.file:
                    self._overlays.setdefault(disk.target, {}).setdefault(disk.file, snapshot.name)
        for chain in chains:
            self._plan_disk(chain)

    def _plan_disk(self, chain: DiskChain) -> None:
        layers, end = self._walk(chain)
        self.chains[chain.target] = layers
        self.chain_end[chain.target] = end
        overlays = self._overlays.get(chain.target, {})
        # Each layer is measured as "Now" against the snapshot it ended at: the active
        # layer against the current snapshot, a frozen one against the parent of the
        # snapshot whose overlay froze it.
        for index, layer in enumerate(layers):
            if layer.path is None:
                continue
            if index == 0:
                current = self.tree.current
            else:
                owner = overlays.get(layers[index - 1].path or "")
                current = self.parents.get(owner) if owner is not None else None
            self._want(layer, current)
        in_chain = {layer.path for layer in layers}
        for overlay, owner in overlays.items():
            if overlay in in_chain:
                continue
            # An overlay that left the chain (a revert, a block job): its header names the
            # file it froze.
            self._want(ChainLayer(overlay, "qcow2"), None)
            found = self._by_path.get(overlay)
            if found is not None and found.backing is not None and found.backing.path:
                self._want(found.backing, self.parents.get(owner))

    def _walk(self, chain: DiskChain) -> tuple[list[ChainLayer], str | None]:
        layers = list(chain.layers)
        if chain.complete:
            return layers, None
        seen = {layer.path for layer in layers}
        while len(layers) < _MAX_CHAIN:
            last = layers[-1]
            if last.path is None:
                return layers, f"{last.name} is not read, so what lies below it is not known"
            found = self._by_path.get(last.path)
            if found is None:
                return layers, f"{last.name} is not read yet"  # the next round reads it
            if not found.known:
                return layers, f"{last.name}: {found.reason}"
            if found.backing is None:
                return layers, None
            if found.backing.path in seen:
                return layers, f"the backing chain loops back to {found.backing.path}"
            seen.add(found.backing.path)
            layers.append(found.backing)
        return layers, "the backing chain is too deep"

    def _want(self, layer: ChainLayer, current: str | None) -> None:
        if layer.path is None:
            return
        self._keys.setdefault(_LayerKey(layer.path, layer.format, current), None)

    @property
    def keys(self) -> list[_LayerKey]:
        """Every analysis the plan needs so far."""
        return list(self._keys)

    def frozen_by(self, target: str, overlay: str) -> ChainLayer | str:
        """The layer an external snapshot made read-only, or why it is not known."""
        layers = self.chains.get(target, [])
        for index, layer in enumerate(layers):
            if layer.path == overlay:
                if index + 1 < len(layers):
                    return layers[index + 1]
                end = self.chain_end.get(target)
                if end is not None:
                    return end
                return f"its overlay {overlay} has no backing file any more (merged?)"
        found = self._by_path.get(overlay)
        if found is None or not found.known:
            reason = found.reason if found is not None and found.reason else "not read"
            return f"its overlay {overlay}: {reason}"
        if found.backing is None:
            return f"its overlay {overlay} has no backing file any more (merged?)"
        if found.backing.path is None:
            return f"{found.backing.name} is not a file"
        return found.backing

    def key(self, layer: ChainLayer, current: str | None) -> _LayerKey:
        """The analysis of ``layer`` as Now against ``current``."""
        return _LayerKey(layer.path or "", layer.format, current)

    def file(self, layer: ChainLayer) -> _LayerResult | None:
        """What is known about the file behind ``layer`` (any analysis of it)."""
        return self._by_path.get(layer.path) if layer.path is not None else None


# --------------------------------------------------------------------------- assembling


@dataclass(frozen=True, slots=True)
class _Assembled:
    snapshots: tuple[SnapshotUsage, ...]
    now: SnapshotUsage
    notes: tuple[str, ...]


@dataclass
class _Cell:
    """One disk's part of one row while it is being put together."""

    usage: DiskUsage
    vmstate: int | None = 0
    holds_snapshot: bool = False
    approximate: bool = False
    note: str | None = None


def _assemble(
    tree: SnapshotTree,
    plan: _Plan,
    results: Mapping[_LayerKey, _LayerResult],
    memory: Mapping[str, tuple[int | None, str | None]],
    *,
    state: DomainState,
    layer_note: Callable[[ChainLayer, str], str],
) -> _Assembled:
    """Turn per-file results into per-snapshot rows, summed over disks.

    ``state`` is the domain's state: while QEMU has the disks open (running, paused, …)
    Now is approximate, and the notes say so naming that state.
    """
    active = state.is_active
    domain_notes = _Notes()
    rows: list[SnapshotUsage] = []
    for snapshot in tree:
        cells = {
            target: _snapshot_cell(tree, plan, results, snapshot, target, layer_note)
            for target in plan.chains
        }
        for disk in snapshot.disks:
            if disk.kind is not DiskKind.NONE and disk.target not in cells:
                # Its image may still hold the snapshot's data, but nothing here leads to
                # it any more: leaving it out would show too small a sum as exact.
                cells[disk.target] = _Cell(
                    DiskUsage(None, None),
                    None,
                    note=f"{disk.target}: the VM no longer has this disk, so its share is "
                    "not measured",
                )
        notes = _Notes()
        for cell in cells.values():
            notes.add(cell.note)
        vmstate = _vmstate(snapshot, cells, memory, notes)
        if any(disk.kind is DiskKind.EXTERNAL for disk in snapshot.disks):
            notes.add("exclusive bytes are measured for internal snapshots only")
        rows.append(
            SnapshotUsage(
                name=snapshot.name,
                delta_bytes=_sum(cell.usage.delta_bytes for cell in cells.values()),
                exclusive_bytes=_sum(cell.usage.exclusive_bytes for cell in cells.values()),
                vmstate_bytes=vmstate,
                approximate=any(cell.approximate for cell in cells.values()),
                note=notes.text(),
                disks={target: cell.usage for target, cell in cells.items()},
            )
        )

    now_cells = {
        target: _now_cell(tree, plan, results, target, layer_note) for target in plan.chains
    }
    now_notes = _Notes()
    for cell in now_cells.values():
        now_notes.add(cell.note)
    if active:
        now_notes.add(
            f"the VM is {state.value}, so its active layer can lag behind (QEMU writes "
            "some metadata later)"
        )
        if any(s.is_internal for s in tree):
            domain_notes.add(
                f"The VM is {state.value}: exclusive sizes of internal snapshots in its "
                "active image can lag behind too."
            )
    now = SnapshotUsage(
        name=NOW,
        delta_bytes=_sum(cell.usage.delta_bytes for cell in now_cells.values()),
        exclusive_bytes=_sum(cell.usage.exclusive_bytes for cell in now_cells.values()),
        vmstate_bytes=None,
        approximate=active or any(cell.approximate for cell in now_cells.values()),
        note=now_notes.text(),
        disks={target: cell.usage for target, cell in now_cells.items()},
    )
    return _Assembled(tuple(rows), now, tuple(domain_notes.items))


def _snapshot_cell(
    tree: SnapshotTree,
    plan: _Plan,
    results: Mapping[_LayerKey, _LayerResult],
    snapshot: Snapshot,
    target: str,
    layer_note: Callable[[ChainLayer, str], str],
) -> _Cell:
    disk = next((d for d in snapshot.disks if d.target == target), None)
    if disk is None or disk.kind is DiskKind.NONE:
        # The disk was not in the snapshot (added later, or snapshot='no'): it holds
        # nothing of this snapshot.
        return _Cell(DiskUsage(0, 0))
    unknown = DiskUsage(None, None)
    if disk.kind is DiskKind.MANUAL:
        return _Cell(unknown, None, note=f"{target}: a manual snapshot is not measured")
    layers = plan.chains[target]
    if disk.kind is DiskKind.INTERNAL:
        unreadable: list[tuple[ChainLayer, str]] = []
        for layer in layers:
            result = plan.file(layer)
            if result is None or result.usage is None:
                if result is not None and result.reason is not None:
                    unreadable.append((layer, result.reason))
                continue
            try:
                found = result.usage.snapshot(snapshot.name)
            except KeyError:
                continue
            return _Cell(
                DiskUsage(found.delta_bytes, found.exclusive_bytes),
                found.vmstate_bytes,
                holds_snapshot=True,
                approximate=result.usage.approximate,
            )
        if unreadable:
            return _Cell(unknown, None, note=layer_note(*unreadable[0]))
        end = plan.chain_end.get(target)
        if end is not None:
            return _Cell(unknown, None, note=f"{target}: {end}")
        return _Cell(unknown, None, note=f"{target}: no image of the disk holds this snapshot")

    # External: the file this snapshot froze holds its delta.
    if not disk.file:
        return _Cell(unknown, note=f"{target}: the snapshot names no overlay file")
    frozen = plan.frozen_by(target, disk.file)
    if isinstance(frozen, str):
        return _Cell(unknown, note=f"{target}: {frozen}")
    result = results.get(plan.key(frozen, tree.parent(snapshot.name)))
    if result is None:
        result = plan.file(frozen)
    if result is None:
        return _Cell(unknown, note=f"{target}: {frozen.name} was not read")
    if result.reason is not None:
        return _Cell(unknown, note=layer_note(frozen, result.reason))
    if result.usage is not None:
        return _Cell(
            DiskUsage(result.usage.now_delta_bytes, None), approximate=result.usage.approximate
        )
    return _Cell(DiskUsage(result.allocation, None))


def _now_cell(
    tree: SnapshotTree,
    plan: _Plan,
    results: Mapping[_LayerKey, _LayerResult],
    target: str,
    layer_note: Callable[[ChainLayer, str], str],
) -> _Cell:
    top = plan.chains[target][0]
    unknown = DiskUsage(None, None)
    if top.path is None:
        return _Cell(unknown, note=f"{target}: {top.name} is not measured")
    result = results.get(plan.key(top, tree.current))
    if result is None:
        return _Cell(unknown, note=f"{target}: {top.name} was not read")
    if result.reason is not None:
        return _Cell(unknown, note=layer_note(top, result.reason))
    if result.usage is not None:
        return _Cell(
            DiskUsage(result.usage.now_delta_bytes, result.usage.now_exclusive_bytes),
            approximate=result.usage.approximate,
        )
    return _Cell(DiskUsage(result.allocation, None))


def _vmstate(
    snapshot: Snapshot,
    cells: Mapping[str, _Cell],
    memory: Mapping[str, tuple[int | None, str | None]],
    notes: _Notes,
) -> int | None:
    """Saved memory: none, inside one qcow2 image (counted once), or a separate file."""
    if snapshot.memory is MemoryKind.NONE:
        return 0
    if snapshot.memory is MemoryKind.EXTERNAL:
        if not snapshot.memory_file:
            notes.add("the snapshot names no memory file")
            return None
        size, reason = memory.get(snapshot.memory_file, (None, FILE_MISSING))
        if size is None:
            notes.add(f"memory file {snapshot.memory_file}: {reason}")
        return size
    # Internal: QEMU keeps the state in one image (the first disk's); the others hold 0.
    held = [cell.vmstate for cell in cells.values() if cell.holds_snapshot]
    if any(value for value in held):
        return sum(value or 0 for value in held)
    if any(not cell.holds_snapshot and cell.usage.delta_bytes is None for cell in cells.values()):
        return None
    return 0


def _sum(values: Iterable[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total
