"""Charts of where a VM's disk space went (pyqtgraph; imported only when first shown).

Left: one bar per snapshot in tree order (disk delta, with saved memory stacked on top),
Now last, the selected one outlined; a click on a bar selects that snapshot. Right: how
the space held by snapshots grew over time (cumulative by creation time) against the
storage pool's capacity and free space.

Plot items are made once and updated in place (``setOpts``/``setData``/``setTicks``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Signal, Slot
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from vmsnapgui.core.disk_usage import DomainUsage, SnapshotUsage
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.core.units import format_bytes
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY, NOW_LABEL

BAR_WIDTH = 0.7
LABEL_LENGTH = 12
LABEL_PIXELS = 92  # room one bar label needs under the axis
DISK_COLOUR = QColor(70, 130, 200)
MEMORY_COLOUR = QColor(235, 150, 50)
NOW_COLOUR = QColor(224, 83, 61)
GROWTH_COLOUR = QColor(70, 160, 90)
MIN_TIME_SPAN_S = 600.0
_BINARY_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BytesAxis(pg.AxisItem):  # type: ignore[misc]  # pyqtgraph has no type hints
    """An axis whose ticks fall on binary units and read as bytes (512 MiB, 1.00 GiB)."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, float]]:
        span = maxVal - minVal
        if not math.isfinite(span) or span <= 0:
            spacing: list[tuple[float, float]] = super().tickSpacing(minVal, maxVal, size)
            return spacing
        if span < 4:
            return [(1.0, 0.0)]  # no fractions of a byte
        wanted = max(2, int(size / 45))
        raw = span / wanted
        unit = 1024 ** max(0, int(math.log(max(raw, 1), 1024)))
        for step in _BINARY_STEPS:
            if step * unit >= raw:
                major = step * unit
                break
        else:
            major = 1024 * unit
        return [(float(major), 0.0), (float(major) / 2, 0.0)]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        return [format_bytes(int(value)) if value >= 0 else "" for value in values]


_MINUTE, _HOUR, _DAY = 60, 3600, 86400
# Steps between time ticks, and how a tick reads at that step.
_TIME_STEPS = (
    *((minutes * _MINUTE, "%H:%M") for minutes in (1, 2, 5, 10, 15, 30)),
    *((hours * _HOUR, "%H:%M") for hours in (1, 2, 3, 6, 12)),
    *((days * _DAY, "%d %b") for days in (1, 2, 7, 14)),
    (30 * _DAY, "%b %Y"),
    (91 * _DAY, "%b %Y"),
    (365 * _DAY, "%Y"),
)
TIME_LABEL_PIXELS = 70


