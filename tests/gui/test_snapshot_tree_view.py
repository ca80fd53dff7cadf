"""The snapshot tree view: the filter proxy only while it filters, one selection model."""

from __future__ import annotations

from PySide6.QtCore import QItemSelection
from pytestqt.qtbot import QtBot

from tests.gui.conftest import loaded_tree
from tests.gui.test_snapshot_tree_model import WEB
from vmsnapgui.qt.snapshot_filter_proxy import SnapshotFilterProxy
from vmsnapgui.qt.snapshot_tree_model import SnapshotTreeModel
from vmsnapgui.qt.snapshot_tree_view import SnapshotTreeView


def make_view(qtbot: QtBot) -> tuple[SnapshotTreeView, SnapshotTreeModel, SnapshotFilterProxy]:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    proxy = SnapshotFilterProxy()
    proxy.setSourceModel(model)
    view = SnapshotTreeView()
    qtbot.addWidget(view)
    view.setModel(proxy)
    view.show_vm("vm")
    return view, model, proxy


def test_without_a_filter_the_view_reads_the_tree_model_directly(qtbot: QtBot) -> None:
    view, model, proxy = make_view(qtbot)
    assert view.model() is model
    proxy.set_filter_text("tuned")
    assert view.model() is proxy
    assert view.view_index("tuned").isValid()
    assert not view.view_index("tls").isValid()
    proxy.set_filter_text("")
    assert view.model() is model
    assert view.view_index("tls").isValid()


def test_listeners_of_the_selection_keep_hearing_across_a_filter(qtbot: QtBot) -> None:
    view, _model, proxy = make_view(qtbot)
    selection = view.selectionModel()
    heard: list[str | None] = []

    def on_selection(selected: QItemSelection, deselected: QItemSelection) -> None:
        heard.append(view.selected_key())

    selection.selectionChanged.connect(on_selection)
    assert view.select_key("php")
    proxy.set_filter_text("tuned")
    assert view.selectionModel() is selection
    assert view.selected_key() is None  # the caller selects again
    assert view.select_key("tuned")
    proxy.set_filter_text("")
    assert view.selectionModel() is selection
    assert view.select_key("tls")
    assert heard == ["php", None, "tuned", None, "tls"]


def test_column_widths_survive_a_filter(qtbot: QtBot) -> None:
    view, _model, proxy = make_view(qtbot)
    view.setColumnWidth(0, 333)
    proxy.set_filter_text("php")
    assert view.columnWidth(0) == 333
    proxy.set_filter_text("")
    assert view.columnWidth(0) == 333
