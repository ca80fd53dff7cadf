"""The left pane's model: connections (hosts) and their VMs.

Two levels: a row per :class:`~vmsnapgui.qt.host_connection.HostConnection` with its
state, and under it a row per VM with its run state, snapshot count and the space its
snapshots hold. The model keeps only which rows exist (and their cached row numbers);
every value is read from the host object when a view asks, so a change is one
``dataChanged``. VM rows are kept sorted by name and updated as a diff, so the
selection and expansion stay put while hosts refresh.
"""

from __future__ import annotations

import enum

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, QPersistentModelIndex, Qt

from vmsnapgui.core.disk_usage import DomainUsage
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
from vmsnapgui.virt.connection import ConnectionState

ModelIndex = QModelIndex | QPersistentModelIndex


class HostColumn(enum.IntEnum):
    """The columns of the left pane."""

    NAME = 0
    SNAPSHOTS = 1
    SPACE = 2


HOST_HEADERS = {
    HostColumn.NAME: "Connections and VMs",
    HostColumn.SNAPSHOTS: "Snapshots",
    HostColumn.SPACE: "Space",
}


class _HostNode:
    __slots__ = ("domains", "host", "row")

    def __init__(self, host: HostConnection, row: int) -> None:
        self.host = host
        self.row = row
        self.domains: list[_DomainNode] = []


class _DomainNode:
    __slots__ = ("host_node", "row", "uuid")

    def __init__(self, host_node: _HostNode, uuid: str, row: int) -> None:
        self.host_node = host_node
        self.uuid = uuid
        self.row = row


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


class HostListModel(QAbstractItemModel):
    """Connections and their VMs for the left pane."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._hosts: list[_HostNode] = []

    # -- structure ----------------------------------------------------------------------

    def hosts(self) -> list[HostConnection]:
        """The connections shown, in order."""
        return [node.host for node in self._hosts]

    def add_host(self, host: HostConnection) -> QModelIndex:
        """Show a connection (at the end)."""
        row = len(self._hosts)
        self.beginInsertRows(QModelIndex(), row, row)
        self._hosts.append(_HostNode(host, row))
        self.endInsertRows()
        return self.index(row, 0)

    def remove_host(self, host: HostConnection) -> None:
        """Stop showing a connection and its VMs."""
        node = self._host_node(host)
        if node is None:
            return
        self.beginRemoveRows(QModelIndex(), node.row, node.row)
        del self._hosts[node.row]
        for row, item in enumerate(self._hosts):
            item.row = row
        self.endRemoveRows()

    def host_changed(self, host: HostConnection) -> None:
        """Redraw a connection's row (its state changed)."""
        node = self._host_node(host)
        if node is not None:
            self.dataChanged.emit(self.index(node.row, 0), self.index(node.row, 2))

    def domain_changed(self, host: HostConnection, uuid: str) -> None:
        """Redraw a VM's row (its tree or sizes arrived)."""
        index = self.index_of_domain(host, uuid)
        if index.isValid():
            self.dataChanged.emit(index, index.siblingAtColumn(len(HostColumn) - 1))

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
            del node.domains[row]
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
                node.domains[row:row] = [_DomainNode(node, item, 0) for item in pending]
                for index, child in enumerate(node.domains):
                    child.row = index
                self.endInsertRows()
                row += len(pending)
                pending = []
            row += 1
        if node.domains:
            self.dataChanged.emit(
                self.index(0, 0, parent),
                self.index(len(node.domains) - 1, len(HostColumn) - 1, parent),
            )
        self.host_changed(host)

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
        if node is None:
            return QModelIndex()
        for child in node.domains:
            if child.uuid == uuid:
                return self.createIndex(child.row, 0, child)
        return QModelIndex()

    # -- Qt's model interface -------------------------------------------------------------

    def index(self, row: int, column: int, parent: ModelIndex = QModelIndex()) -> QModelIndex:  # noqa: B008
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, self._hosts[row])
        item = self._item(parent)
        if isinstance(item, _HostNode):
            return self.createIndex(row, column, item.domains[row])
        return QModelIndex()

    def parent(self, index: ModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        item = self._item(index)
        if isinstance(item, _DomainNode):
            return self.createIndex(item.host_node.row, 0, item.host_node)
        return QModelIndex()

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        if parent.column() > 0:
            return 0
        if not parent.isValid():
            return len(self._hosts)
        item = self._item(parent)
        return len(item.domains) if isinstance(item, _HostNode) else 0

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return len(HostColumn)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> object:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(HostColumn):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HOST_HEADERS[HostColumn(section)]
        if role == Qt.ItemDataRole.TextAlignmentRole and section > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def flags(self, index: ModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> object:
        item = self._item(index)
        if isinstance(item, _HostNode):
            return self._host_data(item.host, index.column(), role)
        if isinstance(item, _DomainNode):
            return self._domain_data(item.host_node.host, item.uuid, index.column(), role)
        return None

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
            return icons.host_icon(status.state)
        if role == Qt.ItemDataRole.AccessibleTextRole and column == HostColumn.NAME:
            return f"Connection {host.label}, {status_text(status)}"
        return None

    def _domain_data(self, host: HostConnection, uuid: str, column: int, role: int) -> object:
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
                return self._space(host, uuid).text
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == HostColumn.SPACE:
                return self._space(host, uuid).tooltip
            lines = [f"{summary.name}: {summary.state.value}"]
            current = loaded.tree.current if loaded is not None else summary.current_snapshot
            lines.append(f"Current snapshot: {current}" if current else "No current snapshot")
            error = host.tree_errors.get(uuid)
            if error is not None:
                lines.append(f"Could not load its snapshots: {error.message}")
            return "\n".join(lines)
        if role == Qt.ItemDataRole.DecorationRole and column == HostColumn.NAME:
            return icons.domain_state_icon(summary.state)
        if role == Qt.ItemDataRole.TextAlignmentRole and column > 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.AccessibleTextRole and column == HostColumn.NAME:
            return f"Virtual machine {summary.name}, {summary.state.value}"
        return None

    def _space(self, host: HostConnection, uuid: str) -> SizeText:
        error = host.usage_errors.get(uuid)
        return snapshot_space(host.usages.get(uuid), error.message if error else None)

    # -- internals ------------------------------------------------------------------------

    def _item(self, index: ModelIndex) -> _HostNode | _DomainNode | None:
        if not index.isValid():
            return None
        item = index.internalPointer()
        return item if isinstance(item, _HostNode | _DomainNode) else None

    def _host_node(self, host: HostConnection) -> _HostNode | None:
        for node in self._hosts:
            if node.host is host:
                return node
        return None
