"""The left pane's model: hosts and their VMs, and changes announced together."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, Qt
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from tests.gui.conftest import assert_every_role_at_once_matches
from vmsnapgui.core.linked_clones import BackingLink, HostLinks, LayerRole
from vmsnapgui.core.snapshot import DomainState, DomainSummary
from vmsnapgui.qt.host_list_model import REDRAW_DELAY_MS, HostColumn, HostListModel
from vmsnapgui.virt.connection import ConnectionState, ConnectionStatus


class FakeHost:
    """What the model reads of a HostConnection."""

    def __init__(self, label: str, names: list[str]) -> None:
        self.label = label
        self.uri = f"test:///{label}.xml"
        self.status = ConnectionStatus(self.uri, ConnectionState.CONNECTED)
        self.domains = {
            f"{label}-{name}": DomainSummary(
                name, f"{label}-{name}", DomainState.SHUTOFF, snapshot_count=2
            )
            for name in names
        }
        self.domains_loaded = True
        self.trees: dict[str, Any] = {}
        self.usages: dict[str, Any] = {}
        self.usage_errors: dict[str, Any] = {}
        self.tree_errors: dict[str, Any] = {}
        self.links: HostLinks | None = None


def names(model: HostListModel, host_row: int) -> list[str]:
    parent = model.index(host_row, 0)
    return [model.index(row, 0, parent).data() for row in range(model.rowCount(parent))]


def test_hosts_show_their_vms_sorted_by_name(qtmodeltester: ModelTester) -> None:
    model = HostListModel()
    qtmodeltester.check(model)
    first, second = FakeHost("a", ["web", "db", "Cache"]), FakeHost("b", ["x"])
    model.add_host(first)  # type: ignore[arg-type]
    model.add_host(second)  # type: ignore[arg-type]
    model.sync_domains(first)  # type: ignore[arg-type]
    model.sync_domains(second)  # type: ignore[arg-type]
    assert names(model, 0) == ["Cache", "db", "web"]
    assert names(model, 1) == ["x"]
    del first.domains["a-db"]
    first.domains["a-api"] = DomainSummary("api", "a-api", DomainState.RUNNING)
    model.sync_domains(first)  # type: ignore[arg-type]
    assert names(model, 0) == ["api", "Cache", "web"]
    index = model.index_of_domain(first, "a-web")  # type: ignore[arg-type]
    assert model.parent(index) == model.index(0, 0)
    assert index.siblingAtColumn(HostColumn.SNAPSHOTS).data() == "2"
    model.remove_host(first)  # type: ignore[arg-type]
    assert names(model, 0) == ["x"]


def test_changed_rows_are_announced_together_a_few_times_a_second(qtbot: QtBot) -> None:
    # A fleet reports a tree or a size every few milliseconds while it loads; a view
    # repaints for each announcement.
    model = HostListModel()
    host = FakeHost("a", ["v1", "v2", "v3", "v4"])
    model.add_host(host)  # type: ignore[arg-type]
    model.sync_domains(host)  # type: ignore[arg-type]
    model.flush_changes()
    announced: list[tuple[int, int, QModelIndex]] = []
    model.dataChanged.connect(
        lambda first, last: announced.append((first.row(), last.row(), first.parent()))
    )
    for uuid in ("a-v2", "a-v4", "a-v2"):
        model.domain_changed(host, uuid)  # type: ignore[arg-type]
    assert announced == []
    with qtbot.waitSignal(model.dataChanged, timeout=REDRAW_DELAY_MS * 4):
        pass
    assert announced == [(1, 3, model.index(0, 0))]


def test_all_roles_at_once_answer_what_each_role_does(qtbot: QtBot) -> None:
    model = HostListModel()
    first, second = FakeHost("a", ["web", "db"]), FakeHost("b", ["x"])
    second.status = ConnectionStatus(second.uri, ConnectionState.LOST)
    first.domains["a-web"] = DomainSummary("web", "a-web", DomainState.RUNNING, snapshot_count=1)
    # 'db' is a linked clone of 'web': a badge, a tooltip line, an accessible word.
    link = BackingLink("db", "vda", "web", LayerRole.SNAPSHOT, "/i/web.qcow2", "vda", "base")
    first.links = HostLinks((link,))
    for host in (first, second):
        model.add_host(host)  # type: ignore[arg-type]
        model.sync_domains(host)  # type: ignore[arg-type]
    db = model.index(0, 0, model.index(0, 0))
    assert db.data() == "db"
    assert "Linked clone of web — stands on its snapshot 'base'" in db.data(
        Qt.ItemDataRole.ToolTipRole
    )
    assert db.data(Qt.ItemDataRole.AccessibleTextRole).endswith(", a linked clone")
    roles = [
        Qt.ItemDataRole.DisplayRole,
        Qt.ItemDataRole.DecorationRole,
        Qt.ItemDataRole.ToolTipRole,
        Qt.ItemDataRole.TextAlignmentRole,
        Qt.ItemDataRole.AccessibleTextRole,
    ]
    assert_every_role_at_once_matches(model, roles)
