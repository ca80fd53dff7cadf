"""The window on a real daemon: changes made by virsh appear by themselves; a lost host
shows as lost and comes back."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from tests.integration.conftest import SYSTEM_URI, GuestFactory, virsh
from tests.integration.gui_support import show_vm
from tests.integration.socket_forwarder import SocketForwarder
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY
from vmsnapgui.virt.connection import ConnectionState

LIVE_LIMIT_MS = 5000


def test_snapshots_changed_by_virsh_show_up_within_five_seconds(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "first")
    window.add_connection(SYSTEM_URI, remember=False)
    show_vm(qtbot, window, guest.name)
    model = window.tree_model
    assert model.keys() == ["first", NOW_KEY]
    window.tree_view.select_key("first")

    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "second", "--description", "by virsh")
    qtbot.waitUntil(lambda: model.index_of("second").isValid(), timeout=LIVE_LIMIT_MS)
    # A run of only children: 'second' and then Now right below 'first', same level.
    assert model.keys() == ["first", "second", NOW_KEY]
    assert model.index_of(NOW_KEY).parent() == model.index_of("first").parent()
    assert window.tree_view.selected_key() == "first"

    virsh(SYSTEM_URI, "snapshot-revert", guest.name, "first")
    # 'first' now has two children ('second' and Now): they nest under it.
    qtbot.waitUntil(
        lambda: model.index_of(NOW_KEY).parent() == model.index_of("first"), timeout=LIVE_LIMIT_MS
    )

    virsh(SYSTEM_URI, "snapshot-delete", guest.name, "second")
    qtbot.waitUntil(lambda: not model.index_of("second").isValid(), timeout=LIVE_LIMIT_MS)
    assert model.keys() == ["first", NOW_KEY]


def test_a_lost_connection_shows_lost_then_connected_again(
    window: MainWindow, qtbot: QtBot, make_guest: GuestFactory
) -> None:
    guest = make_guest()
    forwarder = SocketForwarder()
    forwarder.start()
    try:
        host = window.add_connection(
            f"qemu+tcp://127.0.0.1:{forwarder.port}/system", remember=False
        )
        assert host is not None
        qtbot.waitUntil(window.is_settled, timeout=30_000)
        show_vm(qtbot, window, guest.name)
        host_row = window.host_model.index_of_host(host)

        forwarder.cut()
        qtbot.waitUntil(lambda: host.status.state is ConnectionState.LOST, timeout=20_000)
        assert "lost, reconnecting" in host_row.data()
        assert "connection lost" in window.message_bar.text.text()
        # The window still answers while the host is away.
        window.tree_view.select_key(NOW_KEY)
        assert window.tree_view.selected_key() == NOW_KEY

        forwarder.start()
        qtbot.waitUntil(lambda: host.status.state is ConnectionState.CONNECTED, timeout=40_000)
        qtbot.waitUntil(
            lambda: host_row.data().endswith("VMs") or host_row.data().endswith("VM"),
            timeout=20_000,
        )
        assert not window.message_bar.isVisible()
        assert window.tree_model.domain is not None
        assert window.tree_model.domain.name == guest.name
    finally:
        forwarder.cut()
