"""The redraw pacer: each redraw once per batch of requests, one per turn, spaced."""

from __future__ import annotations

import itertools
import time

from pytestqt.qtbot import QtBot

from vmsnapgui.qt.redraw_pacer import RedrawPacer


def make_pacer(names: tuple[str, ...], breath_ms: int = 12) -> tuple[RedrawPacer, list]:
    pacer = RedrawPacer(breath_ms=breath_ms)
    runs: list[tuple[str, float]] = []
    for name in names:
        pacer.add(name, lambda name=name: runs.append((name, time.monotonic())))
    return pacer, runs


def test_requests_made_before_a_redraw_runs_are_served_by_one_run(qtbot: QtBot) -> None:
    pacer, runs = make_pacer(("details",))
    for _ in range(5):
        pacer.request("details")
    assert pacer.is_pending("details") and pacer.is_pending()
    qtbot.waitUntil(lambda: not pacer.is_pending(), timeout=2000)
    qtbot.wait(50)
    assert [name for name, _ in runs] == ["details"]
    pacer.request("details")  # a new request after the run: a new run
    qtbot.waitUntil(lambda: len(runs) == 2, timeout=2000)


def test_redraws_asked_for_together_run_apart_in_the_order_they_fell_due(
    qtbot: QtBot,
) -> None:
    pacer, runs = make_pacer(("charts", "details", "outline"), breath_ms=20)
    pacer.request("charts", 30)
    pacer.request("details")
    pacer.request("outline")
    qtbot.waitUntil(lambda: len(runs) == 3, timeout=2000)
    assert [name for name, _ in runs] == ["details", "outline", "charts"]
    times = [when for _, when in runs]
    assert all(b - a >= 0.019 for a, b in itertools.pairwise(times)), times


def test_a_delay_is_kept(qtbot: QtBot) -> None:
    pacer, runs = make_pacer(("charts",))
    asked = time.monotonic()
    pacer.request("charts", 80)
    qtbot.waitUntil(lambda: bool(runs), timeout=2000)
    assert runs[0][1] - asked >= 0.079


def test_heavy_work_elsewhere_pushes_the_next_redraw_back_by_a_breath(qtbot: QtBot) -> None:
    pacer, runs = make_pacer(("details",), breath_ms=40)
    pacer.request("details")
    pacer.worked()
    worked_at = time.monotonic()
    qtbot.waitUntil(lambda: bool(runs), timeout=2000)
    assert runs[0][1] - worked_at >= 0.039


def test_stop_runs_nothing_more(qtbot: QtBot) -> None:
    pacer, runs = make_pacer(("details", "charts"))
    pacer.request("charts", 20)
    qtbot.waitUntil(lambda: bool(runs), timeout=2000)
    assert [name for name, _ in runs] == ["charts"]
    pacer.request("details")
    pacer.stop()
    pacer.request("charts")
    qtbot.wait(60)
    assert [name for name, _ in runs] == ["charts"]
    assert not pacer.is_pending()
