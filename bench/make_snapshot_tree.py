#!/usr/bin/env python3
"""Build a benchmark domain carrying a large, branching snapshot tree.

No disk work is done: every snapshot is *redefined* from metadata with
``snapshotCreateXML(xml, VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)`` (plus
``VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT`` for the one that becomes current). The
domain is a persistent, shut-off QEMU domain named ``vmsnap-bench-N`` whose one
disk is a small qcow2 file made by ``qemu-img`` (redefining never touches it).

Each snapshot's XML looks like what libvirt stores for a real internal
snapshot: name, description, state, creationTime, parent, memory and disks
elements and the full embedded ``<domain>`` XML. All XML is built with
:mod:`xml.etree.ElementTree`.

The tree shape is deterministic for a given count and seed: chains of 5-15
snapshots ("branches"), each forking from a random earlier snapshot, and every
50th branch starting a new root, so there is a branch roughly every 10
snapshots and a few roots. The last snapshot made is the current one.

Usage::

    .venv/bin/python bench/make_snapshot_tree.py            # 1000 snapshots
    .venv/bin/python bench/make_snapshot_tree.py -n 10000
    .venv/bin/python bench/make_snapshot_tree.py -n 1000 --remove

Running it again with the same count does nothing; a domain with a different
number of snapshots is rebuilt.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

DEFAULT_URI = "qemu:///system"
IMAGE_DIRS = ("/var/lib/libvirt/images", "/var/tmp")
BASE_TIME = 1_704_067_200  # 2024-01-01T00:00:00Z
LABELS = (
    "nightly",
    "pre-upgrade",
    "post-upgrade",
    "before-kernel-update",
    "clean-install",
    "test-run",
    "config-change",
    "pre-migration",
    "release-candidate",
    "hotfix",
    "db-schema-v2",
    "known-good",
    "debug",
    "weekly",
)
# The metadata namespace marking the domain as ours (so --remove never
# touches a domain that merely happens to have the same name).
BENCH_NS = "https://vmsnapgui.invalid/bench/1"


@dataclass(frozen=True)
class SnapSpec:
    """One planned snapshot."""

    index: int
    name: str
    parent: str | None
    running: bool  # state running + internal memory, else shutoff disk-only
    creation_time: int
    branch: int


@dataclass(frozen=True)
class TreeInfo:
    """What a bench domain holds (returned by :func:`ensure_tree`)."""

    domain: str
    count: int
    roots: int
    current: str
    max_depth: int
    built: bool  # False if it already existed
    seconds: float  # time spent redefining (0 if it already existed)


def default_domain_name(count: int) -> str:
    """The bench domain's name for ``count`` snapshots."""
    return f"vmsnap-bench-{count}"


def plan_tree(count: int, seed: int = 1) -> list[SnapSpec]:
    """Plan a branching tree of ``count`` snapshots; parents precede children."""
    rng = random.Random(seed)
    specs: list[SnapSpec] = []
    branch = 0
    while len(specs) < count:
        length = rng.randint(5, 15)
        # Every 50th branch starts a new root; the others fork anywhere.
        new_root = branch == 0 or branch % 50 == 49
        parent = None if new_root else specs[rng.randrange(len(specs))].name
        for _ in range(min(length, count - len(specs))):
            i = len(specs)
            name = f"snap-{i:05d}-{rng.choice(LABELS)}"
            specs.append(
                SnapSpec(
                    index=i,
                    name=name,
                    parent=parent,
                    running=rng.random() < 0.4,
                    creation_time=BASE_TIME + i * 3600 + rng.randrange(600),
                    branch=branch,
                )
            )
            parent = name
        branch += 1
    return specs


def tree_depth(specs: list[SnapSpec]) -> int:
    """Depth of the deepest snapshot (a root has depth 1)."""
    depth: dict[str, int] = {}
    for s in specs:
        depth[s.name] = 1 + (depth[s.parent] if s.parent else 0)
    return max(depth.values(), default=0)


