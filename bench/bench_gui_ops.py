"""How responsive the window stays while operations run (issue 6: GUI thread never
blocked more than 50 ms during take, revert, clone and delete, on real guests).

One command: ``.venv/bin/python bench/bench_gui_ops.py [--runs 3] [--record]``

It defines a tiny running guest on qemu:///system (a qcow2 disk with 256 MiB of data
written by qemu-io, so a clone copies real bytes), opens the real window on that host,
and drives the operations the way a user does: the operation's dialog is opened by its
action, read for a moment (0.3 s, while the window behind it settles) and accepted. A
10 ms QTimer on the GUI thread records the longest gap between ticks from the moment OK
is pressed until the operation has ended and the tree has reloaded. Everything it
creates is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import libvirt
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication
from results_file import replace_section

from vmsnapgui.core.domain_xml import DiskSpec, domain_disks, tiny_domain_xml
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.qt.app import quiet_offscreen_warnings
from vmsnapgui.qt.app_settings import AppSettings, settings_at
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.operation_dialogs import (
    CloneDialog,
    DeleteDialog,
    RevertDialog,
    TakeSnapshotDialog,
)
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY
from vmsnapgui.virt.event_loop import ensure_event_loop

URI = "qemu:///system"
TARGET_MS = 50.0
READING_S = 0.3  # how long the harness "reads" a dialog before pressing OK
SECTION = "## GUI responsiveness during operations (issue 6)"


class Heartbeat:
    """The longest gap between 10 ms ticks on the GUI thread since the last reset."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.reset()
        self.timer.start()

    def reset(self) -> None:
        self.longest = 0.0
        self._last = time.perf_counter()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now


