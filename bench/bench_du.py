#!/usr/bin/env python3
"""Benchmark ``vmsnap du`` end to end, locally and through the volume download API.

One command (as root, with the system libvirt daemon running)::

    .venv/bin/python bench/bench_du.py [--runs N] [--record]

It reuses bench_qcow2.py's images under ``bench/out/`` (built there on first use): 100 GiB
virtual disks with 64 KiB clusters, 20 internal snapshots and about 2.3 GiB of data,
``scattered`` (about 1630 distinct L2 tables spread over the file) and ``sequential``
(about 40). For the run it

* defines a shut-off domain ``vmsnap-bench-du-<image>`` per image whose disk is that
  image, and gives it the image's 20 snapshots as libvirt metadata (redefined, a chain
  snap01 → … → snap20, the last current), so libvirt and the image agree;
* starts a transient directory pool ``vmsnap-bench-du`` over ``bench/out/`` so the images
  are storage volumes;
* starts the loopback latency proxy (bench/latency_proxy.py) at ``--delay-ms`` one way
  in front of libvirtd's socket.

Then it times, interleaved, ``--runs`` times each (after one warm-up run of each):

* ``qemu-img check`` on the image (the peer: C reading the same metadata);
* ``vmsnap -c qemu:///system du DOMAIN --json`` (local files; whole process);
* ``vmsnap -c qemu+tcp://127.0.0.1:PORT/system du DOMAIN --json`` with
  ``VMSNAP_DU_VIA_VOLUME=1`` (every byte through ``virStorageVolDownload`` over the
  proxy, as a remote client reads it; whole process);
* in-process ``measure()`` on an open connection (the engine alone, local files).

Every vmsnap run must exit 0 and print a complete document whose deltas equal
``analyse()`` on the file; the remote document must equal the local one. Medians, ratios
to ``qemu-img check`` and the targets (local ≤ 0.5 s, remote ≤ 3 s) are printed;
``--record`` writes them to ``bench/RESULTS.md`` under "Delta sizes (issue 4)" (appended,
or that section replaced when it is there already; other sections are kept). Everything it
defined is removed at the end; the images stay cached. Exit status 0 when both targets
are met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402
import numpy as np  # noqa: E402
from bench_qcow2 import OUT, Case, build_image, machine, scattered_rounds, sequential_rounds  # noqa: E402
from latency_proxy import DEFAULT_LIBVIRT_SOCKET, spawn_proxy_process  # noqa: E402
from results_file import replace_section  # noqa: E402

from vmsnapgui.core.byte_source import FileByteSource  # noqa: E402
from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml  # noqa: E402
from vmsnapgui.core.qcow2 import analyse, read_layout  # noqa: E402
from vmsnapgui.virt.connection import Connection  # noqa: E402
from vmsnapgui.virt.disk_usage import VIA_VOLUME_ENV, measure  # noqa: E402
from vmsnapgui.virt.event_loop import ensure_event_loop  # noqa: E402
from vmsnapgui.virt.snapshot_loader import SnapshotLoader  # noqa: E402

RESULTS_FILE = HERE / "RESULTS.md"
RESULTS_HEADING = "## Delta sizes (issue 4)"
SYSTEM_URI = "qemu:///system"
POOL_NAME = "vmsnap-bench-du"
DOMAIN_PREFIX = "vmsnap-bench-du-"
LOCAL_TARGET = 0.5
REMOTE_TARGET = 3.0
MIB = 1024**2
GIB = 1024**3
L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # qcow2: bits 9-55 of an L1 entry


@dataclass
class Timings:
    """One image's measurements."""

    case: Case
    domain: str
    expected: dict[str, int]
    l2_tables: int
    check: list[float] = field(default_factory=list)
    local: list[float] = field(default_factory=list)
    remote: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    tree_local: list[float] = field(default_factory=list)
    tree_remote: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    local_document: dict[str, Any] | None = None


# ------------------------------------------------------------------ set-up


def snapshot_names(image: Path) -> list[str]:
    """The image's internal snapshots, in table order (snap01 … snap20)."""
    with FileByteSource(image) as source:
        usage = analyse(source)
    return [s.name for s in usage.snapshots]


def expected_deltas(image: Path, names: list[str]) -> dict[str, int]:
    """Each snapshot's delta as the reader sees it, for checking vmsnap's output."""
    parents = {name: (names[i - 1] if i else None) for i, name in enumerate(names)}
    with FileByteSource(image) as source:
        usage = analyse(source, parents, names[-1])
    deltas = {s.name: s.delta_bytes for s in usage.snapshots}
    deltas["Now"] = usage.now_delta_bytes
    return deltas


