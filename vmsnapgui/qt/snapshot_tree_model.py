"""The centre pane's model: one VM's snapshot tree, "Now" and the sizes of every node.

A :class:`QAbstractItemModel` over our own nodes (Qt's Simple Tree Model pattern): each
node knows its parent, its children and its row, so ``index()``/``parent()`` cost the
same with ten thousand siblings as with ten. The snapshots themselves stay in the
immutable :class:`~vmsnapgui.core.snapshot_tree.SnapshotTree`; nodes hold only names.

A refresh of the same VM is applied as a diff (rows removed, inserted, changed), so
expanded branches, the selection and the scroll position survive it. Sizes
(:class:`~vmsnapgui.core.disk_usage.DomainUsage`) arrive later and only change the
size columns.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QModelRoleData,
    QModelRoleDataSpan,
    QPersistentModelIndex,
    Qt,
)
from PySide6.QtGui import QFont

from vmsnapgui.core.disk_usage import DomainUsage, SnapshotUsage
from vmsnapgui.core.snapshot import DomainSummary, Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.core.units import format_bytes
from vmsnapgui.qt import icons, size_bar
from vmsnapgui.qt.display_text import SizeText, exact_time, local_time, size_text
from vmsnapgui.qt.model_roles import answer_roles, no_value
from vmsnapgui.virt.snapshot_loader import DomainSnapshots

# The key of the "Now" row. Snapshot names come from XML, which cannot hold NUL.
NOW_KEY = "\x00now"
NOW_LABEL = "Now"

ModelIndex = QModelIndex | QPersistentModelIndex
# Above this many parents, a size update is announced once for the whole tree.
PER_PARENT_SIGNAL_LIMIT = 200
# Cells whose values are kept (a few screenfuls; scrolling a big tree starts again).
CELL_CACHE_LIMIT = 4000


class Column(enum.IntEnum):
    """The columns of the snapshot tree."""

    NAME = 0
    CREATED = 1
    DELTA = 2
    EXCLUSIVE = 3
    DESCRIPTION = 4


COLUMN_COUNT = len(Column)

HEADERS = {
    Column.NAME: "Name",
    Column.CREATED: "Created",
    Column.DELTA: "Delta",
    Column.EXCLUSIVE: "Exclusive",
    Column.DESCRIPTION: "Description",
}
HEADER_TOOLTIPS = {
    Column.DELTA: "Disk data that changed between the parent snapshot and this one "
    "(for Now: since the current snapshot). Saved memory is shown in the tooltip.",
    Column.EXCLUSIVE: "Disk space that deleting only this snapshot would free "
    "(internal snapshots).",
}


class Role(enum.IntEnum):
    """Data the views and the filter read besides text."""

    KEY = Qt.ItemDataRole.UserRole + 1  # snapshot name, or NOW_KEY
    IS_NOW = Qt.ItemDataRole.UserRole + 2
    BAR_FRACTION = Qt.ItemDataRole.UserRole + 3  # delta / largest delta, or None
    FILTER_TEXT = Qt.ItemDataRole.UserRole + 4  # what the filter box searches


# What a size update changes in a row.
SIZE_ROLES = (
    int(Qt.ItemDataRole.DisplayRole),
    int(Qt.ItemDataRole.ToolTipRole),
    int(Qt.ItemDataRole.DecorationRole),  # the Delta column's bar
    int(Role.BAR_FRACTION),
)


def _bar(fraction: float | None) -> object:
    """The Delta cell's bar (see size_bar), or nothing when the delta is not known."""
    return None if fraction is None else size_bar.bar_pixmap(fraction)


class _Node:
    """A row: a snapshot name (or NOW_KEY), its parent, children and cached row.

    ``index`` keeps the row's index in column 0 once made (for the row it was made at):
    views ask for parents and first cells all the time, and making an index is a call
    into Qt that gives the GIL away and waits to get it back.
    """

    __slots__ = ("children", "index", "index_row", "key", "parent", "row")

    def __init__(self, key: str | None, parent: _Node | None, row: int = 0) -> None:
        self.key = key
        self.parent = parent
        self.children: list[_Node] = []
        self.row = row
        self.index: QModelIndex | None = None
        self.index_row = -1


