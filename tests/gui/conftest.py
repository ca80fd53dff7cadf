"""Fixtures for the GUI tier: the window on libvirt's test driver, with throw-away settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QAbstractItemModel, QModelIndex, QModelRoleData, QModelRoleDataSpan
from PySide6.QtGui import QIcon, QPixmap
from pytestqt.qtbot import QtBot

from vmsnapgui.core.snapshot import (
    DiskKind,
    DomainState,
    DomainSummary,
    MemoryKind,
    Snapshot,
    SnapshotDisk,
)
from vmsnapgui.core.snapshot_tree import SnapshotTree
from vmsnapgui.qt.app_settings import AppSettings, settings_at
from vmsnapgui.qt.host_connection import HostConnection
from vmsnapgui.qt.main_window import MainWindow
from vmsnapgui.virt.snapshot_loader import DomainSnapshots

LOAD_TIMEOUT_MS = 15_000


@pytest.fixture
def settings(tmp_path: Path) -> AppSettings:
    """Settings in a temporary file: tests never touch the user's."""
    return AppSettings(settings_at(str(tmp_path / "vmsnapgui.ini")))


WindowFactory = Callable[..., MainWindow]


@pytest.fixture
def make_window(qtbot: QtBot, settings: AppSettings) -> Iterator[WindowFactory]:
    """Windows that are shut down (connections closed, jobs waited for) afterwards."""
    made: list[MainWindow] = []

    def factory(*, charts: bool = False, watch_interval: float = 0.5) -> MainWindow:
        window = MainWindow(settings, watch_interval=watch_interval, charts=charts)
        qtbot.addWidget(window)
        made.append(window)
        return window

    yield factory
    for window in made:
        window.shutdown()


def wait_settled(qtbot: QtBot, window: MainWindow) -> None:
    """Until every host has loaded its trees and sizes (or failed)."""
    qtbot.waitUntil(window.is_settled, timeout=LOAD_TIMEOUT_MS)


@pytest.fixture
def lab_window(make_window: WindowFactory, qtbot: QtBot, lab_uri: str) -> MainWindow:
    """The window showing snapshot-lab.xml, everything loaded, nothing selected."""
    window = make_window()
    window.add_connection(lab_uri)
    window.show()
    wait_settled(qtbot, window)
    return window


def lab_host(window: MainWindow) -> HostConnection:
    return window.hosts[0]


def select_vm(qtbot: QtBot, window: MainWindow, name: str) -> None:
    assert window.select_path(name)
    qtbot.waitUntil(
        lambda: window.tree_model.domain is not None and window.tree_model.domain.name == name,
        timeout=LOAD_TIMEOUT_MS,
    )


def details_show(window: MainWindow, key: str) -> bool:
    """True once the details panel shows ``key`` (details follow the tree a turn later)."""
    context = window.details.context
    return context is not None and context.key == key


def select_row(qtbot: QtBot, window: MainWindow, key: str) -> None:
    """Select a row of the shown tree and wait for its details."""
    assert window.tree_view.select_key(key)
    qtbot.waitUntil(lambda: details_show(window, key), timeout=LOAD_TIMEOUT_MS)


# -- hand-made trees for model tests -------------------------------------------------------


def snap(
    name: str,
    parent: str | None = None,
    created: int = 1_700_000_000,
    *,
    memory: MemoryKind = MemoryKind.NONE,
    description: str | None = None,
    external: bool = False,
) -> Snapshot:
    kind = DiskKind.EXTERNAL if external else DiskKind.INTERNAL
    return Snapshot(
        name=name,
        parent=parent,
        created=created,
        state="running" if memory is not MemoryKind.NONE else "shutoff",
        description=description,
        memory=memory,
        disks=(SnapshotDisk("vda", kind, "/images/x.qcow2" if external else None),),
    )


def loaded_tree(
    snapshots: list[Snapshot],
    current: str | None,
    *,
    uuid: str = "00000000-0000-0000-0000-000000000001",
    state: DomainState = DomainState.SHUTOFF,
) -> DomainSnapshots:
    tree = SnapshotTree(snapshots, current)
    summary = DomainSummary("vm", uuid, state, snapshot_count=len(tree), current_snapshot=current)
    return DomainSnapshots("test:///hand-made", summary, tree, len(tree))


# -- models ---------------------------------------------------------------------------


def every_index(model: QAbstractItemModel, parent: QModelIndex | None = None) -> list[QModelIndex]:
    """Every cell of a model, depth first."""
    parent = parent or QModelIndex()
    found = []
    for row in range(model.rowCount(parent)):
        for column in range(model.columnCount(parent)):
            index = model.index(row, column, parent)
            found.append(index)
            if column == 0:
                found.extend(every_index(model, index))
    return found


def assert_every_role_at_once_matches(model: QAbstractItemModel, roles: list[int]) -> None:
    """``multiData`` answers what ``data`` does, role by role, for every cell.

    The same slots are reused from cell to cell, as views do: a role a cell lacks must
    be cleared, not left as the previous cell had it.
    """
    slots = [QModelRoleData(int(role)) for role in roles]
    indexes = every_index(model)
    assert len(indexes) > 5
    for index in indexes:
        for role, slot in zip(roles, slots, strict=True):
            model.multiData(index, QModelRoleDataSpan(slot))
            expected = model.data(index, role)
            if isinstance(expected, QIcon | QPixmap):
                assert isinstance(slot.data(), type(expected))
                assert slot.data().cacheKey() == expected.cacheKey()
            else:
                assert slot.data() == expected, (index.row(), index.column(), role)