def distinct_l2_tables(image: Path) -> int:
    """How many L2 tables the analysis reads: one ranged download each, remotely."""
    with FileByteSource(image) as source:
        layout = read_layout(source)
        tables = [(layout.l1_table_offset, layout.l1_size)]
        tables += [(s.l1_table_offset, s.l1_size) for s in layout.snapshots]
        raws = source.read_many([(offset, size * 8) for offset, size in tables])
    offsets: set[int] = set()
    for raw in raws:
        entries = np.frombuffer(raw, dtype=">u8") & np.uint64(L1_OFFSET_MASK)
        offsets.update(int(entry) for entry in entries[entries != 0])
    return len(offsets)


def snapshot_metadata(name: str, parent: str | None, created: int, domain_xml: str) -> str:
    """The XML redefining one internal, disk-only snapshot of a shut-off domain."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "state").text = "shutoff"
    if parent is not None:
        ET.SubElement(ET.SubElement(root, "parent"), "name").text = parent
    ET.SubElement(root, "creationTime").text = str(created)
    ET.SubElement(root, "memory", snapshot="no")
    ET.SubElement(ET.SubElement(root, "disks"), "disk", name="vda", snapshot="internal")
    root.append(ET.fromstring(domain_xml))  # libvirt insists on the definition it had
    return ET.tostring(root, encoding="unicode")


def define_domain(conn: libvirt.virConnect, name: str, image: Path, snapshots: list[str]) -> None:
    """A shut-off domain over the image with the image's snapshots as libvirt metadata."""
    remove_domain(conn, name)
    dom = conn.defineXML(tiny_domain_xml(name, [DiskSpec(str(image))], domain_type="kvm"))
    start = int(time.time()) - len(snapshots)
    definition = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for index, snapshot in enumerate(snapshots):
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if index == len(snapshots) - 1:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        parent = snapshots[index - 1] if index else None
        xml = snapshot_metadata(snapshot, parent, start + index, definition)
        dom.snapshotCreateXML(xml, flags)


