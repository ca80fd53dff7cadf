"""The snapshot tree: shape, order, current and "Now", and oddities that must not crash."""

from __future__ import annotations

import time

from vmsnapgui.core.snapshot import Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree


def snap(name: str, parent: str | None = None, created: int | None = 0) -> Snapshot:
    return Snapshot(name=name, parent=parent, created=created)


def branching_tree() -> SnapshotTree:
    return SnapshotTree(
        [
            snap("c2", "b", 30),
            snap("a", None, 10),
            snap("b", "a", 20),
            snap("c1", "b", 25),
            snap("d", "c1", 40),
            snap("z-root", None, 5),
        ],
        current="c1",
    )


def test_children_are_ordered_by_creation_time_then_name() -> None:
    tree = SnapshotTree([snap("y", "r", 5), snap("x", "r", 5), snap("w", "r", 1), snap("r")])
    assert tree.children("r") == ("w", "x", "y")


def test_roots_current_and_relations() -> None:
    tree = branching_tree()
    assert tree.roots == ("z-root", "a")
    assert tree.current == "c1"
    assert tree.parent("d") == "c1"
    assert tree.ancestors("d") == ["c1", "b", "a"]
    assert tree.descendants("b") == ["c1", "d", "c2"]
    assert tree.depth("d") == 3
    assert tree.problems == {}


def test_tree_order_puts_parents_before_children() -> None:
    tree = branching_tree()
    order = tree.names()
    assert order == ("z-root", "a", "b", "c1", "d", "c2")
    for name in order:
        parent = tree.parent(name)
        if parent is not None:
            assert order.index(parent) < order.index(name)
    assert [s.name for s in tree] == list(order)


def test_a_missing_parent_makes_a_root_and_is_reported() -> None:
    tree = SnapshotTree([snap("orphan", "gone", 5), snap("a")])
    assert tree.roots == ("a", "orphan")
    assert tree.parent("orphan") is None
    assert tree.problems["orphan"] == ("its parent 'gone' no longer exists; shown as a root",)


def test_a_loop_of_parents_is_cut_and_every_snapshot_still_shows() -> None:
    tree = SnapshotTree(
        [snap("a", "c", 1), snap("b", "a", 2), snap("c", "b", 3), snap("solo", None, 9)]
    )
    assert sorted(tree.names()) == ["a", "b", "c", "solo"]
    assert tree.roots == ("a", "solo")
    assert tree.names() == ("a", "b", "c", "solo")
    assert "its parents form a loop; shown as a root" in tree.problems["a"]


def test_a_snapshot_that_is_its_own_parent_becomes_a_root() -> None:
    tree = SnapshotTree([snap("me", "me")])
    assert tree.roots == ("me",)
    assert tree.problems["me"] == ("it names itself as its parent",)


def test_an_unknown_current_snapshot_is_reported_and_dropped() -> None:
    tree = SnapshotTree([snap("a")], current="ghost")
    assert tree.current is None
    assert tree.problem_lines() == ["libvirt reports 'ghost' as current, but it is not in the list"]


def test_snapshots_without_time_sort_after_the_dated_ones() -> None:
    tree = SnapshotTree([snap("undated", "r", None), snap("dated", "r", 100), snap("r")])
    assert tree.children("r") == ("dated", "undated")


def test_duplicates_keep_the_last_copy_and_are_reported() -> None:
    tree = SnapshotTree([snap("a", None, 1), snap("a", None, 2)])
    assert len(tree) == 1
    assert tree["a"].created == 2
    assert "listed twice; the last copy is shown" in tree.problems["a"]


def test_an_empty_tree_has_no_roots_and_no_current() -> None:
    tree = SnapshotTree([])
    assert tree.roots == () and tree.current is None and len(tree) == 0 and tree.names() == ()


def test_ten_thousand_snapshots_in_a_deep_chain_do_not_recurse() -> None:
    # A chain deeper than Python's recursion limit must work: traversal is iterative.
    count = 10_000
    chain = [snap(f"s{i:05d}", f"s{i - 1:05d}" if i else None, i) for i in range(count)]
    started = time.perf_counter()
    tree = SnapshotTree(reversed(chain), current=f"s{count - 1:05d}")
    assert len(tree.names()) == count
    assert tree.names()[0] == "s00000" and tree.names()[-1] == "s09999"
    assert len(tree.ancestors("s09999")) == count - 1
    assert time.perf_counter() - started < 30  # a hang guard, not a benchmark
