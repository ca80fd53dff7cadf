#!/usr/bin/env python3
"""Benchmark the qcow2 reader's peak memory: ``analyse()`` in a child process per image.

One command::

    .venv/bin/python bench/bench_qcow2_memory.py [--runs N] [--code DIR ...] [--record]

Images (built under ``bench/out/`` once, git-ignored, sparse):

* ``shared-l1``: written by hand, 200 snapshot entries and the active layer on one L1
  table of the most entries QEMU allows (4 Mi), every entry naming the same full L2
  table: about 33 MiB on disk, 2 PiB of guest data per layer.
* ``prealloc-2t``: ``qemu-img create -f qcow2 -o preallocation=metadata`` of 2 TiB, then
  three internal snapshots (``qemu-img snapshot -c``): 256 MiB of L2 tables, 32 Mi
  mapped clusters, each shared by four layers.
* ``scattered``: ``bench_qcow2.py``'s image of that name (built by it if missing), an
  everyday case, to see that bounding memory costs nothing there.

Each run is a fresh ``python`` child that imports the reader, analyses one image on a
``FileByteSource`` and reports its wall time and peak resident memory (``VmHWM``); the
same child's peak after the import alone is reported as the baseline. One unmeasured run
per image and reader first warms the page cache. ``qemu-img check`` is timed on the same
images as the peer (its ``ru_maxrss``, wall time), except on ``shared-l1``: it visits
every L2 entry under every L1 entry of every layer, about 7 x 10^12 visits there, which
would take days. ``--code DIR`` measures the ``vmsnapgui`` package found in DIR instead
of this checkout's; give it twice (``--code . --code /tmp/oldtree``) to compare two
versions, their runs interleaved so a change in the machine's load hits both alike.
``--limit-mb`` caps the child's address space (``RLIMIT_AS``, default 8000 MB) so a
reader that would take the machine's memory fails fast instead (0: no cap).
Target: peak under 300 MB on every image for the first reader given. ``--record``
appends the table to ``bench/RESULTS.md`` under "qcow2 reader memory (issue 11)".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from results_file import append_to_section  # noqa: E402

from tests.unit.core.qcow2_images import shared_l1_image  # noqa: E402

OUT = HERE / "out"
RESULTS_HEADING = "## qcow2 reader memory (issue 11)"
MB = 1000**2
TIB = 1024**4
TARGET_MB = 300
SHARED_L1_ENTRIES = 32 * 1024 * 1024 // 8

# The child: analyse one image and say how long it took and what it peaked at. It reads
# VmHWM from /proc (the resident peak of this process alone, unlike ru_maxrss of a
# parent that waits for several children).
CHILD = r"""
import json, resource, sys, time
code, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, code)

def hwm():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0

from vmsnapgui.core.byte_source import FileByteSource
from vmsnapgui.core.qcow2 import analyse
baseline = hwm()
start = time.perf_counter()
report = {"baseline": baseline}
try:
    with FileByteSource(path) as source:
        usage = analyse(source)
    report["summary"] = {
        "now_data": usage.now.data_bytes,
        "now_delta": usage.now_delta_bytes,
        "deltas": sum(s.delta_bytes for s in usage.snapshots),
        "exclusive": sum(s.exclusive_bytes for s in usage.snapshots),
        "snapshots": len(usage.snapshots),
    }
except MemoryError:
    report["error"] = "MemoryError"
except Exception as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"
report["seconds"] = time.perf_counter() - start
report["peak"] = hwm()
print(json.dumps(report))
"""


# Why qemu-img check is not run on an image.
NO_CHECK = {"shared-l1": "not run (about 7 x 10^12 L2 entry visits)"}


@dataclass
class Reader:
    """What the runs of one reader (one ``--code``) measured on one image."""

    code: Path
    peaks: list[int] = field(default_factory=list)
    baselines: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    outcome: str = ""
    failed: bool = False


@dataclass
class Case:
    """One image and what the runs measured on it."""

    name: str
    image: Path
    readers: list[Reader] = field(default_factory=list)
    check_seconds: list[float] = field(default_factory=list)
    check_peaks: list[int] = field(default_factory=list)


def build_shared_l1() -> Path:
    image = OUT / "qcow2-mem-shared-l1.qcow2"
    if not image.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        partial = image.with_suffix(".partial")
        shared_l1_image(partial, snapshots=200, l1_entries=SHARED_L1_ENTRIES)
        partial.rename(image)
    return image


def build_preallocated() -> Path:
    image = OUT / "qcow2-mem-prealloc-2t.qcow2"
    if not image.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        partial = image.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        print(f"building {image} (once, about a minute) ...", flush=True)
        create = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata"]
        subprocess.run([*create, str(partial), str(2 * TIB)], check=True)
        for name in ("a", "b", "c"):
            subprocess.run(["qemu-img", "snapshot", "-c", name, str(partial)], check=True)
        partial.rename(image)
    return image


def build_scattered() -> Path:
    image = OUT / "qcow2-bench-scattered.qcow2"
    if not image.exists():
        subprocess.run([sys.executable, str(HERE / "bench_qcow2.py"), "--runs", "1"], check=True)
    return image


def measure(code: Path, image: Path, limit: int) -> dict[str, object]:
    """Analyse ``image`` in a fresh child; return its report."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(code), str(image), str(limit)],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    if done.returncode != 0:
        # A child killed outright (the kernel's OOM killer) says nothing on stdout.
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    report: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return report


