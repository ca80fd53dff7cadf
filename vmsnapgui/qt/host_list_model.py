"""The left pane's model: connections (hosts) and their VMs.

Two levels: a row per :class:`~vmsnapgui.qt.host_connection.HostConnection` with its
state, and under it a row per VM with its run state, snapshot count and the space its
snapshots hold. The model keeps only which rows exist (and their cached row numbers);
every value is read from the host object when a view asks, so a change is one
``dataChanged``. VM rows are kept sorted by name and updated as a diff, so the
selection and expansion stay put while hosts refresh.

A fleet of hosts reports a tree or a size every few milliseconds while it loads, and a
view repaints its whole viewport for a row that changed: the changes are gathered and
announced a few times a second (:data:`REDRAW_DELAY_MS`), one range per host. Each call
a view makes into this Python model waits for the GIL, which loading threads hold much
of the time, so the calls views make most (``index``, ``parent``) do no more calls into
Qt than they must.
"""

from __future__ import annotations

import enum

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QModelRoleData,
    QModelRoleDataSpan,
    QObject,
    QPersistentModelIndex,
    Qt,
    QTimer,
    Slot,
)

from vmsnapgui.core.disk_usage import DomainUsage
from vmsnapgui.core.linked_clones import HostLinks, clones_text, stands_on_text
from vmsnapgui.core.units import format_bytes
from vmsnapgui.qt import icons
from vmsnapgui.qt.display_text import (
    APPROXIMATE,
    MEASURING_TOOLTIP,
    MISSING,
    PENDING,
    SizeText,
    status_text,
)
from vmsnapgui.qt.host_connection import HostConnection
from vmsnapgui.qt.model_roles import answer_roles, no_value
from vmsnapgui.virt.connection import ConnectionState

ModelIndex = QModelIndex | QPersistentModelIndex
# How long changed rows wait to be announced (gathered meanwhile); the status bar is
# refreshed at the same pace.
REDRAW_DELAY_MS = 250


class HostColumn(enum.IntEnum):
    """The columns of the left pane."""

    NAME = 0
    SNAPSHOTS = 1
    SPACE = 2


COLUMN_COUNT = len(HostColumn)

HOST_HEADERS = {
    HostColumn.NAME: "Connections and VMs",
    HostColumn.SNAPSHOTS: "Snapshots",
    HostColumn.SPACE: "Space",
}


class _HostNode:
    __slots__ = ("by_uuid", "dirty_rows", "dirty_self", "domains", "host", "index", "row", "space")

    def __init__(self, host: HostConnection, row: int) -> None:
        self.host = host
        self.row = row
        self.domains: list[_DomainNode] = []
        self.by_uuid: dict[str, _DomainNode] = {}
        # This row's index (column 0), the parent of every VM row: made once per move.
        self.index = QModelIndex()
        # What changed since the last announcement: VM rows, and the host row itself.
        self.dirty_rows: set[_DomainNode] = set()
        self.dirty_self = False
        # uuid -> (usage, error, text): the sum over a VM's snapshots, per measurement.
        self.space: dict[str, tuple[DomainUsage | None, str | None, SizeText]] = {}


class _DomainNode:
    __slots__ = ("host_node", "index", "index_row", "row", "uuid")

    def __init__(self, host_node: _HostNode, uuid: str, row: int) -> None:
        self.host_node = host_node
        self.uuid = uuid
        self.row = row
        # This row's index in column 0, kept for the row it was made at.
        self.index: QModelIndex | None = None
        self.index_row = -1


def snapshot_space(usage: DomainUsage | None, error: str | None) -> SizeText:
    """The space a VM's snapshots hold (deltas plus saved memory, Now excluded)."""
    if error is not None:
        return SizeText("", error)
    if usage is None:
        return SizeText(PENDING, MEASURING_TOOLTIP)
    total = 0
    unknown = 0
    approximate = False
    notes: list[str] = []
    for item in usage.snapshots:
        value = item.total_bytes
        if value is None:
            unknown += 1
            if item.note and item.note not in notes:
                notes.append(item.note)
            continue
        total += value
        approximate = approximate or item.approximate
    if unknown and unknown == len(usage.snapshots):
        tooltip = "The space of these snapshots is not known."
        if notes:
            tooltip += "\n" + "\n".join(notes[:3])
        return SizeText(MISSING, tooltip)
    text = format_bytes(total)
    tooltip = f"Snapshots hold {total:,} bytes (disk deltas and saved memory)."
    if unknown:
        text = "≥ " + text
        tooltip += f"\nThe size of {unknown} snapshot(s) is not known."
        if notes:
            tooltip += "\n" + "\n".join(notes[:3])
    elif approximate:
        text = APPROXIMATE + text
        tooltip += "\nSome sizes are approximate."
    if usage.now is not None and usage.now.delta_bytes is not None:
        tooltip += f"\nChanged since the current snapshot: {format_bytes(usage.now.delta_bytes)}."
    return SizeText(text, tooltip)


