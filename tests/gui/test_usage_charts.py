"""The charts: bars in tree order with memory stacked on disk, click to select, growth."""

from __future__ import annotations

import time

from PySide6.QtCore import QPoint, QPointF, Qt
from pytestqt.qtbot import QtBot

from tests.gui.conftest import LOAD_TIMEOUT_MS, WindowFactory, loaded_tree, select_vm, snap
from tests.gui.test_snapshot_tree_model import WEB
from vmsnapgui.core.disk_usage import DomainUsage, PoolSpace, SnapshotUsage
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY, SnapshotTreeModel
from vmsnapgui.qt.usage_charts import BytesAxis, TimeAxis, UsageCharts, bar_values, growth_points

MIB = 1024 * 1024

USAGE = DomainUsage(
    "vm",
    (
        SnapshotUsage("base", 4 * MIB),
        SnapshotUsage("nginx", MIB, vmstate_bytes=64 * MIB),
        SnapshotUsage("tls", 0),
        SnapshotUsage("php", 2 * MIB),
        SnapshotUsage("upgrade", None, note="unreadable"),
        SnapshotUsage("tuned", MIB),
    ),
    SnapshotUsage("Now", 3 * MIB),
    pool=PoolSpace("default", 100 * 1024 * MIB, 40 * 1024 * MIB),
)


def shown_charts(qtbot: QtBot) -> tuple[UsageCharts, SnapshotTreeModel]:
    model = SnapshotTreeModel()
    loaded = loaded_tree(WEB, "upgrade")
    model.set_tree(loaded)
    charts = UsageCharts()
    qtbot.addWidget(charts)
    charts.resize(900, 300)
    charts.show()
    charts.set_data(model.keys(), loaded.tree, USAGE)
    return charts, model


def test_bars_follow_the_tree_order_with_memory_stacked_on_the_disk_delta(qtbot: QtBot) -> None:
    charts, _model = shown_charts(qtbot)
    assert charts.keys == ["base", "nginx", "tls", "upgrade", NOW_KEY, "php", "tuned"]
    assert charts.bar_heights() == [
        (4 * MIB, 0),
        (MIB, 64 * MIB),
        (0, 0),
        (0, 0),  # unknown: no bar rather than an invented one
        (3 * MIB, 0),
        (2 * MIB, 0),
        (MIB, 0),
    ]
    assert list(charts.memory_bars.opts["y0"]) == [4 * MIB, MIB, 0, 0, 3 * MIB, 2 * MIB, MIB]


def test_the_bar_labels_name_the_snapshots(qtbot: QtBot) -> None:
    charts, _ = shown_charts(qtbot)
    ticks = charts.bars_plot.getAxis("bottom")._tickLevels[0]
    assert (0.0, "base") in ticks
    assert (4.0, "Now") in ticks


def test_the_selected_bar_is_outlined_and_the_items_are_updated_in_place(qtbot: QtBot) -> None:
    charts, model = shown_charts(qtbot)
    items_before = list(charts.bars_plot.getPlotItem().items)
    charts.set_selected("php")
    assert list(charts.selection_bar.opts["x"]) == [5.0]
    charts.set_data(model.keys(), model.tree, USAGE)
    charts.set_selected(None)
    assert len(charts.selection_bar.opts["x"]) == 0
    assert list(charts.bars_plot.getPlotItem().items) == items_before


def test_clicking_a_bar_selects_its_snapshot(qtbot: QtBot) -> None:
    charts, _ = shown_charts(qtbot)
    view = charts.bars_plot.getViewBox()
    scene_point = view.mapViewToScene(QPointF(5.0, MIB))
    widget_point = charts.bars_plot.mapFromScene(scene_point)
    with qtbot.waitSignal(charts.snapshot_clicked, timeout=2000) as clicked:
        qtbot.mouseClick(
            charts.bars_plot.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(widget_point)
        )
    assert clicked.args == ["php"]


