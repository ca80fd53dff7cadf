#!/usr/bin/env python3
"""Benchmark qcow2 delta analysis: ``analyse()`` in-process against ``qemu-img check``.

One command::

    .venv/bin/python bench/bench_qcow2.py [--runs N] [--record]

The first run builds two images under ``bench/out/`` (git-ignored, kept for later runs),
each a 100 GiB virtual disk with 64 KiB clusters and 20 internal snapshots, with about
2.3 GiB written by ``qemu-io``: 300 MiB first, then 100 MiB before each snapshot.

* ``scattered``: each round's 100 MiB are 1 MiB writes at random offsets, a fifth of them
  over places written before. Most snapshots then own copies of many L2 tables, as a
  long-lived VM's do: about 1650 distinct L2 tables to read.
* ``sequential``: each round writes 100 MiB in one piece and rewrites the first MiB.
  Few, full L2 tables (about 40): ``qemu-img check`` is at its fastest here, and our
  per-entry work is the largest share.

Then, in the same run and with a warm page cache, it times ``--runs`` interleaved
repetitions of ``qemu-img check`` (wall clock of the whole subprocess) and of
``analyse()`` on a ``FileByteSource`` (wall clock inside this process, after import,
opening the file included) for each image. It prints the medians and their ratio;
``--record`` also writes them to ``bench/RESULTS.md`` under the heading
"qcow2 analysis (issue 4)" (replacing an earlier run's, keeping every other section).
The machine is shared: look at the load average in the report before trusting it.
Target: analyse() within 2x of qemu-img check on both images. Exit status 0 when met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from results_file import replace_section  # noqa: E402

from vmsnapgui.core.byte_source import FileByteSource  # noqa: E402
from vmsnapgui.core.qcow2 import analyse  # noqa: E402

OUT = HERE / "out"
RESULTS_FILE = HERE / "RESULTS.md"
RESULTS_HEADING = "## qcow2 analysis (issue 4)"

GIB = 1024**3
MIB = 1024**2
VIRTUAL_SIZE = 100 * GIB
SNAPSHOTS = 20
WRITE_SIZE = MIB
ROUND_MIB = 100
OVERWRITE_SHARE = 0.2
TARGET_RATIO = 2.0
# Bump when a recipe changes so a stale cached image is rebuilt.
RECIPE = "v1"


def scattered_rounds() -> list[list[str]]:
    """qemu-io commands per round: 1 MiB writes at random offsets, some over older ones."""
    rng = random.Random(4)
    written: list[int] = []
    slots = VIRTUAL_SIZE // WRITE_SIZE
    rounds = []
    for number, count in enumerate([3 * ROUND_MIB] + [ROUND_MIB] * SNAPSHOTS):
        commands = []
        for _ in range(count):
            if written and rng.random() < OVERWRITE_SHARE:
                offset = rng.choice(written)
            else:
                offset = rng.randrange(slots) * WRITE_SIZE
                written.append(offset)
            commands.append(f"write -P {number % 250 + 1} {offset} {WRITE_SIZE}")
        rounds.append(commands)
    return rounds


def sequential_rounds() -> list[list[str]]:
    """qemu-io commands per round: one contiguous piece, and the first MiB again."""
    rounds = [[f"write -P 1 0 {3 * ROUND_MIB * MIB}"]]
    for number in range(1, SNAPSHOTS + 1):
        start = (3 + number) * ROUND_MIB * MIB
        rounds.append(
            [f"write -P {number + 1} {start} {ROUND_MIB * MIB}", f"write -P {number + 1} 0 {MIB}"]
        )
    return rounds


@dataclass
class Case:
    """One bench image and its timings."""

    name: str
    rounds: Callable[[], list[list[str]]]
    check: list[float]
    ours: list[float]
    summary: str = ""

    @property
    def image(self) -> Path:
        return OUT / f"qcow2-bench-{self.name}.qcow2"

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.check)


def build_image(case: Case) -> None:
    """Create the case's image unless a complete one from this recipe is cached."""
    marker = case.image.with_suffix(".done")
    if case.image.exists() and marker.exists() and marker.read_text() == RECIPE:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    partial = case.image.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    print(f"building {case.image} (once) ...", flush=True)
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k"]
    subprocess.run([*create, str(partial), str(VIRTUAL_SIZE)], check=True)
    for number, commands in enumerate(case.rounds()):
        argv = ["qemu-io", "-f", "qcow2"]
        for command in commands:
            argv += ["-c", command]
        subprocess.run([*argv, str(partial)], check=True, stdout=subprocess.DEVNULL)
        if number > 0:
            snapshot = ["qemu-img", "snapshot", "-c", f"snap{number:02d}", str(partial)]
            subprocess.run(snapshot, check=True)
    partial.rename(case.image)
    marker.write_text(RECIPE)


