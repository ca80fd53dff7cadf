"""The window on the test driver: hosts and VMs, the tree, details, live refresh, editing."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from tests.gui.conftest import (
    LOAD_TIMEOUT_MS,
    WindowFactory,
    details_show,
    lab_host,
    select_row,
    select_vm,
    wait_settled,
)
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.qt.app_settings import AppSettings
from vmsnapgui.qt.host_list_model import HostColumn
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY, Column, Role
from vmsnapgui.virt.connection import ConnectionState


def test_the_left_pane_lists_the_host_and_its_vms_with_counts(
    lab_window: MainWindow, qtmodeltester: ModelTester
) -> None:
    model = lab_window.host_model
    qtmodeltester.check(model)
    host_index = model.index(0, 0)
    assert host_index.data().endswith("— 4 VMs")
    names = [model.index(row, 0, host_index).data() for row in range(model.rowCount(host_index))]
    assert names == ["build", "db", "odd", "web"]
    web = model.index(3, HostColumn.SNAPSHOTS, host_index)
    assert web.data() == "6"
    assert "running" in model.index(3, 0, host_index).data(Qt.ItemDataRole.ToolTipRole)


def test_the_first_vm_with_snapshots_is_shown_without_asking(lab_window: MainWindow) -> None:
    assert lab_window.tree_model.domain is not None
    assert lab_window.tree_model.domain.name == "db"
    # Its current snapshot is selected, so the details say where the VM is.
    assert lab_window.tree_view.selected_key() == "s3-paused"


def rows_after(model: object, key: str) -> list[str]:
    """The keys of the rows below ``key`` at its level, up to the end of its run."""
    index = model.index_of(key)  # type: ignore[attr-defined]
    parent = index.parent()
    keys = []
    for row in range(index.row() + 1, model.rowCount(parent)):  # type: ignore[attr-defined]
        keys.append(model.index(row, 0, parent).data(Role.KEY))  # type: ignore[attr-defined]
    return keys


def test_selecting_a_vm_shows_its_tree_with_now_under_the_current_snapshot(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    model = lab_window.tree_model
    # Now is the row right below the current snapshot (its only child: same column).
    assert rows_after(model, "before-upgrade") == [NOW_KEY]
    assert model.index_of(NOW_KEY).parent() == model.index_of("before-upgrade").parent()
    assert model.index_of("before-upgrade").data(Qt.ItemDataRole.FontRole).bold()
    assert lab_window.vm_title.text() == "web — running"
    # Every branch is open.
    assert lab_window.tree_view.isExpanded(lab_window.tree_view.view_index("php-experiment"))


def test_sizes_say_why_they_are_missing_on_the_test_driver(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    # The test driver's disks are not real files: no number is invented.
    select_vm(qtbot, lab_window, "web")
    cell = lab_window.tree_model.index_of("base").siblingAtColumn(Column.DELTA)
    assert cell.data() in ("—", "")
    assert cell.data(Qt.ItemDataRole.ToolTipRole)


def test_details_show_properties_disks_and_the_configuration_change_from_the_parent(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    select_row(qtbot, lab_window, "nginx-installed")
    details = lab_window.details
    assert details.title.text() == "nginx-installed"
    assert details.changes_caption.text() == "Compared with its parent 'base':"
    assert details.changes.text().splitlines() == [
        "Memory:",
        "  Memory: 1.00 GiB → 2.00 GiB",
        "Processors:",
        "  vCPUs: 1 vCPU → 2 vCPUs",
    ]
    assert details.disks.topLevelItem(0).text(0) == "vda"
    assert details.disks.topLevelItem(0).text(2) == "/var/lib/libvirt/images/web.qcow2"
    assert details.description.toPlainText() == "apt install nginx; default site enabled"


def test_details_of_now_compare_the_current_snapshot_with_the_live_definition(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    select_row(qtbot, lab_window, NOW_KEY)
    details = lab_window.details
    assert details.title.text() == "Now (you are here)"
    qtbot.waitUntil(
        lambda: details.changes_caption.text().startswith("Compared with the current"),
        timeout=LOAD_TIMEOUT_MS,
    )
    # The live VM gained a network interface since 'before-upgrade'.
    assert "Interface 52:54:00:aa:00:01 added: network default" in details.changes.text()
    assert details.description_box.isHidden()


def test_the_description_is_saved_through_libvirt(lab_window: MainWindow, qtbot: QtBot) -> None:
    select_vm(qtbot, lab_window, "web")
    select_row(qtbot, lab_window, "php-experiment")
    details = lab_window.details
    assert not details.save_button.isEnabled()
    details.description.setPlainText("Kept <after> all & more\nsecond line")
    assert details.save_button.isEnabled()
    qtbot.mouseClick(details.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: details.description_state.text() == "Saved.", timeout=LOAD_TIMEOUT_MS)
    host = lab_host(lab_window)
    stored = host.loader.load("web").tree["php-experiment"].description
    assert stored == "Kept <after> all & more\nsecond line"
    # The tree shows it too once the reload arrives.
    qtbot.waitUntil(
        lambda: (
            lab_window.tree_model.index_of("php-experiment")
            .siblingAtColumn(Column.DESCRIPTION)
            .data()
            == "Kept <after> all & more"
        ),
        timeout=LOAD_TIMEOUT_MS,
    )


def test_a_description_libvirt_would_refuse_is_explained_before_saving(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    select_row(qtbot, lab_window, "base")
    details = lab_window.details
    details.description.setPlainText("bad\x01byte")
    assert not details.description_error.isHidden()
    assert "control characters" in details.description_error.text()
    assert not details.save_button.isEnabled()


def test_snapshots_made_behind_the_apps_back_appear_with_selection_and_expansion_kept(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    view = lab_window.tree_view
    view.collapse(view.view_index("php-experiment"))
    view.select_key("tls & certs")
    host = lab_host(lab_window)
    # The test driver keeps a private host per connection: change it through ours.
    dom = host.connection.conn.lookupByName("web")
    dom.snapshotCreateXML(snapshot_request_xml("made-by-virsh", "outside"), 0)
    qtbot.waitUntil(lambda: lab_window.tree_model.index_of("made-by-virsh").isValid(), timeout=5000)
    model = lab_window.tree_model
    # The new snapshot continues the run below 'before-upgrade', and Now follows it.
    assert rows_after(model, "before-upgrade") == ["made-by-virsh", NOW_KEY]
    assert view.selected_key() == "tls & certs"
    assert not view.isExpanded(view.view_index("php-experiment"))
    assert view.isExpanded(view.view_index("tls & certs"))

    dom.snapshotLookupByName("php-tuned", 0).delete(0)
    qtbot.waitUntil(lambda: not model.index_of("php-tuned").isValid(), timeout=5000)
    assert view.selected_key() == "tls & certs"


def test_the_filter_box_is_reached_with_ctrl_f_and_filters_as_you_type(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    lab_window.activateWindow()
    lab_window.tree_view.setFocus()
    lab_window.filter_action.trigger()
    assert lab_window.filter_edit.hasFocus() or QApplication.focusWidget() is lab_window.filter_edit
    qtbot.keyClicks(lab_window.filter_edit, "tuned")
    proxy = lab_window.proxy
    qtbot.waitUntil(lambda: proxy.words == ("tuned",), timeout=2000)
    view = lab_window.tree_view
    assert view.view_index("php-tuned").isValid()
    assert view.view_index("php-experiment").isValid()  # an ancestor
    assert not view.view_index("tls & certs").isValid()
    assert view.isExpanded(view.view_index("php-experiment"))
    qtbot.keyClick(lab_window.filter_edit, Qt.Key.Key_Escape)
    assert lab_window.filter_edit.text() == ""
    assert view.view_index("tls & certs").isValid()


def test_the_keyboard_moves_through_the_tree(lab_window: MainWindow, qtbot: QtBot) -> None:
    select_vm(qtbot, lab_window, "web")
    view = lab_window.tree_view
    view.select_key("base")
    view.setFocus()
    qtbot.keyClick(view, Qt.Key.Key_Down)
    assert view.selected_key() == "nginx-installed"
    qtbot.keyClick(view, Qt.Key.Key_End)
    assert view.selected_key() == "php-tuned"
    qtbot.waitUntil(lambda: details_show(lab_window, "php-tuned"), timeout=LOAD_TIMEOUT_MS)
    assert lab_window.details.title.text() == "php-tuned"


def test_the_context_menu_offers_what_the_row_allows_and_says_why_not(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    assert lab_window.tree_view.select_key("base")
    menu = lab_window.build_tree_menu("base")
    labels = {action.text(): action for action in menu.actions() if action.text()}
    assert labels["&Revert to snapshot…"].isEnabled()
    assert labels["&Delete this snapshot…"].isEnabled()
    assert labels["Delete its children &only…"].isEnabled()
    assert labels["Show &XML"].isEnabled()
    clone = labels["C&lone…"]
    assert not clone.isEnabled()  # the test driver's disks are not files on this computer
    assert clone.toolTip().startswith("Cloning copies disk files with qemu-img on this computer")
    assert lab_window.tree_view.select_key("php-tuned")
    leaf = {a.text(): a for a in lab_window.build_tree_menu("php-tuned").actions() if a.text()}
    assert not leaf["Delete its children &only…"].isEnabled()
    assert leaf["Delete its children &only…"].toolTip() == "'php-tuned' has no children to delete."
    assert lab_window.tree_view.select_key(NOW_KEY)
    now_menu = lab_window.build_tree_menu(NOW_KEY)
    assert [a.text() for a in now_menu.actions()] == ["&Take snapshot…", "C&lone current state…"]
    assert now_menu.actions()[0].isEnabled()


def test_copy_name_puts_the_snapshot_name_on_the_clipboard(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    select_vm(qtbot, lab_window, "web")
    lab_window.tree_view.select_key("tls & certs")
    lab_window.copy_name_action.trigger()
    assert QApplication.clipboard().text() == "tls & certs"


def test_a_connection_that_cannot_open_says_why_and_offers_retry(
    make_window: WindowFactory, qtbot: QtBot
) -> None:
    window = make_window()
    window.show()
    host = window.add_connection("qemu+tcp://127.0.0.1:1/system")
    assert host is not None
    qtbot.waitUntil(lambda: host.status.state is ConnectionState.FAILED, timeout=LOAD_TIMEOUT_MS)
    wait_settled(qtbot, window)
    assert "failed" in window.host_model.index(0, 0).data()
    assert "refused" in window.message_bar.text.text()
    assert window.message_bar.action_button.text() == "Retry"
    window.host_view.setCurrentIndex(window.host_model.index(0, 0))
    assert not window.retry_button.isHidden()
    assert "State: failed" in window.host_page_text.text()
    window.retry_button.click()
    qtbot.waitUntil(
        lambda: host.status.state is ConnectionState.FAILED and host.is_settled,
        timeout=LOAD_TIMEOUT_MS,
    )


def test_a_lost_host_does_not_hold_up_the_others(
    make_window: WindowFactory, qtbot: QtBot, lab_uri: str
) -> None:
    window = make_window()
    window.add_connection("qemu+tcp://127.0.0.1:1/system")
    window.add_connection(lab_uri)
    wait_settled(qtbot, window)
    assert window.hosts[1].status.state is ConnectionState.CONNECTED
    assert len(window.hosts[1].trees) == 4


def test_connections_are_remembered_and_reopened_at_the_next_start(
    make_window: WindowFactory, qtbot: QtBot, lab_uri: str, settings: AppSettings
) -> None:
    first = make_window()
    first.add_connection(lab_uri)
    wait_settled(qtbot, first)
    first.save_layout()
    assert settings.connections() == [lab_uri]
    second = make_window()
    for entry in settings.connections():
        second.add_entry(entry)
    wait_settled(qtbot, second)
    assert [h.uri for h in second.hosts] == [lab_uri]
    # Removing forgets it.
    second.remove_host(second.hosts[0])
    assert settings.connections() == []


def test_window_geometry_splitters_and_columns_are_remembered(
    make_window: WindowFactory, settings: AppSettings
) -> None:
    first = make_window()
    first.resize(700, 500)  # within the offscreen screen (800 x 600)
    first.tree_view.setColumnWidth(Column.NAME, 333)
    first.save_layout()
    second = make_window()
    assert second.tree_view.columnWidth(Column.NAME) == 333
    assert second.size().width() == 700


def test_enter_on_a_tree_row_moves_the_focus_to_its_details(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    lab_window.show()
    select_vm(qtbot, lab_window, "web")
    assert lab_window.tree_view.select_key("base")
    lab_window.tree_view.setFocus()
    qtbot.waitUntil(lab_window.tree_view.hasFocus, timeout=5000)
    qtbot.keyClick(lab_window.tree_view, Qt.Key.Key_Return)
    qtbot.waitUntil(lab_window.details.hasFocus, timeout=5000)
    qtbot.waitUntil(lambda: details_show(lab_window, "base"), timeout=LOAD_TIMEOUT_MS)
    assert lab_window.details.title.text() == "base"
