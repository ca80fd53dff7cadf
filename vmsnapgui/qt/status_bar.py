"""The status bar: connection states, the last refresh and what runs in the background."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

from vmsnapgui.qt.host_connection import HostConnection
from vmsnapgui.virt.connection import ConnectionState


class AppStatusBar(QStatusBar):
    """Permanent fields: connections summary, last refresh, background activity."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Status bar")
        self.connections = QLabel()
        self.connections.setAccessibleName("Connection states")
        self.refreshed = QLabel()
        self.refreshed.setAccessibleName("Last refresh")
        self.activity = QLabel()
        self.activity.setAccessibleName("Background activity")
        self.busy = BusySpinner()
        self.addWidget(self.connections, 1)
        self.addPermanentWidget(self.activity)
        self.addPermanentWidget(self.busy)
        self.addPermanentWidget(self.refreshed)

    def show_hosts(self, hosts: list[HostConnection]) -> None:
        """Summarise the connections' states, naming the ones in trouble."""
        if not hosts:
            self.connections.setText("No connections")
            return
        connected = [h for h in hosts if h.status.state is ConnectionState.CONNECTED]
        trouble = [
            h for h in hosts if h.status.state in (ConnectionState.LOST, ConnectionState.FAILED)
        ]
        busy = [
            h
            for h in hosts
            if h.status.state in (ConnectionState.CONNECTING, ConnectionState.DISCONNECTED)
        ]
        parts = [f"{len(connected)} of {len(hosts)} connected"]
        if busy:
            parts.append(f"{len(busy)} connecting")
        for host in trouble[:3]:
            word = "lost" if host.status.state is ConnectionState.LOST else "failed"
            parts.append(f"{host.label} {word}")
        if len(trouble) > 3:
            parts.append(f"{len(trouble) - 3} more in trouble")
        self.connections.setText(" · ".join(parts))
        tips = [
            f"{h.label}: {h.status.state.value}"
            + (f" ({h.status.reason})" if h.status.reason else "")
            for h in hosts
        ]
        self.connections.setToolTip("\n".join(tips))

    def show_refreshed(self, when: float | None) -> None:
        """The time of the last completed refresh."""
        if when is None:
            self.refreshed.setText("")
            return
        self.refreshed.setText("Refreshed " + time.strftime("%H:%M:%S", time.localtime(when)))

    def show_activity(self, count: int, description: str = "") -> None:
        """How much work runs in the background (and what, when it is one thing)."""
        if count <= 0:
            self.activity.setText("")
            self.busy.stop()
            return
        text = description if count == 1 and description else f"{count} background tasks"
        self.activity.setText(text)
        self.busy.start()


SPINNER_FRAMES = "◐◓◑◒"
SPINNER_INTERVAL_MS = 250


class BusySpinner(QLabel):
    """A small turning sign while work runs in the background.

    A busy QProgressBar animates at 60 frames a second: while operations ran, most of
    the GUI thread's painting was that bar. Four frames a second say "working" as well.
    The label has a fixed size, so a new frame repaints the label alone and never lays
    out the window.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Working")
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        metrics = self.fontMetrics()
        width = max(metrics.horizontalAdvance(frame) for frame in SPINNER_FRAMES)
        self.setFixedSize(width + 6, metrics.height())
        self._frame = 0
        self._timer = QTimer(self)
        self._timer.setInterval(SPINNER_INTERVAL_MS)
        self._timer.timeout.connect(self._next_frame)
        self.hide()

    @property
    def spinning(self) -> bool:
        """True while shown and turning."""
        return self._timer.isActive()

    def start(self) -> None:
        """Show and turn (already turning: nothing changes)."""
        if self._timer.isActive():
            return
        self._frame = 0
        self.setText(SPINNER_FRAMES[0])
        self.show()
        self._timer.start()

    def stop(self) -> None:
        """Stop turning and hide."""
        self._timer.stop()
        self.hide()

    @Slot()
    def _next_frame(self) -> None:
        self._frame = (self._frame + 1) % len(SPINNER_FRAMES)
        self.setText(SPINNER_FRAMES[self._frame])
