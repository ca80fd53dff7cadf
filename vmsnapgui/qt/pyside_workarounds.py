"""Work-arounds for bugs of the Qt binding that would otherwise crash the app.

PySide6 6.12.0 on Python 3.11: every ``Signal.emit()`` made from Python drops one
reference to ``True`` that it never took (the bool it returns is not increfed). After a
few thousand emits the interpreter frees ``True`` and aborts with "Fatal Python error:
bool_dealloc". The app emits signals all the time (every job, every refresh), so it
would crash within minutes. :func:`keep_bool_singletons_alive` measures whether this
binding has the leak and, if so, gives ``True`` (and ``False``) a reserve of references
so large that the leak can never use it up. The singletons are static objects that are
never freed anyway; the reserve only keeps the interpreter from trying. Bindings without
the bug are left untouched (and on Python 3.12+ the singletons are immortal).
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

_RESERVE = 1 << 40
_PROBE_EMITS = 8
_applied = False


class _Probe(QObject):
    fired = Signal()


def _refcount_drop(value: bool) -> int:
    probe = _Probe()
    before = sys.getrefcount(value)
    for _ in range(_PROBE_EMITS):
        probe.fired.emit()
    return before - sys.getrefcount(value)


def keep_bool_singletons_alive() -> bool:
    """Guard against the emit refcount leak when this binding has it; True if applied."""
    global _applied
    if _applied:
        return True
    leaking = [value for value in (True, False) if _refcount_drop(value) > 0]
    for value in (True, False) if leaking else ():
        counter = ctypes.c_ssize_t.from_address(id(value))
        counter.value += _RESERVE
    _applied = bool(leaking)
    return _applied