def time_check(image: Path) -> float:
    """Wall time of one whole ``qemu-img check`` run."""
    start = time.perf_counter()
    done = subprocess.run(
        ["qemu-img", "check", "-q", str(image)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"qemu-img check failed: {done.stderr.decode().strip()}")
    return elapsed


def time_analyse(image: Path) -> tuple[float, str]:
    """Wall time of one ``analyse()`` call, opening the file included; and a summary."""
    start = time.perf_counter()
    with FileByteSource(image) as source:
        usage = analyse(source)
    elapsed = time.perf_counter() - start
    summary = (
        f"file {image.stat().st_size / GIB:.2f} GiB, Now holds {usage.now.data_bytes / GIB:.2f}"
        f" GiB, last snapshot's delta {usage.snapshots[-1].delta_bytes / MIB:.0f} MiB"
    )
    return elapsed, summary


def machine() -> str:
    """nproc, memory and CPU model, for the record."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {memory:.1f} GiB RAM, {cpu}"


def milliseconds(times: list[float]) -> str:
    return (
        f"{statistics.median(times) * 1e3:.1f} ms | {min(times) * 1e3:.1f} ms "
        f"| {max(times) * 1e3:.1f} ms"
    )


def main() -> int:
    """Build the images if needed, time both tools on each, print and record the result."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--record", action="store_true", help="write to bench/RESULTS.md")
    args = parser.parse_args()

    cases = [
        Case("scattered", scattered_rounds, [], []),
        Case("sequential", sequential_rounds, [], []),
    ]
    for case in cases:
        build_image(case)
        # Warm the page cache and both code paths; first reads are not what is measured.
        time_check(case.image)
        time_analyse(case.image)
        # Interleave the two so a change in machine load hits both alike.
        for _ in range(args.runs):
            case.check.append(time_check(case.image))
            elapsed, case.summary = time_analyse(case.image)
            case.ours.append(elapsed)

    passed = all(case.ratio <= TARGET_RATIO for case in cases)
    qemu = subprocess.run(
        ["qemu-img", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        RESULTS_HEADING,
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}; Python {platform.python_version()}; {qemu}",
        f"- Images: 100 GiB virtual, 64 KiB clusters, {SNAPSHOTS} internal snapshots each",
        f"- Runs: {args.runs} per tool and image, interleaved, warm page cache; "
        f"load average at the end {load}",
        "",
        "| image | tool | median | min | max | analyse / check |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        lines += [
            f"| {case.name} | `qemu-img check` (subprocess) | {milliseconds(case.check)} | |",
            f"| {case.name} | `analyse()` (in-process) | {milliseconds(case.ours)} "
            f"| **{case.ratio:.2f}x** |",
        ]
    lines.append("")
    lines += [f"- {case.name}: {case.summary}" for case in cases]
    lines += [
        "",
        f"Target: analyse() within {TARGET_RATIO:.0f}x of qemu-img check on both images: "
        f"{'met' if passed else 'NOT met'}.",
        "",
    ]
    block = "\n".join(lines)
    print(block)
    if args.record:
        replace_section(RESULTS_HEADING, block)
        print(f"recorded in {RESULTS_FILE}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
