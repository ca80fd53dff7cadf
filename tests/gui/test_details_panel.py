"""The details panel: showing another row changes texts, not widgets."""

from __future__ import annotations

from PySide6.QtWidgets import QFormLayout, QLabel
from pytestqt.qtbot import QtBot

from tests.gui.conftest import loaded_tree
from tests.gui.test_snapshot_tree_model import WEB
from vmsnapgui.core.disk_usage import DiskUsage, SnapshotUsage
from vmsnapgui.qt.details_panel import DetailsContext, DetailsPanel
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY


def property_labels(panel: DetailsPanel) -> list[QLabel]:
    form = panel.properties
    role = QFormLayout.ItemRole.FieldRole
    return [form.itemAt(row, role).widget() for row in range(form.rowCount())]


def shown(panel: DetailsPanel) -> dict[str, str]:
    return {
        label.accessibleName(): label.text()
        for label in property_labels(panel)
        if not label.isHidden()
    }


def test_another_row_reuses_the_property_widgets(qtbot: QtBot) -> None:
    # Making widgets anew was most of the cost of selecting a row while hosts load.
    panel = DetailsPanel()
    qtbot.addWidget(panel)
    panel.show()
    loaded = loaded_tree(WEB, "upgrade")
    panel.show_details(DetailsContext("host", loaded, "tls", None))
    first = property_labels(panel)
    panel.show_details(DetailsContext("host", loaded, NOW_KEY, None))
    assert list(shown(panel)) == ["VM state", "Current snapshot", "Changed since"]
    panel.show_details(DetailsContext("host", loaded, "php", None))
    again = property_labels(panel)
    assert len(again) == len(first)
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert panel.title.text() == "php"
    assert shown(panel)["Parent"] == "nginx"
    assert shown(panel)["Children"] == "tuned"


def disk_rows(panel: DetailsPanel) -> list[list[str]]:
    tree = panel.disks
    return [
        [tree.topLevelItem(i).text(c) for c in range(4)] for i in range(tree.topLevelItemCount())
    ]


def test_the_disks_table_follows_sizes_and_rows_and_is_left_alone_otherwise(
    qtbot: QtBot,
) -> None:
    panel = DetailsPanel()
    qtbot.addWidget(panel)
    panel.show()
    loaded = loaded_tree(WEB, "upgrade")
    panel.show_details(DetailsContext("host", loaded, "php", None))
    assert disk_rows(panel) == [["vda", "internal", "—", ""]]
    item = panel.disks.topLevelItem(0)
    # Another snapshot with the same disk and no sizes: the same table, not refilled.
    panel.show_details(DetailsContext("host", loaded, "nginx", None))
    assert panel.disks.topLevelItem(0) is item
    # Sizes arrive: the table says them.
    usage = SnapshotUsage("nginx", 3 << 20, disks={"vda": DiskUsage(3 << 20)})
    panel.show_details(DetailsContext("host", loaded, "nginx", usage))
    assert disk_rows(panel) == [["vda", "internal", "—", "3.00 MiB"]]
    assert not panel.disks_box.isHidden()
    # Now with no live definition yet: no disks, and the box goes away.
    panel.show_details(DetailsContext("host", loaded, NOW_KEY, None))
    assert disk_rows(panel) == [] and panel.disks_box.isHidden()
    panel.show_nothing("nothing")
    panel.show_details(DetailsContext("host", loaded, NOW_KEY, None))
    assert panel.disks_box.isHidden()
