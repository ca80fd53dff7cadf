"""The centre pane's view: the snapshot tree with size bars and remembered expansion."""

from __future__ import annotations

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    Signal,
    Slot,
)
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTreeView, QWidget

from vmsnapgui.qt.snapshot_filter_proxy import SnapshotFilterProxy
from vmsnapgui.qt.snapshot_tree_model import Column, Role, SnapshotTreeModel

# Above this many rows the tree opens only along the current snapshot's branch.
EXPAND_ALL_LIMIT = 3000
DEFAULT_WIDTHS = {
    Column.NAME: 250,
    Column.CREATED: 145,
    Column.DELTA: 120,  # the bar (size_bar) and the size
    Column.EXCLUSIVE: 90,
}


class SnapshotTreeView(QTreeView):
    """Shows a :class:`SnapshotTreeModel` (usually through the filter proxy).

    Remembers which snapshots the user collapsed, per VM, so switching VMs, refreshing
    and clearing the filter bring back the same view.

    Given a :class:`SnapshotFilterProxy`, the view shows it only while it filters; with
    no filter it reads the snapshot model directly. Through the proxy every painted cell
    costs a second call into Python (the proxy asks the model for the index it maps to),
    and each call into Python waits for the GIL while hosts load in the background. The
    selection model stays the same object across the switch, so whoever listens to it
    keeps hearing; the selection itself is cleared (the caller selects again).
    """

    context_menu_wanted = Signal(object, QPoint)  # key (or None), global position

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Snapshot tree")
        self.setUniformRowHeights(True)
        self.setAllColumnsShowFocus(True)
        self.setAlternatingRowColors(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        # Always there: a scroll bar that comes and goes with the tree's length narrows
        # the rows after they are drawn, so every VM shown was painted twice (and the
        # columns shifted under the pointer).
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.setExpandsOnDoubleClick(True)
        self._collapsed: dict[object, set[str]] = {}
        self._vm: object = None
        self._restoring = False
        self._proxy: SnapshotFilterProxy | None = None
        self.collapsed.connect(self._on_collapsed)
        self.expanded.connect(self._on_expanded)
        self.customContextMenuRequested.connect(self._on_context_menu)

    def setModel(self, model: object) -> None:
        if self._proxy is not None:
            self._proxy.filtering_changed.disconnect(self._on_filtering_changed)
        self._proxy = model if isinstance(model, SnapshotFilterProxy) else None
        if self._proxy is not None:
            self._proxy.filtering_changed.connect(self._on_filtering_changed)
            self._show_model(self._model_for(self._proxy))
        else:
            self._show_model(model if isinstance(model, QAbstractItemModel) else None)

    @staticmethod
    def _model_for(proxy: SnapshotFilterProxy) -> QAbstractItemModel:
        source = proxy.sourceModel()
        return proxy if proxy.words or source is None else source

    @Slot(bool)
    def _on_filtering_changed(self, filtering: bool) -> None:
        if self._proxy is not None:
            self._show_model(self._model_for(self._proxy))

    def _show_model(self, model: QAbstractItemModel | None) -> None:
        old = self.model()
        if model is old:
            return
        selection = self.selectionModel()
        if old is not None:
            old.rowsInserted.disconnect(self._on_rows_inserted)
        if selection is not None:
            selection.clearSelection()  # listeners hear of it; the caller selects again
        super().setModel(model)
        if model is None:
            return
        model.rowsInserted.connect(self._on_rows_inserted)
        fresh = self.selectionModel()
        if selection is not None and fresh is not selection:
            selection.setModel(model)
            self.setSelectionModel(selection)
            fresh.deleteLater()

    def apply_default_widths(self) -> None:
        """Column widths for a first start (saved widths replace them later)."""
        header = self.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for column, width in DEFAULT_WIDTHS.items():
            self.setColumnWidth(column, width)

    # -- keys and indexes -------------------------------------------------------------

    def source_model(self) -> SnapshotTreeModel | None:
        """The snapshot model under the proxy."""
        model = self.model()
        while isinstance(model, QSortFilterProxyModel):
            model = model.sourceModel()
        return model if isinstance(model, SnapshotTreeModel) else None

    def view_index(self, key: str) -> QModelIndex:
        """The view's index of a snapshot (or NOW_KEY); invalid when filtered out."""
        source = self.source_model()
        if source is None:
            return QModelIndex()
        index = source.index_of(key)
        model = self.model()
        if isinstance(model, QSortFilterProxyModel):
            return model.mapFromSource(index)
        return index

    def selected_key(self) -> str | None:
        """The key of the selected row."""
        indexes = self.selectionModel().selectedRows() if self.selectionModel() else []
        if not indexes:
            return None
        key = indexes[0].data(Role.KEY)
        return key if isinstance(key, str) else None

    def select_key(self, key: str) -> bool:
        """Select and show a row; False when it is not shown."""
        index = self.view_index(key)
        if not index.isValid():
            return False
        parent = index.parent()
        while parent.isValid():
            self.expand(parent)
            parent = parent.parent()
        self.setCurrentIndex(index)
        self.scrollTo(index, QAbstractItemView.ScrollHint.EnsureVisible)
        return True

    # -- expansion --------------------------------------------------------------------

    def show_vm(self, vm: object) -> None:
        """A (re)set model now shows ``vm``: open the branches as the user left them."""
        self._vm = vm
        self.restore_expansion()

    def restore_expansion(self) -> None:
        """Expand everything but what the user collapsed (big trees: the current branch)."""
        source = self.source_model()
        if source is None or source.tree is None:
            return
        collapsed = self._collapsed.get(self._vm, set())
        self._restoring = True
        try:
            if len(source.tree) <= EXPAND_ALL_LIMIT:
                self.expandAll()
                for key in collapsed:
                    index = self.view_index(key)
                    if index.isValid():
                        self.collapse(index)
            else:
                self._expand_current_branch(source)
        finally:
            self._restoring = False

    def expand_all_quietly(self) -> None:
        """Expand every row without recording it as the user's choice (filtering)."""
        self._restoring = True
        try:
            self.expandAll()
        finally:
            self._restoring = False

    def _expand_current_branch(self, source: SnapshotTreeModel) -> None:
        tree = source.tree
        if tree is None:
            return
        targets = [tree.current] if tree.current else []
        for key in targets:
            for name in [key, *tree.ancestors(key)]:
                index = self.view_index(name)
                if index.isValid():
                    self.expand(index)

    @Slot(QModelIndex, int, int)
    def _on_rows_inserted(self, parent: QModelIndex, first: int, last: int) -> None:
        # New snapshots open like the rest of the tree (a small one is all open).
        source = self.source_model()
        if source is None or source.tree is None or len(source.tree) > EXPAND_ALL_LIMIT:
            return
        model = self.model()
        self._restoring = True
        try:
            for row in range(first, last + 1):
                self.expandRecursively(model.index(row, 0, parent))
        finally:
            self._restoring = False

    @Slot(QModelIndex)
    def _on_collapsed(self, index: QModelIndex) -> None:
        if self._restoring:
            return
        key = index.data(Role.KEY)
        if isinstance(key, str):
            self._collapsed.setdefault(self._vm, set()).add(key)

    @Slot(QModelIndex)
    def _on_expanded(self, index: QModelIndex) -> None:
        if self._restoring:
            return
        key = index.data(Role.KEY)
        if isinstance(key, str):
            self._collapsed.setdefault(self._vm, set()).discard(key)

    @Slot(QPoint)
    def _on_context_menu(self, position: QPoint) -> None:
        index = self.indexAt(position)
        key = index.data(Role.KEY) if index.isValid() else None
        if index.isValid():
            self.setCurrentIndex(index)
        self.context_menu_wanted.emit(key, self.viewport().mapToGlobal(position))
