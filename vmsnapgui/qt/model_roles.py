"""Answering a view's request for every role of a cell in one call (``multiData``).

Qt's default ``multiData`` calls ``data`` once per role, seven or more times per cell
painted, and from C++ each of those is a call into Python that must win the GIL back
from whichever background thread is running Python. A model written in Python answers
the whole request in one call instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from PySide6.QtCore import QModelRoleData, QModelRoleDataSpan


def answer_roles(
    span: QModelRoleDataSpan | QModelRoleData, value_of: Callable[[int], object]
) -> None:
    """Set every slot of ``span`` to ``value_of(role)``, clearing it where that is None.

    Views reuse the same slots from cell to cell, so a role the cell lacks must be
    cleared, or it shows what the previous cell had.
    """
    slots = (span,) if isinstance(span, QModelRoleData) else cast(Iterable[QModelRoleData], span)
    for slot in slots:
        value = value_of(slot.role())
        if value is None:
            slot.clearData()
        else:
            slot.setData(value)


def no_value(_role: int) -> None:
    """For :func:`answer_roles` on a cell that has nothing to show: every role cleared."""
    return None
