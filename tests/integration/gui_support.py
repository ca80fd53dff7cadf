"""The window on the real daemon, for the GUI tests of the real tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from vmsnapgui.qt.app_settings import AppSettings, settings_at
from vmsnapgui.qt.main_window import MainWindow


@pytest.fixture
def window(qtbot: QtBot, tmp_path: Path, system_conn: object) -> Iterator[MainWindow]:
    settings = AppSettings(settings_at(str(tmp_path / "vmsnapgui.ini")))
    window = MainWindow(settings, charts=False)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.shutdown()


def show_vm(qtbot: QtBot, window: MainWindow, name: str) -> None:
    qtbot.waitUntil(lambda: window.select_path(name), timeout=20_000)
    qtbot.waitUntil(
        lambda: window.tree_model.domain is not None and window.tree_model.domain.name == name,
        timeout=20_000,
    )