def remove_domain(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def start_pool(conn: libvirt.virConnect) -> libvirt.virStoragePool:
    """A transient directory pool over bench/out (gone once destroyed)."""
    try:
        conn.storagePoolLookupByName(POOL_NAME).destroy()  # a crashed run's leftover
    except libvirt.libvirtError:
        pass
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = POOL_NAME
    ET.SubElement(ET.SubElement(root, "target"), "path").text = str(OUT)
    return conn.storagePoolCreateXML(ET.tostring(root, encoding="unicode"), 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def latency_proxy(delay_ms: float) -> Iterator[str]:
    """The proxy as a separate process (so it does not share our GIL); yields its URI."""
    port = free_port()
    proc = spawn_proxy_process(delay_ms=delay_ms, port=port, upstream_unix=DEFAULT_LIBVIRT_SOCKET)
    try:
        yield f"qemu+tcp://127.0.0.1:{port}/system"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ timing


def run_vmsnap(uri: str, domain: str, *, via_volume: bool) -> tuple[float, dict[str, Any]]:
    """Wall time of one whole ``vmsnap du --json`` process, and what it printed."""
    env = dict(os.environ)
    env.pop(VIA_VOLUME_ENV, None)
    if via_volume:
        env[VIA_VOLUME_ENV] = "1"
    argv = [sys.executable, "-m", "vmsnapgui", "-c", uri, "du", domain, "--json"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"vmsnap du failed ({uri}): {done.stderr.strip()}")
    document: dict[str, Any] = json.loads(done.stdout)
    return elapsed, document


def verify(timings: Timings, document: dict[str, Any], how: str) -> None:
    """Stop the benchmark when vmsnap's numbers are not the reader's."""
    found = {s["name"]: s["delta_bytes"] for s in document["snapshots"]}
    found["Now"] = document["now"]["delta_bytes"]
    if not document["complete"] or found != timings.expected:
        raise SystemExit(f"vmsnap du ({how}) printed wrong sizes for {timings.domain}")
    if document["pool"] is None or document["pool"]["name"] != POOL_NAME:
        raise SystemExit(f"vmsnap du ({how}) did not find the pool {POOL_NAME}")
    if timings.local_document is not None and document != timings.local_document:
        raise SystemExit(f"vmsnap du ({how}) differs from the local run for {timings.domain}")


def time_tree(uri: str, domain: str) -> float:
    """Wall time of ``vmsnap tree --json``: the same start-up, connection and tree loading
    as ``du``, without measuring, so the difference is what measuring costs."""
    argv = [sys.executable, "-m", "vmsnapgui", "-c", uri, "tree", domain, "--json"]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or len(json.loads(done.stdout)["snapshots"]) != 20:
        raise SystemExit(f"vmsnap tree failed ({uri}): {done.stderr.strip()}")
    return elapsed


def time_check(image: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(["qemu-img", "check", "-q", str(image)], capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"qemu-img check failed: {done.stderr.decode().strip()}")
    return elapsed


def time_engine(loader: SnapshotLoader, domain: str) -> float:
    loaded = loader.load(domain)
    start = time.perf_counter()
    measure(loader, loaded, via_volume=False)
    return time.perf_counter() - start


def run_case(timings: Timings, runs: int, remote_uri: str, loader: SnapshotLoader) -> None:
    image, domain = timings.case.image, timings.domain
    # Warm the page cache, the daemon and every code path; none of this is counted.
    time_check(image)
    _, document = run_vmsnap(SYSTEM_URI, domain, via_volume=False)
    verify(timings, document, "local")
    timings.local_document = document
    verify(timings, run_vmsnap(remote_uri, domain, via_volume=True)[1], "remote")
    time_engine(loader, domain)
    time_tree(SYSTEM_URI, domain)
    time_tree(remote_uri, domain)
    for _ in range(runs):
        timings.check.append(time_check(image))
        timings.tree_local.append(time_tree(SYSTEM_URI, domain))
        elapsed, document = run_vmsnap(SYSTEM_URI, domain, via_volume=False)
        verify(timings, document, "local")
        timings.local.append(elapsed)
        timings.engine.append(time_engine(loader, domain))
        timings.tree_remote.append(time_tree(remote_uri, domain))
        elapsed, document = run_vmsnap(remote_uri, domain, via_volume=True)
        verify(timings, document, "remote")
        timings.remote.append(elapsed)
        timings.load.append(os.getloadavg()[0])


# ------------------------------------------------------------------ report


def seconds(times: list[float]) -> str:
    return (
        f"{statistics.median(times) * 1e3:.0f} ms | {min(times) * 1e3:.0f} ms "
        f"| {max(times) * 1e3:.0f} ms"
    )


def report(results: list[Timings], runs: int, delay_ms: float) -> tuple[str, bool]:
    versions = [
        subprocess.run(
            ["qemu-img", "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0],
        "libvirt " + ".".join(str(part) for part in _libvirt_version()),
    ]
    load = statistics.mean(x for timings in results for x in timings.load)
    passed = True
    lines = [
        RESULTS_HEADING,
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}; Python {platform.python_version()}; {'; '.join(versions)}",
        "- Images: bench_qcow2.py's, 100 GiB virtual, 64 KiB clusters, 20 internal snapshots, "
        "each on a shut-off domain with the 20 snapshots redefined in libvirt, in a dir pool",
        f"- Runs: {runs} per command and image, interleaved, after one warm-up each; "
        f"proxy {delay_ms:g} ms one way; 1-minute load average during the runs "
        f"{load:.1f} on {os.cpu_count()} CPUs (the machine is shared)",
        "- Commands are timed as whole processes (Python start-up, imports, connecting, "
        "loading the tree, measuring, printing); `vmsnap tree --json` does all but measuring. "
        "Every `du` run's JSON was checked against `analyse()` on the file, and the remote "
        "document against the local one",
        "",
        "| image | command | median | min | max | / qemu-img check | target |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    misses: list[str] = []
    for timings in results:
        name = timings.case.name
        check = statistics.median(timings.check)
        local = statistics.median(timings.local)
        remote = statistics.median(timings.remote)
        engine = statistics.median(timings.engine)
        local_ok, remote_ok = local <= LOCAL_TARGET, remote <= REMOTE_TARGET
        passed = passed and local_ok and remote_ok
        for ok, value, target, how in (
            (local_ok, local, LOCAL_TARGET, "local"),
            (remote_ok, remote, REMOTE_TARGET, "through the volume download API"),
        ):
            if not ok:
                misses.append(
                    f"- {name}, {how}: {value:.2f} s, {value - target:.2f} s "
                    f"({(value / target - 1) * 100:.0f}%) over {target:g} s"
                )
        lines += [
            f"| {name} | `qemu-img check` (subprocess) | {seconds(timings.check)} | | |",
            f"| {name} | `vmsnap tree --json`, local | {seconds(timings.tree_local)} | | |",
            f"| {name} | `vmsnap du --json`, local files | {seconds(timings.local)} "
            f"| {local / check:.1f}x | ≤ {LOCAL_TARGET} s: **{_verdict(local_ok)}** |",
            f"| {name} | `measure()` in-process, local files | {seconds(timings.engine)} "
            f"| {engine / check:.1f}x | |",
            f"| {name} | `vmsnap tree --json`, over the proxy | {seconds(timings.tree_remote)} "
            "| | |",
            f"| {name} | `vmsnap du --json`, volume download over the proxy "
            f"| {seconds(timings.remote)} | {remote / check:.1f}x "
            f"| ≤ {REMOTE_TARGET:.0f} s: **{_verdict(remote_ok)}** |",
        ]
    lines.append("")
    for timings in results:
        document = timings.local_document or {}
        lines.append(
            f"- {timings.case.name}: file {timings.case.image.stat().st_size / GIB:.2f} GiB, "
            f"{timings.l2_tables} distinct L2 tables (one ranged download each, remotely); "
            f"snapshots hold {sum(s['delta_bytes'] for s in document['snapshots']) / MIB:.0f} "
            f"MiB of deltas, Now {document['now']['delta_bytes'] / MIB:.0f} MiB"
        )
    lines += ["", "Where the time goes (medians):"]
    for timings in results:
        tree_local = statistics.median(timings.tree_local)
        tree_remote = statistics.median(timings.tree_remote)
        local = statistics.median(timings.local) - tree_local
        remote = statistics.median(timings.remote) - tree_remote
        engine = statistics.median(timings.engine)
        lines.append(
            f"- {timings.case.name}: locally, `du` takes {local * 1e3:.0f} ms more than `tree` "
            f"(same start-up, connection and loading, {tree_local * 1e3:.0f} ms), of which "
            f"`measure()` is {engine * 1e3:.0f} ms and the rest mostly importing numpy and "
            f"the reader; over the proxy, measuring adds {remote * 1e3:.0f} ms to "
            f"`tree`'s {tree_remote * 1e3:.0f} ms: {timings.l2_tables} L2 tables, each a "
            "ranged download of about two round trips and a millisecond of the daemon's and "
            "the client's CPU, 128 at a time, after six dependent round trips (domain, "
            "definition, volume, header, snapshot table, L1 tables)"
        )
    lines += ["", f"Targets: {'met' if passed else 'NOT met'}.", *misses, ""]
    return "\n".join(lines), passed


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def _libvirt_version() -> tuple[int, int, int]:
    number = libvirt.getVersion()
    return number // 1_000_000, number // 1_000 % 1_000, number % 1_000


# ------------------------------------------------------------------ main


def main() -> int:
    """Set up, time every command on every image, print (and record) the result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--delay-ms", type=float, default=25.0)
    parser.add_argument(
        "--images", default="scattered,sequential", help="comma-separated: scattered,sequential"
    )
    parser.add_argument("--record", action="store_true", help="write to bench/RESULTS.md")
    args = parser.parse_args()

    makers = {"scattered": scattered_rounds, "sequential": sequential_rounds}
    cases = [Case(name, makers[name], [], []) for name in args.images.split(",")]
    for case in cases:
        build_image(case)

    ensure_event_loop()
    conn = libvirt.open(SYSTEM_URI)
    results: list[Timings] = []
    pool = start_pool(conn)
    try:
        for case in cases:
            names = snapshot_names(case.image)
            domain = DOMAIN_PREFIX + case.name
            define_domain(conn, domain, case.image, names)
            expected = expected_deltas(case.image, names)
            results.append(Timings(case, domain, expected, distinct_l2_tables(case.image)))
        connection = Connection(SYSTEM_URI, monitor=False)
        connection.open()
        loader = SnapshotLoader(connection)
        try:
            with latency_proxy(args.delay_ms) as remote_uri:
                for timings in results:
                    print(f"timing {timings.case.name} ...", flush=True)
                    run_case(timings, args.runs, remote_uri, loader)
        finally:
            loader.close()
            connection.close()
    finally:
        for case in cases:
            remove_domain(conn, DOMAIN_PREFIX + case.name)
        pool.destroy()
        conn.close()

    block, passed = report(results, args.runs, args.delay_ms)
    print(block)
    if args.record:
        replace_section(RESULTS_HEADING, block)
        print(f"recorded in {RESULTS_FILE}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