class TimeAxis(pg.AxisItem):  # type: ignore[misc]  # pyqtgraph has no type hints
    """Local clock times, days or years, whichever the visible span calls for.

    pyqtgraph's DateAxisItem does the same with a general zoom-level machinery that
    costs a few milliseconds of Python on every redraw of the chart.
    """

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[Any]:
        span = maxVal - minVal
        if not math.isfinite(span) or span <= 0:
            return []
        wanted = max(2, int(size / TIME_LABEL_PIXELS))
        step, fmt = next(((s, f) for s, f in _TIME_STEPS if span / s <= wanted), _TIME_STEPS[-1])
        self._format = fmt
        # Ticks on round local times: offset by the local zone's distance from UTC.
        offset = -time.localtime(minVal).tm_gmtoff
        first = math.ceil((minVal - offset) / step) * step + offset
        values = [first + i * step for i in range(int((maxVal - first) // step) + 1)]
        return [(float(step), values)]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        fmt = getattr(self, "_format", "%H:%M")
        return [time.strftime(fmt, time.localtime(value)) for value in values]


def _any_known(usage: DomainUsage) -> bool:
    items = [*usage.snapshots, *([usage.now] if usage.now else [])]
    return any(item.delta_bytes is not None for item in items)


def short_label(name: str) -> str:
    """A bar label short enough to sit under a bar."""
    if len(name) <= LABEL_LENGTH:
        return name
    return name[: LABEL_LENGTH - 1] + "…"


def bar_values(keys: Sequence[str], usage: DomainUsage | None) -> tuple[list[float], list[float]]:
    """Disk delta and saved memory per key (0 where unknown), in the keys' order."""
    by_name: dict[str, SnapshotUsage] = {}
    if usage is not None:
        by_name = {item.name: item for item in usage.snapshots}
        if usage.now is not None:
            by_name[NOW_KEY] = usage.now
    disk: list[float] = []
    memory: list[float] = []
    for key in keys:
        item = by_name.get(key)
        disk.append(float(item.delta_bytes or 0) if item else 0.0)
        memory.append(float(item.vmstate_bytes or 0) if item else 0.0)
    return disk, memory


def growth_points(tree: SnapshotTree, usage: DomainUsage | None) -> tuple[list[float], list[float]]:
    """(creation times, cumulative snapshot space) with snapshots sorted by time."""
    if usage is None:
        return [], []
    by_name = {item.name: item for item in usage.snapshots}
    dated = sorted(
        (snapshot.created, snapshot.name) for snapshot in tree if snapshot.created is not None
    )
    times: list[float] = []
    totals: list[float] = []
    total = 0
    for created, name in dated:
        item = by_name.get(name)
        total += (item.total_bytes or 0) if item else 0
        times.append(float(created))
        totals.append(float(total))
    return times, totals


class UsageCharts(QWidget):
    """The two charts of the selected VM's space."""

    snapshot_clicked = Signal(str)  # a snapshot name or NOW_KEY

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Space charts")
        self._keys: list[str] = []
        self._selected: str | None = None
        self._last_signature: object = None
        self._disk: list[float] = []
        self._memory: list[float] = []
        self._build()
        self._connect_signals()
        self._apply_palette()

    # -- layout -------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        left = QVBoxLayout()
        self.bars_caption = QLabel("Space per snapshot (disk delta, saved memory on top)")
        self.bars_plot = pg.PlotWidget(axisItems={"left": BytesAxis("left")})
        self.bars_plot.setAccessibleName("Space per snapshot chart")
        self.bars_plot.setToolTip("Click a bar to select its snapshot.")
        self.bars_plot.setMenuEnabled(False)
        self.bars_plot.hideButtons()
        self.bars_plot.setMouseEnabled(x=True, y=False)
        # The first bar's label is centred under it and reaches into the margin of the
        # bytes axis: allow that much, or it is hidden.
        self.bars_plot.getAxis("bottom").setStyle(hideOverlappingLabels=LABEL_PIXELS // 2)
        self.disk_bars = pg.BarGraphItem(x=[], height=[], width=BAR_WIDTH, brush=DISK_COLOUR)
        self.memory_bars = pg.BarGraphItem(
            x=[], height=[], y0=[], width=BAR_WIDTH, brush=MEMORY_COLOUR
        )
        self.now_bar = pg.BarGraphItem(x=[], height=[], width=BAR_WIDTH, brush=NOW_COLOUR)
        self.selection_bar = pg.BarGraphItem(
            x=[], height=[], width=BAR_WIDTH + 0.2, brush=None, pen=pg.mkPen(width=2)
        )
        for item in (self.disk_bars, self.memory_bars, self.now_bar, self.selection_bar):
            self.bars_plot.addItem(item)
        self.bars_message = pg.TextItem(anchor=(0.5, 0.5))
        self.bars_plot.addItem(self.bars_message, ignoreBounds=True)
        left.addWidget(self.bars_caption)
        left.addWidget(self.bars_plot, 1)

        right = QVBoxLayout()
        self.growth_caption = QLabel("Snapshot space over time")
        self.growth_plot = pg.PlotWidget(
            axisItems={"left": BytesAxis("left"), "bottom": TimeAxis("bottom")}
        )
        self.growth_plot.setAccessibleName("Snapshot space over time chart")
        self.growth_plot.setMenuEnabled(False)
        self.growth_plot.hideButtons()
        self.growth_curve = pg.PlotDataItem(
            [],
            [],
            pen=pg.mkPen(GROWTH_COLOUR, width=2),
            symbol="o",
            symbolSize=6,
            symbolBrush=GROWTH_COLOUR,
            symbolPen=None,
        )
        self.growth_plot.addItem(self.growth_curve)
        self.capacity_line = pg.InfiniteLine(
            angle=0,
            movable=False,
            pen=pg.mkPen(NOW_COLOUR, width=1, style=pg.QtCore.Qt.PenStyle.DashLine),
            label="",
            labelOpts={"position": 0.02, "anchors": [(0, 1), (0, 1)]},
        )
        self.free_line = pg.InfiniteLine(
            angle=0,
            movable=False,
            pen=pg.mkPen(MEMORY_COLOUR, width=1, style=pg.QtCore.Qt.PenStyle.DashLine),
            label="",
            labelOpts={"position": 0.02, "anchors": [(0, 1), (0, 1)]},
        )
        for line in (self.capacity_line, self.free_line):
            self.growth_plot.addItem(line, ignoreBounds=True)
            line.hide()
        right.addWidget(self.growth_caption)
        right.addWidget(self.growth_plot, 1)

        layout.addLayout(left, 3)
        layout.addLayout(right, 2)

        # Fixed geometry: a caption or a tick label that grows ("24.0 MiB" becoming
        # "1.00 GiB") otherwise lays the plots out again, re-rendering both on every
        # refresh that changes a number.
        for caption in (self.bars_caption, self.growth_caption):
            caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        label_width = self.fontMetrics().horizontalAdvance("1023.9 MiB") + 16
        for plot in (self.bars_plot, self.growth_plot):
            plot.getAxis("left").setWidth(label_width)

    def _connect_signals(self) -> None:
        self.bars_plot.scene().sigMouseClicked.connect(self._on_bars_clicked)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._apply_palette()
        super().changeEvent(event)

    def _apply_palette(self) -> None:
        palette = self.palette()
        background = palette.color(QPalette.ColorRole.Base)
        text = palette.color(QPalette.ColorRole.Text)
        for plot in (self.bars_plot, self.growth_plot):
            plot.setBackground(background)
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(text)
                axis.setTextPen(text)
            plot.showGrid(y=True, alpha=0.15)
        self.selection_bar.setOpts(
            pen=pg.mkPen(palette.color(QPalette.ColorRole.Highlight), width=3)
        )
        self.bars_message.setColor(text)

    # -- data ---------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """The bars, in order (snapshot names; NOW_KEY for Now)."""
        return list(self._keys)

    def bar_heights(self) -> list[tuple[float, float]]:
        """(disk delta, saved memory) of every bar."""
        return list(zip(self._disk, self._memory, strict=True))

    def clear(self, message: str = "") -> None:
        """Show no VM."""
        self._last_signature = None
        self._keys = []
        self._disk, self._memory = [], []
        self.disk_bars.setOpts(x=[], height=[])
        self.memory_bars.setOpts(x=[], height=[], y0=[])
        self.now_bar.setOpts(x=[], height=[])
        self.selection_bar.setOpts(x=[], height=[])
        self.bars_plot.getAxis("bottom").setTicks([[]])
        self.growth_curve.setData([], [])
        self.capacity_line.hide()
        self.free_line.hide()
        self.growth_caption.setText("Snapshot space over time")
        self._set_message(message)

    def set_data(
        self,
        keys: Sequence[str],
        tree: SnapshotTree,
        usage: DomainUsage | None,
        *,
        unavailable: str | None = None,
    ) -> None:
        """Show a VM: ``keys`` are the tree's rows in order (Now included).

        Nothing is touched when what would be drawn is what is drawn: a chart repaint
        costs tens of milliseconds, and refreshes often bring identical numbers.
        """
        keys = list(keys)
        disk_values, memory_values = bar_values(keys, usage)
        growth = growth_points(tree, usage)
        signature = (
            keys,
            disk_values,
            memory_values,
            growth,
            unavailable,
            usage is None,
            usage.pool if usage is not None else None,
        )
        if signature == self._last_signature:
            return
        self._last_signature = signature
        self._keys = keys
        self._disk, self._memory = disk_values, memory_values
        x = np.arange(len(self._keys), dtype=float)
        disk = np.array(self._disk, dtype=float)
        memory = np.array(self._memory, dtype=float)
        # One brush per item (per-bar brushes cost a QBrush each for 10,000 bars); Now
        # is drawn over its own bar in its own colour.
        self.disk_bars.setOpts(x=x, height=disk)
        self.memory_bars.setOpts(x=x, height=memory, y0=disk)
        if NOW_KEY in self._keys:
            now = self._keys.index(NOW_KEY)
            self.now_bar.setOpts(x=[float(now)], height=[disk[now]])
        else:
            self.now_bar.setOpts(x=[], height=[])
        self._update_ticks()
        self._update_selection()
        top = float((disk + memory).max()) if len(self._keys) else 0.0
        self.bars_plot.setXRange(-0.6, max(len(self._keys), 1) - 0.4, padding=0)
        self.bars_plot.setYRange(0, top * 1.08 if top > 0 else 1.0, padding=0)
        # After the new ranges: the message goes in the middle of what will be shown.
        if unavailable is not None:
            self._set_message(unavailable)
        elif usage is None:
            self._set_message("Measuring…")
        elif not self._keys:
            self._set_message("No snapshots")
        elif not _any_known(usage):
            # The reasons are long and per disk: the tree's tooltips carry them.
            self._set_message("No size is known (the tooltips in the tree say why)")
        else:
            self._set_message("")
        self._update_growth(tree, usage)
        self._settle_views()

    def _settle_views(self) -> None:
        """Apply the new view ranges now, not while painting.

        A view box left to apply them when its scene is about to paint moves its items
        during that paint, which asks for a second paint of the whole plot straight
        after: two repaints (tens of milliseconds) for one change.
        """
        for plot in (self.bars_plot, self.growth_plot):
            plot.getViewBox().prepareForPaint()

    def set_selected(self, key: str | None) -> None:
        """Outline the bar of ``key`` (None: no outline)."""
        if key == self._selected:
            return
        self._selected = key
        self._update_selection()

    # -- internals ------------------------------------------------------------------------

    def _set_message(self, message: str) -> None:
        self.bars_message.setText(message)
        self.bars_message.setVisible(bool(message))
        view = self.bars_plot.getViewBox()
        (x0, x1), (y0, y1) = view.viewRange()
        self.bars_message.setPos((x0 + x1) / 2, (y0 + y1) / 2)

    def resizeEvent(self, event: object) -> None:
        super().resizeEvent(event)  # type: ignore[arg-type]
        self._update_ticks()

    def _update_ticks(self) -> None:
        count = len(self._keys)
        room = max(1, (self.bars_plot.width() - 70) // LABEL_PIXELS)
        step = max(1, math.ceil(count / room))
        ticks = [
            (float(i), NOW_LABEL if key == NOW_KEY else short_label(key))
            for i, key in enumerate(self._keys)
            if i % step == 0 or key == NOW_KEY
        ]
        self.bars_plot.getAxis("bottom").setTicks([ticks])

    def _update_selection(self) -> None:
        if self._selected is None or self._selected not in self._keys:
            self.selection_bar.setOpts(x=[], height=[])
            return
        i = self._keys.index(self._selected)
        height = self._disk[i] + self._memory[i]
        top = max(self._disk[j] + self._memory[j] for j in range(len(self._keys)))
        if top <= 0:
            self.selection_bar.setOpts(x=[], height=[])  # nothing to outline
            return
        # A bar of zero height still gets a visible outline.
        self.selection_bar.setOpts(x=[float(i)], height=[max(height, top * 0.01)])

    def _update_growth(self, tree: SnapshotTree, usage: DomainUsage | None) -> None:
        if usage is not None and _any_known(usage):
            times, totals = growth_points(tree, usage)
        else:
            times, totals = [], []  # nothing measured: no line (a flat one would say zero)
        if times:
            times.append(time.time())
            totals.append(totals[-1])
        self.growth_curve.setData(times, totals)
        if times:
            # At least ten minutes across: snapshots made within seconds of each other
            # (a script, the demo lab) otherwise get an axis of fractional seconds.
            first, last = times[0], times[-1]
            pad = max(0.0, MIN_TIME_SPAN_S - (last - first)) / 2
            self.growth_plot.setXRange(first - pad, last + pad, padding=0.05)
        pool = usage.pool if usage is not None else None
        total = totals[-1] if totals else 0.0
        if pool is None:
            self.capacity_line.hide()
            self.free_line.hide()
            if usage is None:
                caption = "Snapshot space over time"
            elif not _any_known(usage):
                caption = "Snapshot space over time: not known"
            else:
                caption = f"Snapshot space over time: {format_bytes(int(total))}"
            self.growth_caption.setText(caption)
            self.growth_plot.setYRange(0, max(total, 1.0) * 1.1, padding=0)
            return
        self.capacity_line.setValue(pool.capacity)
        self.capacity_line.label.setFormat(
            f"pool {pool.name!r} capacity {format_bytes(pool.capacity)}"
        )
        self.free_line.setValue(pool.available)
        self.free_line.label.setFormat(f"free {format_bytes(pool.available)}")
        self.capacity_line.show()
        self.free_line.show()
        self.growth_caption.setText(
            f"Snapshot space over time: {format_bytes(int(total))}; "
            f"pool {pool.name!r} has {format_bytes(pool.available)} free "
            f"of {format_bytes(pool.capacity)}"
        )
        # Show the free-space line when it is near enough to say something; the
        # capacity line stays reachable by zooming out.
        top = max(total, 1.0)
        ceiling = pool.available if pool.available < 20 * top else top
        self.growth_plot.setYRange(0, max(ceiling, top) * 1.1, padding=0)

    @Slot(object)
    def _on_bars_clicked(self, event: QObject) -> None:
        if event.button() != pg.QtCore.Qt.MouseButton.LeftButton or not self._keys:  # type: ignore[attr-defined]
            return
        point = self.bars_plot.getViewBox().mapSceneToView(event.scenePos())  # type: ignore[attr-defined]
        i = round(point.x())
        if 0 <= i < len(self._keys) and abs(point.x() - i) <= BAR_WIDTH / 2 + 0.1:
            event.accept()  # type: ignore[attr-defined]
            self.snapshot_clicked.emit(self._keys[i])
