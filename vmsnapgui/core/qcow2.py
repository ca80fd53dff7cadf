"""Read-only qcow2 reader: header, snapshot table, cluster maps, and per-snapshot delta sizes.

Internal snapshots live inside one qcow2 file. Each snapshot, and the active layer ("Now"),
has its own L1 table; L2 tables and data clusters are shared between layers until a write
copies them. Comparing the guest-to-host cluster maps of two layers tells how much data
changed between them, and counting which layers reference each host cluster tells what
deleting a snapshot would free. See DESIGN.md, "Delta sizes".

The reader never writes and takes no lock. It reads through a :class:`ByteSource` in a
handful of batched phases (header, snapshot table, all L1 tables, all L2 tables) so that a
remote source pays a few round trips, not one per table. Everything a header claims is
checked against the file size and fixed limits before anything is allocated; a file that
does not hold up raises :class:`Qcow2Error` with a sentence a user can read.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
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
# The most table bytes one analysis will hold in memory. A 1 TiB image fully written with
# 64 KiB clusters needs 128 MiB of L2 tables per distinct layer, so this leaves room.
MAX_TABLE_BYTES: Final = 1024 * 1024 * 1024

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


@dataclass(frozen=True)
class _Layer:
    """One layer's L1 table as indices into the decoded L2 tables (-1: no table)."""

    tables: _I64
    vm_state_index: int

    @property
    def data(self) -> _I64:
        return self.tables[: self.vm_state_index]

    @property
    def vmstate(self) -> _I64:
        return self.tables[self.vm_state_index :]


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
        # A dense count is one pass, but needs a slot per host cluster: use it only while
        # that is about the file's size (a damaged entry can point anywhere).
        dense_limit = min(1 << 24, 2 * (file_size >> cluster_bits) + 1024)
        if int(cluster.max()) < dense_limit:
            by_cluster: _I64 = np.bincount(cluster)[cluster]
            return by_cluster
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    by_key: _I64 = counts[inverse.ravel()]
    return by_key


