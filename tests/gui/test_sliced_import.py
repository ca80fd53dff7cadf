"""SlicedImport: a heavy package is imported on the GUI thread, with the event loop turning."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from pytestqt.qtbot import QtBot

from vmsnapgui.qt.sliced_import import SlicedImport

MODULE_TEXT = """
import time
import slice_probe

slice_probe.seen.append((__name__, slice_probe.ticks(), slice_probe.on_main_thread()))
time.sleep(0.02)  # a module that takes a while, as pyqtgraph's do
"""


@pytest.fixture
def slow_package(tmp_path: Path) -> Iterator[types.SimpleNamespace]:
    """A package of three slow modules, and a probe they report to."""
    package = tmp_path / "slow_package"
    package.mkdir()
    (package / "__init__.py").write_text("from . import one, two, three\n")
    for name in ("one", "two", "three"):
        (package / f"{name}.py").write_text(MODULE_TEXT)
    probe = types.SimpleNamespace(
        seen=[],
        ticks=lambda: 0,
        on_main_thread=lambda: threading.current_thread() is threading.main_thread(),
    )
    sys.modules["slice_probe"] = probe  # type: ignore[assignment]
    sys.path.insert(0, str(tmp_path))
    yield probe
    sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name.startswith("slow_package")]:
        del sys.modules[name]
    del sys.modules["slice_probe"]


def test_the_event_loop_turns_between_the_modules_of_a_slow_import(
    qtbot: QtBot, slow_package: types.SimpleNamespace
) -> None:
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1

    heartbeat = QTimer()
    heartbeat.timeout.connect(tick)
    heartbeat.start(1)
    slow_package.ticks = lambda: ticks
    importer = SlicedImport("slow_package", ["PySide6.QtCore"], slice_s=0.005)
    with qtbot.waitSignal(importer.finished, timeout=10_000) as finished:
        importer.start()
    heartbeat.stop()

    assert finished.args == [True, ""]
    assert "slow_package.three" in sys.modules
    names = [name for name, _, _ in slow_package.seen]
    assert names == ["slow_package.one", "slow_package.two", "slow_package.three"]
    # Timers fired between one module and the next: the window was never held for the
    # whole import.
    seen_ticks = [seen for _, seen, _ in slow_package.seen]
    assert seen_ticks[0] < seen_ticks[1] < seen_ticks[2]
    assert importer.turns_during_import >= 2
    # Every module ran on the GUI thread, where Qt types may safely be made.
    assert all(on_main for _, _, on_main in slow_package.seen)
    assert importer.is_done()


def test_the_finder_is_removed_after_the_import(
    qtbot: QtBot, slow_package: types.SimpleNamespace
) -> None:
    before = list(sys.meta_path)
    importer = SlicedImport("slow_package", [])
    with qtbot.waitSignal(importer.finished, timeout=10_000):
        importer.start()
    assert sys.meta_path == before


def test_a_missing_package_is_reported_in_words(qtbot: QtBot) -> None:
    before = list(sys.meta_path)
    importer = SlicedImport("no_such_chart_package", ["PySide6.QtCore"])
    with qtbot.waitSignal(importer.finished, timeout=10_000) as finished:
        importer.start()
    assert finished.args == [False, "No module named 'no_such_chart_package'"]
    assert sys.meta_path == before


def test_a_missing_qt_module_is_reported_without_importing_the_package(
    qtbot: QtBot, slow_package: types.SimpleNamespace
) -> None:
    importer = SlicedImport("slow_package", ["PySide6.QtNoSuchModule"])
    with qtbot.waitSignal(importer.finished, timeout=10_000) as finished:
        importer.start()
    assert finished.args[0] is False
    assert "PySide6.QtNoSuchModule" in finished.args[1]
    assert "slow_package" not in sys.modules


def test_qt_classes_are_made_before_the_package_imports(qtbot: QtBot) -> None:
    from PySide6 import QtGui

    importer = SlicedImport("json", ["PySide6.QtGui"])
    with qtbot.waitSignal(importer.finished, timeout=10_000):
        importer.start()
    # Every class of the module now exists in its namespace (PySide creates them on
    # first use otherwise, and the package would create them as it imports).
    assert {"QPainterPath", "QStandardItemModel", "QTextDocument"} <= set(vars(QtGui))
