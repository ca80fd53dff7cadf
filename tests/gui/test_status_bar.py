"""The status bar's background-activity sign."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from vmsnapgui.qt.status_bar import SPINNER_FRAMES, SPINNER_INTERVAL_MS, AppStatusBar


def test_background_work_shows_a_slow_spinner_that_never_relayouts(qtbot: QtBot) -> None:
    bar = AppStatusBar()
    qtbot.addWidget(bar)
    bar.show()
    spinner = bar.busy
    assert spinner.isHidden()
    # A fixed size: a new frame repaints the sign only, never the window's layout.
    assert spinner.minimumSize() == spinner.maximumSize()

    bar.show_activity(1, "Taking snapshot 'x'")
    assert bar.activity.text() == "Taking snapshot 'x'"
    assert spinner.isVisible() and spinner.spinning
    seen = {spinner.text()}
    qtbot.waitUntil(lambda: spinner.text() != SPINNER_FRAMES[0], timeout=4 * SPINNER_INTERVAL_MS)
    seen.add(spinner.text())
    assert seen <= set(SPINNER_FRAMES) and len(seen) == 2

    bar.show_activity(3)
    assert bar.activity.text() == "3 background tasks"
    bar.show_activity(0)
    assert spinner.isHidden() and not spinner.spinning
    assert bar.activity.text() == ""
