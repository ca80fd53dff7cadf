"""The app's icons: SVG drawings from ``resources/icons``, sharp at any scale.

An icon may be a stack of drawings (a snapshot camera with a small "external" badge in
one corner and a "current" badge in another); :class:`LayeredSvgIconEngine` paints the
stack at whatever size and device pixel ratio Qt asks for, so nothing is blurred on a
high-DPI screen. When a drawing is missing (an odd install), a standard style icon
stands in, so the app still starts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QGuiApplication, QIcon, QIconEngine, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QApplication, QStyle

from vmsnapgui.core.snapshot import DomainState, Snapshot
from vmsnapgui.virt.connection import ConnectionState

if TYPE_CHECKING:
    from PySide6.QtSvg import QSvgRenderer

ICON_DIR = Path(__file__).resolve().parents[2] / "resources" / "icons"

# Where a layer sits inside the icon's square, as fractions (x, y, width, height).
FULL = (0.0, 0.0, 1.0, 1.0)
BOTTOM_RIGHT = (0.5, 0.5, 0.5, 0.5)
TOP_LEFT = (0.0, 0.0, 0.5, 0.5)
BOTTOM_LEFT = (0.0, 0.5, 0.5, 0.5)

Layer = tuple[str, tuple[float, float, float, float]]


def _drawing(name: str) -> Path:
    return ICON_DIR / f"{name}.svg"


@cache
def _renderer(name: str) -> QSvgRenderer | None:
    # Imported on the first paint of an icon, not at start: the window shows sooner.
    from PySide6.QtSvg import QSvgRenderer

    path = _drawing(name)
    if not path.is_file():
        return None
    renderer = QSvgRenderer(str(path))
    return renderer if renderer.isValid() else None


class LayeredSvgIconEngine(QIconEngine):
    """Paints several SVG drawings on top of each other, each in its own rectangle.

    Each size is drawn once and kept as a pixmap: item views paint an icon for every
    visible row on every repaint, and rendering SVG there (in Python, a call into Qt
    per layer and rectangle) made repaints slow while loading threads held the GIL.
    """

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        super().__init__()
        self._layers = layers
        self._pixmaps: dict[tuple[int, int, QIcon.Mode, QIcon.State, float], QPixmap] = {}

    def paint(self, painter: QPainter, rect: object, mode: QIcon.Mode, state: QIcon.State) -> None:
        target = QRectF(rect)  # type: ignore[call-overload]
        device = painter.device()
        ratio = device.devicePixelRatioF() if device is not None else 1.0
        size = QSize(round(target.width()), round(target.height()))
        painter.drawPixmap(target.topLeft(), self.scaledPixmap(size, mode, state, ratio))

    def _render(self, painter: QPainter, target: QRectF, mode: QIcon.Mode) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if mode == QIcon.Mode.Disabled:
            painter.setOpacity(0.35)
        for name, (fx, fy, fw, fh) in self._layers:
            renderer = _renderer(name)
            if renderer is None:
                continue
            renderer.render(
                painter,
                QRectF(
                    target.x() + fx * target.width(),
                    target.y() + fy * target.height(),
                    fw * target.width(),
                    fh * target.height(),
                ),
            )

    def pixmap(self, size: QSize, mode: QIcon.Mode, state: QIcon.State) -> QPixmap:
        return self.scaledPixmap(size, mode, state, 1.0)

    def scaledPixmap(
        self, size: QSize, mode: QIcon.Mode, state: QIcon.State, scale: float
    ) -> QPixmap:
        key = (size.width(), size.height(), mode, state, scale)
        pixmap = self._pixmaps.get(key)
        if pixmap is None:
            width, height = round(size.width() * scale), round(size.height() * scale)
            image = QImage(max(width, 1), max(height, 1), QImage.Format.Format_ARGB32_Premultiplied)
            image.fill(Qt.GlobalColor.transparent)
            painter = QPainter(image)
            self._render(painter, QRectF(0, 0, width, height), mode)
            painter.end()
            pixmap = QPixmap.fromImage(image)
            pixmap.setDevicePixelRatio(scale)
            self._pixmaps[key] = pixmap
        return pixmap

    def clone(self) -> QIconEngine:
        return LayeredSvgIconEngine(self._layers)


def _fallback(standard: QStyle.StandardPixmap) -> QIcon:
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app.style().standardIcon(standard)
    return QIcon()


@cache
def layered_icon(
    layers: tuple[Layer, ...], fallback: QStyle.StandardPixmap = QStyle.StandardPixmap.SP_FileIcon
) -> QIcon:
    """An icon painted from drawings in ``resources/icons`` (cached per combination)."""
    if not _drawing(layers[0][0]).is_file():
        return _fallback(fallback)
    return QIcon(LayeredSvgIconEngine(layers))


# Item views paint an icon per visible row on every repaint. Through the layered
# engine each paint is a call into Python, which waits for the GIL while background
# threads run Python; while an operation ran that was a good part of every repaint of
# the trees. Rows get the same drawing as plain pixmaps, which Qt paints on its own.
ROW_ICON_SIZES = (16, 22, 32)
_row_icons: dict[int, QIcon] = {}


def row_icon(icon: QIcon) -> QIcon:
    """``icon`` as pixmaps drawn once (16, 22 and 32 pixels at the screens' scale)."""
    key = icon.cacheKey()
    found = _row_icons.get(key)
    if found is not None:
        return found
    app = QGuiApplication.instance()
    if not isinstance(app, QGuiApplication):
        return icon  # no pixmaps without an application (a model used on its own)
    ratios = {1.0, float(app.devicePixelRatio())}
    drawn = QIcon()
    for size in ROW_ICON_SIZES:
        for ratio in sorted(ratios):
            drawn.addPixmap(icon.pixmap(QSize(size, size), ratio))
    _row_icons[key] = drawn
    return drawn


def named_icon(
    name: str, fallback: QStyle.StandardPixmap = QStyle.StandardPixmap.SP_FileIcon
) -> QIcon:
    """One drawing as an icon (toolbar actions, the window icon)."""
    return layered_icon(((name, FULL),), fallback)


def snapshot_icon(snapshot: Snapshot, *, current: bool) -> QIcon:
    """Camera for a snapshot with memory (green), without (grey); disk for disk-only.

    A purple badge marks external snapshots, a blue tick the current snapshot.
    """
    if snapshot.is_disk_only:
        base = "disk-only"
    elif snapshot.has_memory:
        base = "camera-memory"
    else:
        base = "camera-offline"
    layers: list[Layer] = [(base, FULL)]
    if snapshot.is_external:
        layers.append(("badge-external", BOTTOM_LEFT))
    if current:
        layers.append(("badge-current", BOTTOM_RIGHT))
    return layered_icon(tuple(layers), QStyle.StandardPixmap.SP_DialogSaveButton)


def now_icon() -> QIcon:
    """The "you are here" pin of the Now row."""
    return named_icon("now", QStyle.StandardPixmap.SP_ArrowRight)


def domain_state_icon(state: DomainState, *, linked: bool = False) -> QIcon:
    """A small screen: green play when running, yellow pause, grey when shut off.

    An orange chain badge marks a linked clone (its disks stand on another VM's files).
    """
    if state is DomainState.RUNNING or state is DomainState.BLOCKED:
        name = "vm-running"
    elif state in (DomainState.PAUSED, DomainState.PMSUSPENDED, DomainState.SHUTDOWN):
        name = "vm-paused"
    elif state is DomainState.CRASHED:
        name = "vm-crashed"
    else:
        name = "vm-shutoff"
    if linked:
        return layered_icon(
            ((name, FULL), ("badge-linked", BOTTOM_LEFT)), QStyle.StandardPixmap.SP_ComputerIcon
        )
    return named_icon(name, QStyle.StandardPixmap.SP_ComputerIcon)


_STATE_BADGES = {
    ConnectionState.CONNECTED: "state-ok",
    ConnectionState.CONNECTING: "state-busy",
    ConnectionState.DISCONNECTED: "state-busy",
    ConnectionState.LOST: "state-lost",
    ConnectionState.FAILED: "state-failed",
    ConnectionState.CLOSED: "state-failed",
}


def host_icon(state: ConnectionState) -> QIcon:
    """A server with a badge: green connected, blue connecting, orange lost, red failed."""
    return layered_icon(
        (("host", FULL), (_STATE_BADGES[state], BOTTOM_RIGHT)),
        QStyle.StandardPixmap.SP_DriveNetIcon,
    )


def state_badge_icon(state: ConnectionState) -> QIcon:
    """Only the badge of a connection state (status bar)."""
    return named_icon(_STATE_BADGES[state], QStyle.StandardPixmap.SP_MessageBoxInformation)
