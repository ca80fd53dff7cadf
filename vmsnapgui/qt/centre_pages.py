"""What the centre shows when no VM is selected: a welcome page and a connection page."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from vmsnapgui.qt.display_text import status_text
from vmsnapgui.qt.host_connection import HostConnection
from vmsnapgui.virt.connection import ConnectionState


class WelcomePage(QWidget):
    """No VM selected: what to do next (and why no local hypervisor was found)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.demo_button = QPushButton("Open the &demo lab")
        self.demo_button.setToolTip(
            "Four tiny VMs with real snapshot trees on libvirt's embedded QEMU driver "
            "(built once, about half a minute)"
        )
        self.add_button = QPushButton("&Add connection…")
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.demo_button)
        buttons.addStretch(1)
        layout.addStretch(1)
        layout.addWidget(self.text)
        layout.addLayout(buttons)
        layout.addStretch(2)

    def show_state(
        self, *, probing: bool, has_hosts: bool, failures: tuple[tuple[str, str], ...]
    ) -> None:
        """Say what is going on and offer what makes sense."""
        offer = not probing and not has_hosts
        self.demo_button.setVisible(offer)
        self.add_button.setVisible(offer)
        if probing:
            self.text.setText("Looking for a hypervisor on this computer…")
        elif has_hosts:
            self.text.setText("Select a virtual machine on the left to see its snapshots.")
        elif failures:
            reasons = "\n".join(f"{uri}: {reason}" for uri, reason in failures)
            self.text.setText(
                "No hypervisor answered on this computer.\n\n"
                f"{reasons}\n\nConnect to another host, or look around in the demo lab."
            )
        else:
            self.text.setText(
                "No connections yet. Connect to a libvirt host, or look around in the demo lab."
            )


class HostPage(QWidget):
    """A connection is selected: its URI, state, reason, and Retry when it failed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.retry_button = QPushButton("&Retry")
        self.retry_button.setAccessibleName("Retry the connection")
        buttons = QHBoxLayout()
        buttons.addWidget(self.retry_button)
        buttons.addStretch(1)
        layout.addWidget(self.text)
        layout.addLayout(buttons)
        layout.addStretch(1)

    def show_host(self, host: HostConnection) -> None:
        """Show one connection's state."""
        status = host.status
        lines = [
            f"<b>{_html(host.label)}</b>",
            _html(host.uri),
            "",
            f"State: {_html(status_text(status))}",
        ]
        if status.detail and status.detail != status.reason:
            lines.append(f"Details: {_html(status.detail)}")
        if host.domains_loaded:
            lines.append(f"{len(host.domains)} virtual machine(s); select one on the left.")
        self.text.setText("<br>".join(lines))
        self.retry_button.setVisible(status.state is ConnectionState.FAILED)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