# ---------------------------------------------------------------- XML
def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(name: str, image: str, domain_type: str) -> str:
    """A realistic persistent QEMU domain definition with one qcow2 disk."""
    rng = random.Random(name)
    dom = ET.Element("domain", type=domain_type)
    _sub(dom, "name", name)
    _sub(dom, "uuid", str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    _sub(dom, "title", "vmsnapgui benchmark domain")
    _sub(
        dom,
        "description",
        "Snapshot metadata only, never started. Made by bench/make_snapshot_tree.py.",
    )
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{BENCH_NS}}}tree", name=name)
    _sub(dom, "memory", "2097152", unit="KiB")
    _sub(dom, "currentMemory", "2097152", unit="KiB")
    _sub(dom, "vcpu", "2", placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc-q35-7.2")
    _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(
        dom,
        "cpu",
        mode="host-model" if domain_type == "kvm" else "custom",
        check="partial" if domain_type == "kvm" else "none",
    )
    if domain_type != "kvm":
        cpu = dom.find("cpu")
        assert cpu is not None
        cpu.set("match", "exact")
        _sub(cpu, "model", "qemu64", fallback="forbid")
    clock = _sub(dom, "clock", offset="utc")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    _sub(devices, "emulator", "/usr/bin/qemu-system-x86_64")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=image)
    _sub(disk, "target", dev="vda", bus="virtio")
    cdrom = _sub(devices, "disk", type="file", device="cdrom")
    _sub(cdrom, "driver", name="qemu", type="raw")
    _sub(cdrom, "target", dev="sda", bus="sata")
    _sub(cdrom, "readonly")
    iface = _sub(devices, "interface", type="user")
    mac = ":".join(["52", "54", "00"] + [f"{rng.randrange(256):02x}" for _ in range(3)])
    _sub(iface, "mac", address=mac)
    _sub(iface, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    _sub(devices, "input", type="tablet", bus="usb")
    _sub(devices, "graphics", type="vnc", port="-1", autoport="yes")
    video = _sub(devices, "video")
    _sub(video, "model", type="virtio", heads="1", primary="yes")
    _sub(devices, "memballoon", model="virtio")
    rngdev = _sub(devices, "rng", model="virtio")
    _sub(rngdev, "backend", "/dev/urandom", model="random")
    ET.register_namespace("bench", BENCH_NS)
    return ET.tostring(dom, encoding="unicode")


def snapshot_xml(spec: SnapSpec, domain_el: ET.Element, total: int) -> str:
    """The ``<domainsnapshot>`` XML redefining ``spec`` with the embedded domain."""
    snap = ET.Element("domainsnapshot")
    _sub(snap, "name", spec.name)
    _sub(
        snap,
        "description",
        f"Benchmark snapshot {spec.index + 1} of {total} (branch {spec.branch}); "
        f"{'running' if spec.running else 'powered off'} when taken.",
    )
    _sub(snap, "state", "running" if spec.running else "shutoff")
    if spec.parent is not None:
        parent = _sub(snap, "parent")
        _sub(parent, "name", spec.parent)
    _sub(snap, "creationTime", str(spec.creation_time))
    _sub(snap, "memory", snapshot="internal" if spec.running else "no")
    disks = _sub(snap, "disks")
    _sub(disks, "disk", name="vda", snapshot="internal")
    _sub(disks, "disk", name="sda", snapshot="no")
    snap.append(domain_el)
    return ET.tostring(snap, encoding="unicode")


# ------------------------------------------------------------ libvirt
def open_connection(uri: str) -> libvirt.virConnect:
    """Open ``uri`` with a helpful error when the daemon is not there."""
    # Errors are raised as exceptions; keep libvirt from also printing them.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise SystemExit(
            f"error: cannot connect to {uri}: {exc}\n"
            "Is libvirtd running? Start it with:\n"
            "  mkdir -p /var/log/libvirt; virtlogd -d; libvirtd -d"
        ) from exc