def cpu_steal_seconds() -> float:
    """CPU time taken from this (virtual) machine by its host so far, all CPUs together.

    Stalls here are a few tens of milliseconds; a neighbour on the host that takes the
    CPUs away for a moment shows up in them, and this says how much that happened.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def pump(app: QApplication, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Run Qt's own event loop until ``condition`` holds (checked every 5 ms).

    A real event loop, not processEvents in a sleep loop: the heartbeat must see only
    the GUI thread's own stalls, not the waiting harness's.
    """
    if condition():
        return
    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    timed_out = []

    def check() -> None:
        if condition():
            loop.quit()
        elif time.monotonic() > deadline:
            timed_out.append(True)
            loop.quit()

    checker = QTimer()
    checker.setInterval(5)
    checker.timeout.connect(check)
    checker.start()
    loop.exec()
    checker.stop()
    if timed_out:
        raise SystemExit(f"timed out waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of the four operations")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="snapshots the guest already has (a chain) before the operations start",
    )
    args = parser.parse_args(argv)
    section = SECTION if not args.history else f"{SECTION}, {args.history} snapshots already"

    ensure_event_loop()
    steal_before = cpu_steal_seconds()
    conn = libvirt.open(URI)
    workdir = Path(tempfile.mkdtemp(prefix="vmsnap-bench-ops-", dir="/var/tmp"))
    workdir.chmod(0o777)
    name = f"vmsnap-bench-ops-{uuid.uuid4().hex[:6]}"
    image = workdir / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "2G"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 256M", str(image)],
        check=True,
        capture_output=True,
    )
    kind = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    dom = conn.defineXML(tiny_domain_xml(name, [DiskSpec(str(image))], domain_type=kind))
    dom.create()
    for index in range(args.history):
        dom.snapshotCreateXML(snapshot_request_xml(f"history-{index:03d}", "made beforehand"), 0)

    quiet_offscreen_warnings()
    app = QApplication.instance() or QApplication([])
    settings = AppSettings(settings_at(str(workdir / "settings.ini")))
    window = MainWindow(settings, charts=os.environ.get("BENCH_NO_CHARTS") != "1")
    window.resize(1400, 900)
    window.show()
    results: dict[str, list[float]] = {"take": [], "revert": [], "clone": [], "delete": []}
    try:
        window.add_connection(URI, remember=False)
        pump(app, window.is_settled, 300, "the host to load")
        pump(app, lambda: window.select_path(name), 60, "the VM row")
        pump(
            app,
            lambda: window.tree_model.domain is not None and window.tree_model.domain.name == name,
            60,
            "the VM's tree",
        )
        beat = Heartbeat()
        ops = window.operations

        def run(
            label: str, select: str, action: str, dialog_type: type, fill: Callable[[object], None]
        ) -> None:
            pump(app, lambda: window.tree_view.select_key(select), 60, f"row {select}")
            ops.update_actions()
            window.operation_actions[action].trigger()
            pump(app, lambda: isinstance(ops.dialog, dialog_type), 60, f"the {label} dialog")
            dialog = ops.dialog
            fill(dialog)
            # A person reads the dialog before pressing OK; meanwhile the window draws
            # what opening it changed (the operations panel appears with the first
            # one). That belongs to opening the dialog, not to the operation.
            shown_at = time.monotonic()
            pump(
                app,
                lambda: window.is_settled() and time.monotonic() - shown_at > READING_S,
                60,
                f"the window behind the {label} dialog",
            )
            jobs_before = set(window.operations_panel._rows)
            beat.reset()
            dialog.accept()  # type: ignore[union-attr]
            new = [j for j in window.operations_panel._rows if j not in jobs_before]
            job = window.operations_panel._rows[new[0]].job
            pump(app, lambda: job.is_finished, 300, f"{label} to finish")
            if job.error is not None:
                raise SystemExit(f"{label} failed: {job.error.message}")
            pump(app, window.is_settled, 120, "the tree to reload")
            results[label].append(beat.longest * 1000)

        for run_index in range(args.runs):
            snap = f"bench-{run_index}"
            clone = f"{name}-clone-{run_index}"

            def name_it(dialog: object, value: str = snap) -> None:
                dialog.name_edit.setText(value)  # type: ignore[attr-defined]

            run("take", NOW_KEY, "take", TakeSnapshotDialog, name_it)
            run("revert", snap, "revert", RevertDialog, lambda d: None)

            def clone_it(dialog: object, value: str = clone) -> None:
                dialog.name_edit.setText(value)  # type: ignore[attr-defined]
                pump(app, lambda: dialog.required is not None, 120, "the clone estimate")  # type: ignore[attr-defined]

            run("clone", snap, "clone", CloneDialog, clone_it)
            clone_dom = conn.lookupByName(clone)
            clone_files = [d.source for d in domain_disks(clone_dom.XMLDesc(0)) if d.source]
            clone_dom.undefine()
            for path in clone_files:
                Path(path).unlink(missing_ok=True)
            pump(app, lambda: window.select_path(name), 60, "the VM row again")
            pump(
                app,
                lambda: (
                    window.tree_model.domain is not None and window.tree_model.domain.name == name
                ),
                60,
                "the VM's tree again",
            )
            run("delete", snap, "delete", DeleteDialog, lambda d: None)
            print(
                f"round {run_index + 1}: "
                + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in results.items()),
                flush=True,
            )
    finally:
        window.shutdown()
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError:
            pass
        shutil.rmtree(workdir, ignore_errors=True)
        conn.close()

    load = os.getloadavg()
    lines = [
        section,
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; CPU time the "
        f"hypervisor took from this machine during the run (steal): "
        f"{cpu_steal_seconds() - steal_before:.1f} s",
        f"- Command: `.venv/bin/python bench/bench_gui_ops.py --runs {args.runs}"
        f"{f' --history {args.history}' if args.history else ''}`; a running tiny "
        f"guest with 256 MiB of data{f' and {args.history} snapshots' if args.history else ''} "
        "on qemu:///system, every operation driven through its action "
        "and dialog; longest gap between 10 ms heartbeat ticks from OK until the operation ended "
        "and the tree reloaded. No peer: other libvirt front ends block their window instead.",
        "",
        "| operation | runs | median longest stall | worst | runs over target | each run (ms) "
        "| target |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    passed = True
    for label, values in results.items():
        worst = max(values)
        passed &= worst <= TARGET_MS
        over = sum(1 for value in values if value > TARGET_MS)
        each = ", ".join(f"{value:.0f}" for value in values)
        lines.append(
            f"| {label} | {len(values)} | {statistics.median(values):.0f} ms | {worst:.0f} ms | "
            f"{over} | {each} | "
            f"≤ {TARGET_MS:.0f} ms: {'met' if worst <= TARGET_MS else '**missed**'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        replace_section(section, text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
