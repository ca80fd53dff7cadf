"""``vmsnap list`` and ``vmsnap tree``: the read verbs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from vmsnapgui.cli.common import (
    EXIT_OK,
    Session,
    print_json,
    print_table,
    printable,
    text_width,
)
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.linked_clones import HostLinks, link_json, short_marker
from vmsnapgui.core.snapshot import DomainSummary, Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree


def register(commands: Any) -> None:
    """Add ``list`` and ``tree`` to the ``vmsnap`` parser."""
    listing = commands.add_parser("list", help="virtual machines with their snapshots")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=run_list)

    tree = commands.add_parser("tree", help="one virtual machine's snapshot tree")
    tree.add_argument("domain", metavar="DOMAIN", help="name or UUID of the virtual machine")
    tree.add_argument("--json", action="store_true", help="print JSON")
    tree.set_defaults(run=run_tree)


def run_list(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap list``."""
    return _list(session.loader, args.json)


def run_tree(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap tree``."""
    return _tree(session.loader, args.domain, args.json)


def _list(loader: Any, as_json: bool) -> int:
    domains: list[DomainSummary] = loader.list_domains()
    links = _linked_clones(loader, domains)
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
                    "linked_clone_of": [link_json(link) for link in links.stands_on(d.name)],
                    "linked_clones": [link_json(link) for link in links.clones_of(d.name)],
                }
                for d in domains
            ],
            "linked_clones_checked": {
                "from_images": links.from_images,
                "notes": list(links.notes),
            },
        }
        print_json(payload)
        return EXIT_OK
    for note in links.notes:
        print(f"vmsnap: note: {printable(note)}", file=sys.stderr)
    if not domains:
        print(f"No virtual machines on {loader.connection.display_uri}.")
        return EXIT_OK
    header: tuple[str, ...] = ("NAME", "STATE", "SNAPSHOTS", "CURRENT")
    rows: list[tuple[str, ...]] = [
        (
            printable(d.name),
            d.state.value,
            "?" if d.snapshot_count is None else str(d.snapshot_count),
            printable(d.current_snapshot or "-"),
        )
        for d in domains
    ]
    if links.links:
        # Only when there is something to say: the four columns stay as they were.
        header += ("LINKED",)
        rows = [
            (*row, printable(_linked_cell(links, d.name)))
            for row, d in zip(rows, domains, strict=True)
        ]
    print_table(header, rows)
    return EXIT_OK


def _linked_clones(loader: Any, domains: list[DomainSummary]) -> HostLinks:
    """The host's linked clones; an empty answer with a note when they cannot be read
    (the listing itself still stands)."""
    if not domains:
        return HostLinks()
    from vmsnapgui.virt.linked_clones import read_linked_clones

    try:
        return read_linked_clones(loader)
    except UserError as exc:
        return HostLinks(notes=(f"Linked clones could not be looked for: {exc.message}",))


def _linked_cell(links: HostLinks, name: str) -> str:
    parts = []
    marker = short_marker(links.stands_on(name))
    if marker:
        parts.append(marker)
    clones = links.clones_of(name)
    if clones:
        names = sorted({link.clone for link in clones}, key=str.casefold)
        parts.append(f"{len(names)} linked clone{'s' if len(names) != 1 else ''}")
    return "; ".join(parts) or "-"


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
        print(f"vmsnap: warning: {printable(line)}", file=sys.stderr)
    if as_json:
        print_json(tree_json(loaded.connection_uri, loaded.domain, tree))
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
    widths = [max(text_width(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join(
            [
                row[0] + " " * (widths[0] - text_width(row[0])),
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
