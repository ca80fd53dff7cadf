"""Analysing local qcow2 images in a helper process instead of this one.

The analysis of an image with a few dozen internal snapshots is tens of milliseconds of
Python and numpy, and in the window it ran on a worker thread holding the GIL the GUI
thread needs: while an operation's sizes were measured, the window stalled for as long.
A helper process has a GIL of its own. The window turns this on (:func:`use_helper_process`);
the command line does not, as starting the helper would cost it more than it saves.

The helper is ``python -m vmsnapgui.virt.analysis_process``: it reads requests from its
standard input and writes the results to its standard output, one at a time, and ends
when its input closes (this process quit or died). It is started on first use, kept,
and started again if it dies. Images that are not local files (storage volumes read
through libvirt) are analysed here.
"""

from __future__ import annotations

import logging
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmsnapgui.core.qcow2 import Qcow2Usage

# vmsnapgui.core.qcow2 (and with it numpy, some 90 ms) is imported when the first image
# is analysed, not when the window that enables the helper starts: that import was a
# sixth of the time to the first window. (The window imports numpy for its charts soon
# after it shows; whichever import comes second waits for the first.)

_FRAME = struct.Struct("!I")  # each message: its length, then a pickle
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Failure:
    """Why the helper could not analyse an image (errno set: the file could not be read)."""

    message: str
    detail: str | None = None
    errno: int | None = None


# A helper that dies this many times in a row without answering (it cannot start, or
# cannot import what it needs) is given up: images are analysed here from then on.
GIVE_UP_AFTER = 3


class _Helper:
    """One helper process and the lock that keeps its requests one at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.failures = 0

    def ask(self, request: tuple[Any, ...]) -> object:
        """Send one request and return the answer (starting the helper if needed)."""
        with self.lock:
            process = self.process
            if process is not None and process.poll() is not None:
                self._stop(process)  # died since the last request
                process = None
            if process is None:
                process = self.process = subprocess.Popen(
                    [sys.executable, "-m", "vmsnapgui.virt.analysis_process"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            assert process.stdin is not None and process.stdout is not None
            try:
                _write(process.stdin, request)
                answer = _read(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                self._stop(process)
                self.failures += 1
                if self.failures >= GIVE_UP_AFTER:
                    _log.warning("the analysis helper keeps failing; analysing in-process")
                    use_helper_process(False)
                raise BrokenPipeError("the analysis helper ended") from None
            self.failures = 0
            return answer

    def stop(self) -> None:
        with self.lock:
            if self.process is not None:
                self._stop(self.process)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if self.process is process:
            self.process = None
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # unsent bytes to a helper that is gone


_helper = _Helper()
_enabled = False


def use_helper_process(enabled: bool = True) -> None:
    """Analyse local images in a helper process from now on (or not)."""
    global _enabled
    _enabled = enabled


def analyse_file(
    path: str, parents: Mapping[str, str | None] | None, current: str | None
) -> Qcow2Usage:
    """``analyse`` of the qcow2 file at ``path``: in the helper process when enabled.

    Raises what :func:`vmsnapgui.core.qcow2.analyse` and opening the file raise
    (Qcow2Error, OSError), wherever it ran.
    """
    from vmsnapgui.core.qcow2 import Qcow2Error, Qcow2Usage

    if not _enabled:
        return _analyse_here(path, parents, current)
    try:
        outcome = _helper.ask((path, dict(parents or {}), current))
    except BrokenPipeError:
        return _analyse_here(path, parents, current)  # the helper died: this once, here
    if isinstance(outcome, Qcow2Usage):
        return outcome
    if not isinstance(outcome, _Failure):
        raise TypeError(f"unexpected answer from the analysis helper: {outcome!r}")
    if outcome.errno is None:
        raise Qcow2Error(outcome.message, detail=outcome.detail)
    raise OSError(outcome.errno, outcome.message, path)


def helper_pid() -> int | None:
    """The helper's process id, while it runs."""
    process = _helper.process
    return process.pid if process is not None and process.poll() is None else None


def shutdown() -> None:
    """Stop the helper (it also ends by itself when this process does)."""
    _helper.stop()


def _analyse_here(
    path: str, parents: Mapping[str, str | None] | None, current: str | None
) -> Qcow2Usage:
    from vmsnapgui.core.byte_source import FileByteSource
    from vmsnapgui.core.qcow2 import analyse

    source = FileByteSource(path)
    try:
        return analyse(source, parents, current)
    finally:
        source.close()


def _write(stream: IO[bytes], value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> object:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        raise EOFError
    (length,) = _FRAME.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError
    return pickle.loads(data)


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The helper's loop: analyse each requested image until the input closes."""
    from vmsnapgui.core.qcow2 import Qcow2Error

    while True:
        try:
            request = _read(requests)
        except EOFError:
            return
        path: str
        parents: dict[str, str | None]
        current: str | None
        path, parents, current = request  # type: ignore[misc]
        answer: Qcow2Usage | _Failure
        try:
            answer = _analyse_here(path, parents, current)
        except Qcow2Error as exc:
            answer = _Failure(exc.message, exc.detail)
        except OSError as exc:
            answer = _Failure(exc.strerror or str(exc), errno=exc.errno or 0)
        _write(answers, answer)


if __name__ == "__main__":
    # Through the module's own name, so what is sent back unpickles on the other side.
    from vmsnapgui.virt import analysis_process

    analysis_process._serve(sys.stdin.buffer, sys.stdout.buffer)
