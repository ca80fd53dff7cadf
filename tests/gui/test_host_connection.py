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


def test_sizes_are_measured_after_the_new_tree_has_had_time_to_paint(
    lab_window: MainWindow, qtbot: QtBot
) -> None:
    import time

    from vmsnapgui.qt.host_connection import USAGE_AFTER_TREE_MS

    host = lab_host(lab_window)
    uuid = next(u for u, summary in host.domains.items() if summary.name == "web")
    moments: dict[str, float] = {}
    host.tree_loaded.connect(lambda loaded: moments.setdefault("tree", time.monotonic()))
    lab_window.runner.job_started.connect(
        lambda job: (
            job.description.startswith("Measuring the snapshots of web")
            and moments.setdefault("measuring", time.monotonic())
        )
    )
    dom = host.connection.conn.lookupByUUIDString(uuid)
    dom.snapshotCreateXML("<domainsnapshot><name>later</name></domainsnapshot>", 0)
    job = host.load_tree(uuid)  # a new snapshot: a new shape, measured again
    assert job is not None
    qtbot.waitUntil(lambda: "tree" in moments, timeout=5000)
    # Not settled meanwhile: the measurement counts as pending from the start.
    assert not host.is_settled
    qtbot.waitUntil(lambda: "measuring" in moments, timeout=5000)
    assert moments["measuring"] - moments["tree"] >= USAGE_AFTER_TREE_MS / 1000 * 0.9
    qtbot.waitUntil(lambda: host.is_settled, timeout=5000)
    assert uuid in host.usages
