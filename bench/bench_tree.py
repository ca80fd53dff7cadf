#!/usr/bin/env python3
"""Benchmark snapshot-tree loading: ``vmsnap tree --json`` against virsh.

One command::

    .venv/bin/python bench/bench_tree.py [--quick] [--runs N] [--record]

It makes sure the bench domains exist (``vmsnap-bench-1000`` and
``vmsnap-bench-10000``, see ``make_snapshot_tree.py``), starts
``latency_proxy`` in front of libvirtd's UNIX socket with a 25 ms one-way
delay, checks that the proxy adds the delay and pipelines concurrent calls,
then times whole commands (``subprocess``, wall clock):

* ``slow-1000``: 1000 snapshots over ``qemu+tcp://127.0.0.1:PORT/system``
  through the proxy - ``vmsnap tree --json`` vs ``virsh snapshot-list --tree``.
  Target: vmsnap <= 1.5 s and >= 30x faster than virsh.
* ``local-10000``: 10,000 snapshots over ``qemu:///system`` -
  the same two commands. Target: vmsnap >= 2x faster than virsh.

Each tool's time is the median of ``--runs`` runs (virsh over the slow link
takes ~50 s a run, so it runs ``--slow-virsh-runs`` times, 1 by default).
vmsnap gets one untimed warm-up run per case (byte-code compilation and page
cache are not what is measured). Output goes to a temporary file, not a
terminal; each run's exit status and snapshot count are checked.

The script prints a results table and a Markdown block for
``bench/RESULTS.md``; ``--record`` appends that block under the heading
"Tree loading (issue 2)". Exit status: 0 when every target that was measured
passes, 1 when one fails or a command misbehaves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import latency_proxy  # noqa: E402
import make_snapshot_tree  # noqa: E402
from results_file import RESULTS_FILE, append_to_section  # noqa: E402

LOCAL_URI = "qemu:///system"
RESULTS_HEADING = "## Tree loading (issue 2)"
RUN_TIMEOUT_S = 900.0


# ------------------------------------------------------------------ model
@dataclass
class Timing:
    """Timed runs of one tool in one case."""

    tool: str
    argv: list[str]
    runs: list[float] = field(default_factory=list)
    skipped: str | None = None  # why it did not run
    error: str | None = None  # first failure (exit status, wrong count)

    @property
    def median(self) -> float | None:
        """Median wall time in seconds, None if there is none."""
        return statistics.median(self.runs) if self.runs else None


@dataclass
class Case:
    """One benchmark case: both tools on one tree over one URI."""

    key: str
    title: str
    uri: str
    domain: str
    count: int
    current: str
    max_seconds: float | None  # absolute target for vmsnap
    min_ratio: float  # virsh median / vmsnap median must reach this
    vmsnap: Timing | None = None
    virsh: Timing | None = None

    def ratio(self) -> float | None:
        """How many times faster vmsnap was than virsh (None if unknown)."""
        if self.vmsnap is None or self.virsh is None:
            return None
        a, b = self.vmsnap.median, self.virsh.median
        if a is None or b is None or a <= 0:
            return None
        return b / a

    def target_text(self) -> str:
        """The target, as words."""
        parts = []
        if self.max_seconds is not None:
            parts.append(f"<= {self.max_seconds:g} s")
        parts.append(f">= {self.min_ratio:g}x virsh")
        return " and ".join(parts)

    def verdict(self) -> str:
        """PASS, FAIL, SKIP, or PARTIAL (time checked, ratio not measured)."""
        v = self.vmsnap
        if v is None or v.skipped:
            return "SKIP"
        if v.error or v.median is None:
            return "FAIL"
        if self.max_seconds is not None and v.median > self.max_seconds:
            return "FAIL"
        ratio = self.ratio()
        if ratio is None:
            return "PARTIAL" if self.max_seconds is not None else "SKIP"
        return "PASS" if ratio >= self.min_ratio else "FAIL"


# ------------------------------------------------------------ environment
def environment() -> dict[str, str]:
    """Facts about this machine worth recording next to the numbers."""
    facts: dict[str, str] = {}
    facts["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts["nproc"] = str(len(os.sched_getaffinity(0)))
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    facts["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    facts["kernel"] = platform.release()
    facts["python"] = platform.python_version()
    facts["load average at start (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        out = subprocess.run(
            ["virsh", "-c", LOCAL_URI, "version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        lib = re.search(r"Using library: libvirt (\S+)", out)
        hyp = re.search(r"Running hypervisor: (.+)", out)
        daemon = re.search(r"Running against daemon: (\S+)", out)
        if lib:
            facts["libvirt"] = lib.group(1) + (f" (daemon {daemon.group(1)})" if daemon else "")
        if hyp:
            facts["hypervisor"] = hyp.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        import libvirt

        v = libvirt.getVersion()
        facts["libvirt client library"] = f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"
        facts["libvirt-python"] = version("libvirt-python")
    except Exception:  # informational only
        pass
    return facts


def check_daemon() -> None:
    """Exit with advice if libvirtd or virsh is missing."""
    if shutil.which("virsh") is None:
        raise SystemExit("error: virsh not found (apt-get install libvirt-clients)")
    latency_proxy.check_unix_socket(latency_proxy.DEFAULT_LIBVIRT_SOCKET)


# ------------------------------------------------------------- commands
def default_vmsnap() -> list[str]:
    """The vmsnap command: the venv's entry point, else ``python -m``."""
    exe = ROOT / ".venv" / "bin" / "vmsnap"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "vmsnapgui.cli"]


