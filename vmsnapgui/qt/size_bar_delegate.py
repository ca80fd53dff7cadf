"""Draws a size cell as text over a bar as long as the size is against the VM's largest."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QObject, QPersistentModelIndex, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPalette
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from vmsnapgui.qt.snapshot_tree_model import Role

BAR_MARGIN = 3
MIN_BAR_WIDTH = 2.0


class SizeBarDelegate(QStyledItemDelegate):
    """A bar proportional to ``Role.BAR_FRACTION`` behind the cell's (right-aligned) text.

    The bar uses the palette's highlight colour, faded, so it reads in light and dark
    themes and stays visible on a selected row.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        fraction = index.data(Role.BAR_FRACTION)
        if not isinstance(fraction, float):
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        text = opt.text
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else None
        if style is None:
            super().paint(painter, option, index)
            return
        # Background, selection and focus first; then the bar; then the text on top.
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        rect = QRectF(opt.rect).adjusted(BAR_MARGIN, BAR_MARGIN, -BAR_MARGIN, -BAR_MARGIN)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        colour = QColor(
            opt.palette.color(
                QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Highlight
            )
        )
        colour.setAlphaF(0.35 if selected else 0.30)
        width = max(MIN_BAR_WIDTH, rect.width() * fraction) if fraction > 0 else 0.0
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawRoundedRect(QRectF(rect.x(), rect.y(), width, rect.height()), 2, 2)
        painter.setPen(
            opt.palette.color(
                QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
            )
        )
        painter.setFont(opt.font)
        text_rect = rect.adjusted(2, 0, -2, 0)
        painter.drawText(
            text_rect,
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
            text,
        )
        painter.restore()