def _read_l1_tables(source: ByteSource, layout: Qcow2Layout) -> list[_U64]:
    """Read the active and every snapshot L1 table in one batch; return their L2 offsets."""
    specs = [(layout.l1_table_offset, layout.l1_size)] + [
        (s.l1_table_offset, s.l1_size) for s in layout.snapshots
    ]
    distinct = sorted({spec for spec in specs if spec[1] > 0})
    total = sum(size * 8 for _, size in distinct)
    # Real L1 tables never overlap, so together they fit in the file; a header that says
    # otherwise would make us read the same bytes over and over.
    if total > layout.file_size or total > MAX_TABLE_BYTES:
        raise Qcow2Error("The image is corrupt: its L1 tables add up to more than the file holds.")
    raws = source.read_many([(offset, size * 8) for offset, size in distinct])
    decoded: dict[tuple[int, int], _U64] = {}
    for (offset, size), raw in zip(distinct, raws, strict=True):
        if len(raw) != size * 8:
            raise Qcow2Error(
                f"The image is truncated: the L1 table at offset {offset} "
                "lies beyond the end of the file."
            )
        decoded[(offset, size)] = np.frombuffer(raw, dtype=">u8").astype(np.uint64) & np.uint64(
            _L1_OFFSET_MASK
        )
    empty = np.zeros(0, np.uint64)
    return [decoded.get(spec, empty) if spec[1] > 0 else empty for spec in specs]


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

    l1_offsets = _read_l1_tables(source, layout)
    all_offsets = np.concatenate(l1_offsets) if l1_offsets else np.zeros(0, np.uint64)
    used = all_offsets[all_offsets != 0]
    distinct_offsets: _U64 = np.unique(used)
    cluster_size = layout.cluster_size
    if np.any(distinct_offsets & np.uint64(cluster_size - 1)):
        raise Qcow2Error("The image is corrupt: an L2 table offset is not cluster-aligned.")
    if len(distinct_offsets) and int(distinct_offsets[-1]) + cluster_size > layout.file_size:
        raise Qcow2Error(
            f"The image is truncated: the L2 table at offset {int(distinct_offsets[-1])} "
            "lies beyond the end of the file."
        )
    if len(distinct_offsets) * cluster_size > MAX_TABLE_BYTES:
        raise Qcow2Error(
            f"The image's L2 tables take {len(distinct_offsets) * cluster_size >> 20} MiB, "
            "more than this version analyses at once."
        )

    layers: list[_Layer] = []
    disk_sizes = [layout.virtual_size] + [s.disk_size for s in layout.snapshots]
    for offsets, disk_size in zip(l1_offsets, disk_sizes, strict=True):
        tables = np.searchsorted(distinct_offsets, offsets).astype(np.int64)
        tables[offsets == 0] = -1
        vm_index = min(layout.l1_vm_state_index(disk_size), len(tables))
        layers.append(_Layer(tables=tables, vm_state_index=vm_index))

    raw_tables = source.read_many([(int(o), cluster_size) for o in distinct_offsets.tolist()])
    l2, stray = _decode_l2_tables(layout, raw_tables, distinct_offsets)
    if stray:
        notes.append(
            f"{stray} data clusters point past the end of the file (an image still being "
            "written, or damage); the sizes are approximate."
        )
    n_tables = len(distinct_offsets)

    # How many layers reference each L2 table's disk data. A data cluster is exclusive to
    # a layer when a single entry of a single table holds it and only that layer's L1
    # table names that table.
    data_refs = [layer.data[layer.data >= 0] for layer in layers]
    table_weight = np.bincount(np.concatenate(data_refs), minlength=n_tables)
    entry_table = np.repeat(np.arange(n_tables, dtype=np.int64), l2.count)
    exclusive = (table_weight[entry_table] == 1) & (
        _entries_per_key(l2.key, layout.cluster_bits, layout.file_size) == 1
    )
    table_exclusive_bytes = _segment_sums(np.where(exclusive, l2.host_bytes, 0), l2.start)

    def totals(layer: _Layer, refs: _I64) -> Qcow2LayerUsage:
        vm = layer.vmstate[layer.vmstate >= 0]
        return Qcow2LayerUsage(
            data_bytes=int(l2.table_host_bytes[refs].sum()),
            guest_data_bytes=int(l2.table_guest_bytes[refs].sum()),
            vmstate_bytes=int(l2.table_host_bytes[vm].sum()),
        )

    def delta(child: _Layer, parent: _Layer | None) -> int:
        own = child.data
        if parent is None:
            return int(l2.table_host_bytes[own[own >= 0]].sum())
        other = np.full(len(own), -1, dtype=np.int64)
        shared = min(len(own), len(parent.data))
        other[:shared] = parent.data[:shared]
        # Where both L1 entries name the same L2 table nothing below it changed; where the
        # parent has no table at all, everything below the child's is new.
        differs = (own != other) & (own >= 0)
        fresh = differs & (other < 0)
        total = int(l2.table_host_bytes[own[fresh]].sum())
        both = np.flatnonzero(differs & ~fresh)
        guest, key, size = l2.gather(both, own[both])
        p_guest, p_key, _ = l2.gather(both, other[both])
        if len(p_guest) == 0:
            return total + int(size.sum())
        pos = np.minimum(np.searchsorted(p_guest, guest), len(p_guest) - 1)
        same = (p_guest[pos] == guest) & (p_key[pos] == key)
        return total + int(size[~same].sum())

    active, snapshot_layers = layers[0], layers[1:]
    snapshot_usage: list[Qcow2SnapshotUsage] = []
    for i, (snap, layer) in enumerate(zip(layout.snapshots, snapshot_layers, strict=True)):
        parent_index = parent_of[i]
        refs = data_refs[i + 1]
        parent_layer = None if parent_index is None else snapshot_layers[parent_index]
        layer_totals = totals(layer, refs)
        snapshot_usage.append(
            Qcow2SnapshotUsage(
                id=snap.id,
                name=snap.name,
                parent=None if parent_index is None else layout.snapshots[parent_index].name,
                delta_bytes=delta(layer, parent_layer),
                exclusive_bytes=int(table_exclusive_bytes[refs].sum()),
                vmstate_bytes=layer_totals.vmstate_bytes,
                vm_state_size=snap.vm_state_size,
                layer=layer_totals,
            )
        )
    now_layer = None if now_parent is None else snapshot_layers[now_parent]
    return Qcow2Usage(
        layout=layout,
        snapshots=tuple(snapshot_usage),
        now=totals(active, data_refs[0]),
        now_parent=None if now_parent is None else layout.snapshots[now_parent].name,
        now_delta_bytes=delta(active, now_layer),
        now_exclusive_bytes=int(table_exclusive_bytes[data_refs[0]].sum()),
        approximate=layout.approximate or stray > 0,
        notes=tuple(notes),
    )
