"""A host's loading: bulk work takes turns in lanes; news about a loaded VM does not wait."""

from __future__ import annotations

import threading

import libvirt
from pytestqt.qtbot import QtBot

from tests.gui.conftest import lab_host
from vmsnapgui.core.progress import CancelToken, ProgressCallback
from vmsnapgui.qt.host_connection import IN_PROCESS_LOAD_LANE
from vmsnapgui.qt.main_window import MainWindow


def test_news_about_a_loaded_vm_does_not_wait_behind_loading(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    host = lab_host(lab_window)
    release = threading.Event()

    def big_tree(progress: ProgressCallback, cancel: CancelToken) -> None:
        release.wait(10)

    # The lane's one place is taken, as by a tree of ten thousand snapshots.
    blocker = lab_window.runner.submit(big_tree, lane=IN_PROCESS_LOAD_LANE)
    try:
        uuid = next(u for u, summary in host.domains.items() if summary.name == "web")
        job = host.load_tree(uuid)
        assert job is not None
        qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
        assert not blocker.is_finished
    finally:
        release.set()
    qtbot.waitUntil(lambda: blocker.is_finished, timeout=5000)


def test_a_refresh_that_finds_nothing_new_changes_nothing_shown(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    host = lab_host(lab_window)
    uuid = next(u for u, summary in host.domains.items() if summary.name == "web")
    shown = host.trees[uuid]
    announced: list[object] = []
    host.tree_loaded.connect(announced.append)

    job = host.load_tree(uuid, refetch_all=True)  # fresh records, the same content
    assert job is not None
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    assert announced == []
    assert host.trees[uuid] is shown

    dom = host.connection.conn.lookupByUUIDString(uuid)
    snapshot = dom.snapshotLookupByName("base")
    snapshot_xml = snapshot.getXMLDesc(0).replace(
        "<description>", "<description>edited elsewhere: ", 1
    )
    assert "edited elsewhere" in snapshot_xml
    dom.snapshotCreateXML(snapshot_xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    job = host.load_tree(uuid, refetch_all=True)
    assert job is not None
    qtbot.waitUntil(lambda: len(announced) == 1, timeout=5000)
    assert host.trees[uuid] is not shown
    assert "edited elsewhere" in (host.trees[uuid].tree["base"].description or "")
