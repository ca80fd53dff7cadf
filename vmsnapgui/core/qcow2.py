"""Read-only qcow2 reader: header, snapshot table, cluster maps, and per-snapshot delta sizes.

Internal snapshots live inside one qcow2 file. Each snapshot, and the active layer ("Now"),
has its own L1 table; L2 tables and data clusters are shared between layers until a write
copies them. Comparing the guest-to-host cluster maps of two layers tells how much data
changed between them, and counting which layers reference each host cluster tells what
deleting a snapshot would free. See DESIGN.md, "Delta sizes".

The reader never writes and takes no lock. It reads through a :class:`ByteSource` in a
handful of batched phases (header, snapshot table, all L1 tables, the L2 tables in batches
of a few MiB) so that a remote source pays a few round trips, not one per table. Everything
a header claims is checked against the file size and fixed limits before anything is
allocated; a file that does not hold up raises :class:`Qcow2Error` with a sentence a user
can read. Memory stays bounded whatever the image holds: a huge image costs more passes
over its tables, not more memory (see "cluster maps" below).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import numpy as np
from numpy.typing import NDArray

from vmsnapgui.core.byte_source import ByteSource
from vmsnapgui.core.errors import UserError

__all__ = [
    "Qcow2Error",
    "Qcow2LayerUsage",
    "Qcow2Layout",
    "Qcow2Snapshot",
    "Qcow2SnapshotUsage",
    "Qcow2Usage",
    "analyse",
    "read_layout",
]

_MAGIC: Final = b"QFI\xfb"

INCOMPAT_DIRTY: Final = 1 << 0
INCOMPAT_CORRUPT: Final = 1 << 1
INCOMPAT_DATA_FILE: Final = 1 << 2
INCOMPAT_COMPRESSION: Final = 1 << 3
INCOMPAT_EXTL2: Final = 1 << 4
_KNOWN_INCOMPAT: Final = 0x1F

_EXT_END: Final = 0x00000000
_EXT_BACKING_FORMAT: Final = 0xE2792ACA
_EXT_FEATURE_TABLE: Final = 0x6803F857
_EXT_DATA_FILE: Final = 0x44415441

_COMPRESSION_TYPES: Final = {0: "zlib", 1: "zstd"}

_MIN_CLUSTER_BITS: Final = 9
_MAX_CLUSTER_BITS: Final = 21
_MIN_EXTL2_CLUSTER_BITS: Final = 14
# QEMU's own limits; anything beyond them is a hostile or broken header, not a real image.
_MAX_L1_ENTRIES: Final = 32 * 1024 * 1024 // 8
_MAX_SNAPSHOTS: Final = 65536
_MAX_SNAPSHOT_TABLE_BYTES: Final = 64 * 1024 * 1024
_MAX_SNAPSHOT_EXTRA: Final = 1024
_MAX_BACKING_NAME: Final = 1023
_SNAPSHOT_ENTRY_FIXED: Final = 40

# The first read covers the header, its extensions and (as QEMU writes it) the backing
# file name for every cluster size up to 64 KiB, in one request.
_FIRST_READ: Final = 64 * 1024

_L1_OFFSET_MASK: Final = 0x00FF_FFFF_FFFF_FE00
_L2_OFFSET_MASK: Final = 0x00FF_FFFF_FFFF_FE00
_SUBCLUSTERS: Final = 32
_SECTOR: Final = 512
# Compressed keys are byte offsets; tag them so they never equal a standard cluster's key.
_COMPRESSED_TAG: Final = np.uint64(1 << 63)

_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_HEADER_V3 = struct.Struct(">QQQII")
_EXT_HEAD = struct.Struct(">II")
_SNAPSHOT_HEAD = struct.Struct(">QIHHIIQII")

_I64 = NDArray[np.int64]
_T = TypeVar("_T", bound=np.generic)
_U64 = NDArray[np.uint64]


class Qcow2Error(UserError):
    """The file cannot be analysed; ``message`` says why in one sentence for the user."""


@dataclass(frozen=True, slots=True)
class Qcow2Snapshot:
    """One entry of the qcow2 snapshot table."""

    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    """Logical size of the saved VM state in bytes (0 when the snapshot has none)."""
    disk_size: int
    """Virtual disk size when the snapshot was taken (the header's size if not recorded)."""
    icount: int | None = None
    extra_data_size: int = 0


@dataclass(frozen=True, slots=True)
class Qcow2Layout:
    """What the header and snapshot table of a qcow2 image say."""

    file_size: int
    version: int
    cluster_bits: int
    virtual_size: int
    l1_size: int
    l1_table_offset: int
    refcount_order: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    header_length: int
    compression_type: str
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    snapshots: tuple[Qcow2Snapshot, ...]
    approximate: bool = False
    notes: tuple[str, ...] = ()

    @property
    def cluster_size(self) -> int:
        """Bytes per cluster."""
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        """True when L2 entries carry subcluster bitmaps (incompatible bit 4)."""
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def has_data_file(self) -> bool:
        """True when guest data lives in an external data file (incompatible bit 2)."""
        return bool(self.incompatible_features & INCOMPAT_DATA_FILE)

    @property
    def l2_entries(self) -> int:
        """Entries per L2 table (extended entries take 16 bytes instead of 8)."""
        return self.cluster_size // (16 if self.extended_l2 else 8)

    @property
    def subcluster_size(self) -> int:
        """Allocation unit of data: a subcluster with extended L2, else a cluster."""
        return self.cluster_size // _SUBCLUSTERS if self.extended_l2 else self.cluster_size

    def l1_vm_state_index(self, disk_size: int) -> int:
        """First L1 index past a disk of ``disk_size`` bytes: where a vmstate begins."""
        span = self.cluster_size * self.l2_entries
        return -(-disk_size // span)


@dataclass(frozen=True, slots=True)
class Qcow2LayerUsage:
    """Totals for one layer (a snapshot or the active layer)."""

    data_bytes: int
    """Host bytes of this layer's disk data (compressed clusters at their compressed size)."""
    guest_data_bytes: int
    """Guest bytes that hold data (what ``qemu-img map`` reports as data)."""
    vmstate_bytes: int
    """Host bytes of the clusters past the virtual disk, where a vmstate is kept."""


@dataclass(frozen=True, slots=True)
class Qcow2SnapshotUsage:
    """Delta sizes of one internal snapshot."""

    id: str
    name: str
    parent: str | None
    """The snapshot whose layer the delta is measured against (None: an empty disk)."""
    delta_bytes: int
    exclusive_bytes: int
    vmstate_bytes: int
    vm_state_size: int
    layer: Qcow2LayerUsage


@dataclass(frozen=True, slots=True)
class Qcow2Usage:
    """Delta sizes of every layer of one qcow2 image."""

    layout: Qcow2Layout
    snapshots: tuple[Qcow2SnapshotUsage, ...]
    now: Qcow2LayerUsage
    now_parent: str | None
    now_delta_bytes: int
    now_exclusive_bytes: int
    """Host bytes only the active layer references (what reverting would discard)."""
    approximate: bool
    notes: tuple[str, ...]
    _by_name: dict[str, Qcow2SnapshotUsage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Qcow2SnapshotUsage] = {}
        for usage in self.snapshots:
            by_name.setdefault(usage.name, usage)
        object.__setattr__(self, "_by_name", by_name)

    def snapshot(self, name: str) -> Qcow2SnapshotUsage:
        """Return the usage of the (first) snapshot called ``name``; KeyError if none."""
        return self._by_name[name]


# --------------------------------------------------------------------------- layout


def read_layout(source: ByteSource) -> Qcow2Layout:
    """Read and check the header, header extensions and snapshot table of a qcow2 image.

    Raises :class:`Qcow2Error` when the file is not qcow2, uses features this reader
    cannot interpret (unknown incompatible bits, encryption), or is corrupt or truncated.
    """
    try:
        return _read_layout(source)
    except Qcow2Error as exc:
        _name_the_file(exc, source)
        raise


def _name_the_file(exc: Qcow2Error, source: ByteSource) -> None:
    """Keep which file failed as the error's detail (for the log and a details view)."""
    if exc.detail is None:
        exc.detail = f"qcow2 image {source.describe()}: {exc.message}"


def _read_layout(source: ByteSource) -> Qcow2Layout:
    file_size = source.size()
    head = source.read(0, min(file_size, _FIRST_READ))
    if len(head) < 4 or head[:4] != _MAGIC:
        raise Qcow2Error("The file is not a qcow2 image.")
    if len(head) < _HEADER_V2.size:
        raise Qcow2Error("The image is truncated: its header is incomplete.")
    (
        _magic,
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        virtual_size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = _HEADER_V2.unpack_from(head)
    if version not in (2, 3):
        raise Qcow2Error(f"The image uses qcow2 version {version}, which this version cannot read.")
    if not _MIN_CLUSTER_BITS <= cluster_bits <= _MAX_CLUSTER_BITS:
        raise Qcow2Error(
            f"The image is corrupt: its cluster size 2^{cluster_bits} is outside "
            "the 512 B to 2 MiB that qcow2 allows."
        )
    cluster_size = 1 << cluster_bits

    incompatible = compatible = autoclear = 0
    refcount_order = 4
    header_length = _HEADER_V2.size
    compression_code = 0
    if version == 3:
        if len(head) < _HEADER_V2.size + _HEADER_V3.size:
            raise Qcow2Error("The image is truncated: its header is incomplete.")
        incompatible, compatible, autoclear, refcount_order, header_length = _HEADER_V3.unpack_from(
            head, _HEADER_V2.size
        )
        if header_length < _HEADER_V2.size + _HEADER_V3.size or header_length > cluster_size:
            raise Qcow2Error(f"The image is corrupt: its header length {header_length} is invalid.")
        if header_length > 104:
            if len(head) <= 104:
                raise Qcow2Error("The image is truncated: its header is incomplete.")
            compression_code = head[104]

    # Extensions end where the backing file name begins, or with the first cluster.
    ext_end = cluster_size
    if 0 < backing_file_offset < cluster_size:
        ext_end = max(header_length, backing_file_offset)
    ext_end = min(ext_end, file_size)
    extensions = _parse_extensions(head, header_length, ext_end)
    if extensions is None:
        # Only with clusters over 64 KiB can extensions outrun the first read.
        head += source.read(len(head), ext_end - len(head))
        extensions = _parse_extensions(head, header_length, ext_end)
        if extensions is None:  # the file shrank under us
            raise Qcow2Error("The image is truncated: its header extensions are incomplete.")

    if incompatible & ~_KNOWN_INCOMPAT:
        unknown = incompatible & ~_KNOWN_INCOMPAT
        names = [
            name
            for bit in range(64)
            if unknown >> bit & 1
            for name in [extensions.feature_names.get((0, bit))]
            if name
        ]
        named = f": {', '.join(names)}" if names else ""
        raise Qcow2Error(
            "The image uses qcow2 features this version cannot read "
            f"(incompatible feature bits {unknown:#x}{named})."
        )
    if crypt_method != 0:
        kind = {1: "AES", 2: "LUKS"}.get(crypt_method, f"method {crypt_method}")
        raise Qcow2Error(f"The image is encrypted ({kind}); this version does not analyse it.")
    if refcount_order > 6:
        raise Qcow2Error(f"The image is corrupt: its refcount order {refcount_order} exceeds 6.")
    if incompatible & INCOMPAT_EXTL2 and cluster_bits < _MIN_EXTL2_CLUSTER_BITS:
        raise Qcow2Error(
            "The image is corrupt: extended L2 entries need clusters of 16 KiB or more."
        )
    if incompatible & INCOMPAT_COMPRESSION:
        if compression_code == 0:
            raise Qcow2Error(
                "The image is corrupt: its compression type bit is set without a type."
            )
    elif compression_code != 0:
        raise Qcow2Error(
            "The image is corrupt: it names a compression type without the feature bit."
        )
    if compression_code not in _COMPRESSION_TYPES:
        raise Qcow2Error(
            f"The image uses compression type {compression_code}, which this version cannot read."
        )

    notes: list[str] = []
    if incompatible & INCOMPAT_DIRTY:
        notes.append(
            "The image is marked dirty (in use, or not closed cleanly), so the sizes may be "
            "slightly stale."
        )
    if incompatible & INCOMPAT_CORRUPT:
        notes.append("QEMU has marked the image corrupt, so the sizes may be wrong.")
    if incompatible & INCOMPAT_DATA_FILE:
        where = f" {extensions.data_file!r}" if extensions.data_file else ""
        notes.append(f"The guest data lives in the external data file{where}; sizes refer to it.")

    l2_entries = cluster_size // (16 if incompatible & INCOMPAT_EXTL2 else 8)
    needed_l1 = -(-virtual_size // (cluster_size * l2_entries))
    if needed_l1 > _MAX_L1_ENTRIES:
        raise Qcow2Error(f"The image is corrupt: its virtual size {virtual_size} is too large.")
    if l1_size < needed_l1:
        raise Qcow2Error("The image is corrupt: its L1 table is too small for its virtual size.")
    _check_table(l1_table_offset, l1_size, cluster_size, file_size, "the active L1 table")

    backing_file = None
    if backing_file_offset:
        if backing_file_size > _MAX_BACKING_NAME:
            raise Qcow2Error("The image is corrupt: its backing file name is too long.")
        if backing_file_offset + backing_file_size > file_size:
            raise Qcow2Error(
                "The image is truncated: its backing file name lies past the end of the file."
            )
        if backing_file_offset + backing_file_size <= len(head):
            raw = head[backing_file_offset : backing_file_offset + backing_file_size]
        else:
            raw = source.read(backing_file_offset, backing_file_size)
        backing_file = raw.decode("utf-8", errors="replace")

    if nb_snapshots > _MAX_SNAPSHOTS:
        raise Qcow2Error(f"The image is corrupt: it claims {nb_snapshots} snapshots.")
    snapshots: tuple[Qcow2Snapshot, ...] = ()
    if nb_snapshots:
        if incompatible & INCOMPAT_DATA_FILE:
            raise Qcow2Error(
                "The image is corrupt: it has internal snapshots and an external data file."
            )
        snapshots = _read_snapshot_table(
            source,
            snapshots_offset,
            nb_snapshots,
            cluster_size,
            file_size,
            version,
            virtual_size,
            notes,
        )

    return Qcow2Layout(
        file_size=file_size,
        version=version,
        cluster_bits=cluster_bits,
        virtual_size=virtual_size,
        l1_size=l1_size,
        l1_table_offset=l1_table_offset,
        refcount_order=refcount_order,
        refcount_table_offset=refcount_table_offset,
        refcount_table_clusters=refcount_table_clusters,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
        incompatible_features=incompatible,
        compatible_features=compatible,
        autoclear_features=autoclear,
        header_length=header_length,
        compression_type=_COMPRESSION_TYPES[compression_code],
        backing_file=backing_file,
        backing_format=extensions.backing_format,
        data_file=extensions.data_file,
        snapshots=snapshots,
        approximate=bool(incompatible & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)),
        notes=tuple(notes),
    )


@dataclass
class _Extensions:
    backing_format: str | None = None
    data_file: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)


def _parse_extensions(head: bytes, start: int, end: int) -> _Extensions | None:
    """Walk the header extensions between the header and ``end`` (each step moves ahead).

    Returns None when they run past the bytes in ``head`` but not past ``end``: the caller
    reads up to ``end`` and walks again.
    """
    found = _Extensions()
    pos = start
    while pos + _EXT_HEAD.size <= end:
        if pos + _EXT_HEAD.size > len(head):
            return None
        kind, length = _EXT_HEAD.unpack_from(head, pos)
        if kind == _EXT_END:
            break
        data_start = pos + _EXT_HEAD.size
        if length > end - data_start:
            raise Qcow2Error(
                "The image is corrupt: a header extension runs past the end of the header."
            )
        if data_start + length > len(head):
            return None
        data = head[data_start : data_start + length]
        if kind == _EXT_BACKING_FORMAT:
            found.backing_format = data.decode("utf-8", errors="replace")
        elif kind == _EXT_DATA_FILE:
            found.data_file = data.decode("utf-8", errors="replace")
        elif kind == _EXT_FEATURE_TABLE:
            for entry in range(0, len(data) - 47, 48):
                name = data[entry + 2 : entry + 48].split(b"\0", 1)[0]
                found.feature_names[(data[entry], data[entry + 1])] = name.decode(
                    "utf-8", errors="replace"
                )
        pos = data_start + (length + 7) // 8 * 8
    return found


def _check_table(offset: int, entries: int, cluster_size: int, file_size: int, what: str) -> None:
    """Refuse a table (L1) that is misaligned, absurdly large, or past the end of the file."""
    if entries > _MAX_L1_ENTRIES:
        raise Qcow2Error(f"The image is corrupt: {what} claims {entries} entries.")
    if entries == 0:
        return
    if offset % cluster_size:
        raise Qcow2Error(f"The image is corrupt: {what} at offset {offset} is not cluster-aligned.")
    if offset + entries * 8 > file_size:
        raise Qcow2Error(
            f"The image is truncated: {what} at offset {offset} lies beyond the end of the file."
        )


def _read_snapshot_table(
    source: ByteSource,
    offset: int,
    count: int,
    cluster_size: int,
    file_size: int,
    version: int,
    virtual_size: int,
    notes: list[str],
) -> tuple[Qcow2Snapshot, ...]:
    """Parse ``count`` variable-length snapshot entries, reading more only when needed."""
    if offset % cluster_size:
        raise Qcow2Error(
            f"The image is corrupt: the snapshot table at offset {offset} is not cluster-aligned."
        )
    if offset >= file_size:
        raise Qcow2Error(
            f"The image is truncated: the snapshot table at offset {offset} "
            "lies beyond the end of the file."
        )
    limit = min(file_size - offset, _MAX_SNAPSHOT_TABLE_BYTES)
    # Typical entries take 64 to 128 bytes; guess generously so one read usually suffices.
    buf = source.read(offset, min(limit, max(count * 128, 4096)))

    def ensure(needed: int) -> None:
        nonlocal buf
        if needed <= len(buf):
            return
        if needed > limit:
            if needed > file_size - offset:
                raise Qcow2Error(
                    "The image is truncated: the snapshot table runs past the end of the file."
                )
            raise Qcow2Error("The image is corrupt: its snapshot table is too large.")
        grow = min(limit, max(needed, 2 * len(buf)))
        more = source.read(offset + len(buf), grow - len(buf))
        if len(buf) + len(more) < needed:
            raise Qcow2Error(
                "The image is truncated: the snapshot table runs past the end of the file."
            )
        buf += more

    snapshots: list[Qcow2Snapshot] = []
    pos = 0
    short_extra = False
    for _ in range(count):
        ensure(pos + _SNAPSHOT_ENTRY_FIXED)
        (
            l1_offset,
            l1_size,
            id_len,
            name_len,
            date_sec,
            date_nsec,
            vm_clock_nsec,
            vm_state_32,
            extra_len,
        ) = _SNAPSHOT_HEAD.unpack_from(buf, pos)
        if extra_len > _MAX_SNAPSHOT_EXTRA:
            raise Qcow2Error("The image is corrupt: a snapshot entry has too much extra data.")
        body = pos + _SNAPSHOT_ENTRY_FIXED
        entry_end = body + extra_len + id_len + name_len
        ensure(entry_end)
        extra = buf[body : body + extra_len]
        vm_state_size = vm_state_32
        disk_size = virtual_size
        icount: int | None = None
        if extra_len >= 8:
            vm_state_size = int.from_bytes(extra[0:8], "big")
        if extra_len >= 16:
            disk_size = int.from_bytes(extra[8:16], "big")
        elif version >= 3:
            short_extra = True
        if extra_len >= 24:
            raw_icount = int.from_bytes(extra[16:24], "big")
            icount = None if raw_icount == (1 << 64) - 1 else raw_icount
        ident = buf[body + extra_len : body + extra_len + id_len].decode("utf-8", "replace")
        name = buf[body + extra_len + id_len : entry_end].decode("utf-8", "replace")
        _check_table(
            l1_offset, l1_size, cluster_size, file_size, f"the L1 table of snapshot {name!r}"
        )
        snapshots.append(
            Qcow2Snapshot(
                id=ident,
                name=name,
                l1_table_offset=l1_offset,
                l1_size=l1_size,
                date_sec=date_sec,
                date_nsec=date_nsec,
                vm_clock_nsec=vm_clock_nsec,
                vm_state_size=vm_state_size,
                disk_size=disk_size,
                icount=icount,
                extra_data_size=extra_len,
            )
        )
        pos = (entry_end + 7) // 8 * 8
    if short_extra:
        notes.append(
            "Some snapshot entries do not record their disk size; the current size is assumed."
        )
    return tuple(snapshots)


# --------------------------------------------------------------------------- cluster maps
#
# How the work stays within bounded memory, whatever the image says: layers that share an
# L1 table are read once, per distinct part of that table ("slices"); L1 tables are looked
# at a chunk of entries at a time; L2 tables are read and decoded a batch at a time and
# summed per table, in ranges of table offsets ("windows") small enough to hold one number
# per table; deltas compare each distinct pair of L2 tables once; exclusive bytes count,
# per host cluster, how many entries reference it, a range of clusters (one byte each) per
# pass. A typical image fits in one window and one pass, with every decoded entry kept in
# memory, so nothing is read twice; only a huge image pays more passes, never more memory.

# All L1 tables are kept when they fit here; one maximal table (32 MiB) does.
_L1_CACHE_BYTES: Final = 32 * 1024 * 1024
# L1 entries looked at in one step.
_L1_CHUNK: Final = 1 << 20
# Bytes of L2 tables asked for in one read (a remote source fetches them concurrently,
# so fewer, larger reads save round trips), and decoded in one step.
_L2_READ_BYTES: Final = 32 * 1024 * 1024
_L2_BATCH_BYTES: Final = 8 * 1024 * 1024
# Decoded entries (24 bytes each) kept for later passes when all of them fit.
_KEEP_ENTRIES: Final = 2 << 20
# Distinct L2 tables summed in one window (about 40 bytes each).
_WINDOW_TABLES: Final = 1 << 20
# Host clusters whose references are counted in one pass, a byte each: 3 TiB of 64 KiB.
_DENSE_CLUSTERS: Final = 48 << 20
# Other keys (compressed data, offsets past the file) counted in one pass, by sorting.
_SPARSE_KEYS: Final = 1 << 20
# Entries gathered in one step of comparing L2 tables for a delta.
_PAIR_ENTRIES: Final = 1 << 16

_U8 = NDArray[np.uint8]
_I32 = NDArray[np.int32]


@dataclass(frozen=True)
class _L2Entries:
    """The entries of every distinct L2 table that reference host storage, by table (CSR).

    Entries of table ``t`` are ``[start[t], start[t + 1])``; ``slot`` is the index inside
    the table, ``key`` identifies the host storage (cluster offset, or tagged byte offset of
    compressed data), ``host_bytes`` the data it holds in the file (0 for a zero cluster
    that keeps its host cluster allocated).
    """

    entries_per_table: int
    start: _I64
    count: _I64
    slot: _I64
    key: _U64
    host_bytes: _I64
    table_host_bytes: _I64
    table_guest_bytes: _I64

    def gather(self, l1_indices: _I64, tables: _I64) -> tuple[_I64, _U64, _I64]:
        """Return guest cluster index, key and host bytes of the entries under the L1 slots."""
        counts = self.count[tables]
        total = int(counts.sum())
        if total == 0:
            return np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int64)
        ends = np.cumsum(counts)
        pos = np.arange(total, dtype=np.int64) + np.repeat(
            self.start[tables] - (ends - counts), counts
        )
        guest = np.repeat(l1_indices * self.entries_per_table, counts) + self.slot[pos]
        return guest, self.key[pos], self.host_bytes[pos]


def _popcount(values: _U64) -> _I64:
    """Set bits per value (subclusters allocated per extended L2 entry)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    as_bytes = values.astype("<u8").view(np.uint8).reshape(-1, 8)  # numpy < 2.0
    counts: _I64 = np.unpackbits(as_bytes, axis=1).sum(axis=1, dtype=np.int64)
    return counts


def _decode_l2_tables(
    layout: Qcow2Layout, tables: Sequence[bytes], offsets: _U64
) -> tuple[_L2Entries, int]:
    """Classify the entries of every L2 table and keep those that reference host storage.

    Also returns how many data clusters point past the end of the file.
    """
    cluster_size = layout.cluster_size
    cluster_bits = layout.cluster_bits
    n = len(tables)
    words = 2 if layout.extended_l2 else 1
    # Zero tests do not care about byte order, so find non-empty entries on the raw bytes
    # and byte-swap only those: most entries of a sparse disk's tables are empty. Tables
    # are scanned one by one rather than joined: one huge buffer costs more in page
    # faults than the loop costs in calls.
    counts = np.zeros(n, dtype=np.int64)
    found_slots: list[_I64] = []
    found_entries: list[_U64] = []
    found_bitmaps: list[_U64] = []
    for t, (table, table_offset) in enumerate(zip(tables, offsets.tolist(), strict=True)):
        if len(table) != cluster_size:
            raise Qcow2Error(
                f"The image is truncated: the L2 table at offset {table_offset} "
                "lies beyond the end of the file."
            )
        slots = np.flatnonzero(np.frombuffer(table, dtype=np.uint64)[::words] != 0)
        if len(slots) == 0:
            continue
        big = np.frombuffer(table, dtype=">u8")
        counts[t] = len(slots)
        found_slots.append(slots)
        found_entries.append(big[slots * words].astype(np.uint64))
        if words == 2:
            found_bitmaps.append(big[slots * 2 + 1].astype(np.uint64))
    slot = _concat(found_slots, np.int64)
    entry = _concat(found_entries, np.uint64)

    offset = entry & np.uint64(_L2_OFFSET_MASK)
    present = offset != 0
    if layout.has_data_file:
        # With an external data file, host offset 0 is valid, marked by the "copied" bit.
        present |= entry >= np.uint64(1 << 63)
    if layout.extended_l2:
        allocated = _concat(found_bitmaps, np.uint64) & np.uint64(0xFFFF_FFFF)
        has_allocated = allocated != 0
        data = present & has_allocated
        if np.any(has_allocated & ~present):
            raise Qcow2Error(
                "The image is corrupt: an L2 entry has allocated subclusters but no host cluster."
            )
        data_bytes = np.where(data, _popcount(allocated) * layout.subcluster_size, 0)
    else:
        data = present & ((entry & np.uint64(1)) == 0)
        data_bytes = data * np.int64(cluster_size)
    # A zero cluster that keeps its host cluster (QEMU does so unless asked to unmap) holds
    # no data but still pins that cluster: it counts as a reference, with no bytes.
    key = offset
    guest_bytes = data_bytes
    kept = present

    compressed_bit = entry & np.uint64(1 << 62)
    if np.any(compressed_bit):  # most images have none: skip this work for them
        if layout.has_data_file:
            raise Qcow2Error(
                "The image is corrupt: it has compressed clusters and an external data file."
            )
        compressed = compressed_bit != 0
        shift = 62 - (cluster_bits - 8)
        comp_offset = entry & np.uint64((1 << shift) - 1)
        sectors = (entry >> np.uint64(shift)) & np.uint64((1 << (cluster_bits - 8)) - 1)
        data &= ~compressed
        present &= ~compressed
        kept = present | compressed
        key = np.where(compressed, comp_offset | _COMPRESSED_TAG, offset)
        data_bytes = np.where(compressed, (sectors.astype(np.int64) + 1) * _SECTOR, data_bytes)
        guest_bytes = np.where(compressed, cluster_size, np.where(data, guest_bytes, 0))
        stray_mask = data & (offset >= np.uint64(layout.file_size))
        stray_mask |= compressed & (comp_offset >= np.uint64(layout.file_size))
    else:
        stray_mask = data & (offset >= np.uint64(layout.file_size))

    if np.any(present & (offset & np.uint64(cluster_size - 1) != 0)):
        raise Qcow2Error(
            "The image is corrupt: a data cluster's host offset is not cluster-aligned."
        )
    # Only a cluster's start must lie inside the file: QEMU does not always extend the
    # file over the unwritten tail of the last cluster (subclusters, zero-filled COW).
    # With an external data file the offsets are in that other file.
    stray = 0 if layout.has_data_file else int(np.count_nonzero(stray_mask))

    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    if not bool(kept.all()):
        counts = _segment_sums(kept.astype(np.int64), start)
        slot, key, data_bytes, guest_bytes = (
            slot[kept],
            key[kept],
            data_bytes[kept],
            guest_bytes[kept],
        )
        np.cumsum(counts, out=start[1:])
    entries_found = _L2Entries(
        entries_per_table=layout.l2_entries,
        start=start,
        count=counts,
        slot=slot,
        key=key,
        host_bytes=data_bytes,
        table_host_bytes=_segment_sums(data_bytes, start),
        table_guest_bytes=_segment_sums(guest_bytes, start),
    )
    return entries_found, stray


def _concat(parts: list[NDArray[_T]], dtype: type[_T]) -> NDArray[_T]:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _segment_sums(values: _I64, start: _I64) -> _I64:
    """Exact integer sums of ``values`` over each segment ``[start[t], start[t + 1])``."""
    running = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=running[1:])
    sums: _I64 = running[start[1:]] - running[start[:-1]]
    return sums


def _entries_per_key(key: _U64, cluster_bits: int, file_size: int) -> _I64:
    """For every entry, how many entries (across all distinct tables) share its key."""
    if len(key) == 0:
        return np.zeros(0, np.int64)
    if bool((key < _COMPRESSED_TAG).all()):
        cluster = (key >> np.uint64(cluster_bits)).astype(np.int64)
        # A dense count is one pass, but needs 8 bytes per host cluster: use it only while
        # that is about the file's size (a damaged entry can point anywhere) and small.
        dense_limit = min(1 << 22, 2 * (file_size >> cluster_bits) + 1024)
        if int(cluster.max()) < dense_limit:
            by_cluster: _I64 = np.bincount(cluster)[cluster]
            return by_cluster
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    by_key: _I64 = counts[inverse.ravel()]
    return by_key


@dataclass(frozen=True, slots=True)
class _Slice:
    """Entries ``[start, stop)`` of the L1 table at ``offset``.

    A layer's L1 table has two parts: the entries that map its disk, and those past the
    disk, where a vmstate is kept. Layers whose parts are the same slice are measured once.
    """

    offset: int
    start: int
    stop: int


@dataclass
class _Plan:
    """The distinct slices and parent/child pairs of slices that the layers need measured."""

    data: list[_Slice] = field(default_factory=list)
    data_layers: list[int] = field(default_factory=list)
    """How many layers have each data slice: each counts as a reference to its tables."""
    vmstate: list[_Slice] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    """(child, parent) data slices, distinct and different, to compare for a delta."""
    layer_data: list[int | None] = field(default_factory=list)
    layer_vmstate: list[int | None] = field(default_factory=list)
    layer_pair: list[tuple[int, int] | None] = field(default_factory=list)
    """Per layer: a pair index ``(0, k)``, or ``(1, slice)`` when the delta is that data
    slice's own bytes (no parent table), or None when the delta is zero."""


def _plan_layers(layout: Qcow2Layout, parents: list[int | None], now: int | None) -> _Plan:
    """Reduce the layers (Now first, then the snapshots) to distinct slices and pairs."""
    plan = _Plan()
    data_index: dict[_Slice, int] = {}
    vmstate_index: dict[_Slice, int] = {}
    pair_index: dict[tuple[int, int], int] = {}
    tables = [(layout.l1_table_offset, layout.l1_size, layout.virtual_size)] + [
        (s.l1_table_offset, s.l1_size, s.disk_size) for s in layout.snapshots
    ]
    for offset, size, disk_size in tables:
        vm_index = min(layout.l1_vm_state_index(disk_size), size)
        data = vmstate = None
        if vm_index > 0:
            data = data_index.setdefault(_Slice(offset, 0, vm_index), len(data_index))
            if data == len(plan.data):
                plan.data.append(_Slice(offset, 0, vm_index))
                plan.data_layers.append(0)
            plan.data_layers[data] += 1
        if size > vm_index:
            vmstate = vmstate_index.setdefault(_Slice(offset, vm_index, size), len(vmstate_index))
            if vmstate == len(plan.vmstate):
                plan.vmstate.append(_Slice(offset, vm_index, size))
        plan.layer_data.append(data)
        plan.layer_vmstate.append(vmstate)
    # (Without snapshots, ``parents`` may still hold one entry: there is no layer for it.)
    for layer, parent in enumerate([now, *parents[: len(layout.snapshots)]]):
        child = plan.layer_data[layer]
        parent_data = None if parent is None else plan.layer_data[parent + 1]
        pair: tuple[int, int] | None = None
        if child is not None and parent_data is None:
            pair = (1, child)  # against an empty disk: everything the child maps is new
        elif child is not None and parent_data is not None and child != parent_data:
            key = (child, parent_data)
            pair = (0, pair_index.setdefault(key, len(pair_index)))
            if pair[1] == len(plan.pairs):
                plan.pairs.append(key)
        plan.layer_pair.append(pair)
    return plan


class _L1Tables:
    """The image's distinct L1 tables, as L2 table offsets (0: no table).

    Layers that share a table (same offset) share one read. All tables are read in one
    batch and kept when they fit in ``_L1_CACHE_BYTES``; otherwise each request is read.
    """

    def __init__(self, source: ByteSource, layout: Qcow2Layout) -> None:
        sizes: dict[int, int] = {}
        specs = [(layout.l1_table_offset, layout.l1_size)] + [
            (s.l1_table_offset, s.l1_size) for s in layout.snapshots
        ]
        for offset, size in specs:
            if size > 0:
                sizes[offset] = max(size, sizes.get(offset, 0))
        self.sizes = dict(sorted(sizes.items()))
        total = 8 * sum(self.sizes.values())
        # Distinct L1 tables never overlap, so together they fit in the file; a header
        # that says otherwise would make us read the same bytes over and over.
        if total > layout.file_size:
            raise Qcow2Error(
                "The image is corrupt: its L1 tables add up to more than the file holds."
            )
        self._source = source
        self._cache: dict[int, _U64] = {}
        if total <= _L1_CACHE_BYTES:
            raws = source.read_many([(offset, 8 * size) for offset, size in self.sizes.items()])
            for (offset, size), raw in zip(self.sizes.items(), raws, strict=True):
                self._cache[offset] = _decode_l1(offset, size, raw)

    def entries(self, offset: int, start: int, stop: int) -> _U64:
        """Entries ``[start, stop)`` of the table at ``offset``."""
        table = self._cache.get(offset)
        if table is not None:
            return table[start:stop]
        raw = self._source.read(offset + 8 * start, 8 * (stop - start))
        return _decode_l1(offset, stop - start, raw)

    def chunks(self, offset: int, start: int, stop: int) -> Iterator[tuple[int, _U64]]:
        """``(first index, entries)`` over ``[start, stop)``, ``_L1_CHUNK`` entries at a time."""
        for first in range(start, stop, _L1_CHUNK):
            yield first, self.entries(offset, first, min(stop, first + _L1_CHUNK))

    def table_slices(self) -> list[_Slice]:
        """Every distinct table, whole."""
        return [_Slice(offset, 0, size) for offset, size in self.sizes.items()]

    def groups(self, slices: Sequence[_Slice]) -> Iterator[tuple[_U64, _I64, _I64]]:
        """The entries of many slices at once: ``(entries, starts, items)``.

        Run ``r`` is ``entries[starts[r] : starts[r + 1]]``, from slice ``items[r]``. Small
        slices (the L1 tables of a small disk) share a group, so that numpy, not Python,
        loops over them; a large slice comes in chunks.
        """
        pieces: list[_U64] = []
        items: list[int] = []
        held = 0
        for index, piece in enumerate(slices):
            for _, chunk in self.chunks(piece.offset, piece.start, piece.stop):
                pieces.append(chunk)
                items.append(index)
                held += len(chunk)
                if held >= _L1_CHUNK:
                    yield _group(pieces, items)
                    pieces, items, held = [], [], 0
        if pieces:
            yield _group(pieces, items)


def _group(pieces: list[_U64], items: list[int]) -> tuple[_U64, _I64, _I64]:
    starts = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum([len(piece) for piece in pieces], out=starts[1:])
    entries = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return entries, starts, np.array(items, dtype=np.int64)


def _decode_l1(offset: int, size: int, raw: bytes) -> _U64:
    if len(raw) != 8 * size:
        raise Qcow2Error(
            f"The image is truncated: the L1 table at offset {offset} "
            "lies beyond the end of the file."
        )
    table: _U64 = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    table &= np.uint64(_L1_OFFSET_MASK)
    return table


class _DistinctOffsets:
    """The sorted distinct values of the arrays added, merged now and then to stay small."""

    def __init__(self) -> None:
        self.values: _U64 = np.zeros(0, np.uint64)
        self._pending: list[_U64] = []
        self._pending_count = 0

    def add(self, values: _U64) -> None:
        if len(values) == 0:
            return
        distinct = np.unique(values)
        self._pending.append(distinct)
        self._pending_count += len(distinct)
        # Merging costs a sort of everything held: wait until the new part is as large.
        if self._pending_count >= max(len(self.values), _L1_CHUNK):
            self.merge()

    def merge(self) -> _U64:
        if self._pending:
            self.values = np.unique(np.concatenate([self.values, *self._pending]))
            self._pending = []
            self._pending_count = 0
        return self.values


def _add_saturating(counts: _U8, indices: _I64) -> None:
    """Count every index (repeats too) in ``counts``, stopping at 2."""
    if len(indices) == 0:
        return
    low, high = int(indices.min()), int(indices.max()) + 1
    if high - low <= 4 * len(indices) + 4096:
        # Counting over the span is one pass; it costs 8 bytes per slot of the span.
        added = np.bincount(indices - low, minlength=high - low)
        span = counts[low:high]
        span[:] = np.minimum(span + np.minimum(added, 2), 2)
    else:
        unique, repeats = np.unique(indices, return_counts=True)
        counts[unique] = np.minimum(counts[unique] + np.minimum(repeats, 2), 2)


class _KeyCounts:
    """How many L2 entries share each key, for one part of the keys (a counting pass).

    Keys of host clusters below ``dense_limit`` are counted in a byte per cluster, for
    the clusters ``[low, high)``; every other key (compressed data, offsets past the file)
    in ``sparse = (class, classes)`` is counted by sorting, sorted into ``classes`` by a
    hash of the key. Counts stop at 2: exclusive bytes only ask "exactly one?".
    """

    def __init__(
        self,
        cluster_bits: int,
        dense_limit: int,
        dense: tuple[int, int] | None,
        sparse: tuple[int, int] | None,
        may_overflow: bool = False,
    ) -> None:
        self._bits = np.uint64(cluster_bits)
        self._dense_limit = dense_limit
        self._low, self._high = dense or (0, 0)
        # np.zeros maps pages lazily: only clusters that are referenced take memory.
        self._counts: _U8 = np.zeros(self._high - self._low, np.uint8)
        self.sparse = sparse
        self._may_overflow = may_overflow
        self.overflow = False
        """The sparse keys outgrew ``_SPARSE_KEYS``; they need passes of their own."""
        self.sparse_total = 0
        self._pending: list[_U64] = []
        self._pending_count = 0
        self._once: _U64 = np.zeros(0, np.uint64)
        self._shared: _U64 = np.zeros(0, np.uint64)

    def _split(self, keys: _U64) -> tuple[_I64, NDArray[np.bool_], NDArray[np.bool_]]:
        """Cluster index of every key, which are counted densely here, which sparsely."""
        standard = keys < _COMPRESSED_TAG
        cluster = np.where(standard, keys >> self._bits, np.uint64(self._dense_limit))
        cluster = cluster.astype(np.int64)
        dense = (cluster >= self._low) & (cluster < self._high)
        sparse = np.zeros(len(keys), dtype=bool)
        if self.sparse is not None:
            sparse = cluster >= self._dense_limit
            part, parts = self.sparse
            if parts > 1:
                # Fibonacci hashing: neighbouring offsets land in different classes.
                mixed = (keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
                sparse &= mixed % np.uint64(parts) == part
        return cluster, dense, sparse

    def add(self, keys: _U64) -> None:
        """Count the keys of one batch of entries."""
        cluster, dense, sparse = self._split(keys)
        _add_saturating(self._counts, cluster[dense] - self._low)
        if self.sparse is None or not sparse.any():
            return
        picked = keys[sparse]
        self.sparse_total += len(picked)
        if self.overflow:
            return
        self._pending.append(picked)
        self._pending_count += len(picked)
        if self._pending_count > _SPARSE_KEYS:
            self._compact()

    def _compact(self) -> None:
        """Fold the pending keys into the sorted keys seen once and those seen more."""
        merged = np.concatenate([*self._pending, self._once, self._shared, self._shared])
        self._pending = []
        self._pending_count = 0
        keys, repeats = np.unique(merged, return_counts=True)
        self._once, self._shared = keys[repeats == 1], keys[repeats > 1]
        if self._may_overflow and len(keys) > _SPARSE_KEYS:
            self.overflow = True
            self._once = self._shared = np.zeros(0, np.uint64)

    def finish(self) -> None:
        """End the counting pass."""
        if self._pending:
            self._compact()

    def once(self, keys: _U64) -> NDArray[np.bool_]:
        """True for the keys of this part that exactly one entry references."""
        cluster, dense, sparse = self._split(keys)
        result = np.zeros(len(keys), dtype=bool)
        result[dense] = self._counts[cluster[dense] - self._low] == 1
        if self.sparse is not None and not self.overflow:
            picked = keys[sparse]
            result[sparse] = _isin_sorted(picked, self._once)
        return result


def _isin_sorted(values: _U64, sorted_values: _U64) -> NDArray[np.bool_]:
    if len(sorted_values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    found: NDArray[np.bool_] = sorted_values[pos] == values
    return found


@dataclass
class _Window:
    """The distinct L2 tables with offsets in ``[low, high)`` and what is known of each."""

    low: int
    high: int
    tables: _U64
    weight: _U8
    """References from the layers' data slices (each layer counts), stopping at 2."""
    owner: _I32
    """The data slice that references the table (the one, where ``weight`` is 1)."""
    host: _I64 = field(default_factory=lambda: np.zeros(1, np.int64))
    """Host bytes of data per table, and a 0 after the last (see :meth:`lookup`)."""
    guest: _I64 = field(default_factory=lambda: np.zeros(1, np.int64))

    def lookup(self, entries: _U64) -> tuple[_I64, NDArray[np.bool_]]:
        """Index in ``tables`` of every entry, and which entries name a table here.

        Entries that name none (0, or a table of another window) get ``len(tables)``,
        where ``host`` and ``guest`` hold a 0.
        """
        inside = self.holds(entries)
        ids = np.searchsorted(self.tables, entries)
        ids[~inside] = len(self.tables)
        return ids, inside

    def holds(self, entries: _U64) -> NDArray[np.bool_]:
        mask: NDArray[np.bool_] = (entries >= np.uint64(self.low)) & (
            entries < np.uint64(self.high)
        )
        return mask


@dataclass
class _Sums:
    """What the passes add up, per data slice, vmstate slice and pair."""

    data_bytes: _I64
    guest_bytes: _I64
    exclusive_bytes: _I64
    vmstate_bytes: _I64
    pair_delta: _I64
    stray: int = 0


class _Measure:
    """The passes over an image's L1 and L2 tables that fill in :class:`_Sums`."""

    def __init__(self, source: ByteSource, layout: Qcow2Layout, plan: _Plan) -> None:
        self.source = source
        self.layout = layout
        self.plan = plan
        self.l1 = _L1Tables(source, layout)
        self.sums = _Sums(
            data_bytes=np.zeros(len(plan.data), np.int64),
            guest_bytes=np.zeros(len(plan.data), np.int64),
            exclusive_bytes=np.zeros(len(plan.data), np.int64),
            vmstate_bytes=np.zeros(len(plan.vmstate), np.int64),
            pair_delta=np.zeros(len(plan.pairs), np.int64),
        )
        self.batch_tables = max(1, _L2_BATCH_BYTES // layout.cluster_size)
        clusters = -(-layout.file_size // layout.cluster_size)
        if layout.has_data_file:
            # Data clusters live in the other file, which maps the disk one to one.
            clusters = max(clusters, -(-layout.virtual_size // layout.cluster_size))
        self.dense_limit = clusters

    def run(self) -> _Sums:
        tables, windows = self._plan_windows()
        single = tables is not None
        first = self._window(*windows[0], tables)
        # Counting keys only serves exclusive bytes, which only tables that a single layer
        # references can hold. With one window that is known before any L2 table is read.
        needs_counts = not single or bool((first.weight == 1).any())
        counts = _KeyCounts(
            self.layout.cluster_bits,
            self.dense_limit,
            (0, min(self.dense_limit, _DENSE_CLUSTERS)),
            (0, 1),
            may_overflow=True,
        )
        kept: _L2Entries | None = None
        for number, bounds in enumerate(windows):
            window = first if number == 0 else self._window(*bounds)
            kept = self._decode(window, counts if needs_counts else None, keep=single)
            self._add_sums(window, kept)
        if not needs_counts:
            return self.sums
        if kept is not None:
            self._add_exclusive_kept(first, kept)
            return self.sums
        counts.finish()
        for part in [counts, *self._more_counts(counts)]:
            if part is not counts:
                for bounds in windows:
                    window = first if single else self._window(*bounds, references=False)
                    self._count(window, part)
                part.finish()
            for bounds in windows:
                window = first if single else self._window(*bounds)
                self._add_exclusive(window, part)
        return self.sums

    # -------------------------------------------------------------- windows of L2 tables

    def _plan_windows(self) -> tuple[_U64 | None, list[tuple[int, int]]]:
        """Check every L1 entry; split the L2 tables into windows of ``_WINDOW_TABLES``.

        Returns the distinct table offsets too when they all fit in one window.
        """
        layout = self.layout
        cluster_size, file_size = layout.cluster_size, layout.file_size
        # Up to 65536 ranges of the file, to find where the tables are when they are many.
        shift = max(layout.cluster_bits, (file_size >> 16).bit_length())
        buckets = (file_size >> shift) + 1
        histogram: _I64 | None = None
        distinct = _DistinctOffsets()
        misaligned = False
        highest = 0
        for entries, _, _ in self.l1.groups(self.l1.table_slices()):
            used = entries[entries != 0]
            if len(used) == 0:
                continue
            misaligned = misaligned or bool(np.any(used & np.uint64(cluster_size - 1)))
            highest = max(highest, int(used.max()))
            distinct.add(used)
            if len(distinct.values) > _WINDOW_TABLES:
                # Too many to hold: from here on only count them by range of offsets
                # (a table counted in two rounds is counted twice: windows come out
                # smaller, never larger).
                histogram = _bucket_counts(distinct.values, shift, buckets, histogram)
                distinct = _DistinctOffsets()
        if misaligned:
            raise Qcow2Error("The image is corrupt: an L2 table offset is not cluster-aligned.")
        if highest and highest + cluster_size > file_size:
            raise Qcow2Error(
                f"The image is truncated: the L2 table at offset {highest} "
                "lies beyond the end of the file."
            )
        tables = distinct.merge()
        if histogram is None and len(tables) <= _WINDOW_TABLES:
            return tables, [(1, file_size)]
        histogram = _bucket_counts(tables, shift, buckets, histogram)
        windows: list[tuple[int, int]] = []
        low, held = 1, 0
        for bucket in np.flatnonzero(histogram).tolist():
            if held and held + int(histogram[bucket]) > _WINDOW_TABLES:
                windows.append((low, bucket << shift))
                low, held = bucket << shift, 0
            held += int(histogram[bucket])
        windows.append((low, file_size))
        return None, windows

    def _window(
        self, low: int, high: int, tables: _U64 | None = None, references: bool = True
    ) -> _Window:
        """The tables of a window and (unless not asked) how the data slices reference them."""
        if tables is None:
            distinct = _DistinctOffsets()
            for entries, _, _ in self.l1.groups(self.l1.table_slices()):
                distinct.add(entries[(entries >= np.uint64(low)) & (entries < np.uint64(high))])
            tables = distinct.merge()
        window = _Window(
            low=low,
            high=high,
            tables=tables,
            weight=np.zeros(len(tables), np.uint8),
            owner=np.zeros(len(tables), np.int32),
        )
        layers = np.array(self.plan.data_layers, dtype=np.int64)
        for entries, starts, items in self.l1.groups(self.plan.data if references else []):
            ids, inside = window.lookup(entries)
            ids = ids[inside]
            owner = np.repeat(items, np.diff(starts))[inside]
            _add_saturating(window.weight, ids)
            # A slice that several layers share references its tables that many times.
            window.weight[ids[layers[owner] > 1]] = 2
            window.owner[ids] = owner
        return window

    # -------------------------------------------------------------- reading L2 tables

    def _read(self, offsets: _U64) -> tuple[_L2Entries, int]:
        """Read and decode the L2 tables at ``offsets`` (one batch)."""
        size = self.layout.cluster_size
        raws = self.source.read_many([(offset, size) for offset in offsets.tolist()])
        return _decode_l2_tables(self.layout, raws, offsets)

    def _batches(self, offsets: _U64) -> Iterator[tuple[int, _L2Entries, int]]:
        """``(first index, entries, stray)`` for the tables at ``offsets``, batch by batch."""
        size = self.layout.cluster_size
        per_read = max(1, _L2_READ_BYTES // size)
        for first in range(0, len(offsets), per_read):
            batch = offsets[first : first + per_read]
            raws = self.source.read_many([(offset, size) for offset in batch.tolist()])
            for low in range(0, len(batch), self.batch_tables):
                high = low + self.batch_tables
                entries, stray = _decode_l2_tables(self.layout, raws[low:high], batch[low:high])
                yield first + low, entries, stray
            del raws

    def _decode(self, window: _Window, counts: _KeyCounts | None, keep: bool) -> _L2Entries | None:
        """Sum every table of the window; count keys; return all entries if asked and small."""
        window.host = np.zeros(len(window.tables) + 1, np.int64)
        window.guest = np.zeros(len(window.tables) + 1, np.int64)
        parts: list[_L2Entries] = []
        held = 0
        for first, entries, stray in self._batches(window.tables):
            self.sums.stray += stray
            last = first + len(entries.count)
            window.host[first:last] = entries.table_host_bytes
            window.guest[first:last] = entries.table_guest_bytes
            if keep:
                parts.append(entries)
                held += len(entries.key)
                if held <= _KEEP_ENTRIES:
                    continue
                keep = False  # too many to keep: count what was kept, then go on streaming
                if counts is not None:
                    for part in parts:
                        counts.add(part.key)
                parts = []
            elif counts is not None:
                counts.add(entries.key)
        return _join_entries(parts, self.layout.l2_entries) if keep else None

    # -------------------------------------------------------------- sums and deltas

    def _add_sums(self, window: _Window, kept: _L2Entries | None) -> None:
        """Add the window's tables to every slice's totals and every pair's delta."""
        sums = self.sums
        for entries, starts, items in self.l1.groups(self.plan.data):
            ids, _ = window.lookup(entries)
            np.add.at(sums.data_bytes, items, _segment_sums(window.host[ids], starts))
            np.add.at(sums.guest_bytes, items, _segment_sums(window.guest[ids], starts))
        for entries, starts, items in self.l1.groups(self.plan.vmstate):
            ids, _ = window.lookup(entries)
            np.add.at(sums.vmstate_bytes, items, _segment_sums(window.host[ids], starts))
        for mine, theirs, starts, items in self._pair_groups():
            np.add.at(sums.pair_delta, items, self._pair_deltas(window, mine, theirs, starts, kept))

    def _pair_groups(self) -> Iterator[tuple[_U64, _U64, _I64, _I64]]:
        """Like :meth:`_L1Tables.groups` over the pairs: each child's entries, and its
        parent's beside them (0 past the parent's slice)."""
        mine_parts: list[_U64] = []
        theirs_parts: list[_U64] = []
        items: list[int] = []
        held = 0
        for index, (child, parent) in enumerate(self.plan.pairs):
            own, other = self.plan.data[child], self.plan.data[parent]
            # Slices of one table agree wherever both reach.
            start = min(own.stop, other.stop) if own.offset == other.offset else 0
            for first, mine in self.l1.chunks(own.offset, start, own.stop):
                theirs = np.zeros(len(mine), np.uint64)
                reach = min(first + len(mine), other.stop)
                if first < reach:
                    theirs[: reach - first] = self.l1.entries(other.offset, first, reach)
                mine_parts.append(mine)
                theirs_parts.append(theirs)
                items.append(index)
                held += len(mine)
                if held >= _L1_CHUNK:
                    entries, starts, which = _group(mine_parts, items)
                    yield entries, _group(theirs_parts, items)[0], starts, which
                    mine_parts, theirs_parts, items, held = [], [], [], 0
        if items:
            entries, starts, which = _group(mine_parts, items)
            yield entries, _group(theirs_parts, items)[0], starts, which

    def _pair_deltas(
        self,
        window: _Window,
        mine: _U64,
        theirs: _U64,
        starts: _I64,
        kept: _L2Entries | None,
    ) -> _I64:
        """Per run: host bytes of data the child maps differently from the parent.

        Where both L1 entries name the same L2 table nothing below it changed; where the
        parent has no table at all, everything below the child's is new; otherwise the two
        tables are compared entry by entry (each distinct pair of tables once). Only the
        child's tables in this window count.
        """
        ids, inside = window.lookup(mine)
        differs = (mine != theirs) & inside
        changed = np.where(differs & (theirs == 0), window.host[ids], 0)
        both = np.flatnonzero(differs & (theirs != 0))
        if len(both):
            changed[both] = self._table_deltas(window, mine[both], theirs[both], kept)
        return _segment_sums(changed, starts)

    def _table_deltas(
        self, window: _Window, mine: _U64, theirs: _U64, kept: _L2Entries | None
    ) -> _I64:
        """For each ``i``, the host bytes of L2 table ``mine[i]`` that ``theirs[i]`` lacks."""
        order = np.lexsort((theirs, mine))
        mine, theirs = mine[order], theirs[order]
        new = np.ones(len(mine), dtype=bool)
        new[1:] = (mine[1:] != mine[:-1]) | (theirs[1:] != theirs[:-1])
        which = np.empty(len(mine), dtype=np.int64)
        which[order] = np.cumsum(new) - 1  # each input's pair among the distinct ones
        starts = np.flatnonzero(new)
        mine, theirs = mine[starts], theirs[starts]
        if kept is not None:
            mine_ids = np.searchsorted(window.tables, mine)
            theirs_ids = np.searchsorted(window.tables, theirs)
            sizes = kept.count[mine_ids] + kept.count[theirs_ids]
            # Split where the gathered entries would outgrow _PAIR_ENTRIES.
            steps = np.cumsum(sizes) // _PAIR_ENTRIES
            cuts = np.flatnonzero(np.diff(steps)) + 1
            bounds = [0, *cuts.tolist(), len(mine)]
        else:
            step = max(1, self.batch_tables // 2)
            bounds = [*range(0, len(mine), step), len(mine)]
        changed = np.zeros(len(mine), dtype=np.int64)
        for low, high in itertools.pairwise(bounds):
            if kept is not None:
                entries, a, b = kept, mine_ids[low:high], theirs_ids[low:high]
            else:
                needed = np.unique(np.concatenate([mine[low:high], theirs[low:high]]))
                entries, _ = self._read(needed)
                a = np.searchsorted(needed, mine[low:high])
                b = np.searchsorted(needed, theirs[low:high])
            changed[low:high] = _changed_bytes(entries, a, b)
        result: _I64 = changed[which]
        return result

    # -------------------------------------------------------------- exclusive bytes

    def _more_counts(self, counts: _KeyCounts) -> list[_KeyCounts]:
        """The counting passes still needed after the first one."""
        bits = self.layout.cluster_bits
        ranges = [
            (low, min(low + _DENSE_CLUSTERS, self.dense_limit))
            for low in range(_DENSE_CLUSTERS, self.dense_limit, _DENSE_CLUSTERS)
        ]
        classes = 0
        if counts.overflow:
            classes = -(-counts.sparse_total // _SPARSE_KEYS)
            counts.sparse = None
        parts = []
        for number in range(max(len(ranges), classes)):
            dense = ranges[number] if number < len(ranges) else None
            sparse = (number, classes) if number < classes else None
            parts.append(_KeyCounts(bits, self.dense_limit, dense, sparse))
        return parts

    def _count(self, window: _Window, counts: _KeyCounts) -> None:
        for _, entries, _ in self._batches(window.tables):
            counts.add(entries.key)

    def _add_exclusive(self, window: _Window, counts: _KeyCounts) -> None:
        """Add the bytes of keys in ``counts`` that one table of one layer alone holds."""
        alone = np.flatnonzero(window.weight == 1)
        for first, entries, _ in self._batches(window.tables[alone]):
            held = np.where(counts.once(entries.key), entries.host_bytes, 0)
            owners = window.owner[alone[first : first + len(entries.count)]]
            np.add.at(self.sums.exclusive_bytes, owners, _segment_sums(held, entries.start))

    def _add_exclusive_kept(self, window: _Window, kept: _L2Entries) -> None:
        table = np.repeat(np.arange(len(kept.count)), kept.count)
        alone = (window.weight[table] == 1) & (
            _entries_per_key(kept.key, self.layout.cluster_bits, self.layout.file_size) == 1
        )
        per_table = _segment_sums(np.where(alone, kept.host_bytes, 0), kept.start)
        tables = np.flatnonzero(window.weight == 1)
        np.add.at(self.sums.exclusive_bytes, window.owner[tables], per_table[tables])


def _bucket_counts(values: _U64, shift: int, buckets: int, counts: _I64 | None) -> _I64:
    """Add how many ``values`` fall in each range of ``1 << shift`` to ``counts``."""
    index = np.minimum(values >> np.uint64(shift), np.uint64(buckets - 1)).astype(np.int64)
    added = np.bincount(index, minlength=buckets)
    return added if counts is None else counts + added


def _changed_bytes(entries: _L2Entries, mine: _I64, theirs: _I64) -> _I64:
    """Per pair of tables: host bytes of ``mine``'s entries that ``theirs`` does not have."""
    pairs = np.arange(len(mine), dtype=np.int64)
    guest, key, size = entries.gather(pairs, mine)
    other_guest, other_key, _ = entries.gather(pairs, theirs)
    changed = np.ones(len(guest), dtype=bool)
    if len(other_guest):
        pos = np.minimum(np.searchsorted(other_guest, guest), len(other_guest) - 1)
        changed = (other_guest[pos] != guest) | (other_key[pos] != key)
    pair = guest[changed] // entries.entries_per_table
    # Float sums are exact here: a pair's bytes stay below 2^40.
    per_pair = np.bincount(pair, weights=size[changed], minlength=len(mine))
    return per_pair.astype(np.int64)


def _join_entries(parts: list[_L2Entries], entries_per_table: int) -> _L2Entries:
    """One CSR of consecutive batches' entries."""
    if len(parts) == 1:
        return parts[0]
    count = _concat([p.count for p in parts], np.int64)
    start = np.zeros(len(count) + 1, dtype=np.int64)
    np.cumsum(count, out=start[1:])
    return _L2Entries(
        entries_per_table=entries_per_table,
        start=start,
        count=count,
        slot=_concat([p.slot for p in parts], np.int64),
        key=_concat([p.key for p in parts], np.uint64),
        host_bytes=_concat([p.host_bytes for p in parts], np.int64),
        table_host_bytes=_concat([p.table_host_bytes for p in parts], np.int64),
        table_guest_bytes=_concat([p.table_guest_bytes for p in parts], np.int64),
    )


def _resolve_parents(
    layout: Qcow2Layout,
    parents: Mapping[str, str | None] | None,
    current: str | None,
    notes: list[str],
) -> tuple[list[int | None], int | None]:
    """Map each snapshot (and Now) to the index of its parent layer in the snapshot table."""
    index: dict[str, int] = {}
    for i, snap in enumerate(layout.snapshots):
        if snap.name in index:
            notes.append(f"Several snapshots are called {snap.name!r}; the first one is used.")
        index.setdefault(snap.name, i)
    if parents is None:
        chain: list[int | None] = [None, *range(len(layout.snapshots) - 1)]
        if current is None:
            return chain, len(layout.snapshots) - 1 if layout.snapshots else None
        return chain, _nearest_in_image(current, {}, index)

    result: list[int | None] = []
    for snap in layout.snapshots:
        if snap.name not in parents:
            notes.append(
                f"Snapshot {snap.name!r} is not in the snapshot tree; it is taken as a root."
            )
            result.append(None)
            continue
        result.append(_nearest_in_image(parents[snap.name], parents, index))
    now = _nearest_in_image(current, parents, index)
    return result, now


def _nearest_in_image(
    name: str | None, parents: Mapping[str, str | None], index: Mapping[str, int]
) -> int | None:
    """Walk up the caller's tree until a snapshot this image holds (a snapshot may skip a disk)."""
    seen: set[str] = set()
    while name is not None and name not in index:
        if name in seen:
            raise ValueError(f"the snapshot tree has a loop through {name!r}")
        seen.add(name)
        name = parents.get(name)
    return None if name is None else index[name]


def analyse(
    source: ByteSource,
    parents: Mapping[str, str | None] | None = None,
    current: str | None = None,
) -> Qcow2Usage:
    """Measure every internal snapshot's delta, exclusive and vmstate bytes, and Now's delta.

    ``parents`` maps each snapshot name to its parent's name (libvirt knows the tree, qcow2
    does not); names this image does not hold are skipped over towards the root.
    ``current`` names the snapshot the active layer descends from (None: an empty disk).
    Without ``parents`` the snapshots form a chain in table order and, unless ``current``
    is given, Now descends from the last one.

    Delta counts the host bytes of data clusters whose mapping differs from the parent
    layer's; exclusive counts the host bytes no other layer (Now included) references.
    Compressed clusters count the sectors they occupy; zero and unallocated clusters count
    nothing; with extended L2 entries only allocated subclusters count.
    """
    try:
        return _analyse(source, parents, current)
    except Qcow2Error as exc:
        _name_the_file(exc, source)
        raise


def _analyse(
    source: ByteSource,
    parents: Mapping[str, str | None] | None,
    current: str | None,
) -> Qcow2Usage:
    layout = read_layout(source)
    notes = list(layout.notes)
    parent_of, now_parent = _resolve_parents(layout, parents, current, notes)
    plan = _plan_layers(layout, parent_of, now_parent)
    sums = _Measure(source, layout, plan).run()
    if sums.stray:
        notes.append(
            f"{sums.stray} data clusters point past the end of the file (an image still being "
            "written, or damage); the sizes are approximate."
        )

    def totals(layer: int) -> Qcow2LayerUsage:
        data, vmstate = plan.layer_data[layer], plan.layer_vmstate[layer]
        return Qcow2LayerUsage(
            data_bytes=0 if data is None else int(sums.data_bytes[data]),
            guest_data_bytes=0 if data is None else int(sums.guest_bytes[data]),
            vmstate_bytes=0 if vmstate is None else int(sums.vmstate_bytes[vmstate]),
        )

    def delta(layer: int) -> int:
        pair = plan.layer_pair[layer]
        if pair is None:
            return 0
        kind, index = pair
        return int(sums.data_bytes[index] if kind == 1 else sums.pair_delta[index])

    def exclusive(layer: int) -> int:
        data = plan.layer_data[layer]
        return 0 if data is None else int(sums.exclusive_bytes[data])

    snapshot_usage: list[Qcow2SnapshotUsage] = []
    for i, snap in enumerate(layout.snapshots):
        parent_index = parent_of[i]
        layer_totals = totals(i + 1)
        snapshot_usage.append(
            Qcow2SnapshotUsage(
                id=snap.id,
                name=snap.name,
                parent=None if parent_index is None else layout.snapshots[parent_index].name,
                delta_bytes=delta(i + 1),
                exclusive_bytes=exclusive(i + 1),
                vmstate_bytes=layer_totals.vmstate_bytes,
                vm_state_size=snap.vm_state_size,
                layer=layer_totals,
            )
        )
    return Qcow2Usage(
        layout=layout,
        snapshots=tuple(snapshot_usage),
        now=totals(0),
        now_parent=None if now_parent is None else layout.snapshots[now_parent].name,
        now_delta_bytes=delta(0),
        now_exclusive_bytes=exclusive(0),
        approximate=layout.approximate or sums.stray > 0,
        notes=tuple(notes),
    )
