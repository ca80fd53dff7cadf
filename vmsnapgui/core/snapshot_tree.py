"""The shape of one VM's snapshots: roots, children, the current snapshot and "Now".

Built once from records and never changed afterwards, so views and workers can share it
across threads. Surprises in the data (a parent that no longer exists, a loop of
parents, a current snapshot that is not listed) never raise: the snapshot is placed
where it can be shown and the oddity is recorded in :attr:`SnapshotTree.problems`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from vmsnapgui.core.snapshot import Snapshot


def _sibling_key(snapshot: Snapshot) -> tuple[bool, int, str]:
    # Creation order first; snapshots without a time go last; the name breaks ties.
    return (snapshot.created is None, snapshot.created or 0, snapshot.name)


class SnapshotTree:
    """An immutable forest of snapshots with the current snapshot and "Now" marked."""

    __slots__ = ("_by_name", "_children", "_current", "_order", "_parent", "_problems", "_roots")

    def __init__(self, snapshots: Iterable[Snapshot], current: str | None = None) -> None:
        by_name: dict[str, Snapshot] = {}
        problems: dict[str, list[str]] = {}
        for snapshot in snapshots:
            if snapshot.name in by_name:
                problems.setdefault(snapshot.name, []).append(
                    "listed twice; the last copy is shown"
                )
            by_name[snapshot.name] = snapshot
            if snapshot.problems:
                problems.setdefault(snapshot.name, []).extend(snapshot.problems)

        parent: dict[str, str | None] = {}
        for snapshot in by_name.values():
            declared = snapshot.parent
            if declared is not None and declared not in by_name:
                problems.setdefault(snapshot.name, []).append(
                    f"its parent {declared!r} no longer exists; shown as a root"
                )
                declared = None
            elif declared == snapshot.name:
                problems.setdefault(snapshot.name, []).append("it names itself as its parent")
                declared = None
            parent[snapshot.name] = declared

        children: dict[str | None, list[str]] = {}
        for name in sorted(by_name, key=lambda n: _sibling_key(by_name[n])):
            children.setdefault(parent[name], []).append(name)

        order = self._preorder(children)
        if len(order) < len(by_name):
            # What was not reached hangs off a loop of parents: cut each loop at its
            # oldest member so every snapshot is still shown.
            seen = set(order)
            for name in sorted(by_name, key=lambda n: _sibling_key(by_name[n])):
                if name in seen:
                    continue
                problems.setdefault(name, []).append("its parents form a loop; shown as a root")
                old_parent = parent[name]
                children[old_parent].remove(name)
                parent[name] = None
                roots = children.setdefault(None, [])
                roots.append(name)
                roots.sort(key=lambda n: _sibling_key(by_name[n]))
                order = self._preorder(children)
                seen = set(order)

        if current is not None and current not in by_name:
            problems.setdefault("", []).append(
                f"libvirt reports {current!r} as current, but it is not in the list"
            )
            current = None

        self._by_name = by_name
        self._parent = parent
        self._children = {key: tuple(value) for key, value in children.items()}
        self._roots = self._children.get(None, ())
        self._current = current
        self._order = tuple(order)
        self._problems = {key: tuple(value) for key, value in problems.items()}

    @staticmethod
    def _preorder(children: dict[str | None, list[str]]) -> list[str]:
        order: list[str] = []
        stack = list(reversed(children.get(None, [])))
        while stack:
            name = stack.pop()
            order.append(name)
            stack.extend(reversed(children.get(name, [])))
        return order

    # -- lookups ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Snapshot:
        return self._by_name[name]

    def get(self, name: str) -> Snapshot | None:
        """The snapshot called ``name``, or None."""
        return self._by_name.get(name)

    @property
    def roots(self) -> tuple[str, ...]:
        """Names of snapshots without a parent, oldest first."""
        return self._roots

    @property
    def current(self) -> str | None:
        """The snapshot libvirt calls current: "Now" sits directly under it."""
        return self._current

    def parent(self, name: str) -> str | None:
        """The parent shown in the tree (None for a root)."""
        return self._parent[name]

    def children(self, name: str | None) -> tuple[str, ...]:
        """Children of ``name`` ordered by creation time then name; None gives the roots."""
        return self._children.get(name, ())

    def ancestors(self, name: str) -> list[str]:
        """Parent, grandparent, … up to the root."""
        result: list[str] = []
        node = self._parent[name]
        while node is not None:
            result.append(node)
            node = self._parent[node]
        return result

    def descendants(self, name: str) -> list[str]:
        """Every snapshot below ``name``, parents before children."""
        result: list[str] = []
        stack = list(reversed(self._children.get(name, ())))
        while stack:
            node = stack.pop()
            result.append(node)
            stack.extend(reversed(self._children.get(node, ())))
        return result

    def depth(self, name: str) -> int:
        """0 for a root, 1 for its children, …"""
        return len(self.ancestors(name))

    def names(self) -> tuple[str, ...]:
        """Every name in tree order: parents before children, siblings oldest first."""
        return self._order

    def __iter__(self) -> Iterator[Snapshot]:
        by_name = self._by_name
        return (by_name[name] for name in self._order)

    @property
    def problems(self) -> dict[str, tuple[str, ...]]:
        """Oddities per snapshot name; the key ``""`` holds those about the whole tree."""
        return dict(self._problems)

    def problem_lines(self) -> list[str]:
        """Every oddity as one readable line, for logs and the CLI."""
        lines = []
        for name, messages in self._problems.items():
            for message in messages:
                lines.append(f"snapshot {name!r}: {message}" if name else message)
        return lines
