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
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_what_survives_is_frozen_at_most_once_a_second(fresh_freezer: None) -> None:
    kept = [[n] for n in range(1000)]
    gc_pauses.loaded_data_arrived()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    more = [[n] for n in range(1000)]
    gc_pauses.loaded_data_arrived()
    # Not frozen again: ``more`` is not in the frozen generation. (The count may drop a
    # little: frozen objects that other tests' threads let go of are freed.)
    assert gc.get_freeze_count() < frozen + len(more)
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


def test_after_start_up_full_collections_wait_for_a_quiet_moment(fresh_freezer: None) -> None:
    class Node:
        pass

    gc_pauses.start_up_done()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[2] == gc_pauses.NO_AUTOMATIC_FULL_COLLECTIONS
    assert gc.isenabled()  # young collections go on
    cycle = Node()
    cycle.me = cycle  # type: ignore[attr-defined]
    ref = weakref.ref(cycle)
    del cycle
    gc_pauses.collect_while_quiet()
    assert ref() is None