def _link_lines(links: HostLinks | None, name: str) -> list[str]:
    """What a VM's tooltip says about linked clones (nothing until they were looked for)."""
    if links is None:
        return []
    found = [stands_on_text(links.stands_on(name)), clones_text(links.clones_of(name))]
    return [line for line in found if line]


class HostListModel(QAbstractItemModel):
    """Connections and their VMs for the left pane."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._hosts: list[_HostNode] = []
        self._dirty_hosts: set[_HostNode] = set()
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(REDRAW_DELAY_MS)
        self._redraw_timer.timeout.connect(self._on_redraw_timer)

    # -- structure ----------------------------------------------------------------------

    def hosts(self) -> list[HostConnection]:
        """The connections shown, in order."""
        return [node.host for node in self._hosts]

    def add_host(self, host: HostConnection) -> QModelIndex:
        """Show a connection (at the end)."""
        row = len(self._hosts)
        self.beginInsertRows(QModelIndex(), row, row)
        node = _HostNode(host, row)
        node.index = self.createIndex(row, 0, node)
        self._hosts.append(node)
        self.endInsertRows()
        return node.index

    def remove_host(self, host: HostConnection) -> None:
        """Stop showing a connection and its VMs."""
        node = self._host_node(host)
        if node is None:
            return
        self.beginRemoveRows(QModelIndex(), node.row, node.row)
        del self._hosts[node.row]
        self._dirty_hosts.discard(node)
        for row, item in enumerate(self._hosts):
            item.row = row
            item.index = self.createIndex(row, 0, item)
        self.endRemoveRows()

    def host_changed(self, host: HostConnection) -> None:
        """Redraw a connection's row (its state changed), soon."""
        node = self._host_node(host)
        if node is not None:
            self._mark_dirty(node, None)

    def domain_changed(self, host: HostConnection, uuid: str) -> None:
        """Redraw a VM's row (its tree or sizes arrived), soon."""
        node = self._host_node(host)
        child = node.by_uuid.get(uuid) if node is not None else None
        if node is not None and child is not None:
            self._mark_dirty(node, child)

    def links_changed(self, host: HostConnection) -> None:
        """Redraw every VM row of a host (its linked clones were looked for), soon."""
        node = self._host_node(host)
        if node is not None:
            node.dirty_rows.update(node.domains)
            self._mark_dirty(node, None)

    def flush_changes(self) -> None:
        """Announce the rows changed so far now (one range per host)."""
        self._redraw_timer.stop()
        hosts, self._dirty_hosts = self._dirty_hosts, set()
        last_column = COLUMN_COUNT - 1
        for node in sorted(hosts, key=lambda item: item.row):
            rows = [child.row for child in node.dirty_rows if node.by_uuid.get(child.uuid) is child]
            if node.dirty_self:
                self.dataChanged.emit(node.index, node.index.siblingAtColumn(last_column))
            if rows:
                first, last = min(rows), max(rows)
                self.dataChanged.emit(
                    self.createIndex(first, 0, node.domains[first]),
                    self.createIndex(last, last_column, node.domains[last]),
                )
            node.dirty_rows = set()
            node.dirty_self = False

    @Slot()
    def _on_redraw_timer(self) -> None:
        self.flush_changes()

    def _mark_dirty(self, node: _HostNode, child: _DomainNode | None) -> None:
        if child is None:
            node.dirty_self = True
        else:
            node.dirty_rows.add(child)
        self._dirty_hosts.add(node)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def sync_domains(self, host: HostConnection) -> None:
        """Make the VM rows match ``host.domains`` (sorted by name), as a diff."""
        node = self._host_node(host)
        if node is None:
            return
        parent = self.index(node.row, 0)
        wanted = sorted(
            host.domains.values(), key=lambda summary: (summary.name.casefold(), summary.uuid)
        )
        wanted_uuids = [summary.uuid for summary in wanted]
        wanted_set = set(wanted_uuids)
        # Remove the VMs that are gone, or whose place in the order changed (renamed).
        position = {uuid: i for i, uuid in enumerate(wanted_uuids)}
        last = -1
        doomed = []
        for child in node.domains:
            if child.uuid not in wanted_set or position[child.uuid] < last:
                doomed.append(child.row)
            else:
                last = position[child.uuid]
        for row in reversed(doomed):
            self.beginRemoveRows(parent, row, row)
            gone = node.domains.pop(row)
            del node.by_uuid[gone.uuid]
            node.space.pop(gone.uuid, None)
            for index, child in enumerate(node.domains):
                child.row = index
            self.endRemoveRows()
        # Insert the new ones where they belong, a run of neighbours at a time.
        row = 0
        pending: list[str] = []
        for uuid in [*wanted_uuids, None]:
            if uuid is not None and (row >= len(node.domains) or node.domains[row].uuid != uuid):
                pending.append(uuid)
                continue
            if pending:
                self.beginInsertRows(parent, row, row + len(pending) - 1)
                added = [_DomainNode(node, item, 0) for item in pending]
                node.domains[row:row] = added
                node.by_uuid.update((child.uuid, child) for child in added)
                for index, child in enumerate(node.domains):
                    child.row = index
                self.endInsertRows()
                row += len(pending)
                pending = []
            row += 1
        # States, counts and current snapshots may have changed on every row.
        node.dirty_rows.update(node.domains)
        self._mark_dirty(node, None)

    # -- lookups ------------------------------------------------------------------------

    def host_at(self, index: ModelIndex) -> HostConnection | None:
        """The connection of a row (a host row or one of its VMs)."""
        item = self._item(index)
        if isinstance(item, _HostNode):
            return item.host
        if isinstance(item, _DomainNode):
            return item.host_node.host
        return None

    def domain_uuid_at(self, index: ModelIndex) -> str | None:
        """The VM of a row (None for a host row)."""
        item = self._item(index)
        return item.uuid if isinstance(item, _DomainNode) else None

    def index_of_host(self, host: HostConnection) -> QModelIndex:
        """A connection's row."""
        node = self._host_node(host)
        return QModelIndex() if node is None else self.index(node.row, 0)

    def index_of_domain(self, host: HostConnection, uuid: str) -> QModelIndex:
        """A VM's row."""
        node = self._host_node(host)
        child = node.by_uuid.get(uuid) if node is not None else None
        if child is None:
            return QModelIndex()
        return self._first_cell(child)

    # -- Qt's model interface -------------------------------------------------------------

    def index(self, row: int, column: int, parent: ModelIndex = QModelIndex()) -> QModelIndex:  # noqa: B008
        # Bounds checked here rather than with hasIndex(), which would call back into
        # rowCount() and columnCount(): three waits for the GIL instead of none.
        if row < 0 or not 0 <= column < COLUMN_COUNT:
            return QModelIndex()
        if not parent.isValid():
            if row >= len(self._hosts):
                return QModelIndex()
            node = self._hosts[row]
            return node.index if column == 0 else self.createIndex(row, column, node)
        item = self._item(parent)
        if isinstance(item, _HostNode) and parent.column() == 0 and row < len(item.domains):
            child = item.domains[row]
            return self._first_cell(child) if column == 0 else self.createIndex(row, column, child)
        return QModelIndex()

    def parent(self, index: ModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        item = self._item(index)
        if isinstance(item, _DomainNode):
            return item.host_node.index
        return QModelIndex()

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        if parent.column() > 0:
            return 0
        if not parent.isValid():
            return len(self._hosts)
        item = self._item(parent)
        return len(item.domains) if isinstance(item, _HostNode) else 0

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return COLUMN_COUNT

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < COLUMN_COUNT:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HOST_HEADERS[HostColumn(section)]
        if role == Qt.ItemDataRole.TextAlignmentRole and section > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # flags(): Qt's default (enabled and selectable) is what this model wants, and
    # leaving it to Qt spares a call into Python for every row a view lays out.

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        item = self._item(index)
        if isinstance(item, _HostNode):
            return self._host_data(item.host, index.column(), role)
        if isinstance(item, _DomainNode):
            return self._domain_data(item.host_node, item.uuid, index.column(), role)
        return None

    def multiData(
        self, index: ModelIndex, roleDataSpan: QModelRoleDataSpan | QModelRoleData
    ) -> None:
        """Every role of a cell in one call into Python (see model_roles)."""
        item = self._item(index)
        column = index.column()
        if isinstance(item, _HostNode):
            host = item.host
            answer_roles(roleDataSpan, lambda role: self._host_data(host, column, role))
        elif isinstance(item, _DomainNode):
            node, uuid = item.host_node, item.uuid
            answer_roles(roleDataSpan, lambda role: self._domain_data(node, uuid, column, role))
        else:
            answer_roles(roleDataSpan, no_value)

    # -- data ---------------------------------------------------------------------------

    def _host_data(self, host: HostConnection, column: int, role: int) -> object:
        status = host.status
        if role == Qt.ItemDataRole.DisplayRole and column == HostColumn.NAME:
            state = status.state
            if state is ConnectionState.CONNECTED:
                count = len(host.domains)
                suffix = f"{count} VM{'s' if count != 1 else ''}" if host.domains_loaded else "…"
            elif state is ConnectionState.LOST:
                suffix = "lost, reconnecting…"
            elif state is ConnectionState.FAILED:
                suffix = "failed"
            else:
                suffix = status_text(status)
            return f"{host.label} — {suffix}"
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [host.label, host.uri, f"State: {status_text(status)}"]
            if status.detail and status.detail != status.reason:
                lines.append(f"Details: {status.detail}")
            return "\n".join(lines)
        if role == Qt.ItemDataRole.DecorationRole and column == HostColumn.NAME:
            return icons.row_icon(icons.host_icon(status.state))
        if role == Qt.ItemDataRole.AccessibleTextRole and column == HostColumn.NAME:
            return f"Connection {host.label}, {status_text(status)}"
        return None

    def _domain_data(self, node: _HostNode, uuid: str, column: int, role: int) -> object:
        host = node.host
        summary = host.domains.get(uuid)
        if summary is None:
            return None
        loaded = host.trees.get(uuid)
        if role == Qt.ItemDataRole.DisplayRole:
            if column == HostColumn.NAME:
                return summary.name
            if column == HostColumn.SNAPSHOTS:
                count = len(loaded.tree) if loaded is not None else summary.snapshot_count
                return "?" if count is None else str(count)
            if column == HostColumn.SPACE:
                return self._space(node, uuid).text
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == HostColumn.SPACE:
                return self._space(node, uuid).tooltip
            lines = [f"{summary.name}: {summary.state.value}"]
            current = loaded.tree.current if loaded is not None else summary.current_snapshot
            lines.append(f"Current snapshot: {current}" if current else "No current snapshot")
            error = host.tree_errors.get(uuid)
            if error is not None:
                lines.append(f"Could not load its snapshots: {error.message}")
            lines.extend(_link_lines(host.links, summary.name))
            return "\n".join(lines)
        if role == Qt.ItemDataRole.DecorationRole and column == HostColumn.NAME:
            linked = host.links is not None and bool(host.links.stands_on(summary.name))
            return icons.row_icon(icons.domain_state_icon(summary.state, linked=linked))
        if role == Qt.ItemDataRole.TextAlignmentRole and column > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.AccessibleTextRole and column == HostColumn.NAME:
            text = f"Virtual machine {summary.name}, {summary.state.value}"
            if host.links is not None and host.links.stands_on(summary.name):
                text += ", a linked clone"
            return text
        return None

    def _space(self, node: _HostNode, uuid: str) -> SizeText:
        host = node.host
        usage = host.usages.get(uuid)
        error = host.usage_errors.get(uuid)
        reason = error.message if error else None
        cached = node.space.get(uuid)
        if cached is not None and cached[0] is usage and cached[1] == reason:
            return cached[2]
        text = snapshot_space(usage, reason)
        node.space[uuid] = (usage, reason, text)
        return text

    # -- internals ------------------------------------------------------------------------

    def _item(self, index: ModelIndex) -> _HostNode | _DomainNode | None:
        if not index.isValid():
            return None
        item = index.internalPointer()
        return item if isinstance(item, _HostNode | _DomainNode) else None

    def _first_cell(self, child: _DomainNode) -> QModelIndex:
        """A VM row's index in column 0, made once for the row it is at."""
        if child.index is None or child.index_row != child.row:
            child.index = self.createIndex(child.row, 0, child)
            child.index_row = child.row
        return child.index

    def _host_node(self, host: HostConnection) -> _HostNode | None:
        for node in self._hosts:
            if node.host is host:
                return node
        return None