def check(image: Path) -> tuple[float, int]:
    """Wall time and peak resident memory of one ``qemu-img check``."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["qemu-img", "check", "-q", str(image)], stdout=subprocess.DEVNULL, stderr=errors
        )
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN is the largest of all).
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip()
    if process.returncode not in (0, 2, 3):  # 2, 3: errors or leaks found, still checked
        raise SystemExit(f"qemu-img check failed: {message}")
    return elapsed, usage.ru_maxrss * 1024


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {memory:.1f} GiB RAM, {cpu}"


def megabytes(values: list[int]) -> str:
    return f"{max(values) / MB:.0f} MB" if values else "-"


def seconds(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s" if values else "-"


def describe_code(code: Path) -> str:
    """The checkout a reader comes from and its commit (``+ changes`` when not clean)."""
    where = "this checkout" if code == ROOT else str(code)
    git = ["git", "-C", str(code)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return where
    reader = "vmsnapgui/core/qcow2.py"
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", reader]).returncode != 0
    return f"{where} ({head.stdout.strip()}{' + changes' if dirty else ''})"


def run_once(reader: Reader, image: Path, limit: int) -> None:
    """One measured run; a reader that fails is not run again on this image."""
    report = measure(reader.code, image, limit)
    if "peak" in report:
        reader.peaks.append(int(report["peak"]))  # type: ignore[call-overload]
    if "error" in report:
        reader.outcome = str(report["error"])
        reader.failed = True
        return
    reader.baselines.append(int(report["baseline"]))  # type: ignore[call-overload]
    reader.seconds.append(float(report["seconds"]))  # type: ignore[arg-type]
    reader.outcome = json.dumps(report["summary"])


def main() -> int:
    """Build the images, measure each in fresh children, print and maybe record a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        help="where vmsnapgui is imported from (repeatable; default: this checkout)",
    )
    parser.add_argument("--limit-mb", type=int, default=8000, help="RLIMIT_AS of the child, MB")
    parser.add_argument("--no-check", action="store_true", help="skip qemu-img check")
    parser.add_argument("--only", action="append", help="a case name (repeatable)")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    cases = [
        Case("shared-l1", build_shared_l1()),
        Case("prealloc-2t", build_preallocated()),
        Case("scattered", build_scattered()),
    ]
    cases = [case for case in cases if not args.only or case.name in args.only]
    codes = [code.resolve() for code in args.code or [ROOT]]
    limit = args.limit_mb * MB
    for case in cases:
        case.readers = [Reader(code) for code in codes]
        checked = not args.no_check and case.name not in NO_CHECK
        # Warm the page cache: first reads from disk are not what is measured.
        for reader in case.readers:
            measure(reader.code, case.image, limit)
        for _ in range(args.runs):
            for reader in case.readers:
                if not reader.failed:
                    run_once(reader, case.image, limit)
            if checked:
                elapsed, peak = check(case.image)
                case.check_seconds.append(elapsed)
                case.check_peaks.append(peak)

    qemu = subprocess.run(
        ["qemu-img", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    names = [describe_code(code) for code in codes]
    lines = [
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, reader from {' vs '.join(names)}",
        "",
        f"- Machine: {machine()}; Python {platform.python_version()}; {qemu}",
        f"- Command: `.venv/bin/python bench/bench_qcow2_memory.py --runs {args.runs}"
        + "".join(f" --code {code}" for code in args.code or [])
        + (f" --limit-mb {args.limit_mb}" if args.limit_mb != 8000 else "")
        + "".join(f" --only {name}" for name in args.only or [])
        + (" --no-check" if args.no_check else "")
        + "`; child address space "
        + (f"capped at {args.limit_mb} MB" if args.limit_mb else "not capped")
        + f"; load average at the end {load}",
        "- Peak: VmHWM of a fresh child that imported the reader and analysed the image "
        "(worst run); baseline: the same child after the import alone",
        "",
        "| image | reader | analyse() peak | baseline | analyse() median time | "
        "`qemu-img check` peak | `qemu-img check` median time | outcome |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    passed = True
    for case in cases:
        first = case.readers[0]
        passed &= bool(first.seconds) and not first.failed and max(first.peaks) < TARGET_MB * MB
        if case.name in NO_CHECK:
            check_peak, time_check = "-", NO_CHECK[case.name]
        else:
            check_peak = megabytes(case.check_peaks)
            time_check = seconds(case.check_seconds)
        for reader, name in zip(case.readers, names, strict=True):
            lines.append(
                f"| {case.name} | {name} | {megabytes(reader.peaks)} "
                f"| {megabytes(reader.baselines)} | {seconds(reader.seconds)} "
                f"| {check_peak} | {time_check} | {reader.outcome} |"
            )
    lines += [
        "",
        f"Target: peak under {TARGET_MB} MB on every image ({names[0]}): "
        f"{'met' if passed else 'NOT met'}.",
        "",
    ]
    block = "\n".join(lines)
    print(block)
    if args.record:
        append_to_section(RESULTS_HEADING, block)
        print(f"recorded in {HERE / 'RESULTS.md'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
