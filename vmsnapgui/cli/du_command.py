"""``vmsnap du``: how much disk every snapshot of one VM holds."""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
from typing import Any

from vmsnapgui.cli.common import EXIT_OK, Session, print_json, printable, text_width
from vmsnapgui.core.disk_usage import DomainUsage, SnapshotUsage
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.core.units import format_bytes

_HEADER = ("SNAPSHOT", "DELTA", "EXCLUSIVE", "VMSTATE")
_ENGINE = "vmsnapgui.virt.disk_usage"


def register(commands: Any) -> None:
    """Add ``du`` to the ``vmsnap`` parser."""
    du = commands.add_parser(
        "du",
        help="disk space each snapshot holds",
        description=(
            "Per snapshot, in tree order: delta (data changed since its parent), exclusive "
            "(what deleting only it frees, internal snapshots) and saved memory; then Now "
            "(changed since the current snapshot), the total and the pool's free space. "
            "'?' marks a size that could not be read (the note says why), '~' one that "
            "may be slightly stale."
        ),
    )
    du.add_argument("domain", metavar="DOMAIN", help="name or UUID of the virtual machine")
    du.add_argument("--json", action="store_true", help="print JSON")
    du.set_defaults(run=run_du)


def run_du(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap du``."""
    # The size engine's imports (numpy above all) take longer than loading a tree over a
    # slow link, and loading waits on the network with the GIL released: do both at once.
    importing = threading.Thread(target=importlib.import_module, args=(_ENGINE,), daemon=True)
    importing.start()
    try:
        loaded = session.loader.load(args.domain)
    finally:
        importing.join()
    from vmsnapgui.virt.disk_usage import measure

    for line in loaded.tree.problem_lines():
        print(f"vmsnap: warning: {printable(line)}", file=sys.stderr)
    usage = measure(session.loader, loaded)
    if args.json:
        print_json(usage.to_json())
        return EXIT_OK
    state = loaded.domain.state.value
    count = len(loaded.tree)
    print(
        f"{printable(usage.domain)} ({state}) on {loaded.connection_uri}: "
        f"{count} snapshot{'s' if count != 1 else ''}"
    )
    for line in render_usage(usage, loaded.tree):
        print(line)
    return EXIT_OK


def render_usage(usage: DomainUsage, tree: SnapshotTree) -> list[str]:
    """The ``du`` table: snapshots indented by depth, Now, the total, pool and notes."""
    rows: list[tuple[str, str, str, str]] = []
    for item in usage.snapshots:
        depth = tree.depth(item.name) if item.name in tree else 0
        marker = " *" if item.name == tree.current else ""
        rows.append(
            (
                "  " * depth + printable(item.name) + marker,
                _size(item.delta_bytes, item),
                _size(item.exclusive_bytes, item),
                _size(item.vmstate_bytes, None),
            )
        )
    if usage.now is not None:
        since = f" (since {printable(tree.current)})" if tree.current else ""
        rows.append((f"Now{since}", _size(usage.now.delta_bytes, usage.now), "", ""))
    rows.append(("total", format_bytes(usage.total_bytes), "", ""))

    widths = [max(text_width(row[i]) for row in [_HEADER, *rows]) for i in range(4)]
    lines = []
    for row in [_HEADER, *rows]:
        name = row[0] + " " * (widths[0] - text_width(row[0]))
        numbers = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([name, *numbers]).rstrip())

    if usage.pool is not None:
        pool = usage.pool
        lines.append(
            f"pool {printable(pool.name)}: {format_bytes(pool.available)} free "
            f"of {format_bytes(pool.capacity)}"
        )
    notes = [f"{printable(s.name)}: {printable(s.note)}" for s in usage.snapshots if s.note]
    if usage.now is not None and usage.now.note:
        notes.append(f"Now: {printable(usage.now.note)}")
    notes += [printable(note) for note in usage.notes]
    if notes:
        lines.append("notes:")
        lines += [f"  {note}" for note in notes]
    return lines


def _size(count: int | None, item: SnapshotUsage | None) -> str:
    text = format_bytes(count)
    if count is not None and item is not None and item.approximate:
        return "~" + text
    return text
