"""Linked clones shown as linked: a person clicks a VM in the list and the details say
what it stands on (or what stands on it); the list marks clones with a badge.

The host is ``tests/data/linked-clones-host.xml`` on the test driver: 'web-test' is a
linked clone of 'web''s external snapshot 'base' (its disk's backing chain, in its XML
as libvirt gives it for a running VM, goes into the image 'base' froze).
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QModelIndex, Qt
from pytestqt.qtbot import QtBot

from tests.gui.conftest import LOAD_TIMEOUT_MS, WindowFactory, details_show, wait_settled
from vmsnapgui.core.snapshot import DomainState
from vmsnapgui.qt import icons
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY

HOST_FILE = Path(__file__).resolve().parents[1] / "data" / "linked-clones-host.xml"

CLONE_LINE = "Linked clone of web — stands on its snapshot 'base'"
SOURCE_LINE = "Linked clones: web-test (on 'base')"


def open_host(make_window: WindowFactory, qtbot: QtBot, tmp_path: Path) -> MainWindow:
    window = make_window()
    window.resize(1400, 800)
    window.add_connection(f"test://{HOST_FILE}", remember=False)
    window.show()
    wait_settled(qtbot, window)
    host = window.hosts[0]
    qtbot.waitUntil(lambda: host.links is not None, timeout=LOAD_TIMEOUT_MS)
    return window


def screenshot_dir(tmp_path: Path) -> Path:
    """Where pictures of the window go: $VMSNAP_SCREENSHOT_DIR to keep them, else tmp."""
    kept = os.environ.get("VMSNAP_SCREENSHOT_DIR")
    folder = Path(kept) if kept else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def vm_row(window: MainWindow, name: str) -> QModelIndex:
    host = window.hosts[0]
    uuid = next(u for u, s in host.domains.items() if s.name == name)
    return window.host_model.index_of_domain(host, uuid)


def click_vm(qtbot: QtBot, window: MainWindow, name: str) -> None:
    """Click the VM's row in the list, as a person does."""
    view = window.host_view
    index = vm_row(window, name)
    view.scrollTo(index)
    qtbot.mouseClick(
        view.viewport(), Qt.MouseButton.LeftButton, pos=view.visualRect(index).center()
    )
    qtbot.waitUntil(
        lambda: window.tree_model.domain is not None and window.tree_model.domain.name == name,
        timeout=LOAD_TIMEOUT_MS,
    )


def test_clicking_a_linked_clone_shows_what_it_stands_on(
    make_window: WindowFactory, qtbot: QtBot, tmp_path: Path
) -> None:
    window = open_host(make_window, qtbot, tmp_path)
    click_vm(qtbot, window, "web-test")
    qtbot.waitUntil(lambda: details_show(window, NOW_KEY), timeout=LOAD_TIMEOUT_MS)
    label = window.details.links_label
    qtbot.waitUntil(label.isVisible, timeout=LOAD_TIMEOUT_MS)
    assert label.text() == CLONE_LINE
    assert "stands on /images/web.qcow2" in label.toolTip()
    # The test driver is not this computer: the chains came from libvirt's XML.
    assert window.hosts[0].links is not None
    assert window.hosts[0].links.from_images is False

    picture = screenshot_dir(tmp_path) / "linked-clone.png"
    assert window.grab().save(str(picture))
    assert picture.stat().st_size > 10_000


def test_clicking_the_source_lists_its_clones_and_the_snapshot_names_them(
    make_window: WindowFactory, qtbot: QtBot, tmp_path: Path
) -> None:
    window = open_host(make_window, qtbot, tmp_path)
    click_vm(qtbot, window, "web")
    label = window.details.links_label
    qtbot.waitUntil(
        lambda: label.isVisible() and label.text() == SOURCE_LINE, timeout=LOAD_TIMEOUT_MS
    )
    # 'base' is current: the tree selected it, and its properties name the clone.
    qtbot.waitUntil(lambda: details_show(window, "base"), timeout=LOAD_TIMEOUT_MS)
    rows = {
        name.text(): value.text()
        for name, value in window.details._property_rows
        if value.isVisible()
    }
    assert rows["Linked clones:"] == "web-test"

    picture = screenshot_dir(tmp_path) / "linked-source.png"
    assert window.grab().save(str(picture))

    click_vm(qtbot, window, "plain")
    qtbot.waitUntil(lambda: not label.isVisible(), timeout=LOAD_TIMEOUT_MS)


def test_the_list_marks_a_linked_clone_with_a_badge_and_says_why(
    make_window: WindowFactory, qtbot: QtBot, tmp_path: Path
) -> None:
    window = open_host(make_window, qtbot, tmp_path)
    clone, source = vm_row(window, "web-test"), vm_row(window, "web")
    qtbot.waitUntil(
        lambda: CLONE_LINE in (clone.data(Qt.ItemDataRole.ToolTipRole) or ""),
        timeout=LOAD_TIMEOUT_MS,
    )
    assert SOURCE_LINE in source.data(Qt.ItemDataRole.ToolTipRole)
    badge = icons.row_icon(icons.domain_state_icon(DomainState.SHUTOFF, linked=True))
    plain = icons.row_icon(icons.domain_state_icon(DomainState.SHUTOFF))
    assert clone.data(Qt.ItemDataRole.DecorationRole).cacheKey() == badge.cacheKey()
    assert vm_row(window, "plain").data(Qt.ItemDataRole.DecorationRole).cacheKey() == (
        plain.cacheKey()
    )
    assert clone.data(Qt.ItemDataRole.AccessibleTextRole).endswith(", a linked clone")
    assert clone.data(Qt.ItemDataRole.DisplayRole) == "web-test"
