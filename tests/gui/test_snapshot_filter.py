"""The filter box keeps matching snapshots and the ancestors that lead to them."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex
from pytestqt.modeltest import ModelTester

from tests.gui.conftest import loaded_tree, snap
from tests.gui.test_snapshot_tree_model import WEB
from vmsnapgui.qt.snapshot_filter_proxy import SnapshotFilterProxy
from vmsnapgui.qt.snapshot_tree_model import SnapshotTreeModel


def shown(proxy: SnapshotFilterProxy, parent: QModelIndex | None = None) -> list[str]:
    parent = parent or QModelIndex()
    names: list[str] = []
    for row in range(proxy.rowCount(parent)):
        index = proxy.index(row, 0, parent)
        names.append(index.data())
        names.extend(shown(proxy, index))
    return names


def filtered(text: str) -> list[str]:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    proxy = SnapshotFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text(text)
    return shown(proxy)


def test_an_empty_filter_shows_everything() -> None:
    assert filtered("") == ["base", "nginx", "tls", "upgrade", "Now", "php", "tuned"]


def test_a_match_deep_in_the_tree_keeps_the_rows_it_sits_under_and_drops_the_rest() -> None:
    # 'tuned' sits under the branch 'php', which sits under 'nginx'.
    assert filtered("tuned") == ["nginx", "php", "tuned"]


def test_descriptions_match_too_and_case_does_not_matter() -> None:
    assert filtered("PHP-FPM") == ["nginx", "php"]


def test_every_word_must_match() -> None:
    assert filtered("apt nginx") == ["nginx"]
    assert filtered("apt tuned") == []


def test_now_is_found_by_its_name() -> None:
    assert filtered("now") == ["nginx", "tls", "Now"]


def test_the_filtered_model_is_a_valid_model(qtmodeltester: ModelTester) -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    proxy = SnapshotFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text("php")
    qtmodeltester.check(proxy)
    model.set_tree(loaded_tree([*WEB, snap("php-2", "tuned", 9)], "php-2"))
    proxy.refilter()  # the window does this when a new tree arrives under a filter
    assert shown(proxy) == ["nginx", "php", "php-2"]
