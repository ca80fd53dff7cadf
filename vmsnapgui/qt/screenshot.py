"""``--screenshot``: wait until everything has loaded, render the window to a PNG, exit.

Exit status 0 when every connection and tree loaded; 1 when a connection or a tree
failed, the selection asked for does not exist, nothing settled in time, or the file
could not be written. Sizes that could not be measured are reported but do not fail
the run (the window says why on screen).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Slot
from PySide6.QtWidgets import QApplication

from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.virt.connection import ConnectionState

SETTLE_DELAY_MS = 400
POLL_MS = 100


class ScreenshotTaker(QObject):
    """Watches the window and takes the picture once it has settled."""

    def __init__(
        self,
        window: MainWindow,
        path: Path,
        *,
        select: tuple[str, str | None] | None = None,
        timeout: float = 180.0,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.path = path
        self.select = select
        self.deadline = time.monotonic() + timeout
        self.exit_code: int | None = None
        self._settled_since: float | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._on_tick)

    def start(self) -> None:
        """Start watching."""
        if self.select is not None:
            self.window.request_selection(*self.select)
        self._timer.start()

    @Slot()
    def _on_tick(self) -> None:
        window = self.window
        now = time.monotonic()
        if now > self.deadline:
            self._finish("gave up waiting for everything to load", capture=True)
            return
        if not window.is_settled():
            self._settled_since = None
            return
        # Let the last updates paint before taking the picture.
        if self._settled_since is None:
            self._settled_since = now
            return
        if (now - self._settled_since) * 1000 < SETTLE_DELAY_MS:
            return
        pending = window.pending_selection()
        if pending is not None:
            self._finish(f"there is no virtual machine called {pending[0]!r}", capture=True)
            return
        self._finish(None, capture=True)

    def _problems(self) -> list[str]:
        problems = []
        for host in self.window.hosts:
            if host.status.state is ConnectionState.FAILED:
                problems.append(f"{host.label}: {host.status.reason}")
            for uuid, error in host.tree_errors.items():
                name = host.domains[uuid].name if uuid in host.domains else uuid
                problems.append(f"{host.label}/{name}: {error.message}")
        if self.select is not None and self.select[1] is not None:
            row = self.window.selected_row()
            if row is None or row[2] != self.select[1]:
                problems.append(f"there is no snapshot called {self.select[1]!r}")
        return problems

    def _warnings(self) -> list[str]:
        notes = []
        for host in self.window.hosts:
            for uuid, error in host.usage_errors.items():
                name = host.domains[uuid].name if uuid in host.domains else uuid
                notes.append(f"{host.label}/{name}: {error.message}")
        return notes

    def _finish(self, failure: str | None, capture: bool) -> None:
        self._timer.stop()
        problems = self._problems()
        if failure:
            problems.insert(0, failure)
        for note in self._warnings():
            print(f"vmsnapgui: note: {note}", file=sys.stderr)
        if capture:
            self.window.refresh_status_now()
            QApplication.processEvents()
            image = self.window.grab()
            if not image.save(str(self.path), "PNG"):
                problems.append(f"could not write {self.path}")
            else:
                print(f"vmsnapgui: saved {self.path}", file=sys.stderr)
        for problem in problems:
            print(f"vmsnapgui: {problem}", file=sys.stderr)
        self.exit_code = 1 if problems else 0
        QApplication.exit(self.exit_code)
