"""The qcow2 reader against real images built with qemu-img and qemu-io, with exact sizes.

Sizes are in host bytes, cluster-rounded: with 64 KiB clusters a 4 MiB write allocates 64
clusters. Each layer's data total is also cross-checked against ``qemu-img map`` of that
layer (a copy reverted to the snapshot), which reads the same maps with QEMU's own code.
"""

from __future__ import annotations

import os
import pickle
import random
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from tests.unit.core.qcow2_images import (
    KIB,
    MIB,
    QEMU_IMG,
    QEMU_IO,
    QEMU_SYSTEM,
    apply,
    compressed_sector_bytes,
    copy_with,
    create,
    header_field,
    info,
    io,
    layer_clusters,
    layer_data_bytes,
    many_l1_image,
    mapped_data_bytes,
    preallocated_image,
    run,
    savevm,
    shared_l1_image,
    sizes_from_maps,
    snapshot,
    write_image,
)
from vmsnapgui.core import qcow2
from vmsnapgui.core.byte_source import (
    BytesByteSource,
    ByteSource,
    FileByteSource,
    coalesce_ranges,
)
from vmsnapgui.core.qcow2 import Qcow2Error, Qcow2Usage, analyse, read_layout

pytestmark = pytest.mark.skipif(
    QEMU_IMG is None or QEMU_IO is None, reason="needs qemu-img and qemu-io"
)

CLUSTER = 64 * KIB
INCOMPATIBLE_FEATURES = 72


def analyse_file(
    path: Path, parents: Mapping[str, str | None] | None = None, current: str | None = None
) -> Qcow2Usage:
    with FileByteSource(path) as source:
        return analyse(source, parents, current)


def assert_layers_match_qemu_map(path: Path, usage: Qcow2Usage, scratch: Path) -> None:
    """Every layer's guest data equals what qemu-img map reports for that layer."""
    assert usage.now.guest_data_bytes == mapped_data_bytes(path)
    for snap in usage.snapshots:
        assert snap.layer.guest_data_bytes == layer_data_bytes(path, snap.name, scratch), snap.name


@pytest.fixture
def linear_image(tmp_path: Path) -> Path:
    """4 MiB -> s1 -> 1 MiB over the start and 2 MiB at 64 MiB -> s2 -> 64 KiB over the start."""
    image = create(tmp_path / "linear.qcow2", "1G")
    io(image, "write -P 0xab 0 4M")
    snapshot(image, "s1")
    io(image, "write -P 0xcd 0 1M", "write -P 0xcd 64M 2M")
    snapshot(image, "s2")
    io(image, "write -P 0xef 0 64k")
    return image


# ------------------------------------------------------------------ deltas and exclusives


def test_linear_chain_reports_delta_exclusive_and_now_exactly(
    linear_image: Path, tmp_path: Path
) -> None:
    usage = analyse_file(linear_image)
    s1, s2 = usage.snapshot("s1"), usage.snapshot("s2")
    # s1 wrote 4 MiB on an empty disk; s2 replaced the first MiB and added 2 MiB.
    assert (s1.delta_bytes, s2.delta_bytes) == (4 * MIB, 3 * MIB)
    # s1's original first MiB is held by no later layer; s2's new first 64 KiB cluster was
    # overwritten by Now, so only s2 still holds it.
    assert (s1.exclusive_bytes, s2.exclusive_bytes) == (1 * MIB, 64 * KIB)
    assert (usage.now_delta_bytes, usage.now_exclusive_bytes) == (64 * KIB, 64 * KIB)
    assert (s1.layer.data_bytes, s2.layer.data_bytes, usage.now.data_bytes) == (
        4 * MIB,
        6 * MIB,
        6 * MIB,
    )
    assert (s1.vmstate_bytes, s1.vm_state_size) == (0, 0)
    assert not usage.approximate
    assert usage.notes == ()
    assert_layers_match_qemu_map(linear_image, usage, tmp_path)


def test_without_a_tree_snapshots_form_a_chain_in_table_order_and_now_follows_the_last(
    linear_image: Path,
) -> None:
    usage = analyse_file(linear_image)
    assert [(s.name, s.parent) for s in usage.snapshots] == [("s1", None), ("s2", "s1")]
    assert usage.now_parent == "s2"


def test_now_without_a_current_snapshot_is_measured_against_an_empty_disk(
    linear_image: Path,
) -> None:
    usage = analyse_file(linear_image, parents={"s1": None, "s2": "s1"}, current=None)
    assert usage.now_parent is None
    assert usage.now_delta_bytes == 6 * MIB


@pytest.fixture
def branched_image(tmp_path: Path) -> Path:
    """s1 (4 MiB) has two children: s2 rewrote the first MiB and added 1 MiB at 8 MiB;
    s3, taken after reverting to s1, added 2 MiB at 16 MiB. Now adds 64 KiB at 32 MiB."""
    image = create(tmp_path / "branched.qcow2", "1G")
    io(image, "write -P 0x11 0 4M")
    snapshot(image, "s1")
    io(image, "write -P 0x22 0 1M", "write -P 0x22 8M 1M")
    snapshot(image, "s2")
    apply(image, "s1")
    io(image, "write -P 0x33 16M 2M")
    snapshot(image, "s3")
    io(image, "write -P 0x44 32M 64k")
    return image


def test_branches_measure_each_delta_against_the_parent_the_tree_gives(
    branched_image: Path, tmp_path: Path
) -> None:
    usage = analyse_file(branched_image, parents={"s1": None, "s2": "s1", "s3": "s1"}, current="s3")
    s1, s2, s3 = (usage.snapshot(name) for name in ("s1", "s2", "s3"))
    assert (s1.delta_bytes, s2.delta_bytes, s3.delta_bytes) == (4 * MIB, 2 * MIB, 2 * MIB)
    assert (s2.parent, s3.parent, usage.now_parent) == ("s1", "s1", "s3")
    # s1's clusters live on in s3 and Now; s2's two new MiB are on a dead branch.
    assert (s1.exclusive_bytes, s2.exclusive_bytes, s3.exclusive_bytes) == (0, 2 * MIB, 0)
    assert (usage.now_delta_bytes, usage.now_exclusive_bytes) == (64 * KIB, 64 * KIB)
    assert_layers_match_qemu_map(branched_image, usage, tmp_path)


