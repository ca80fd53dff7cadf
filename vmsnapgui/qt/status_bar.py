"""The status bar: connection states, the last refresh and what runs in the background."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

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
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setMaximumWidth(80)
        self.busy.setMaximumHeight(12)
        self.busy.setTextVisible(False)
        self.busy.setAccessibleName("Working")
        self.busy.hide()
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
            self.busy.hide()
            return
        text = description if count == 1 and description else f"{count} background tasks"
        self.activity.setText(text)
        self.busy.show()
