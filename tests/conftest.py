"""Shared fixtures for every test tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vmsnapgui.virt.snapshot_loader import SnapshotLoader

# Qt draws offscreen in tests; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# The real tier's GUI fixtures (a window on the system daemon) live in their own module.
pytest_plugins = ["tests.integration.gui_support"]

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def lab_file() -> Path:
    """The test-driver host description with the reference snapshot trees."""
    return DATA / "snapshot-lab.xml"


@pytest.fixture(scope="session")
def lab_uri(lab_file: Path) -> str:
    """A libvirt test-driver URI serving ``snapshot-lab.xml``."""
    return f"test://{lab_file}"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak N``: the fault tier's randomised tests run N rounds (CI runs its fixed set)."""
    parser.addoption("--soak", type=int, default=None, help="randomised fault rounds per soak test")
    parser.addoption("--soak-seed", type=int, default=None, help="replay a soak with this seed")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is the real-daemon tier."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.real)


def open_loader(uri: str, max_threads: int = 8) -> Iterator[SnapshotLoader]:
    """A connected loader for ``uri``, closed afterwards (the body of loader fixtures)."""
    from vmsnapgui.virt.connection import Connection
    from vmsnapgui.virt.snapshot_loader import SnapshotLoader

    connection = Connection(uri)
    connection.open()
    loader = SnapshotLoader(connection, max_threads=max_threads)
    yield loader
    loader.close()
    connection.close()


@pytest.fixture
def lab_loader(lab_uri: str) -> Iterator[SnapshotLoader]:
    """A loader on a private copy of the test-driver lab (each connection gets its own)."""
    yield from open_loader(lab_uri)
