"""Importing a heavy Qt-using package (pyqtgraph) on the GUI thread in slices.

Why not on a worker thread: PySide keeps the private data of every wrapper type (each
Qt class, created the first time Python reads its name, and each Python subclass of one)
in one process-wide table. The GUI thread reads that table without the GIL whenever Qt
asks an object made in Python for its meta-object, which happens on most events. A type
created on another thread at that moment can make the lookup come back empty: the app
died with SIGSEGV in ``PySide::MetaObjectBuilder::update()`` in about one start in 300
while pyqtgraph, which reads every name of QtCore, QtGui and QtWidgets and defines dozens
of subclasses, was imported on a thread. So every Qt type is made on the GUI thread.

Why in slices: the import costs the GUI thread some 250 ms (numpy a third of it, creating
Qt classes about half), and the window must not freeze for that long while hosts load.
(numpy could be imported on a thread, as it makes no Qt types, but its extension
modules hold the GIL for tens of milliseconds at a time: the GUI thread stalled longer.)

1. The Qt modules the package uses are imported, and their classes created by reading
   every name, a few milliseconds' worth per turn of the event loop.
2. The package is imported with a finder at the head of ``sys.meta_path`` that, between
   two modules, lets the event loop run once the current slice has used its time. User
   input waits until the import has finished (a click must not open a dialog, and with it
   a nested event loop, in the middle of an import); timers and painting go on.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import ModuleType

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QTimer, Signal, Slot

# GUI-thread time one slice may use before the event loop gets a turn.
SLICE_S = 0.008


class _EventPump(importlib.abc.MetaPathFinder):
    """Lets the GUI thread's event loop run between two module imports."""

    def __init__(self, slice_s: float) -> None:
        self._thread = threading.get_ident()
        self._slice_s = slice_s
        self._slice_start = time.perf_counter()
        self._pumping = False
        self.turns = 0

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        # Every import of every thread passes here: only the GUI thread pumps, never
        # from inside a turn it is already giving.
        if (
            threading.get_ident() == self._thread
            and not self._pumping
            and time.perf_counter() - self._slice_start >= self._slice_s
        ):
            self.pump()
        return None  # the usual finders find the module

    def pump(self) -> None:
        self._pumping = True
        try:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
            self.turns += 1
        finally:
            self._pumping = False
            self._slice_start = time.perf_counter()


class SlicedImport(QObject):
    """Imports ``module`` on the GUI thread without holding it for more than a slice.

    ``finished(ok, error)`` is emitted once; ``error`` says in words why the import
    failed (for example, pyqtgraph is not installed).
    """

    finished = Signal(bool, str)

    def __init__(
        self,
        module: str,
        qt_modules: Sequence[str],
        parent: QObject | None = None,
        *,
        slice_s: float = SLICE_S,
    ) -> None:
        super().__init__(parent)
        self.module = module
        self.qt_modules = tuple(qt_modules)
        self.slice_s = slice_s
        self.turns_during_import = 0  # event-loop turns given while the package imported
        self._steps: Iterator[None] | None = None
        self._done = False

    def start(self) -> None:
        """Begin on the next turn of the event loop."""
        if self._steps is None:
            self._steps = self._qt_classes()
            QTimer.singleShot(0, self._next_slice)

    def is_done(self) -> bool:
        return self._done

    @Slot()
    def _next_slice(self) -> None:
        assert self._steps is not None
        started = time.perf_counter()
        try:
            for _ in self._steps:
                if time.perf_counter() - started >= self.slice_s:
                    QTimer.singleShot(0, self._next_slice)
                    return
        except Exception as exc:  # a missing Qt module: no charts, the window goes on
            self._finish(False, str(exc))
            return
        self._import_package()

    def _qt_classes(self) -> Iterator[None]:
        """Import each Qt module and create its classes, one name per step."""
        for name in self.qt_modules:
            module = importlib.import_module(name)
            yield
            for attribute in dir(module):
                getattr(module, attribute, None)
                yield

    def _import_package(self) -> None:
        pump = _EventPump(self.slice_s)
        sys.meta_path.insert(0, pump)
        error = ""
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # no pyqtgraph (or numpy): the window works without
            error = str(exc) or type(exc).__name__
        finally:
            sys.meta_path.remove(pump)
        self.turns_during_import = pump.turns
        self._finish(not error, error)

    def _finish(self, ok: bool, error: str) -> None:
        self._done = True
        self.finished.emit(ok, error)
