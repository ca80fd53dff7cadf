"""Icons: drawn from SVG at any size; rows get the same drawing as ready pixmaps."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon
from pytestqt.qtbot import QtBot

from tests.gui.conftest import loaded_tree, snap
from tests.gui.test_snapshot_tree_model import WEB
from vmsnapgui.core.snapshot import MemoryKind
from vmsnapgui.qt import icons
from vmsnapgui.qt.snapshot_tree_model import SnapshotTreeModel


def test_a_row_icon_is_the_same_drawing_as_pixmaps_made_once(qtbot: QtBot) -> None:
    layered = icons.snapshot_icon(snap("a", memory=MemoryKind.INTERNAL), current=True)
    row = icons.row_icon(layered)
    assert icons.row_icon(layered) is row  # made once per icon
    assert {size.width() for size in row.availableSizes()} >= set(icons.ROW_ICON_SIZES)
    for size in icons.ROW_ICON_SIZES:
        drawn = row.pixmap(QSize(size, size), 1.0).toImage()
        expected = layered.pixmap(QSize(size, size), 1.0).toImage()
        assert drawn == expected
        assert not drawn.isNull() and drawn.pixelColor(size // 2, size // 2).alpha() > 0
    # Different drawings stay different.
    other = icons.row_icon(icons.now_icon())
    assert other is not row
    assert other.pixmap(16).toImage() != row.pixmap(16).toImage()


def test_the_models_hand_rows_ready_pixmaps(qtbot: QtBot) -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    icon = model.index_of("upgrade").data(Qt.ItemDataRole.DecorationRole)
    assert isinstance(icon, QIcon)
    # Qt's own pixmap icon (it lists its sizes); the layered SVG engine lists none.
    assert {size.width() for size in icon.availableSizes()} >= set(icons.ROW_ICON_SIZES)
    assert icons.snapshot_icon(WEB[0], current=False).availableSizes() == []