def test_a_wrong_parent_changes_the_delta_so_the_tree_matters(branched_image: Path) -> None:
    # As a chain, s3 is compared with s2, whose first MiB differs from s1's.
    usage = analyse_file(branched_image)
    assert usage.snapshot("s3").delta_bytes == 3 * MIB


def test_snapshots_missing_from_this_disk_are_skipped_towards_the_root(
    branched_image: Path,
) -> None:
    # "ext" stands for a snapshot that did not include this disk (e.g. external).
    parents = {"s1": None, "ext": "s1", "s2": "ext", "s3": "s1", "later": "s3"}
    usage = analyse_file(branched_image, parents=parents, current="later")
    assert usage.snapshot("s2").parent == "s1"
    assert usage.snapshot("s2").delta_bytes == 2 * MIB
    assert usage.now_parent == "s3"


def test_a_snapshot_unknown_to_the_tree_is_a_root_with_a_note(branched_image: Path) -> None:
    usage = analyse_file(branched_image, parents={"s1": None, "s2": "s1"}, current="s2")
    s3 = usage.snapshot("s3")
    assert (s3.parent, s3.delta_bytes) == (None, 6 * MIB)
    assert any("'s3'" in note for note in usage.notes)
    assert not usage.approximate


def test_a_loop_in_the_callers_tree_is_a_programming_error(branched_image: Path) -> None:
    with pytest.raises(ValueError, match="loop"):
        analyse_file(branched_image, parents={"s1": "x", "x": "y", "y": "x"}, current=None)


def test_zero_writes_hold_no_data_but_keep_the_clusters_they_do_not_unmap(tmp_path: Path) -> None:
    image = create(tmp_path / "zero.qcow2", "64M")
    io(image, "write -P 0xab 0 1M")
    snapshot(image, "s1")
    # Without unmap QEMU keeps the host cluster under the zero flag; with it, frees it.
    io(image, "write -z 0 256k")
    io(image, "write -z -u 256k 256k", options=("-d", "unmap"))
    snapshot(image, "s2")
    usage = analyse_file(image)
    s1, s2 = usage.snapshot("s1"), usage.snapshot("s2")
    assert (s2.delta_bytes, s2.layer.data_bytes) == (0, 512 * KIB)
    # Only the unmapped quarter is s1's alone: zero clusters still pin the first one.
    assert s1.exclusive_bytes == 256 * KIB
    assert usage.now_delta_bytes == 0
    assert_layers_match_qemu_map(image, usage, tmp_path)


def test_discarded_clusters_count_nothing_and_leave_the_old_copy_to_the_snapshot(
    tmp_path: Path,
) -> None:
    image = create(tmp_path / "discard.qcow2", "64M")
    io(image, "write -P 0xab 0 1M")
    snapshot(image, "s1")
    io(image, "discard 0 256k", options=("-d", "unmap"))
    snapshot(image, "s2")
    usage = analyse_file(image)
    assert usage.snapshot("s2").delta_bytes == 0
    assert usage.snapshot("s2").layer.data_bytes == 768 * KIB
    assert usage.snapshot("s1").exclusive_bytes == 256 * KIB
    assert_layers_match_qemu_map(image, usage, tmp_path)


# ------------------------------------------------------------------ compressed clusters


@pytest.mark.parametrize(
    ("compression", "extended_l2"), [("zlib", "off"), ("zstd", "off"), ("zlib", "on")]
)
def test_a_single_compressed_cluster_counts_the_one_sector_it_occupies(
    tmp_path: Path, compression: str, extended_l2: str
) -> None:
    image = create(
        tmp_path / "one.qcow2", "64M", compression_type=compression, extended_l2=extended_l2
    )
    # 64 KiB of one byte compresses to far less than a sector, written at a cluster start.
    io(image, "write -c -P 0xab 0 64k")
    snapshot(image, "s1")
    usage = analyse_file(image)
    assert usage.layout.compression_type == compression
    assert usage.snapshot("s1").delta_bytes == 512
    assert usage.snapshot("s1").layer.guest_data_bytes == 64 * KIB


def test_compressed_clusters_count_their_compressed_host_bytes(tmp_path: Path) -> None:
    plain = create(tmp_path / "plain.qcow2", "64M")
    io(plain, "write -P 0xab 0 1M", "write -P 0xcd 4M 1M")
    image = tmp_path / "compressed.qcow2"
    run(["qemu-img", "convert", "-c", "-O", "qcow2", str(plain), str(image)])
    snapshot(image, "s1")
    compressed_before = compressed_sector_bytes(image)
    io(image, "write -P 0xef 0 64k")
    compressed_after = compressed_sector_bytes(image)

    usage = analyse_file(image)
    s1 = usage.snapshot("s1")
    assert 32 * 512 <= compressed_before < 2 * MIB // 16
    assert s1.delta_bytes == s1.layer.data_bytes == compressed_before
    assert s1.layer.guest_data_bytes == 2 * MIB
    # Now replaced one compressed cluster with a plain one: that cluster is s1's alone.
    assert usage.now_delta_bytes == 64 * KIB
    assert usage.now.data_bytes == compressed_after + 64 * KIB
    assert s1.exclusive_bytes == compressed_before - compressed_after > 0
    assert_layers_match_qemu_map(image, usage, tmp_path)


# ------------------------------------------------------------------ extended L2 entries