def vmsnap_has_tree(vmsnap: list[str]) -> str | None:
    """None if ``vmsnap tree --json`` exists, else why it cannot be used."""
    try:
        res = subprocess.run(
            [*vmsnap, "tree", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
    except OSError as exc:
        return f"cannot run {shlex.join(vmsnap)}: {exc}"
    except subprocess.TimeoutExpired:
        return f"{shlex.join(vmsnap)} tree --help hung"
    if res.returncode != 0 or "--json" not in res.stdout:
        why = (res.stderr.strip().splitlines() or ["no tree --json"])[-1]
        return f"`{shlex.join(vmsnap)} tree --json` is not available yet ({why})"
    return None


def count_vmsnap_json(text: str, case: Case) -> str | None:
    """None if vmsnap's JSON holds the expected tree, else what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"output is not JSON: {exc}"
    snaps = doc.get("snapshots") if isinstance(doc, dict) else doc
    if not isinstance(snaps, list):
        return "JSON has no snapshot list (expected {'snapshots': [...]})"
    if len(snaps) != case.count:
        return f"JSON lists {len(snaps)} snapshots, expected {case.count}"
    if isinstance(doc, dict) and "current" in doc:
        cur = doc["current"]
        if isinstance(cur, dict):
            cur = cur.get("name")
        if cur != case.current:
            return f"JSON says current is {cur!r}, expected {case.current!r}"
    return None


# A name line: optional "|" columns and "+- ", then the name; lines with only
# "|" and spaces are connectors.
_TREE_LINE = re.compile(r"^[ |]*(?:\+- )?(?P<name>[^ |].*)$")


def count_virsh_tree(text: str, case: Case) -> str | None:
    """None if virsh's tree output names every snapshot, else what is wrong."""
    names = set()
    for line in text.splitlines():
        m = _TREE_LINE.match(line.rstrip())
        if m:
            names.add(m.group("name"))
    if len(names) != case.count:
        return f"virsh printed {len(names)} snapshots, expected {case.count}"
    return None


def time_one(
    timing: Timing, check: Callable[[str], str | None], label: str, warmup: bool = False
) -> bool:
    """Run ``timing.argv`` once; record the time unless ``warmup``.

    Returns False (and sets ``timing.error``) if the command failed, timed
    out or printed the wrong tree.
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        t0 = time.perf_counter()
        try:
            res = subprocess.run(
                timing.argv, stdout=out, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT_S, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            timing.error = f"timed out after {RUN_TIMEOUT_S:.0f} s"
            print(f"  {label}: {timing.error}", flush=True)
            return False
        elapsed = time.perf_counter() - t0
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            timing.error = f"exit status {res.returncode}: {err[-1] if err else '(no stderr)'}"
            print(f"  {label}: FAILED, {timing.error}", flush=True)
            return False
        out.seek(0)
        problem = check(out.read())
    if problem:
        timing.error = problem
        print(f"  {label}: WRONG OUTPUT, {problem}", flush=True)
        return False
    if not warmup:
        timing.runs.append(elapsed)
    print(f"  {label}: {elapsed:.3f} s", flush=True)
    return True


def run_case(
    case: Case,
    vmsnap: list[str],
    vmsnap_skip: str | None,
    vmsnap_runs: int,
    virsh_runs: int,
    virsh_skip: str | None,
) -> None:
    """Time both tools on ``case``, alternating runs when both repeat."""
    print(f"\n== {case.title} ==", flush=True)
    case.vmsnap = Timing("vmsnap", [*vmsnap, "-c", case.uri, "tree", case.domain, "--json"])
    case.virsh = Timing("virsh", ["virsh", "-c", case.uri, "snapshot-list", "--tree", case.domain])
    case.vmsnap.skipped = vmsnap_skip
    case.virsh.skipped = virsh_skip
    for t in (case.vmsnap, case.virsh):
        print(
            f"  {t.tool}: {shlex.join(t.argv)}"
            + (f"  [skipped: {t.skipped}]" if t.skipped else ""),
            flush=True,
        )

    def check_vmsnap(text: str) -> str | None:
        return count_vmsnap_json(text, case)

    def check_virsh(text: str) -> str | None:
        return count_virsh_tree(text, case)

    v_ok = case.vmsnap.skipped is None
    if v_ok:
        v_ok = time_one(case.vmsnap, check_vmsnap, "vmsnap warm-up (not counted)", warmup=True)
    s_ok = case.virsh.skipped is None
    for r in range(max(vmsnap_runs, virsh_runs)):
        if v_ok and r < vmsnap_runs:
            v_ok = time_one(case.vmsnap, check_vmsnap, f"vmsnap run {r + 1}/{vmsnap_runs}")
        if s_ok and r < virsh_runs:
            s_ok = time_one(case.virsh, check_virsh, f"virsh  run {r + 1}/{virsh_runs}")
    for t in (case.vmsnap, case.virsh):
        if t.median is not None:
            print(f"  {t.tool}: median of {len(t.runs)} = {t.median:.3f} s", flush=True)


# --------------------------------------------------------------- report
def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def table_rows(cases: Sequence[Case]) -> list[list[str]]:
    """Rows: case, tool, runs, median s, min, max, ratio, target, result."""
    rows = []
    for c in cases:
        for t in (c.vmsnap, c.virsh):
            if t is None:
                continue
            if t.skipped:
                rows.append(
                    [
                        c.key,
                        t.tool,
                        "0",
                        "-",
                        "-",
                        "-",
                        "-",
                        c.target_text() if t.tool == "vmsnap" else "baseline",
                        "SKIP" if t.tool == "vmsnap" else "skipped",
                    ]
                )
                continue
            if t.tool == "vmsnap":
                r = c.ratio()
                ratio = "-" if r is None else f"{r:.1f}x"
                target, result = c.target_text(), c.verdict()
                if t.error:
                    result = "FAIL (error)"
            else:
                ratio, target = "1.0x", "baseline"
                result = "error" if t.error else "ok"
            rows.append(
                [
                    c.key,
                    t.tool,
                    str(len(t.runs)),
                    _fmt_s(t.median),
                    _fmt_s(min(t.runs) if t.runs else None),
                    _fmt_s(max(t.runs) if t.runs else None),
                    ratio,
                    target,
                    result,
                ]
            )
    return rows


HEADERS = ["case", "tool", "runs", "median s", "min s", "max s", "ratio", "target", "result"]


def print_table(rows: list[list[str]]) -> None:
    """A plain-text table on stdout."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def markdown_block(
    facts: dict[str, str], cases: Sequence[Case], proxy_note: str, notes: Sequence[str]
) -> str:
    """The Markdown block for bench/RESULTS.md (one run)."""
    lines = [f"### {facts.get('date', '')}", ""]
    command = shlex.join([".venv/bin/python", "bench/bench_tree.py", *sys.argv[1:]])
    lines.append(f"Command: `{command}`")
    lines.append("")
    for k in (
        "nproc",
        "memory",
        "cpu",
        "kernel",
        "libvirt",
        "hypervisor",
        "libvirt client library",
        "libvirt-python",
        "python",
        "load average at start (1/5/15 min)",
        "load average at end (1/5/15 min)",
    ):
        if k in facts:
            lines.append(f"- {k}: {facts[k]}")
    lines.append(f"- proxy: {proxy_note}")
    lines.append("")
    rows = table_rows(cases)
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join("---" for _ in HEADERS) + "|")
    for r in rows:
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in r) + " |")
    lines.append("")
    for c in cases:
        for t in (c.vmsnap, c.virsh):
            if t is not None and t.error:
                lines.append(f"- {c.key} {t.tool} error: {t.error}")
    lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        description="Time `vmsnap tree --json` against `virsh snapshot-list --tree`."
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 run each and skip virsh over the slow link (~50 s a run)",
    )
    ap.add_argument(
        "--runs",
        type=int,
        default=None,
        help="timed runs per tool, median reported (default 5, 1 with --quick; "
        "virsh on the local 10,000 tree runs min(runs, 3) times)",
    )
    ap.add_argument(
        "--slow-virsh-runs",
        type=int,
        default=1,
        help="runs of virsh over the slow link (default 1, ~50 s each)",
    )
    ap.add_argument(
        "--delay-ms", type=float, default=25.0, help="one-way delay added by the proxy (default 25)"
    )
    ap.add_argument(
        "--port", type=int, default=0, help="proxy port on 127.0.0.1 (default: a free one)"
    )
    ap.add_argument(
        "--only", choices=("slow", "local"), help="run only the slow-link or only the local case"
    )
    ap.add_argument("--slow-count", type=int, default=1000)
    ap.add_argument("--local-count", type=int, default=10000)
    ap.add_argument(
        "--vmsnap",
        metavar="CMD",
        help="vmsnap command (default .venv/bin/vmsnap); split like a shell "
        "would, never run through one",
    )
    ap.add_argument("--skip-vmsnap", action="store_true", help="time virsh only")
    ap.add_argument(
        "--record",
        action="store_true",
        help=f"append the Markdown block to {RESULTS_FILE.relative_to(ROOT)}",
    )
    args = ap.parse_args(argv)
    runs = max(1, args.runs if args.runs is not None else (1 if args.quick else 5))

    check_daemon()
    facts = environment()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))

    vmsnap = shlex.split(args.vmsnap) if args.vmsnap else default_vmsnap()
    vmsnap_skip = "--skip-vmsnap" if args.skip_vmsnap else vmsnap_has_tree(vmsnap)
    if vmsnap_skip:
        print(f"\nNOTE: skipping vmsnap: {vmsnap_skip}")

    want_slow = args.only in (None, "slow")
    want_local = args.only in (None, "local")
    cases: list[Case] = []
    notes: list[str] = []

    print("\nensuring the bench domains exist:")
    infos = {}
    for count, wanted in ((args.slow_count, want_slow), (args.local_count, want_local)):
        if wanted and count not in infos:
            infos[count] = make_snapshot_tree.ensure_tree(LOCAL_URI, count)

    proxy_note = "not used"
    if want_slow:
        info = infos[args.slow_count]
        delay = args.delay_ms / 1000.0
        with latency_proxy.LatencyProxy(
            delay=delay,
            upstream_unix=latency_proxy.DEFAULT_LIBVIRT_SOCKET,
            listen_port=args.port,
        ) as proxy:
            uri = proxy.libvirt_uri
            print(
                f"\nproxy 127.0.0.1:{proxy.port} -> "
                f"{latency_proxy.DEFAULT_LIBVIRT_SOCKET}, one-way delay "
                f"{args.delay_ms:g} ms"
            )
            chk = latency_proxy.measure_libvirt(uri, domain=info.domain)
            latency_proxy.print_check(chk, delay)
            proxy_note = (
                f"asyncio TCP proxy -> libvirtd UNIX socket, {args.delay_ms:g} ms each way; "
                f"measured round trip {chk.round_trip_s * 1000:.1f} ms, "
                f"libvirt.open {chk.connect_s * 1000:.0f} ms, "
                + (
                    f"`virsh version` {chk.virsh_version_s:.2f} s, "
                    if chk.virsh_version_s is not None
                    else ""
                )
                + f"{chk.calls} getXMLDesc from {chk.threads} threads "
                f"{chk.concurrent_s:.3f} s (one after another ~{chk.sequential_s:.1f} s)"
            )
            if chk.round_trip_s < 2 * delay * 0.95:
                print("WARNING: the proxy adds less delay than asked")
            case = Case(
                "slow-1000" if info.count == 1000 else f"slow-{info.count}",
                f"{info.count} snapshots, {args.delay_ms:g} ms one-way delay ({uri})",
                uri,
                info.domain,
                info.count,
                info.current,
                max_seconds=1.5,
                min_ratio=30.0,
            )
            slow_skip = None
            if args.quick:
                slow_skip = "--quick (a virsh run takes ~50 s over this link)"
                notes.append(
                    "virsh over the slow link was skipped (--quick); "
                    "the ratio there was not measured."
                )
            elif args.slow_virsh_runs == 1:
                notes.append(
                    "virsh over the slow link ran once (~50 s a run); "
                    "vmsnap's median is of "
                    f"{runs} runs after one warm-up."
                )
            run_case(case, vmsnap, vmsnap_skip, runs, max(1, args.slow_virsh_runs), slow_skip)
            cases.append(case)
    if want_local:
        info = infos[args.local_count]
        case = Case(
            f"local-{info.count}",
            f"{info.count} snapshots, local socket ({LOCAL_URI})",
            LOCAL_URI,
            info.domain,
            info.count,
            info.current,
            max_seconds=None,
            min_ratio=2.0,
        )
        virsh_runs = runs if args.quick else min(runs, 3)
        run_case(case, vmsnap, vmsnap_skip, runs, virsh_runs, None)
        cases.append(case)

    if vmsnap_skip:
        notes.append(f"vmsnap was skipped: {vmsnap_skip}.")
    notes.append("Times are whole commands (process start to exit, output to a file); medians.")

    facts["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print("\nresults:")
    print_table(table_rows(cases))
    block = markdown_block(facts, cases, proxy_note, notes)
    print('\nMarkdown for bench/RESULTS.md (section "Tree loading (issue 2)"):\n')
    print(block)
    if args.record:
        append_to_section(RESULTS_HEADING, block)
        print(f"\nrecorded in {RESULTS_FILE}")
    failed = any(c.verdict() == "FAIL" for c in cases) or any(
        t is not None and t.error for c in cases for t in (c.vmsnap, c.virsh)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
