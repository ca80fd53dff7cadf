"""Build real qcow2 images with qemu-img and qemu-io for the qcow2 reader's tests.

Every command is an argv list (never a shell). Helpers raise ``AssertionError`` with the
tool's output when a command fails, so a broken fixture reads as such, not as a wrong size.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

KIB = 1024
MIB = 1024 * KIB

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
QEMU_SYSTEM = shutil.which("qemu-system-x86_64")


def run(argv: list[str], timeout: float = 60) -> str:
    """Run a command, fail loudly with its output, return its stdout."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{argv!r} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done.stdout


def create(path: Path, size: int | str, **options: str | int) -> Path:
    """``qemu-img create -f qcow2 -o key=value,... path size``."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if options:
        argv += ["-o", ",".join(f"{key}={value}" for key, value in options.items())]
    run([*argv, str(path), str(size)])
    return path


def io(path: Path, *commands: str, options: tuple[str, ...] = ()) -> None:
    """Run qemu-io commands (``write -P 0xab 0 4M``) on the image in one process."""
    argv = ["qemu-io", "-f", "qcow2", *options]
    for command in commands:
        argv += ["-c", command]
    out = run([*argv, str(path)])
    # qemu-io reports failed commands on stdout and still exits 0.
    if "failed" in out or "error" in out.lower():
        raise AssertionError(f"qemu-io {commands!r}: {out}")


def snapshot(path: Path, name: str) -> None:
    """Take an internal snapshot of the (stopped) image."""
    run(["qemu-img", "snapshot", "-c", name, str(path)])


def apply(path: Path, name: str) -> None:
    """Revert the active layer to a snapshot."""
    run(["qemu-img", "snapshot", "-a", name, str(path)])


def info(path: Path) -> dict[str, Any]:
    """``qemu-img info --output=json``."""
    result: dict[str, Any] = json.loads(
        run(["qemu-img", "info", "--force-share", "--output=json", str(path)])
    )
    return result


def mapped_data_bytes(path: Path) -> int:
    """Guest bytes that hold data in the active layer, as ``qemu-img map`` sees them."""
    extents = json.loads(run(["qemu-img", "map", "--output=json", str(path)]))
    return sum(e["length"] for e in extents if e["data"] and not e["zero"])


def layer_data_bytes(path: Path, name: str | None, scratch: Path) -> int:
    """``mapped_data_bytes`` of a snapshot's layer: map a copy reverted to it."""
    if name is None:
        return mapped_data_bytes(path)
    copy = scratch / f"map-{name}.qcow2"
    shutil.copyfile(path, copy)
    apply(copy, name)
    try:
        return mapped_data_bytes(copy)
    finally:
        copy.unlink()


