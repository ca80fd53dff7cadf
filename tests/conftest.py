"""Shared fixtures for every test tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Qt draws offscreen in tests; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is the real-daemon tier."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.real)
