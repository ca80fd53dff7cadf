"""The filter box's model: matching snapshots stay, with every ancestor that leads to them."""

from __future__ import annotations

from PySide6.QtCore import (
    QModelIndex,
    QModelRoleData,
    QModelRoleDataSpan,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Signal,
)

from vmsnapgui.qt.snapshot_tree_model import Role, SnapshotTreeModel


class SnapshotFilterProxy(QSortFilterProxyModel):
    """Keeps rows whose name or description contains every word typed (any case).

    Recursive filtering keeps the rows a match sits under (the branches leading to it),
    so a match deep in the tree still shows where it sits. Nothing is sorted: the tree's
    own order is kept. The matches are worked out once per filter text (Qt asks about
    each row many times while it walks the tree), and size updates do not re-filter:
    only a new text or a new tree (:meth:`refilter`) does.

    :attr:`filtering_changed` says when the proxy starts or stops hiding rows, so a view
    can read the snapshot model directly while there is nothing to hide.
    """

    filtering_changed = Signal(bool)  # True: some text filters the rows now

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self.setDynamicSortFilter(False)
        # The role the filter reads. Qt walks up to every ancestor of a changed row when
        # a change touches this role (recursive filtering); size updates do not touch
        # it, so they cost one signal per parent, not one per ancestor of each parent.
        self.setFilterRole(Role.FILTER_TEXT)
        self._words: tuple[str, ...] = ()
        self._matches: set[str] = set()

    @property
    def words(self) -> tuple[str, ...]:
        """The words every shown row contains."""
        return self._words

    def set_filter_text(self, text: str) -> None:
        """Filter by ``text`` (split into words); an empty text shows everything."""
        words = tuple(text.casefold().split())
        if words == self._words:
            return
        was_filtering = bool(self._words)
        self.beginFilterChange()
        self._words = words
        self._matches = self._source_matches()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        if bool(words) != was_filtering:
            self.filtering_changed.emit(bool(words))

    def refilter(self) -> None:
        """Filter again (the tree changed under an active filter)."""
        if not self._words:
            return
        self.beginFilterChange()
        self._matches = self._source_matches()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def _source_matches(self) -> set[str]:
        model = self.sourceModel()
        if not self._words or not isinstance(model, SnapshotTreeModel):
            return set()
        return model.matching_keys(self._words)

    def filterAcceptsRow(
        self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex
    ) -> bool:
        if not self._words:
            return True
        model = self.sourceModel()
        if not isinstance(model, SnapshotTreeModel):
            return True
        return model.key_at(source_row, source_parent) in self._matches

    def multiData(
        self,
        index: QModelIndex | QPersistentModelIndex,
        roleDataSpan: QModelRoleDataSpan | QModelRoleData,
    ) -> None:
        # Qt's proxy asks its source once per role; the snapshot model answers all the
        # roles of a cell in one call into Python.
        model = self.sourceModel()
        if isinstance(model, SnapshotTreeModel):
            model.multiData(self.mapToSource(index), roleDataSpan)
        else:
            super().multiData(index, roleDataSpan)