def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _is_bench_domain(dom: libvirt.virDomain) -> bool:
    try:
        dom.metadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, BENCH_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        )
        return True
    except libvirt.libvirtError:
        return False


def _image_path(name: str) -> str:
    for d in IMAGE_DIRS:
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return os.path.join(d, f"{name}.qcow2")
    raise SystemExit(f"error: none of {', '.join(IMAGE_DIRS)} is a writable directory")


def _make_image(path: str) -> None:
    if os.path.exists(path):
        return
    if shutil.which("qemu-img") is None:
        raise SystemExit("error: qemu-img not found (apt-get install qemu-utils)")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1G"], check=True)


def remove_domain(conn: libvirt.virConnect, name: str, *, quiet: bool = False) -> bool:
    """Undefine the bench domain with all its snapshot metadata; delete its image.

    Snapshot metadata goes in the same call as the domain
    (``VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA``), which is the one-call
    equivalent of deleting every snapshot with
    ``VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY``. Returns False if there was
    no such domain. Refuses domains not made by this script.
    """
    dom = _lookup(conn, name)
    if dom is None:
        if not quiet:
            print(f"{name}: no such domain")
        return False
    if not _is_bench_domain(dom):
        raise SystemExit(f"error: domain {name} was not made by this script; not removing it")
    if dom.isActive():
        raise SystemExit(
            f"error: {name} is running; bench domains are never "
            "started - stop it first (virsh destroy)"
        )
    images = [
        el.get("file")
        for el in ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).iterfind(
            "devices/disk/source"
        )
    ]
    n = dom.snapshotNum(0)
    t = time.perf_counter()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    for img in images:
        if img and os.path.basename(img) == f"{name}.qcow2" and os.path.exists(img):
            os.unlink(img)
    if not quiet:
        print(
            f"{name}: removed the domain and {n} snapshots' metadata "
            f"in {time.perf_counter() - t:.2f} s"
        )
    return True


def _redefine_all(
    dom: libvirt.virDomain,
    specs: list[SnapSpec],
    workers: int,
    domain_el: ET.Element,
    progress: bool,
) -> None:
    """Redefine every snapshot, a parent always before its children.

    With ``workers > 1`` independent snapshots are redefined concurrently from a
    thread pool sharing the connection; a snapshot is submitted as soon as
    its parent exists. The last snapshot is redefined last, as current.
    """
    total = len(specs)
    current = specs[-1]
    children: dict[str | None, list[SnapSpec]] = {}
    for s in specs[:-1]:
        children.setdefault(s.parent, []).append(s)
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    done = 0
    t0 = time.perf_counter()

    def redefine(spec: SnapSpec) -> SnapSpec:
        dom.snapshotCreateXML(snapshot_xml(spec, domain_el, total), flags)
        return spec

    def report() -> None:
        if progress and (done % 1000 == 0 or done == total):
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"  {done}/{total} redefined ({rate:.0f}/s)", flush=True)

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending = {pool.submit(redefine, s) for s in children.get(None, [])}
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for fut in finished:
                spec = fut.result()  # re-raises a libvirt error
                done += 1
                report()
                for child in children.get(spec.name, []):
                    pending.add(pool.submit(redefine, child))
    dom.snapshotCreateXML(
        snapshot_xml(current, domain_el, total), flags | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    )
    done += 1
    report()
    if done != total:
        raise RuntimeError(f"redefined {done} of {total} snapshots (orphans in plan?)")