def mapped_clusters(path: Path, cluster_size: int) -> dict[int, tuple[int, int]]:
    """Guest cluster -> (host cluster, data bytes) of the active layer, from ``qemu-img map``.

    Every guest cluster QEMU gives a host offset counts, zero ones too (they still pin their
    host cluster), with the bytes it reports as data. Compressed clusters have no offset in
    the map, so images measured this way must have none.
    """
    extents = json.loads(run(["qemu-img", "map", "--output=json", str(path)]))
    clusters: dict[int, tuple[int, int]] = {}
    for extent in extents:
        if "offset" not in extent:
            assert not (extent["data"] and extent["present"]), f"compressed data: {extent}"
            continue
        start, end = extent["start"], extent["start"] + extent["length"]
        for guest in range(start // cluster_size, -(-end // cluster_size)):
            low = max(start, guest * cluster_size)
            high = min(end, (guest + 1) * cluster_size)
            host = (extent["offset"] + low - start) // cluster_size
            previous_host, data = clusters.get(guest, (host, 0))
            assert previous_host == host, f"guest cluster {guest} in two host clusters"
            clusters[guest] = (host, data + (high - low if extent["data"] else 0))
    return clusters


def layer_clusters(
    path: Path, name: str | None, scratch: Path, cluster_size: int
) -> dict[int, tuple[int, int]]:
    """``mapped_clusters`` of a snapshot's layer (a copy reverted to it), or of Now (None)."""
    if name is None:
        return mapped_clusters(path, cluster_size)
    copy = scratch / f"clusters-{name}.qcow2"
    shutil.copyfile(path, copy)
    apply(copy, name)
    try:
        return mapped_clusters(copy, cluster_size)
    finally:
        copy.unlink()


def sizes_from_maps(
    maps: dict[str | None, dict[int, tuple[int, int]]], parents: dict[str | None, str | None]
) -> dict[str | None, tuple[int, int, int]]:
    """(data, delta, exclusive) bytes of every layer (None: Now), from the layers' maps alone.

    Delta: the data of guest clusters the layer maps to another host cluster than its
    parent does (``parents[layer]``; None: an empty disk). Exclusive: the data of host
    clusters that one guest cluster of one layer maps, and nothing else.
    """
    references: dict[int, int] = {}
    for clusters in maps.values():
        for host, _ in clusters.values():
            references[host] = references.get(host, 0) + 1
    sizes: dict[str | None, tuple[int, int, int]] = {}
    for layer, clusters in maps.items():
        parent = parents[layer]
        before = {} if parent is None else maps[parent]
        sizes[layer] = (
            sum(data for _, data in clusters.values()),
            sum(
                data
                for guest, (host, data) in clusters.items()
                if guest not in before or before[guest][0] != host
            ),
            sum(data for host, data in clusters.values() if references[host] == 1),
        )
    return sizes


def copy_with(path: Path, target: Path, patches: dict[int, bytes]) -> Path:
    """Copy an image and overwrite bytes at the given offsets in the copy."""
    data = bytearray(path.read_bytes())
    for offset, value in patches.items():
        data[offset : offset + len(value)] = value
    target.write_bytes(bytes(data))
    return target


def header_field(path: Path, offset: int, fmt: str) -> int:
    """One big-endian header field (``>Q`` at 72 is the incompatible feature bits)."""
    with path.open("rb") as f:
        f.seek(offset)
        raw = f.read(struct.calcsize(fmt))
    value: int = struct.unpack(fmt, raw)[0]
    return value


def savevm(path: Path, name: str) -> None:
    """Save a VM state snapshot with QEMU's monitor (``qemu-img`` cannot write a vmstate)."""
    assert QEMU_SYSTEM is not None
    done = subprocess.run(
        [
            QEMU_SYSTEM,
            "-machine",
            "none",
            "-m",
            "16",
            "-nodefaults",
            "-display",
            "none",
            "-drive",
            f"file={path},if=none,id=d0,format=qcow2",
            "-monitor",
            "stdio",
        ],
        input=f"savevm {name}\nquit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 or "Error" in done.stdout:
        raise AssertionError(f"savevm failed: {done.stdout}{done.stderr}")


def compressed_sector_bytes(path: Path) -> int:
    """An independent, plain-struct sum over the active layer's compressed L2 entries.

    Counts 512-byte sectors as the qcow2 specification defines them: the sector holding
    the offset plus the "additional sectors" field. Used to check the numpy reader.
    """
    data = path.read_bytes()
    cluster_bits = struct.unpack_from(">I", data, 20)[0]
    l1_size, l1_offset = struct.unpack_from(">IQ", data, 36)
    cluster_size = 1 << cluster_bits
    shift = 62 - (cluster_bits - 8)
    total = 0
    for i in range(l1_size):
        l2 = struct.unpack_from(">Q", data, l1_offset + 8 * i)[0] & 0x00FF_FFFF_FFFF_FE00
        if not l2:
            continue
        for j in range(cluster_size // 8):
            entry = struct.unpack_from(">Q", data, l2 + 8 * j)[0]
            if entry >> 62 & 1:
                extra = entry >> shift & ((1 << (cluster_bits - 8)) - 1)
                total += (extra + 1) * 512
    return total


# ------------------------------------------------------------------ images written by hand
#
# Shapes that qemu-img cannot make quickly (or at all): terabytes of preallocated metadata
# in a second, or many snapshot entries sharing one L1 table. The files are sparse: only
# the header, the tables and the snapshot table take disk space. Refcounts are left empty,
# as the reader never looks at them (QEMU still opens such a file read-only).

_SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")
COPIED = 1 << 63
"""The "copied" flag of L1 and L2 entries: refcount 1, the table or cluster is not shared."""


def snapshot_table(entries: list[tuple[str, int, int, int]]) -> bytes:
    """A v3 snapshot table of ``(name, l1_offset, l1_size, disk_size)`` entries, ids 1, 2, …"""
    table = bytearray()
    for number, (name, l1_offset, l1_size, disk_size) in enumerate(entries, start=1):
        ident, label = str(number).encode(), name.encode()
        # Extra data: the 64-bit vmstate size (none) and the disk size when taken.
        extra = struct.pack(">QQ", 0, disk_size)
        table += _SNAPSHOT_ENTRY.pack(
            l1_offset, l1_size, len(ident), len(label), 1_700_000_000 + number, 0, 0, 0,
            len(extra),
        )  # fmt: skip
        table += extra + ident + label
        table += bytes(-len(table) % 8)
    return bytes(table)


def write_image(
    path: Path,
    *,
    cluster_bits: int,
    virtual_size: int,
    l1: tuple[int, int],
    snapshots: list[tuple[str, int, int, int]],
    snapshots_offset: int,
    pieces: dict[int, bytes],
    size: int,
) -> Path:
    """Write a v3 qcow2 header, a snapshot table and ``pieces`` at their offsets, sparsely.

    ``l1`` is the active layer's ``(offset, entries)``; the refcount table is the empty
    cluster after the header. The file is ``size`` bytes long, holes where nothing is written.
    """
    cluster = 1 << cluster_bits
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb", 3, 0, 0, cluster_bits, virtual_size, 0, l1[1], l1[0], cluster, 1,
        len(snapshots), snapshots_offset if snapshots else 0, 0, 0, 0, 4, 104,
    )  # fmt: skip
    with path.open("wb") as f:
        f.truncate(size)
        f.write(header + bytes(8))  # the header, then the end of its (no) extensions
        if snapshots:
            f.seek(snapshots_offset)
            f.write(snapshot_table(snapshots))
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    return path


def shared_l1_image(path: Path, snapshots: int, l1_entries: int) -> Path:
    """``snapshots`` entries and the active layer all on one L1 table of ``l1_entries``.

    Every L1 entry names the same L2 table, and that table maps all its guest clusters to
    distinct host clusters: each layer maps ``l1_entries`` times 512 MiB of data (64 KiB
    clusters). Unusual, but nothing in it is out of bounds. About 33 MiB on disk.
    """
    cluster_bits, cluster = 16, 64 * KIB
    per_table = cluster // 8
    l2_offset, snapshots_offset, l1_offset = 2 * cluster, 3 * cluster, 4 * cluster
    table_bytes = -(-snapshots * 64 // cluster) * cluster
    l1_offset = max(l1_offset, snapshots_offset + table_bytes)
    data_offset = l1_offset + -(-l1_entries * 8 // cluster) * cluster
    virtual_size = l1_entries * per_table * cluster
    l2 = struct.pack(f">{per_table}Q", *(data_offset + i * cluster for i in range(per_table)))
    l1 = struct.pack(">Q", l2_offset) * l1_entries
    names = [(f"s{i}", l1_offset, l1_entries, virtual_size) for i in range(1, snapshots + 1)]
    return write_image(
        path,
        cluster_bits=cluster_bits,
        virtual_size=virtual_size,
        l1=(l1_offset, l1_entries),
        snapshots=names,
        snapshots_offset=snapshots_offset,
        pieces={l2_offset: l2, l1_offset: l1},
        size=data_offset + per_table * cluster,
    )


def preallocated_image(
    path: Path, virtual_size: int, snapshots: list[str], rewritten: int = 0
) -> Path:
    """What ``qemu-img create -o preallocation=metadata``, ``snapshot -c`` and a write make.

    The same layout: header, refcount table, L1 table, then each L2 table followed by the
    8192 data clusters it maps (64 KiB clusters); each snapshot gets a copy of the L1
    table, so every L2 table and data cluster is shared and none keeps its copied flag.
    Then the active layer rewrites its first ``rewritten`` clusters as a write after the
    snapshots would: a copy of the first L2 table, pointing at that many new clusters.
    About ``virtual_size / 8192`` bytes on disk (the L2 tables).
    """
    cluster_bits, cluster = 16, 64 * KIB
    per_table = cluster // 8
    span = per_table * cluster
    tables = -(-virtual_size // span)
    l1_offset = 3 * cluster
    first_l2 = l1_offset + -(-tables * 8 // cluster) * cluster
    stride = (per_table + 1) * cluster
    flag = np.uint64(0 if snapshots else COPIED)
    l2_offsets = first_l2 + stride * np.arange(tables, dtype=np.uint64)
    l1 = (l2_offsets | flag).astype(">u8")
    end = first_l2 + tables * stride
    pieces: dict[int, bytes] = {}
    steps = np.arange(1, per_table + 1, dtype=np.uint64) * np.uint64(cluster)
    for offset in l2_offsets.tolist():
        # Data cluster i of the table at ``offset`` lies at ``offset + (i + 1) * cluster``.
        pieces[offset] = ((steps + np.uint64(offset)) | flag).astype(">u8").tobytes()
    entries = []
    for name in snapshots:
        pieces[end] = l1.tobytes()
        entries.append((name, end, tables, virtual_size))
        end += -(-len(pieces[end]) // cluster) * cluster
    active = l1.copy()
    if rewritten:
        copy = np.frombuffer(pieces[first_l2], dtype=">u8").copy()
        copy[:rewritten] = (end + cluster * np.arange(1, rewritten + 1, dtype=np.uint64)) | COPIED
        pieces[end] = copy.tobytes()
        active[0] = end | COPIED
        end += (rewritten + 1) * cluster
    pieces[l1_offset] = active.tobytes()
    return write_image(
        path,
        cluster_bits=cluster_bits,
        virtual_size=virtual_size,
        l1=(l1_offset, tables),
        snapshots=entries,
        snapshots_offset=end,
        pieces=pieces,
        size=end + cluster,
    )


def many_l1_image(path: Path, snapshots: int) -> Path:
    """A 128 GiB disk with 512-byte clusters, whose L1 tables take the most QEMU allows
    (32 MiB), and ``snapshots`` snapshots in a chain: far more L1 bytes than any buffer.

    Every layer maps guest cluster 0 through one shared L2 table; snapshot ``i`` also maps
    one cluster of its own under L1 entry ``(i + 1) * 400_000``, through an L2 table of its
    own; the active layer maps only the shared cluster. The L1 tables are holes apart from
    those entries, so the file is about ``(snapshots + 1) * 32 MiB`` long but takes a few
    KiB on disk.
    """
    cluster_bits, cluster = 9, 512
    l1_entries = 32 * MIB // 8
    virtual_size = l1_entries * (cluster // 8) * cluster
    l1_bytes = 8 * l1_entries
    l1_of = [64 * KIB + layer * l1_bytes for layer in range(snapshots + 1)]  # Now first
    tables = l1_of[-1] + l1_bytes
    shared_l2, shared_data = tables, tables + cluster
    pieces = {
        shared_l2: struct.pack(">Q", shared_data | COPIED),
        shared_data: b"\xab" * cluster,
    }
    for layer in range(snapshots + 1):
        pieces[l1_of[layer]] = struct.pack(">Q", shared_l2)
    for number in range(snapshots):
        own_l2 = tables + (2 + 2 * number) * cluster
        pieces[own_l2] = struct.pack(">Q", (own_l2 + cluster) | COPIED)
        pieces[own_l2 + cluster] = bytes([number + 1]) * cluster
        pieces[l1_of[number + 1] + 8 * (number + 1) * 400_000] = struct.pack(">Q", own_l2 | COPIED)
    entries = [
        (f"s{number}", l1_of[number + 1], l1_entries, virtual_size) for number in range(snapshots)
    ]
    end = tables + (2 + 2 * snapshots) * cluster
    return write_image(
        path,
        cluster_bits=cluster_bits,
        virtual_size=virtual_size,
        l1=(l1_of[0], l1_entries),
        snapshots=entries,
        snapshots_offset=2 * cluster,
        pieces=pieces,
        size=end,
    )