class UsageState(enum.Enum):
    """Where the sizes of the shown VM are."""

    PENDING = "pending"
    LOADED = "loaded"
    UNAVAILABLE = "unavailable"


class SnapshotTreeModel(QAbstractItemModel):
    """One VM's snapshots as a tree, with a "Now" row under the current snapshot."""

    def __init__(self, parent: object | None = None) -> None:
        super().__init__(parent)  # type: ignore[arg-type]
        self._root = _Node(None, None)
        self._nodes: dict[str, _Node] = {}
        self._loaded: DomainSnapshots | None = None
        self._usage: dict[str, SnapshotUsage] = {}
        self._now_usage: SnapshotUsage | None = None
        self._usage_state = UsageState.PENDING
        self._usage_reason: str | None = None
        self._largest_delta = 0
        self._filter_texts: dict[str, str] | None = None
        # What each painted cell showed, per role: a repaint asks the same of every
        # visible cell again (see _cell_value); forgotten whenever anything changes.
        self._cells: dict[tuple[str, int], dict[int, object]] = {}
        self._bold = QFont()
        self._bold.setBold(True)
        self._italic = QFont()
        self._italic.setItalic(True)

    # -- what is shown ----------------------------------------------------------------

    @property
    def loaded(self) -> DomainSnapshots | None:
        """The VM and tree shown (None when empty)."""
        return self._loaded

    @property
    def tree(self) -> SnapshotTree | None:
        """The snapshot tree shown."""
        return self._loaded.tree if self._loaded is not None else None

    @property
    def domain(self) -> DomainSummary | None:
        """The VM shown."""
        return self._loaded.domain if self._loaded is not None else None

    @property
    def usage_state(self) -> UsageState:
        """Whether sizes are pending, loaded or unavailable."""
        return self._usage_state

    @property
    def usage_reason(self) -> str | None:
        """Why sizes are unavailable."""
        return self._usage_reason

    @property
    def largest_delta(self) -> int:
        """The largest delta of the VM (Now included): the full length of a size bar."""
        return self._largest_delta

    def usage_of(self, key: str) -> SnapshotUsage | None:
        """The measured usage of a snapshot (or of Now for NOW_KEY), if known."""
        if key == NOW_KEY:
            return self._now_usage
        return self._usage.get(key)

    def keys(self) -> list[str]:
        """Every row's key in display order (parents first, Now included)."""
        result: list[str] = []
        stack = list(reversed(self._root.children))
        while stack:
            node = stack.pop()
            if node.key is not None:
                result.append(node.key)
            stack.extend(reversed(node.children))
        return result

    def index_of(self, key: str, column: int = 0) -> QModelIndex:
        """The index of a snapshot (or NOW_KEY); invalid when not shown."""
        node = self._nodes.get(key)
        if node is None:
            return QModelIndex()
        return self._first_cell(node) if column == 0 else self.createIndex(node.row, column, node)

    def key_of(self, index: ModelIndex) -> str | None:
        """The snapshot name (or NOW_KEY) of a row."""
        node = self._node(index)
        return None if node is None else node.key

    def snapshot_of(self, index: ModelIndex) -> Snapshot | None:
        """The snapshot of a row (None for Now or an invalid index)."""
        key = self.key_of(index)
        tree = self.tree
        if key is None or key == NOW_KEY or tree is None:
            return None
        return tree.get(key)

    # -- updates ----------------------------------------------------------------------

    def clear(self) -> None:
        """Show nothing."""
        self.beginResetModel()
        self._reset_state(None)
        self.endResetModel()

    def set_tree(
        self,
        loaded: DomainSnapshots | None,
        *,
        usage: DomainUsage | None = None,
        usage_unavailable: str | None = None,
    ) -> None:
        """Show a VM's tree; for the same VM, apply only what changed.

        When the VM changes, ``usage``/``usage_unavailable`` (the sizes known so far)
        come with the reset, so the size columns need no second pass.
        """
        if loaded is None:
            self.clear()
            return
        previous = self._loaded
        same_vm = (
            previous is not None
            and previous.domain.uuid == loaded.domain.uuid
            and previous.connection_uri == loaded.connection_uri
        )
        self._filter_texts = None
        if not same_vm:
            self.beginResetModel()
            self._reset_state(loaded)
            self._build_children(self._root, display_layout(loaded.tree))
            self._store_usage(usage, usage_unavailable)
            self.endResetModel()
            return
        assert previous is not None
        self._loaded = loaded
        usage_before, largest_before = self._usage, self._largest_delta
        self._keep_usage_that_still_holds(previous.tree, loaded.tree)
        # Before any signal: views ask again at once.
        self._forget_changed_cells(previous.tree, loaded.tree, usage_before, largest_before)
        self._apply_diff(previous, loaded)

    def _forget_changed_cells(
        self,
        old: SnapshotTree,
        new: SnapshotTree,
        usage_before: dict[str, SnapshotUsage],
        largest_before: int,
    ) -> None:
        """Drop the cached cells a new tree of the same VM changes, and only those.

        A revert or a new snapshot changes a few rows (the current snapshot's, Now's);
        working out every cell of a screenful again (some 900 values) was half the cost
        of the repaint that follows an operation.
        """
        # Every bar is drawn against the largest delta (Now's, often, which a revert
        # forgets): when that changes, so does every bar, and only the bar.
        bars_changed = self._largest_delta != largest_before
        changed = {NOW_KEY, old.current, new.current}
        for key, column in list(self._cells):
            if (
                key in changed
                or old.get(key) != new.get(key)
                or self._usage.get(key) is not usage_before.get(key)
            ):
                del self._cells[(key, column)]
                continue
            cell = self._cells[(key, column)]
            # A snapshot's tooltip names its place in the tree: asked for again.
            cell.pop(int(Qt.ItemDataRole.ToolTipRole), None)
            if bars_changed and column == Column.DELTA:
                cell.pop(int(Qt.ItemDataRole.DecorationRole), None)
                cell.pop(int(Role.BAR_FRACTION), None)

    def key_at(self, row: int, parent: ModelIndex) -> str | None:
        """The key of a row without making an index (the filter's fast path)."""
        node = self._node(parent) if parent.isValid() else self._root
        if node is None or not 0 <= row < len(node.children):
            return None
        return node.children[row].key

    def matching_keys(self, words: tuple[str, ...]) -> set[str]:
        """Keys whose name or description contains every word (casefolded)."""
        texts = self._filter_texts
        if texts is None:
            texts = self._filter_texts = self._build_filter_texts()
        return {key for key, text in texts.items() if all(word in text for word in words)}

    def _build_filter_texts(self) -> dict[str, str]:
        texts = {NOW_KEY: NOW_LABEL.casefold()}
        tree = self.tree
        if tree is not None:
            for snapshot in tree:
                texts[snapshot.name] = f"{snapshot.name}\n{snapshot.description or ''}".casefold()
        return texts

    def set_usage(self, usage: DomainUsage | None, unavailable: str | None = None) -> None:
        """Show measured sizes, or say why there are none (``unavailable``).

        ``usage`` None with no reason means sizes are being measured.
        """
        self._store_usage(usage, unavailable)
        self._emit_columns_changed(Column.DELTA, Column.EXCLUSIVE)

    def _store_usage(self, usage: DomainUsage | None, unavailable: str | None) -> None:
        self._cells.clear()
        self._usage = {}
        self._now_usage = None
        if unavailable is not None:
            self._usage_state = UsageState.UNAVAILABLE
            self._usage_reason = unavailable
        elif usage is None:
            self._usage_state = UsageState.PENDING
            self._usage_reason = None
        else:
            self._usage_state = UsageState.LOADED
            self._usage_reason = None
            self._usage = {item.name: item for item in usage.snapshots}
            self._now_usage = usage.now
        self._recompute_largest()

    # -- Qt's model interface -----------------------------------------------------------

    def index(self, row: int, column: int, parent: ModelIndex = QModelIndex()) -> QModelIndex:  # noqa: B008
        # Bounds checked here, not with hasIndex(), which would call back into rowCount()
        # and columnCount(): views and the filter proxy ask for indexes all the time, and
        # each call into Python waits for the GIL while trees load in the background.
        if row < 0 or not 0 <= column < COLUMN_COUNT:
            return QModelIndex()
        if parent.isValid():
            parent_node = self._node(parent) if parent.column() == 0 else None
        else:
            parent_node = self._root
        if parent_node is None or row >= len(parent_node.children):
            return QModelIndex()
        node = parent_node.children[row]
        return self._first_cell(node) if column == 0 else self.createIndex(row, column, node)

    def parent(self, index: ModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        node = self._node(index)
        if node is None:
            return QModelIndex()
        parent = node.parent
        if parent is None or parent is self._root:
            return QModelIndex()
        return self._first_cell(parent)

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        if parent.column() > 0:
            return 0
        node = self._node(parent) if parent.isValid() else self._root
        return 0 if node is None else len(node.children)

    def hasChildren(self, parent: ModelIndex = QModelIndex()) -> bool:  # noqa: B008
        if parent.column() > 0:
            return False
        node = self._node(parent) if parent.isValid() else self._root
        return node is not None and bool(node.children)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return COLUMN_COUNT

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < COLUMN_COUNT:
            return None
        column = Column(section)
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[column]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TOOLTIPS.get(column)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (
            Column.DELTA,
            Column.EXCLUSIVE,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # flags(): Qt's default (enabled and selectable) is what this model wants; leaving
    # it to Qt spares a call into Python for every row painted.

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        node = self._node(index)
        if node is None or node.key is None or self._loaded is None:
            return None
        return self._cell_value(node.key, index.column(), role)

    def multiData(
        self, index: ModelIndex, roleDataSpan: QModelRoleDataSpan | QModelRoleData
    ) -> None:
        """Every role a view asks for at once (one call into Python per cell painted).

        Qt's default asks :meth:`data` once per role, seven or more times per cell, and
        each of those calls must win the GIL back from whichever background thread runs
        Python: while an operation's reload and measurement ran, that made one repaint
        of the tree cost several times its work.
        """
        node = self._node(index)
        if node is None or node.key is None or self._loaded is None:
            answer_roles(roleDataSpan, no_value)
            return
        key, column = node.key, index.column()
        answer_roles(roleDataSpan, lambda role: self._cell_value(key, column, role))

    def _cell_value(self, key: str, column: int, role: int) -> object:
        """One role of one cell, worked out once until the tree or its sizes change.

        A screenful of rows is over a hundred cells of seven roles each, asked again on
        every repaint (times, sizes and tooltips formatted, each a few calls deep):
        20 ms of Python for one repaint of 26 rows, before this.
        """
        cell = self._cells.get((key, column))
        if cell is None:
            if len(self._cells) > CELL_CACHE_LIMIT:
                self._cells.clear()  # scrolled through a big tree: start again
            cell = self._cells[(key, column)] = {}
        elif role in cell:
            return cell[role]
        loaded = self._loaded
        value: object = None
        if loaded is not None:
            if key == NOW_KEY:
                value = self._now_data(column, role, loaded)
            else:
                snapshot = loaded.tree.get(key)
                if snapshot is not None:
                    value = self._snapshot_data(snapshot, column, role, loaded)
        cell[role] = value
        return value

    # -- data per kind of row -----------------------------------------------------------

    def _snapshot_data(
        self, snapshot: Snapshot, column: int, role: int, loaded: DomainSnapshots
    ) -> object:
        current = loaded.tree.current == snapshot.name
        if role == Qt.ItemDataRole.DisplayRole:
            if column == Column.NAME:
                return snapshot.name
            if column == Column.CREATED:
                return local_time(snapshot.created)
            if column == Column.DESCRIPTION:
                return (snapshot.description or "").split("\n", 1)[0]
            if column in (Column.DELTA, Column.EXCLUSIVE):
                return self._size(snapshot.name, Column(column)).text
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == Column.NAME:
                return _snapshot_tooltip(snapshot, current, loaded.tree)
            if column == Column.CREATED:
                return exact_time(snapshot.created)
            if column == Column.DESCRIPTION:
                return snapshot.description or "No description"
            if column in (Column.DELTA, Column.EXCLUSIVE):
                return self._size(snapshot.name, Column(column)).tooltip
            return None
        if role == Qt.ItemDataRole.DecorationRole and column == Column.NAME:
            return icons.row_icon(icons.snapshot_icon(snapshot, current=current))
        if role == Qt.ItemDataRole.FontRole and current:
            return self._bold
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (
            Column.DELTA,
            Column.EXCLUSIVE,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Role.KEY:
            return snapshot.name
        if role == Role.IS_NOW:
            return False
        if role == Role.BAR_FRACTION and column == Column.DELTA:
            return self._bar_fraction(self._usage.get(snapshot.name))
        if role == Qt.ItemDataRole.DecorationRole and column == Column.DELTA:
            return _bar(self._bar_fraction(self._usage.get(snapshot.name)))
        if role == Role.FILTER_TEXT:
            return f"{snapshot.name}\n{snapshot.description or ''}".casefold()
        if role == Qt.ItemDataRole.AccessibleTextRole and column == Column.NAME:
            return f"{snapshot.name}{' (current snapshot)' if current else ''}"
        return None

    def _now_data(self, column: int, role: int, loaded: DomainSnapshots) -> object:
        state = loaded.domain.state
        if role == Qt.ItemDataRole.DisplayRole:
            if column == Column.NAME:
                return NOW_LABEL
            if column == Column.DESCRIPTION:
                return f"You are here ({state.value})"
            if column == Column.DELTA:
                return self._size(NOW_KEY, Column.DELTA).text
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == Column.NAME:
                current = loaded.tree.current
                where = (
                    f"It grows from the current snapshot {current!r}."
                    if current
                    else "There is no current snapshot."
                )
                return f"Now: the VM as it is ({state.value}). {where}"
            if column == Column.DELTA:
                return self._size(NOW_KEY, Column.DELTA).tooltip
            return None
        if role == Qt.ItemDataRole.DecorationRole and column == Column.NAME:
            return icons.row_icon(icons.now_icon())
        if role == Qt.ItemDataRole.FontRole:
            return self._italic
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (
            Column.DELTA,
            Column.EXCLUSIVE,
        ):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Role.KEY:
            return NOW_KEY
        if role == Role.IS_NOW:
            return True
        if role == Role.BAR_FRACTION and column == Column.DELTA:
            return self._bar_fraction(self._now_usage)
        if role == Qt.ItemDataRole.DecorationRole and column == Column.DELTA:
            return _bar(self._bar_fraction(self._now_usage))
        if role == Role.FILTER_TEXT:
            return NOW_LABEL.casefold()
        if role == Qt.ItemDataRole.AccessibleTextRole and column == Column.NAME:
            return "Now, you are here"
        return None

    def _size(self, key: str, column: Column) -> SizeText:
        unavailable = self._usage_reason if self._usage_state is UsageState.UNAVAILABLE else None
        usage = self.usage_of(key) if self._usage_state is UsageState.LOADED else None
        is_now = key == NOW_KEY
        state = self._loaded.domain.state if self._loaded is not None else None
        if column == Column.DELTA:
            value = usage.delta_bytes if usage else None
            text = size_text(
                usage,
                value,
                what="delta",
                unavailable=unavailable,
                stale=state if is_now and state is not None else False,
            )
            if usage is not None and usage.vmstate_bytes:
                memory = f"\nSaved memory: {format_bytes(usage.vmstate_bytes)}"
                text = SizeText(text.text, text.tooltip + memory)
            return text
        value = usage.exclusive_bytes if usage else None
        return size_text(usage, value, what="exclusive size", unavailable=unavailable)

    def _bar_fraction(self, usage: SnapshotUsage | None) -> float | None:
        if usage is None or usage.delta_bytes is None or self._largest_delta <= 0:
            return None
        return max(0.0, min(1.0, usage.delta_bytes / self._largest_delta))

    # -- internals ------------------------------------------------------------------------

    def _node(self, index: ModelIndex) -> _Node | None:
        if not index.isValid():
            return None
        node = index.internalPointer()
        return node if isinstance(node, _Node) else None

    def _reset_state(self, loaded: DomainSnapshots | None) -> None:
        self._cells.clear()
        self._root = _Node(None, None)
        self._nodes = {}
        self._loaded = loaded
        self._usage = {}
        self._now_usage = None
        self._usage_state = UsageState.PENDING
        self._usage_reason = None
        self._largest_delta = 0

    def _build_children(self, node: _Node, layout: Layout) -> None:
        """Give ``node`` its whole subtree of rows (used for new rows only)."""
        stack = [node]
        nodes = self._nodes
        while stack:
            parent = stack.pop()
            keys = layout.get(parent.key, ())
            children = [_Node(key, parent, row) for row, key in enumerate(keys)]
            parent.children = children
            for child in children:
                nodes[child.key] = child  # type: ignore[index]
            stack.extend(children)

    def _forget_subtree(self, node: _Node) -> None:
        stack = [node]
        while stack:
            item = stack.pop()
            if item.key is not None and self._nodes.get(item.key) is item:
                del self._nodes[item.key]
            stack.extend(item.children)

    def _index_of_node(self, node: _Node) -> QModelIndex:
        if node is self._root:
            return QModelIndex()
        return self._first_cell(node)

    def _first_cell(self, node: _Node) -> QModelIndex:
        """The node's index in column 0, made once for the row it is at."""
        if node.index is None or node.index_row != node.row:
            node.index = self.createIndex(node.row, 0, node)
            node.index_row = node.row
        return node.index

    def _apply_diff(self, previous: DomainSnapshots, loaded: DomainSnapshots) -> None:
        new_tree = loaded.tree
        layout = display_layout(new_tree)
        row_parent = {key: parent for parent, keys in layout.items() for key in keys}

        def new_parent(key: str) -> str | bool | None:
            # False: the key is gone; otherwise the key of the row it sits under (None
            # for the top level).
            return row_parent.get(key, False)

        # 1. Remove rows that vanished, moved to another parent or changed order.
        stack = [self._root]
        while stack:
            parent = stack.pop()
            desired = (
                layout.get(parent.key, ())
                if parent.key in row_parent or (parent is self._root)
                else ()
            )
            position = {key: i for i, key in enumerate(desired)}
            doomed: list[int] = []
            last = -1
            for child in parent.children:
                assert child.key is not None
                target = new_parent(child.key)
                keep = target is not False and target == parent.key and child.key in position
                if keep and position[child.key] < last:
                    keep = False  # out of order now: re-inserted in the right place
                if keep:
                    last = position[child.key]
                else:
                    doomed.append(child.row)
            for first, final in reversed(_runs(doomed)):
                self.beginRemoveRows(self._index_of_node(parent), first, final)
                for child in parent.children[first : final + 1]:
                    self._forget_subtree(child)
                del parent.children[first : final + 1]
                for row in range(first, len(parent.children)):
                    parent.children[row].row = row
                self.endRemoveRows()
            stack.extend(parent.children)

        # 2. Insert what is new, each with its whole subtree.
        stack = [self._root]
        while stack:
            parent = stack.pop()
            existing_children = list(parent.children)
            desired = layout.get(parent.key, ())
            row = 0
            pending: list[str] = []
            for key in desired:
                if row < len(parent.children) and parent.children[row].key == key:
                    if pending:
                        row = self._insert(parent, row, pending, layout)
                        pending = []
                    row += 1
                else:
                    pending.append(key)
            if pending:
                self._insert(parent, row, pending, layout)
            stack.extend(existing_children)

        # 3. Rows whose content changed: redraw them.
        old_tree = previous.tree
        changed_keys = {name for name in new_tree.names() if old_tree.get(name) != new_tree[name]}
        changed_keys.update(k for k in (old_tree.current, new_tree.current) if k is not None)
        if previous.domain != loaded.domain:
            changed_keys.add(NOW_KEY)
        last_column = COLUMN_COUNT - 1
        for key in changed_keys:
            node = self._nodes.get(key)
            if node is not None:
                self.dataChanged.emit(
                    self.createIndex(node.row, 0, node),
                    self.createIndex(node.row, last_column, node),
                )

    def _insert(self, parent: _Node, row: int, keys: list[str], layout: Layout) -> int:
        self.beginInsertRows(self._index_of_node(parent), row, row + len(keys) - 1)
        new_nodes = [_Node(key, parent) for key in keys]
        parent.children[row:row] = new_nodes
        for position in range(row, len(parent.children)):
            parent.children[position].row = position
        for node in new_nodes:
            self._nodes[node.key] = node  # type: ignore[index]
            self._build_children(node, layout)
        self.endInsertRows()
        return row + len(keys)

    def _keep_usage_that_still_holds(self, old: SnapshotTree, new: SnapshotTree) -> None:
        # A snapshot's delta is against its parent: it holds while the parent is the
        # same. Now's delta holds while the current snapshot is the same. The rest is
        # measured again and shows as pending meanwhile.
        if self._usage_state is not UsageState.LOADED:
            return
        self._usage = {
            name: usage
            for name, usage in self._usage.items()
            if name in new and name in old and old.parent(name) == new.parent(name)
        }
        if old.current != new.current:
            self._now_usage = None
        self._recompute_largest()

    def _recompute_largest(self) -> None:
        values = [u.delta_bytes for u in self._usage.values() if u.delta_bytes is not None]
        if self._now_usage is not None and self._now_usage.delta_bytes is not None:
            values.append(self._now_usage.delta_bytes)
        self._largest_delta = max(values, default=0)

    def _emit_columns_changed(self, first: Column, last: Column) -> None:
        # Only what sizes change: the filter proxy then has no reason to look at rows.
        roles = list(SIZE_ROLES)
        parents = list(self._iter_parents())
        if len(parents) > PER_PARENT_SIGNAL_LIMIT:
            # A view handles every dataChanged on its own (milliseconds each through a
            # proxy), so a big tree gets one signal over the top level: views repaint
            # their whole viewport for a multi-row change, deeper rows included.
            rows = len(self._root.children)
            if rows:
                self.dataChanged.emit(self.index(0, first), self.index(rows - 1, last), roles)
            return
        for parent in parents:
            if parent.children:
                parent_index = self._index_of_node(parent)
                self.dataChanged.emit(
                    self.index(0, first, parent_index),
                    self.index(len(parent.children) - 1, last, parent_index),
                    roles,
                )

    def _iter_parents(self) -> Iterator[_Node]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.children:
                yield node
                stack.extend(node.children)


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) runs of sorted row numbers."""
    result: list[tuple[int, int]] = []
    for row in rows:
        if result and result[-1][1] == row - 1:
            result[-1] = (result[-1][0], row)
        else:
            result.append((row, row))
    return result


def _snapshot_tooltip(snapshot: Snapshot, current: bool, tree: SnapshotTree) -> str:
    lines = [snapshot.name]
    if current:
        lines.append("The current snapshot: Now grows from it.")
    if snapshot.is_disk_only:
        lines.append("Disk only (no memory state)")
    elif snapshot.has_memory:
        lines.append(f"With memory ({snapshot.memory.value}); the VM was {snapshot.state}")
    else:
        lines.append(f"Without memory; the VM was {snapshot.state or 'in an unknown state'}")
    kinds = sorted({disk.kind.value for disk in snapshot.disks if disk.kind.value != "no"})
    if kinds:
        lines.append("Disks: " + ", ".join(kinds))
    for problem in tree.problems.get(snapshot.name, ()):
        lines.append(f"Note: {problem}")
    return "\n".join(lines)


# The rows under each row (key None: the top level), in order.
Layout = dict[str | None, list[str]]


def _children_of(key: str | None, tree: SnapshotTree) -> list[str]:
    """A snapshot's children, with Now under the current snapshot (or at the top)."""
    if key == NOW_KEY:
        return []
    children = list(tree.children(key))
    if key == tree.current:
        children.append(NOW_KEY)  # also at top level when there is no current one
    return children


def _parent_of(key: str, tree: SnapshotTree) -> str | None:
    return tree.current if key == NOW_KEY else tree.parent(key)


def display_layout(tree: SnapshotTree) -> Layout:
    """Which rows sit under which: a run of only children is one column of rows.

    Most snapshots are the only child of the one before (take, work, take again).
    Nested one level per snapshot, a chain of forty pushed the names out of their
    column, and every repaint walked up forty levels for each row. Here a snapshot
    whose parent has one child sits below its parent, at the same level; where a
    snapshot has several children each starts a branch one level in, and the branch
    continues under its first snapshot.
    """
    layout: Layout = {}
    stack: list[str | None] = [None]
    while stack:
        key = stack.pop()
        children = _children_of(key, tree)
        if key is not None and len(children) < 2:
            parent_children = _children_of(_parent_of(key, tree), tree)
            if len(parent_children) < 2:
                continue  # in the middle or at the end of a run: no rows under it
        if len(children) == 1:
            rows = []
            follow: str | None = children[0]
            while follow is not None:
                rows.append(follow)
                after = _children_of(follow, tree)
                follow = after[0] if len(after) == 1 else None
        else:
            rows = children
        if rows:
            layout[key] = rows
            stack.extend(rows)
    return layout