def test_extended_l2_counts_allocated_subclusters_and_ignores_zero_ones(tmp_path: Path) -> None:
    image = create(tmp_path / "subclusters.qcow2", "64M", extended_l2="on")
    io(image, "write -P 0xab 0 4k")  # two 2 KiB subclusters of a fresh cluster
    snapshot(image, "s1")
    # Copy-on-write to a new cluster copies the subclusters from the cluster start up to
    # the write: 0-10 KiB. A fresh cluster gets just its one written subcluster; a zeroed
    # cluster only has zero bits.
    io(image, "write -P 0xcd 8k 2k", "write -P 0xcd 1M 2k", "write -z 2M 64k")
    usage = analyse_file(image)
    assert usage.layout.extended_l2 and usage.layout.subcluster_size == 2 * KIB
    s1 = usage.snapshot("s1")
    assert (s1.delta_bytes, s1.exclusive_bytes) == (4 * KIB, 4 * KIB)
    assert usage.now_delta_bytes == usage.now.data_bytes == 10 * KIB + 2 * KIB
    assert_layers_match_qemu_map(image, usage, tmp_path)


# ------------------------------------------------------------------ formats and cluster sizes


@pytest.mark.parametrize(
    ("cluster", "compat"),
    [(512, "1.1"), (4 * KIB, "1.1"), (64 * KIB, "1.1"), (2 * MIB, "1.1"), (64 * KIB, "0.10")],
    ids=["512B", "4KiB", "64KiB", "2MiB", "v2-64KiB"],
)
def test_cluster_sizes_and_versions_round_to_whole_clusters(
    tmp_path: Path, cluster: int, compat: str
) -> None:
    image = create(
        tmp_path / "sizes.qcow2", max(128 * cluster, MIB), cluster_size=cluster, compat=compat
    )
    io(image, f"write -P 0xab 0 {4 * cluster}")
    snapshot(image, "s1")
    io(image, f"write -P 0xcd 0 {cluster}", f"write -P 0xcd {64 * cluster} {2 * cluster}")
    snapshot(image, "s2")
    io(image, f"write -P 0xef 0 {cluster // 2}")  # half a cluster still takes a whole one
    usage = analyse_file(image)
    assert usage.layout.cluster_size == cluster
    assert usage.layout.version == (2 if compat == "0.10" else 3)
    s1, s2 = usage.snapshot("s1"), usage.snapshot("s2")
    assert (s1.delta_bytes, s2.delta_bytes, usage.now_delta_bytes) == (
        4 * cluster,
        3 * cluster,
        cluster,
    )
    assert (s1.exclusive_bytes, s2.exclusive_bytes, usage.now_exclusive_bytes) == (
        cluster,
        cluster,
        cluster,
    )
    assert_layers_match_qemu_map(image, usage, tmp_path)


def test_layout_reports_the_snapshot_table_as_qemu_img_info_does(linear_image: Path) -> None:
    with FileByteSource(linear_image) as source:
        layout = read_layout(source)
    described = info(linear_image)
    assert layout.virtual_size == described["virtual-size"] == 1024 * MIB
    assert layout.cluster_size == described["cluster-size"]
    assert [(s.id, s.name, s.date_sec, s.date_nsec, s.vm_state_size) for s in layout.snapshots] == [
        (s["id"], s["name"], s["date-sec"], s["date-nsec"], s["vm-state-size"])
        for s in described["snapshots"]
    ]
    assert all(s.disk_size == 1024 * MIB for s in layout.snapshots)
    assert layout.refcount_order == 4
    assert layout.compression_type == "zlib"
    assert layout.backing_file is None


