"""Deferred redraws of the window, run one per turn of the event loop with room between.

After an operation the window has several things to redraw: the tree (when the reload
arrives), the selected row's details, the charts. Each takes a few milliseconds of the
GUI thread, and several times that while QEMU, libvirt and our own worker threads want
the same two CPUs. Run back to back (a zero-delay timer fires before an older timer that
is due later), they kept the window from answering for their sum.

A :class:`RedrawPacer` runs the redraws it is asked for one at a time, each in a turn of
its own and at least :data:`BREATH_MS` after the previous piece of heavy work ended, so
that what waits in between (input, a repaint, other timers) gets its turn. Requests for
a redraw already waiting are served by that one run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, QTimer, Slot

# Longer than the 10 ms a timer of the window may wait for its turn: everything that
# was due when a redraw ended runs before the next redraw starts.
BREATH_MS = 12


@dataclass
class _Redraw:
    callback: Callable[[], None]
    due: float | None = None  # monotonic seconds; None: not asked for


class RedrawPacer(QObject):
    """Named redraws, each run once per request batch, one per turn, spaced apart."""

    def __init__(self, parent: QObject | None = None, *, breath_ms: int = BREATH_MS) -> None:
        super().__init__(parent)
        self._breath = breath_ms / 1000
        self._redraws: dict[str, _Redraw] = {}
        self._quiet_from = float("-inf")  # when the last heavy work ended
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._run_next)
        self._stopped = False

    def add(self, name: str, callback: Callable[[], None]) -> None:
        """Make a redraw known by ``name``."""
        self._redraws[name] = _Redraw(callback)

    def request(self, name: str, delay_ms: int = 0) -> None:
        """Run ``name`` once, no sooner than ``delay_ms`` from now (already asked: as asked)."""
        redraw = self._redraws[name]
        if redraw.due is not None or self._stopped:
            return
        redraw.due = time.monotonic() + delay_ms / 1000
        self._arm()

    def is_pending(self, name: str | None = None) -> bool:
        """True while ``name`` (any redraw, for None) waits to run."""
        if name is not None:
            return self._redraws[name].due is not None
        return any(redraw.due is not None for redraw in self._redraws.values())

    def worked(self) -> None:
        """Heavy work just ended on the GUI thread: the next redraw waits a breath."""
        self._quiet_from = time.monotonic() + self._breath
        self._arm()

    def stop(self) -> None:
        """Run nothing more (the window is closing)."""
        self._stopped = True
        self._timer.stop()
        for redraw in self._redraws.values():
            redraw.due = None

    def _arm(self) -> None:
        due = [redraw.due for redraw in self._redraws.values() if redraw.due is not None]
        if not due or self._stopped:
            self._timer.stop()
            return
        at = max(min(due), self._quiet_from)
        self._timer.start(max(0, math.ceil((at - time.monotonic()) * 1000)))

    @Slot()
    def _run_next(self) -> None:
        now = time.monotonic()
        waiting = [
            (redraw.due, name)
            for name, redraw in self._redraws.items()
            if redraw.due is not None and redraw.due <= now
        ]
        if not waiting or now < self._quiet_from:
            self._arm()  # woken a little early
            return
        _due, name = min(waiting)
        redraw = self._redraws[name]
        redraw.due = None
        try:
            redraw.callback()
        finally:
            self.worked()
