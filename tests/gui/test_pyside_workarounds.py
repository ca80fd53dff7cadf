"""The app survives a binding that loses a reference to True on every signal emit."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal

from vmsnapgui.qt.pyside_workarounds import keep_bool_singletons_alive


class Emitter(QObject):
    fired = Signal(int)


def test_a_long_session_of_signal_emits_never_frees_true() -> None:
    keep_bool_singletons_alive()
    emitter = Emitter()
    before = sys.getrefcount(True)
    for value in range(50_000):  # PySide6 6.12.0 aborted after a few thousand
        emitter.fired.emit(value)
    after = sys.getrefcount(True)
    if before - after >= 40_000:
        # This binding has the bug: the reserve must still be keeping True alive.
        assert after > 1_000_000
    else:
        assert abs(after - before) < 1_000  # a healthy binding keeps its count
    assert True is not False