def test_an_overlay_reports_its_backing_file_and_counts_only_its_own_data(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2", "64M")
    io(base, "write -P 0xab 0 8M")
    overlay = create(tmp_path / "overlay.qcow2", "64M", backing_file=str(base), backing_fmt="qcow2")
    io(overlay, "write -P 0xcd 1M 1M")
    usage = analyse_file(overlay)
    assert usage.layout.backing_file == str(base)
    assert usage.layout.backing_format == "qcow2"
    assert usage.now_delta_bytes == 1 * MIB


def test_an_external_data_file_is_read_with_a_note(tmp_path: Path) -> None:
    data = tmp_path / "data.raw"
    image = create(tmp_path / "external.qcow2", "16M", data_file=str(data))
    io(image, "write -P 0xab 0 1M")
    usage = analyse_file(image)
    assert usage.layout.data_file == str(data)
    assert usage.now_delta_bytes == 1 * MIB
    assert any("external data file" in note for note in usage.notes)
    assert not usage.approximate


# ------------------------------------------------------------------ vmstate


@pytest.mark.skipif(QEMU_SYSTEM is None, reason="needs qemu-system-x86_64")
def test_vmstate_is_counted_apart_from_disk_data(tmp_path: Path) -> None:
    image = create(tmp_path / "vm.qcow2", "64M")
    io(image, "write -P 0xab 0 1M")
    savevm(image, "with-ram")
    io(image, "write -P 0xcd 8M 64k")
    snapshot(image, "disk-only")
    usage = analyse_file(image)
    ram, disk_only = usage.snapshot("with-ram"), usage.snapshot("disk-only")
    logical = info(image)["snapshots"][0]["vm-state-size"]
    assert ram.vm_state_size == logical > 0
    # The vmstate is written from the first L1 index past the disk, cluster after cluster.
    assert ram.vmstate_bytes == -(-logical // CLUSTER) * CLUSTER
    assert (ram.delta_bytes, ram.layer.data_bytes) == (1 * MIB, 1 * MIB)
    assert ram.exclusive_bytes == 0
    assert (disk_only.vmstate_bytes, disk_only.vm_state_size) == (0, 0)
    assert disk_only.delta_bytes == 64 * KIB
    assert (usage.now.vmstate_bytes, usage.now_delta_bytes) == (0, 0)
    assert_layers_match_qemu_map(image, usage, tmp_path)


# ------------------------------------------------------------------ flags and refusals


def test_a_dirty_image_left_by_a_crash_gives_approximate_sizes(tmp_path: Path) -> None:
    image = create(tmp_path / "dirty.qcow2", "64M", lazy_refcounts="on")
    # qemu-io's "abort" kills it like a crash, after the flush wrote the L2 tables.
    argv = ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "flush", "-c", "abort"]
    assert subprocess.run([*argv, str(image)], capture_output=True).returncode != 0
    assert header_field(image, INCOMPATIBLE_FEATURES, ">Q") & 1
    usage = analyse_file(image)
    assert usage.approximate
    assert any("dirty" in note for note in usage.notes)
    assert usage.now_delta_bytes == 1 * MIB


def test_the_corrupt_bit_gives_approximate_sizes(linear_image: Path, tmp_path: Path) -> None:
    flags = header_field(linear_image, INCOMPATIBLE_FEATURES, ">Q") | 0b10
    copy = copy_with(
        linear_image, tmp_path / "c.qcow2", {INCOMPATIBLE_FEATURES: struct.pack(">Q", flags)}
    )
    usage = analyse_file(copy)
    assert usage.approximate
    assert any("corrupt" in note for note in usage.notes)
    assert usage.snapshot("s2").delta_bytes == 3 * MIB


def test_an_unknown_incompatible_feature_is_refused(linear_image: Path, tmp_path: Path) -> None:
    flags = header_field(linear_image, INCOMPATIBLE_FEATURES, ">Q") | 0x20
    copy = copy_with(
        linear_image, tmp_path / "u.qcow2", {INCOMPATIBLE_FEATURES: struct.pack(">Q", flags)}
    )
    with pytest.raises(Qcow2Error) as caught:
        analyse_file(copy)
    assert caught.value.message == (
        "The image uses qcow2 features this version cannot read (incompatible feature bits 0x20)."
    )
    assert caught.value.detail == f"qcow2 image {copy}: {caught.value.message}"


def test_unknown_features_are_named_from_the_feature_table_even_deep_in_a_large_header(
    tmp_path: Path,
) -> None:
    image = create(tmp_path / "big-clusters.qcow2", "64M", cluster_size="2M")
    data = bytearray(image.read_bytes())
    header_length = struct.unpack_from(">I", data, 100)[0]
    # Push QEMU's own extensions (feature name table included) past the first 64 KiB read.
    end = header_length
    while struct.unpack_from(">I", data, end)[0] != 0:
        end += 8 + (struct.unpack_from(">I", data, end + 4)[0] + 7) // 8 * 8
    original = bytes(data[header_length : end + 8])
    filler = struct.pack(">II", 0x1234ABCD, 70_000) + bytes(70_000)
    data[header_length : header_length + len(filler) + len(original)] = filler + original
    # Rename the table's entry for incompatible bit 0 ("dirty bit") to bit 5, and set bit 5.
    table = bytes(data).index(struct.pack(">I", 0x6803F857), header_length)
    entry = bytes(data).index(b"\0\0dirty bit", table)
    data[entry + 1] = 5
    data[INCOMPATIBLE_FEATURES : INCOMPATIBLE_FEATURES + 8] = struct.pack(">Q", 0x20)
    source = CountingSource(bytes(data))
    with pytest.raises(Qcow2Error) as caught:
        analyse(source)
    assert caught.value.message.endswith("(incompatible feature bits 0x20: dirty bit).")
    assert source.reads == 2  # the first 64 KiB, then the rest of the header cluster


def test_an_encrypted_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "luks.qcow2"
    argv = [
        "qemu-img", "create", "-q", "-f", "qcow2",
        "--object", "secret,id=sec0,data=123456",
        "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        str(image), "16M",
    ]  # fmt: skip
    for _attempt in range(20):
        # QEMU times its key derivation in CPU time and gives up when the machine is
        # busy ("Unable to get accurate CPU usage": a third of tries on 2 loaded CPUs).
        made = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if "Unable to get accurate CPU usage" not in made.stderr:
            break
    assert made.returncode == 0, made.stderr
    with pytest.raises(Qcow2Error) as caught:
        analyse_file(image)
    assert (
        caught.value.message == "The image is encrypted (LUKS); this version does not analyse it."
    )


@pytest.mark.parametrize(
    "content",
    [b"", b"QFI", b"\0" * 4096, b"#!/bin/sh\necho not an image\n", os.urandom(1000)],
    ids=["empty", "three-bytes", "zeros", "text", "random"],
)
def test_a_file_that_is_not_qcow2_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not.qcow2"
    path.write_bytes(content)
    with pytest.raises(Qcow2Error) as caught:
        analyse_file(path)
    assert caught.value.message == "The file is not a qcow2 image."


def test_a_truncated_image_names_the_table_past_the_end(tmp_path: Path) -> None:
    image = create(tmp_path / "whole.qcow2", "64M")
    io(image, "write -P 0xab 0 1M")
    l1_offset = header_field(image, 40, ">Q")
    l2_offset = header_field(image, l1_offset, ">Q") & 0x00FF_FFFF_FFFF_FE00
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(image.read_bytes()[:l2_offset])
    with pytest.raises(Qcow2Error) as caught:
        analyse_file(cut)
    assert caught.value.message == (
        f"The image is truncated: the L2 table at offset {l2_offset} lies beyond the end of "
        "the file."
    )
    cut.write_bytes(image.read_bytes()[:80])
    with pytest.raises(Qcow2Error) as caught:
        analyse_file(cut)
    assert caught.value.message == "The image is truncated: its header is incomplete."


def _l2_entry_offset(image: bytes) -> int:
    l1_offset = struct.unpack_from(">Q", image, 40)[0]
    return int(struct.unpack_from(">Q", image, l1_offset)[0] & 0x00FF_FFFF_FFFF_FE00)


HOSTILE: list[tuple[str, Callable[[bytes], dict[int, bytes]], str]] = [
    ("cluster-bits", lambda _: {20: struct.pack(">I", 40)}, "cluster size"),
    ("version", lambda _: {4: struct.pack(">I", 7)}, "version 7"),
    ("l1-size", lambda _: {36: struct.pack(">I", 0xFFFFFFFF)}, "claims"),
    ("l1-offset", lambda _: {40: struct.pack(">Q", 1 << 50)}, "beyond the end"),
    ("l1-misaligned", lambda _: {40: struct.pack(">Q", 0x30008)}, "not cluster-aligned"),
    ("virtual-size", lambda _: {24: struct.pack(">Q", (1 << 64) - 1)}, "virtual size"),
    ("snapshots", lambda _: {60: struct.pack(">I", 0xFFFFFFFF)}, "claims"),
    ("snapshot-table", lambda _: {64: struct.pack(">Q", 1 << 40)}, "snapshot table"),
    ("header-length", lambda _: {100: struct.pack(">I", 0xFFFFFFF8)}, "header length"),
    (
        "extension",
        lambda d: {struct.unpack_from(">I", d, 100)[0]: struct.pack(">II", 0x1234, 0xFFFFFFF0)},
        "extension",
    ),
    ("refcount-order", lambda _: {96: struct.pack(">I", 9)}, "refcount order"),
    ("encrypted", lambda _: {32: struct.pack(">I", 1)}, "encrypted"),
    ("compression", lambda _: {72: struct.pack(">Q", 0x8)}, "compression type"),
    (
        "l2-misaligned",
        lambda d: {struct.unpack_from(">Q", d, 40)[0]: struct.pack(">Q", (1 << 63) | 0x40200)},
        "not cluster-aligned",
    ),
    (
        "l2-past-end",
        lambda d: {struct.unpack_from(">Q", d, 40)[0]: struct.pack(">Q", 1 << 45)},
        "L2 table at offset",
    ),
    (
        "data-misaligned",
        lambda d: {_l2_entry_offset(d): struct.pack(">Q", (1 << 63) | 0x50400)},
        "not cluster-aligned",
    ),
]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small image with three snapshots, data, an overwrite, and a zero write."""
    image = create(tmp_path_factory.mktemp("fuzz") / "small.qcow2", "64M")
    io(image, "write -P 0xab 0 192k", "write -P 0xab 32M 64k")
    snapshot(image, "first")
    io(image, "write -P 0xcd 64k 64k", "write -z 128k 64k")
    snapshot(image, "second")
    io(image, "write -P 0xef 48M 128k")
    snapshot(image, "third")
    io(image, "write -P 0x12 0 64k")
    return image.read_bytes()


@pytest.fixture(scope="module")
def small_subcluster_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small image with extended L2 entries, subcluster writes and compressed clusters."""
    image = create(tmp_path_factory.mktemp("fuzz") / "sub.qcow2", "64M", extended_l2="on")
    io(image, "write -P 0xab 0 4k", "write -c -P 0xab 1M 64k", "write -c -P 0xcd 2M 64k")
    snapshot(image, "first")
    io(image, "write -P 0xcd 8k 2k", "write -z 64k 64k", "write -P 0xef 3M 6k")
    snapshot(image, "second")
    return image.read_bytes()


@pytest.mark.parametrize(("what", "patch", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_headers_and_tables_raise_a_readable_error(
    small_image: bytes, what: str, patch: Callable[[bytes], dict[int, bytes]], message: str
) -> None:
    data = bytearray(small_image)
    for offset, value in patch(small_image).items():
        data[offset : offset + len(value)] = value
    with pytest.raises(Qcow2Error) as caught:
        analyse(BytesByteSource(bytes(data)))
    text = caught.value.message
    assert message in text
    # One sentence for the user: capitalised, one line, one full stop at the end.
    assert text[0].isupper() and text.endswith(".") and "\n" not in text


def test_data_clusters_past_the_end_make_the_sizes_approximate(small_image: bytes) -> None:
    data = bytearray(small_image)
    offset = _l2_entry_offset(small_image)
    data[offset : offset + 8] = struct.pack(">Q", (1 << 63) | (1 << 40))
    usage = analyse(BytesByteSource(bytes(data)))
    assert usage.approximate
    assert any("past the end" in note for note in usage.notes)


# ------------------------------------------------------------------ bounded memory

REPO = Path(__file__).resolve().parents[3]
GIB = 1024 * MIB
TIB = 1024 * GIB
# The most entries QEMU gives an L1 table, and so the reader.
MAX_L1_ENTRIES = 32 * MIB // 8
# The analysing child may map this much; Python and numpy take about 100 MB of it. The
# reader before issue 11 needed 6.3 GiB in one piece for the shared L1 table, and 4.3 GB
# resident for the 2 TiB image: it failed here with a MemoryError.
ADDRESS_SPACE_LIMIT = 1024 * MIB
PEAK_LIMIT = 300 * 1000 * 1000

_BOUNDED_CHILD = r"""
import pickle, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from vmsnapgui.core.byte_source import FileByteSource
from vmsnapgui.core.qcow2 import Qcow2Error, analyse
try:
    with FileByteSource(sys.argv[1]) as source:
        outcome = analyse(source)
except Qcow2Error as exc:
    outcome = exc.message
except MemoryError:
    outcome = "MemoryError"
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
sys.stdout.buffer.write(pickle.dumps((outcome, peak)))
"""


def analyse_in_a_bounded_child(path: Path) -> tuple[Qcow2Usage | str, int]:
    """Analyse in a child with ``ADDRESS_SPACE_LIMIT``: the usage (or the error's message,
    or "MemoryError"), and the child's peak resident memory in bytes."""
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED_CHILD, str(path), str(ADDRESS_SPACE_LIMIT)],
        capture_output=True,
        timeout=120,
        cwd=REPO,
        # OpenBLAS (loaded with numpy) reserves address space per thread, so per core.
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    outcome: Qcow2Usage | str
    outcome, peak = pickle.loads(done.stdout)
    return outcome, peak


def figures(usage: Qcow2Usage) -> tuple[object, ...]:
    """Every size and note of an analysis, to compare two analyses whole."""
    return (
        [
            (s.name, s.parent, s.delta_bytes, s.exclusive_bytes, s.vmstate_bytes, s.layer)
            for s in usage.snapshots
        ],
        (usage.now, usage.now_parent, usage.now_delta_bytes, usage.now_exclusive_bytes),
        (usage.approximate, usage.notes),
    )


def test_two_hundred_snapshots_sharing_one_maximal_l1_table_are_measured_in_bounded_memory(
    tmp_path: Path,
) -> None:
    # Sharing an L1 table is unusual but not corrupt: each layer maps all of it.
    image = shared_l1_image(tmp_path / "shared.qcow2", snapshots=200, l1_entries=MAX_L1_ENTRIES)
    usage, peak = analyse_in_a_bounded_child(image)
    assert isinstance(usage, Qcow2Usage), usage
    # Each L1 entry names the one L2 table, which maps 8192 clusters of 64 KiB: 2 PiB.
    everything = MAX_L1_ENTRIES * 8192 * CLUSTER
    assert everything == 2048 * TIB
    assert [s.delta_bytes for s in usage.snapshots] == [everything] + [0] * 199
    assert {(s.layer.data_bytes, s.layer.guest_data_bytes) for s in usage.snapshots} == {
        (everything, everything)
    }
    assert {s.exclusive_bytes for s in usage.snapshots} == {0}
    assert (usage.now.data_bytes, usage.now_delta_bytes, usage.now_exclusive_bytes) == (
        everything,
        0,
        0,
    )
    assert not usage.approximate
    assert peak < PEAK_LIMIT, f"peaked at {peak >> 20} MiB"


def test_a_2_tib_image_with_preallocated_metadata_is_measured_exactly_in_bounded_memory(
    tmp_path: Path,
) -> None:
    # 32 Mi mapped clusters in 4096 L2 tables (256 MiB of them), shared by three snapshots;
    # Now rewrote its first two clusters since.
    image = preallocated_image(tmp_path / "2t.qcow2", 2 * TIB, ["a", "b", "c"], rewritten=2)
    usage, peak = analyse_in_a_bounded_child(image)
    assert isinstance(usage, Qcow2Usage), usage
    assert [(s.name, s.parent, s.delta_bytes, s.exclusive_bytes) for s in usage.snapshots] == [
        ("a", None, 2 * TIB, 0),
        ("b", "a", 0, 0),
        ("c", "b", 0, 0),
    ]
    assert {s.layer.data_bytes for s in usage.snapshots} == {2 * TIB}
    # The two clusters Now rewrote are its own; the two it replaced stay the snapshots'.
    assert (usage.now.data_bytes, usage.now_delta_bytes, usage.now_exclusive_bytes) == (
        2 * TIB,
        2 * CLUSTER,
        2 * CLUSTER,
    )
    assert not usage.approximate and usage.notes == ()
    assert peak < PEAK_LIMIT, f"peaked at {peak >> 20} MiB"


def test_ten_snapshots_of_maximal_l1_tables_are_measured_exactly_in_bounded_memory(
    tmp_path: Path,
) -> None:
    # A 128 GiB disk with 512-byte clusters has a 32 MiB L1 table: with ten snapshots,
    # 352 MiB of L1 tables, read a part at a time. (The reader before issue 11 held each
    # layer's table several times over and failed here with a MemoryError.)
    image = many_l1_image(tmp_path / "many.qcow2", snapshots=10)
    usage, peak = analyse_in_a_bounded_child(image)
    assert isinstance(usage, Qcow2Usage), usage
    sector = 512
    assert [(s.delta_bytes, s.exclusive_bytes, s.layer.data_bytes) for s in usage.snapshots] == [
        (2 * sector, sector, 2 * sector)
    ] + [(sector, sector, 2 * sector)] * 9
    assert (usage.now.data_bytes, usage.now_delta_bytes, usage.now_exclusive_bytes) == (
        sector,
        0,
        0,
    )
    assert not usage.approximate and usage.notes == ()
    assert peak < PEAK_LIMIT, f"peaked at {peak >> 20} MiB"


def test_the_hand_built_preallocated_image_measures_as_qemu_img_s_own_does(
    tmp_path: Path,
) -> None:
    # The 2 TiB image above is written by hand (qemu-img takes a minute); at 8 GiB both
    # can be made, and must read alike.
    real = create(tmp_path / "real.qcow2", "8G", preallocation="metadata")
    for name in ("a", "b", "c"):
        snapshot(real, name)
    io(real, "write -P 0xab 0 128k")
    mine = preallocated_image(tmp_path / "mine.qcow2", 8 * GIB, ["a", "b", "c"], rewritten=2)
    assert figures(analyse_file(mine)) == figures(analyse_file(real))
    assert [s["name"] for s in info(mine)["snapshots"]] == ["a", "b", "c"]


def test_snapshots_with_overlapping_maximal_l1_tables_are_refused_in_one_sentence(
    tmp_path: Path,
) -> None:
    # Two hundred L1 tables of 32 MiB, each one cluster after the last: they overlap,
    # which no image QEMU writes does, and reading them would read the file 200 times.
    base, tables = 4 * CLUSTER, 200
    entries = [(f"s{i}", base + i * CLUSTER, MAX_L1_ENTRIES, 1 * GIB) for i in range(tables)]
    image = write_image(
        tmp_path / "overlapping.qcow2",
        cluster_bits=16,
        virtual_size=1 * GIB,
        l1=(base, 2),
        snapshots=entries,
        snapshots_offset=2 * CLUSTER,
        pieces={base: struct.pack(">Q", 0) * (tables * CLUSTER // 8)},
        size=base + tables * CLUSTER + 32 * MIB,
    )
    outcome, peak = analyse_in_a_bounded_child(image)
    assert outcome == "The image is corrupt: its L1 tables add up to more than the file holds."
    assert peak < PEAK_LIMIT


def test_a_maximal_l1_table_naming_an_l2_table_past_the_end_is_refused(tmp_path: Path) -> None:
    image = shared_l1_image(tmp_path / "shared.qcow2", snapshots=3, l1_entries=MAX_L1_ENTRIES)
    l1_offset = header_field(image, 40, ">Q")
    past_end = image.stat().st_size // CLUSTER * CLUSTER + CLUSTER
    last_entry = l1_offset + 8 * (MAX_L1_ENTRIES - 1)
    with image.open("r+b") as f:
        f.seek(last_entry)
        f.write(struct.pack(">Q", past_end))
    outcome, _ = analyse_in_a_bounded_child(image)
    assert outcome == (
        f"The image is truncated: the L2 table at offset {past_end} lies beyond the end of "
        "the file."
    )


# Budgets so small that every image takes the paths a huge one takes: L1 tables read a
# few entries at a time, L2 tables one at a time in several windows, nothing kept, keys
# counted in several passes ("streaming"; None: set per image, to make three windows and
# three passes, as more make the test slow, not more thorough); entries kept but decoded
# in many batches ("kept"); kept at first, then too many ("outgrown"); and a window per
# table, planned from L1 entries looked at one by one ("one-table-windows").
BUDGETS: dict[str, dict[str, int | None]] = {
    "streaming": {
        "_L1_CACHE_BYTES": 0,
        "_L1_CHUNK": 64,
        "_L2_READ_BYTES": 1,
        "_L2_BATCH_BYTES": 1,
        "_KEEP_ENTRIES": 0,
        "_WINDOW_TABLES": None,
        "_DENSE_CLUSTERS": None,
        "_SPARSE_KEYS": 8,
        "_PAIR_ENTRIES": 5,
    },
    "kept": {"_L2_READ_BYTES": 1, "_L2_BATCH_BYTES": 1, "_L1_CHUNK": 64, "_PAIR_ENTRIES": 5},
    "outgrown": {"_L2_READ_BYTES": 1, "_L2_BATCH_BYTES": 1, "_KEEP_ENTRIES": 100},
    "one-table-windows": {"_L1_CHUNK": 2, "_WINDOW_TABLES": 1},
}


@pytest.fixture(scope="module")
def small_branched_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """4 KiB clusters (an L2 table maps 2 MiB), branches, compressed data, a zero write."""
    image = create(tmp_path_factory.mktemp("budgets") / "b.qcow2", "1G", cluster_size="4k")
    io(image, "write -P 0x11 0 4M", "write -c -P 0x12 40M 64k")
    snapshot(image, "s1")
    io(image, "write -P 0x22 0 1M", "write -P 0x22 8M 1M", "write -z 40M 4k")
    snapshot(image, "s2")
    apply(image, "s1")
    io(image, "write -P 0x33 16M 2M", "write -c -P 0x34 600M 64k")
    snapshot(image, "s3")
    io(image, "write -P 0x44 32M 64k")
    return image.read_bytes()


def l2_table_offsets(image: bytes) -> set[int]:
    """Where the distinct L2 tables of every layer are, read with plain struct."""
    layout = read_layout(BytesByteSource(image))
    l1s = [(layout.l1_table_offset, layout.l1_size)] + [
        (s.l1_table_offset, s.l1_size) for s in layout.snapshots
    ]
    return {
        struct.unpack_from(">Q", image, offset + 8 * i)[0] & 0x00FF_FFFF_FFFF_FE00
        for offset, size in l1s
        for i in range(size)
    } - {0}


@pytest.mark.parametrize("budgets", BUDGETS.values(), ids=BUDGETS.keys())
@pytest.mark.parametrize(
    ("fixture", "parents", "current"),
    [
        ("small_image", None, None),
        ("small_image", {"first": None, "second": "first", "third": "first"}, "second"),
        ("small_subcluster_image", None, None),
        ("small_branched_image", {"s1": None, "s2": "s1", "s3": "s1"}, "s3"),
        ("small_branched_image", None, None),
    ],
)
def test_smaller_budgets_cost_more_passes_but_give_the_same_sizes(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    budgets: dict[str, int | None],
    fixture: str,
    parents: Mapping[str, str | None] | None,
    current: str | None,
) -> None:
    image: bytes = request.getfixturevalue(fixture)
    expected = figures(analyse(BytesByteSource(image), parents, current))
    per_image = {
        "_WINDOW_TABLES": -(-len(l2_table_offsets(image)) // 3),
        "_DENSE_CLUSTERS": -(-len(image) // read_layout(BytesByteSource(image)).cluster_size // 3),
    }
    for name, value in budgets.items():
        monkeypatch.setattr(qcow2, name, per_image[name] if value is None else value)
    assert figures(analyse(BytesByteSource(image), parents, current)) == expected


def random_history(path: Path, rng: random.Random) -> tuple[Path, int, list[str]]:
    """An image with a random life: writes, zero writes, discards, snapshots, reverts and
    deletions, on a random cluster size (extended L2 entries or not). No compression and
    no vmstate, which ``qemu-img map`` cannot place. Returns the image, its cluster size
    and the names of its snapshots."""
    cluster = rng.choice([512, 4 * KIB, 64 * KIB, 64 * KIB, 2 * MIB])
    extended = cluster >= 16 * KIB and rng.random() < 0.4
    size = rng.choice([8, 64, 256]) * MIB
    create(path, size, cluster_size=cluster, extended_l2="on" if extended else "off")
    unit = cluster // 32 if extended else cluster
    names: list[str] = []
    for step in range(rng.randint(2, 6)):
        commands = []
        for _ in range(rng.randint(1, 6)):
            offset = rng.randrange(size // unit) * unit
            length = min(size - offset, unit * rng.choice([1, 2, 7, 64, 300]))
            kind = rng.choice(["write", "write", "write", "zero", "discard"])
            if kind == "write":
                commands.append(f"write -P {rng.randrange(1, 255)} {offset} {length}")
            elif kind == "zero":
                commands.append(f"write -z {offset} {length}")
            else:
                commands.append(f"discard {offset} {length}")
        io(path, *commands)
        names.append(f"s{step}")
        snapshot(path, names[-1])
        if rng.random() < 0.3:
            apply(path, rng.choice(names))
        if len(names) > 2 and rng.random() < 0.2:
            gone = names.pop(rng.randrange(len(names) - 1))
            run(["qemu-img", "snapshot", "-d", gone, str(path)])
    io(path, f"write -P 7 {rng.randrange(size // unit) * unit} {unit}")
    return path, cluster, names


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_measure_as_qemu_img_map_of_every_layer_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # An independent count: QEMU's own map of each layer gives which host cluster holds
    # each guest cluster, and from those maps alone follow every delta and exclusive size.
    rng = random.Random(seed)
    image, cluster, names = random_history(tmp_path / "history.qcow2", rng)
    tree: dict[str, str | None] = {}
    for number, name in enumerate(names):
        tree[name] = rng.choice([None, *names[:number]])
    current = rng.choice(names)
    maps = {name: layer_clusters(image, name, tmp_path, cluster) for name in [None, *names]}
    parent_of: dict[str | None, str | None] = {name: tree[name] for name in names}
    parent_of[None] = current
    expected = sizes_from_maps(maps, parent_of)

    def measured() -> dict[str | None, tuple[int, int, int]]:
        usage = analyse_file(image, tree, current)
        assert usage.notes == () and not usage.approximate
        sizes: dict[str | None, tuple[int, int, int]] = {
            s.name: (s.layer.data_bytes, s.delta_bytes, s.exclusive_bytes) for s in usage.snapshots
        }
        sizes[None] = (usage.now.data_bytes, usage.now_delta_bytes, usage.now_exclusive_bytes)
        return sizes

    assert measured() == expected
    # And the same when every budget is tiny, so that the paths a huge image takes are
    # the ones measured.
    data = image.read_bytes()
    per_image = {
        "_WINDOW_TABLES": -(-len(l2_table_offsets(data)) // 3),
        "_DENSE_CLUSTERS": -(-len(data) // cluster // 3),
    }
    for name, value in BUDGETS["streaming"].items():
        monkeypatch.setattr(qcow2, name, per_image[name] if value is None else value)
    assert measured() == expected


# ------------------------------------------------------------------ fuzzing


def _fuzz_targets(image: bytes) -> list[tuple[int, int]]:
    """(start, length) of the header, each L1 table, each L2 table and the snapshot table."""
    layout = read_layout(BytesByteSource(image))
    cluster = layout.cluster_size
    targets = [(0, 512), (layout.snapshots_offset, 512)]
    l1s = [(layout.l1_table_offset, layout.l1_size)] + [
        (s.l1_table_offset, s.l1_size) for s in layout.snapshots
    ]
    for offset, size in l1s:
        targets.append((offset, size * 8))
        for i in range(size):
            l2 = struct.unpack_from(">Q", image, offset + 8 * i)[0] & 0x00FF_FFFF_FFFF_FE00
            if l2:
                targets.append((l2, cluster))
    # A table at the very end of the file may be shorter than the span named above.
    return [(start, min(length, len(image) - start)) for start, length in targets]


def _mutate(image: bytes, rng: random.Random, targets: Sequence[tuple[int, int]]) -> bytes:
    data = bytearray(image)
    for _ in range(rng.randint(1, 4)):
        start, length = rng.choice(targets)
        if rng.random() < 0.5:  # aim at the start of a table or entry, where fields live
            length = min(length, 128)
        pos = start + rng.randrange(length)
        kind = rng.randrange(4)
        if kind == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[pos] = rng.randrange(256)
        else:
            pos -= pos % 8
            value = rng.choice(
                [0, 1, len(image), len(image) - 512, 1 << 63, (1 << 64) - 1, 0xFFFFFFFF]
                if kind == 2
                else [rng.getrandbits(64)]
            )
            data[pos : pos + 8] = struct.pack(">Q", value)
    if rng.random() < 0.1:
        del data[rng.randrange(len(data)) :]
    return bytes(data)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fixture", ["small_image", "small_subcluster_image"])
def test_damaged_images_either_analyse_or_raise_qcow2error_quickly_in_bounded_memory(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    image: bytes = request.getfixturevalue(fixture)
    rng = random.Random(20240604)
    targets = _fuzz_targets(image)
    outcomes = {"analysed": 0, "refused": 0}
    tracemalloc.start()
    try:
        for case in range(800):
            damaged = _mutate(image, rng, targets)
            tracemalloc.reset_peak()
            started = time.perf_counter()
            try:
                analyse(BytesByteSource(damaged))
                outcomes["analysed"] += 1
            except Qcow2Error:
                outcomes["refused"] += 1
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            assert elapsed < 2.0, f"case {case} took {elapsed:.2f} s"
            assert peak < 32 * MIB, f"case {case} peaked at {peak >> 20} MiB"
    finally:
        tracemalloc.stop()
    # Both paths must actually be exercised for the test to mean anything.
    assert outcomes["analysed"] > 100 and outcomes["refused"] > 100, outcomes


# ------------------------------------------------------------------ byte sources and batching


class CountingSource:
    """A byte source that counts calls the way a remote one pays round trips."""

    def __init__(self, data: bytes) -> None:
        self.inner = BytesByteSource(data)
        self.reads = 0
        self.batches: list[int] = []

    def size(self) -> int:
        return self.inner.size()

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.inner.read(offset, length)

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        self.batches.append(len(ranges))
        return self.inner.read_many(ranges)

    def describe(self) -> str:
        return "counting"


def test_analysis_reads_all_l1_tables_then_all_l2_tables_in_one_batch_each(
    small_image: bytes,
) -> None:
    source = CountingSource(small_image)
    analyse(source)
    # Header and snapshot table, then one batch of 4 L1 tables, then one of the L2 tables.
    assert source.reads == 2
    assert len(source.batches) == 2
    assert source.batches[0] == 4


def test_file_source_reads_short_only_at_the_end_and_batches_match_single_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bytes.bin"
    payload = bytes(range(256)) * 1024
    path.write_bytes(payload)
    ranges = [(0, 10), (5, 20), (100_000, 50), (262_000, 1000), (300_000, 10), (70_000, 0)]
    with FileByteSource(path) as source:
        assert isinstance(source, ByteSource)
        assert source.size() == len(payload)
        assert source.describe() == str(path)
        assert source.read(262_100, 1 << 60) == payload[262_100:]
        assert source.read_many(ranges) == [payload[o : o + n] for o, n in ranges]
        assert source.read_many(ranges) == BytesByteSource(payload).read_many(ranges)
    with pytest.raises(ValueError):
        source.read(0, 1)


def test_neighbouring_ranges_are_merged_into_one_read() -> None:
    pieces = coalesce_ranges([(0, 10), (4096, 10), (10 * MIB, 10), (20, 5)])
    assert [(start, length, sorted(members)) for start, length, members in pieces] == [
        (0, 4106, [0, 1, 3]),
        (10 * MIB, 10, [2]),
    ]
