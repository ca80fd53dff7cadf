"""``vmsnap``: the command-line face of the snapshot engine.

Exit status: 0 on success, 1 with one line on stderr on failure, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from vmsnapgui import __version__
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.snapshot import DomainSummary, Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``vmsnap``."""
    parser = _Parser(
        prog="vmsnap",
        description="Snapshot trees, sizes and operations for libvirt virtual machines.",
    )
    parser.add_argument("--version", action="version", version=f"vmsnap {__version__}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-c", "--connect", metavar="URI", help="libvirt URI (default: libvirt's default)"
    )
    where.add_argument(
        "--demo", action="store_true", help="use the built-in demo lab (built on first use)"
    )
    parser.add_argument(
        "--demo-reset", action="store_true", help="rebuild the demo lab from scratch first"
    )
    parser.add_argument("--read-only", action="store_true", help="open the connection read-only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    listing = commands.add_parser("list", help="virtual machines with their snapshots")
    listing.add_argument("--json", action="store_true", help="print JSON")

    tree = commands.add_parser("tree", help="one virtual machine's snapshot tree")
    tree.add_argument("domain", metavar="DOMAIN", help="name or UUID of the virtual machine")
    tree.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmsnap``."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        print(f"vmsnap: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("vmsnap: interrupted", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    # Heavy imports (libvirt) wait until a command really needs them.
    from vmsnapgui.virt.connection import Connection
    from vmsnapgui.virt.snapshot_loader import SnapshotLoader

    uri = args.connect
    if args.demo or args.demo_reset:
        from vmsnapgui.virt.demo_lab import ensure_demo_lab

        uri = ensure_demo_lab(reset=args.demo_reset, progress=_progress_to_stderr).uri
    connection = Connection(uri, read_only=args.read_only, monitor=False)
    connection.open()
    loader = SnapshotLoader(connection)
    try:
        if args.command == "list":
            return _list(loader, args.json)
        if args.command == "tree":
            return _tree(loader, args.domain, args.json)
        raise AssertionError(args.command)
    finally:
        loader.close()
        connection.close()


def _progress_to_stderr(message: str) -> None:
    print(f"vmsnap: {message}", file=sys.stderr, flush=True)


# -- list ---------------------------------------------------------------------------


def _list(loader: Any, as_json: bool) -> int:
    domains: list[DomainSummary] = loader.list_domains()
    if as_json:
        payload = {
            "connection": loader.connection.display_uri,
            "domains": [
                {
                    "name": d.name,
                    "uuid": d.uuid,
                    "state": d.state.json_name,
                    "persistent": d.persistent,
                    "snapshots": d.snapshot_count,
                    "current": d.current_snapshot,
                }
                for d in domains
            ],
        }
        _print_json(payload)
        return EXIT_OK
    if not domains:
        print(f"No virtual machines on {loader.connection.display_uri}.")
        return EXIT_OK
    rows = [
        (
            printable(d.name),
            d.state.value,
            "?" if d.snapshot_count is None else str(d.snapshot_count),
            printable(d.current_snapshot or "-"),
        )
        for d in domains
    ]
    _print_table(("NAME", "STATE", "SNAPSHOTS", "CURRENT"), rows)
    return EXIT_OK


# -- tree ---------------------------------------------------------------------------


def tree_json(connection_uri: str, domain: DomainSummary, tree: SnapshotTree) -> dict[str, Any]:
    """The ``vmsnap tree --json`` document: snapshots with parents before children."""
    return {
        "connection": connection_uri,
        "domain": {"name": domain.name, "uuid": domain.uuid, "state": domain.state.json_name},
        "current": tree.current,
        "snapshots": [_snapshot_json(tree, snapshot) for snapshot in tree],
    }


def _snapshot_json(tree: SnapshotTree, snapshot: Snapshot) -> dict[str, Any]:
    return {
        "name": snapshot.name,
        "parent": tree.parent(snapshot.name),
        "children": list(tree.children(snapshot.name)),
        "created": snapshot.created,
        "state": snapshot.state,
        "description": snapshot.description,
        "memory": snapshot.memory.value,
        "memory_file": snapshot.memory_file,
        "current": snapshot.name == tree.current,
        "disks": [
            {"target": disk.target, "kind": disk.kind.value, "file": disk.file}
            for disk in snapshot.disks
        ],
    }


def _tree(loader: Any, domain_name: str, as_json: bool) -> int:
    loaded = loader.load(domain_name)
    tree: SnapshotTree = loaded.tree
    for line in tree.problem_lines():
        print(f"vmsnap: warning: {line}", file=sys.stderr)
    if as_json:
        _print_json(tree_json(loaded.connection_uri, loaded.domain, tree))
        return EXIT_OK
    domain: DomainSummary = loaded.domain
    count = len(tree)
    print(
        f"{printable(domain.name)} ({domain.state.value}) on {loaded.connection_uri}: "
        f"{count} snapshot{'s' if count != 1 else ''}"
        + (f", current {printable(tree.current)!r}" if tree.current else "")
    )
    for line in render_tree(tree, domain):
        print(line)
    return EXIT_OK


def render_tree(tree: SnapshotTree, domain: DomainSummary) -> list[str]:
    """The tree as text lines with box-drawing branches, "Now" under the current one."""
    rows: list[tuple[str, str, str, str]] = []

    def now_row(prefix: str) -> None:
        rows.append((f"{prefix}└─ ▶ Now", "", domain.state.value, "you are here"))

    def walk(name: str, prefix: str, last: bool, top: bool) -> None:
        snapshot = tree[name]
        branch = "" if top else ("└─ " if last else "├─ ")
        marker = " *" if name == tree.current else ""
        rows.append(
            (
                f"{prefix}{branch}{printable(name)}{marker}",
                _format_time(snapshot.created),
                snapshot.state or "?",
                _kind_text(snapshot),
            )
        )
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        children = tree.children(name)
        has_now = name == tree.current
        for index, child in enumerate(children):
            walk(child, child_prefix, index == len(children) - 1 and not has_now, False)
        if has_now:
            now_row(child_prefix)

    for root in tree.roots:
        walk(root, "", True, True)
    if tree.current is None:
        now_row("")
    widths = [max(_width(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join(
            [
                row[0] + " " * (widths[0] - _width(row[0])),
                row[1].ljust(widths[1]),
                row[2].ljust(widths[2]),
                row[3],
            ]
        ).rstrip()
        for row in rows
    ]


def _kind_text(snapshot: Snapshot) -> str:
    parts = []
    if snapshot.is_external and snapshot.is_internal:
        parts.append("mixed")
    elif snapshot.is_external:
        parts.append("external")
    elif snapshot.is_internal:
        parts.append("internal")
    parts.append("with memory" if snapshot.has_memory else "disk only")
    if snapshot.description:
        first_line = snapshot.description.splitlines()[0] if snapshot.description.strip() else ""
        if first_line:
            parts.append(f"— {printable(first_line[:60])}")
    return ", ".join(parts[:2]) + (f" {parts[2]}" if len(parts) > 2 else "")


def _format_time(created: int | None) -> str:
    if created is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created))


def _width(text: str) -> int:
    return len(text)


def printable(text: str) -> str:
    """Text safe for a terminal: control characters shown as escapes, not obeyed."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _print_json(payload: Any) -> None:
    # Indented for a person at a terminal; compact otherwise, which lets the json
    # module use its C encoder (json.dump with indent is pure Python: seconds for a
    # 10,000-snapshot tree).
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(payload, indent=indent, ensure_ascii=False))
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