def ensure_tree(
    uri: str = DEFAULT_URI,
    count: int = 1000,
    *,
    name: str | None = None,
    workers: int = 4,
    seed: int = 1,
    force: bool = False,
    progress: bool = True,
) -> TreeInfo:
    """Make sure domain ``name`` exists with the planned ``count`` snapshots.

    Does nothing if it already holds ``count`` snapshots with the expected
    current one; otherwise (or with ``force``) removes and rebuilds it.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    name = name or default_domain_name(count)
    specs = plan_tree(count, seed)
    roots = sum(1 for s in specs if s.parent is None)
    conn = open_connection(uri)
    try:
        dom = _lookup(conn, name)
        if dom is not None and not force:
            have = dom.snapshotNum(0)
            cur = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
            if have == count and cur == specs[-1].name:
                if progress:
                    print(f"{name}: already has {count} snapshots - nothing to do")
                return TreeInfo(
                    name, count, roots, specs[-1].name, tree_depth(specs), built=False, seconds=0.0
                )
            if progress:
                print(f"{name}: has {have} snapshots (current {cur}), want {count}: rebuilding")
        if dom is not None:
            remove_domain(conn, name, quiet=not progress)
        image = _image_path(name)
        _make_image(image)
        domain_type = "kvm" if os.path.exists("/dev/kvm") else "qemu"
        try:
            dom = conn.defineXML(domain_xml(name, image, domain_type))
        except libvirt.libvirtError:
            if domain_type != "kvm":
                raise
            dom = conn.defineXML(domain_xml(name, image, "qemu"))
        domain_el = ET.fromstring(
            dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        )
        if progress:
            print(
                f"{name}: redefining {count} snapshots with {workers} worker(s) "
                f"({roots} roots, depth {tree_depth(specs)})",
                flush=True,
            )
        t = time.perf_counter()
        _redefine_all(dom, specs, workers, domain_el, progress)
        seconds = time.perf_counter() - t
        got = dom.snapshotNum(0)
        if got != count:
            raise RuntimeError(f"{name}: expected {count} snapshots, libvirt has {got}")
        if progress:
            print(
                f"{name}: {count} snapshots redefined in {seconds:.2f} s ({count / seconds:.0f}/s)"
            )
        return TreeInfo(
            name, count, roots, specs[-1].name, tree_depth(specs), built=True, seconds=seconds
        )
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        description="Make (or remove) a shut-off domain with a large snapshot tree, "
        "by redefining snapshot metadata only."
    )
    ap.add_argument(
        "-c",
        "--connect",
        default=DEFAULT_URI,
        metavar="URI",
        help=f"libvirt URI (default {DEFAULT_URI})",
    )
    ap.add_argument(
        "-n", "--count", type=int, default=1000, help="number of snapshots (default 1000)"
    )
    ap.add_argument("--name", help="domain name (default vmsnap-bench-COUNT)")
    ap.add_argument(
        "-j", "--workers", type=int, default=4, help="threads redefining concurrently (default 4)"
    )
    ap.add_argument("--seed", type=int, default=1, help="tree shape seed (default 1)")
    ap.add_argument("--force", action="store_true", help="rebuild even if it exists")
    ap.add_argument(
        "--remove",
        action="store_true",
        help="remove the domain, its snapshot metadata and its image",
    )
    ap.add_argument(
        "--print-xml",
        action="store_true",
        help="print the first snapshot's XML and exit (no libvirt calls)",
    )
    args = ap.parse_args(argv)
    name = args.name or default_domain_name(args.count)
    if args.print_xml:
        spec = plan_tree(args.count, args.seed)[-1]
        el = ET.fromstring(domain_xml(name, "/var/lib/libvirt/images/x.qcow2", "kvm"))
        ET.indent(el)
        snap = ET.fromstring(snapshot_xml(spec, el, args.count))
        ET.indent(snap)
        print(ET.tostring(snap, encoding="unicode"))
        return 0
    if args.remove:
        conn = open_connection(args.connect)
        try:
            remove_domain(conn, name)
        finally:
            conn.close()
        return 0
    ensure_tree(
        args.connect, args.count, name=name, workers=args.workers, seed=args.seed, force=args.force
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
