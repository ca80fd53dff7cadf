"""Loaded data leaves the cyclic collector's sight, so its full passes stay short."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from vmsnapgui.qt import gc_pauses


@pytest.fixture
def fresh_freezer(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(gc_pauses, "_last_freeze", float("-inf"))
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_survives_is_frozen_at_most_once_a_second(fresh_freezer: None) -> None:
    kept = [[n] for n in range(1000)]
    gc_pauses.loaded_data_arrived()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    more = [[n] for n in range(1000)]
    gc_pauses.loaded_data_arrived()
    assert gc.get_freeze_count() == frozen
    assert len(more) == len(kept)


def test_fresh_garbage_is_collected_not_frozen(fresh_freezer: None) -> None:
    class Node:
        pass

    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    ref = weakref.ref(cycle)
    del cycle
    gc_pauses.loaded_data_arrived()
    assert ref() is None
