"""Progress values and cancellation tokens."""

from __future__ import annotations

import threading

import pytest

from vmsnapgui.core.progress import Cancelled, CancelToken, Progress


def test_fraction_is_bounded_and_unknown_without_a_total() -> None:
    assert Progress("copying", 50, 200).fraction == 0.25
    assert Progress("copying", 300, 200).fraction == 1.0
    assert Progress("waiting").fraction is None


def test_cancel_runs_hooks_once_and_raises_at_the_next_check() -> None:
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("abort job"))
    token.raise_if_cancelled()
    threading.Thread(target=token.cancel).start()
    assert token.wait(5.0)
    token.cancel()
    assert calls == ["abort job"]
    with pytest.raises(Cancelled) as caught:
        token.raise_if_cancelled()
    assert caught.value.message == "Cancelled; nothing was changed."


def test_a_hook_added_after_cancel_runs_at_once_and_removed_hooks_do_not() -> None:
    token = CancelToken()
    calls: list[str] = []
    unregister = token.on_cancel(lambda: calls.append("removed"))
    unregister()
    token.cancel()
    token.on_cancel(lambda: calls.append("late"))
    assert calls == ["late"]
