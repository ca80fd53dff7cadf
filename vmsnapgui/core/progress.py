"""Progress and cancellation: the interface between long work and whoever shows it.

Workers call a :data:`ProgressCallback` with :class:`Progress` values and check a
:class:`CancelToken` at safe points. The GUI binds a progress bar and a Cancel button
to these; the CLI prints them. Nothing here knows about threads or Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from vmsnapgui.core.errors import UserError


class Cancelled(UserError):
    """The user cancelled; everything the operation did has been undone."""

    def __init__(self, message: str = "Cancelled; nothing was changed.") -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an operation is: a phase name and, when known, how far along it is.

    ``done``/``total`` are bytes when ``unit`` is "bytes", else steps or percent;
    ``total`` None means the length of the phase is unknown.
    ``can_cancel`` says whether Cancel would work right now (an internal snapshot,
    for one, cannot be interrupted once QEMU has started writing it).
    """

    phase: str
    done: int | None = None
    total: int | None = None
    unit: str = "bytes"
    can_cancel: bool = False

    @property
    def fraction(self) -> float | None:
        """0.0 … 1.0, or None when the length is unknown."""
        if self.done is None or not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


ProgressCallback = Callable[[Progress], None]


def ignore_progress(progress: Progress) -> None:
    """A progress callback for callers that do not show progress."""


class CancelToken:
    """Set from any thread by the user; checked by the worker at safe points."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Ask the work to stop; runs the registered abort hooks once."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`Cancelled` when cancel was asked for."""
        if self._event.is_set():
            raise Cancelled()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when cancelled (at once if already); returns an unregister."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when cancelled meanwhile."""
        return self._event.wait(timeout)