def test_growth_is_cumulative_by_creation_time_with_the_pool_lines(qtbot: QtBot) -> None:
    charts, model = shown_charts(qtbot)
    times, totals = growth_points(model.tree, USAGE)
    assert times == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert totals == [4 * MIB, 4 * MIB + 65 * MIB, 69 * MIB, 71 * MIB, 71 * MIB, 72 * MIB]
    _x, y = charts.growth_curve.getData()
    assert list(y[:-1]) == totals and y[-1] == totals[-1]  # extended to today
    assert charts.capacity_line.value() == 100 * 1024 * MIB
    assert charts.free_line.value() == 40 * 1024 * MIB
    assert "40.0 GiB free of 100 GiB" in charts.growth_caption.text()


def test_without_sizes_the_chart_says_why(qtbot: QtBot) -> None:
    charts = UsageCharts()
    qtbot.addWidget(charts)
    tree = loaded_tree([snap("a")], "a").tree
    charts.set_data(["a", NOW_KEY], tree, None, unavailable="Sizes are not available: no engine")
    assert charts.bars_message.textItem.toPlainText() == "Sizes are not available: no engine"
    assert bar_values(["a"], None) == ([0.0], [0.0])
    # In the middle of the bars' new range, not of the one before (it was cut off at
    # the left edge once the range grew with the snapshots).
    many = loaded_tree([snap("a"), snap("b", "a"), snap("c", "b")], "c").tree
    charts.set_data(["a", "b", "c", NOW_KEY], many, None, unavailable="No engine")
    (x0, x1), (y0, y1) = charts.bars_plot.getViewBox().viewRange()
    assert (x0, x1) == (-0.6, 3.6)
    position = charts.bars_message.pos()
    assert (position.x(), position.y()) == ((x0 + x1) / 2, (y0 + y1) / 2)
    # Nothing measured draws no growth line (a flat one would claim zero bytes).
    _x, y = charts.growth_curve.getData()
    assert y is None or len(y) == 0


def test_the_byte_axis_reads_in_binary_units() -> None:
    axis = BytesAxis("left")
    assert axis.tickStrings([0, 512 * MIB, 1024 * MIB], 1, 512 * MIB) == [
        "0 B",
        "512 MiB",
        "1.00 GiB",
    ]
    (major, _), _ = axis.tickSpacing(0, 3000 * MIB, 200)
    assert major in (512 * MIB, 1024 * MIB)


def test_a_click_on_a_bar_in_the_window_selects_the_snapshot_in_the_tree(
    make_window: WindowFactory, qtbot: QtBot, lab_uri: str
) -> None:
    window: MainWindow = make_window(charts=True)
    window.add_connection(lab_uri)
    window.show()
    qtbot.waitUntil(window.is_settled, timeout=LOAD_TIMEOUT_MS)
    select_vm(qtbot, window, "web")
    assert window.charts is not None
    # The charts redraw a moment after the tree (requests gathered): settled again then.
    qtbot.waitUntil(window.is_settled, timeout=LOAD_TIMEOUT_MS)
    assert window.charts.keys == window.tree_model.keys()
    window.charts.snapshot_clicked.emit("php-tuned")
    assert window.tree_view.selected_key() == "php-tuned"
    # The test driver's disks are not files: the chart says so instead of drawing zeros.
    assert window.charts.bars_message.textItem.toPlainText().startswith("No size is known")
    assert len(window.charts.selection_bar.opts["x"]) == 0


def test_the_time_axis_ticks_on_round_local_times(qtbot: QtBot) -> None:
    axis = TimeAxis("bottom")
    start = time.mktime((2026, 11, 25, 9, 7, 0, 0, 0, -1))  # 09:07 local time
    ((step, values),) = axis.tickValues(start, start + 3 * 3600, 600)
    assert step in (1800, 3600)
    assert all(start <= value <= start + 3 * 3600 for value in values)
    labels = axis.tickStrings(values, 1, step)
    assert all(label.endswith(":00") or label.endswith(":30") for label in labels)
    assert labels[0] in ("09:30", "10:00")

    ((step, values),) = axis.tickValues(start, start + 20 * 86400, 600)
    assert step >= 86400
    labels = axis.tickStrings(values, 1, step)
    # Days read as dates, each on local midnight.
    assert all(time.localtime(value)[3:6] == (0, 0, 0) for value in values)
    assert labels[0] == time.strftime("%d %b", time.localtime(values[0]))
