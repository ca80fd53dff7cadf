"""The libvirt event loop: one thread that serves keepalive, close callbacks and events.

libvirt needs an event loop registered before the first connection opens. Its default
implementation iterates GLib's *default* main context, which Qt's GUI thread iterates
too, so the two threads would steal each other's sources. libvirt-python's asyncio
adapter avoids that but is not thread-safe: libvirt registers handles and timers from
whichever thread makes a call, and asyncio objects may only be touched from their own
loop. This module implements libvirt's event interface directly with ``select.poll`` on a
private thread; every registration takes a lock and wakes the loop through a pipe, so
any thread may call in. Callbacks run on the loop thread and must only hand work on
(emit a signal, set an event), never block.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

_log = logging.getLogger(__name__)

_POLL_FROM_LIBVIRT = {
    libvirt.VIR_EVENT_HANDLE_READABLE: select.POLLIN,
    libvirt.VIR_EVENT_HANDLE_WRITABLE: select.POLLOUT,
}
_LIBVIRT_FROM_POLL = {
    select.POLLIN: libvirt.VIR_EVENT_HANDLE_READABLE,
    select.POLLPRI: libvirt.VIR_EVENT_HANDLE_READABLE,
    select.POLLOUT: libvirt.VIR_EVENT_HANDLE_WRITABLE,
    select.POLLERR: libvirt.VIR_EVENT_HANDLE_ERROR,
    select.POLLHUP: libvirt.VIR_EVENT_HANDLE_HANGUP,
}


# How long a socket that keeps being reported ready without being read is left out of
# polls (see LibvirtEventLoop._iterate).
SPIN_REST_S = 0.001


@dataclass
class _Handle:
    fd: int
    events: int
    callback: Callable[..., Any]
    opaque: Any


@dataclass
class _Timer:
    interval_ms: int
    due: float
    callback: Callable[..., Any]
    opaque: Any


class LibvirtEventLoop:
    """A thread-safe implementation of libvirt's event loop interface."""

    def __init__(self) -> None:
        # Re-entrant: the garbage collector can run a libvirt object's finalizer on the
        # loop thread while it holds the lock (any allocation may start a collection),
        # and freeing a virDomain can end in _update_handle or _remove_timer. With a
        # plain lock the loop waited for itself, and every libvirt call with it. The
        # loop iterates over copies, so such a nested change never disturbs it.
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._handles: dict[int, _Handle] = {}
        self._timers: dict[int, _Timer] = {}
        self._to_free: list[Any] = []
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # fds reported ready in the last round, and fds left out of polls for a moment
        # (fd -> until when): see _iterate.
        self._ready_before: set[int] = set()
        self._resting: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="libvirt-events", daemon=True)
        self.iterations = 0

    def start(self) -> None:
        """Register with libvirt and start the loop thread."""
        libvirt.virEventRegisterImpl(
            self._add_handle,
            self._update_handle,
            self._remove_handle,
            self._add_timer,
            self._update_timer,
            self._remove_timer,
        )
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The thread that runs libvirt's callbacks."""
        return self._thread

    # -- libvirt's interface (called from any thread) ---------------------------------

    def _add_handle(self, fd: int, events: int, callback: Callable[..., Any], opaque: Any) -> int:
        with self._lock:
            watch = next(self._ids)
            self._handles[watch] = _Handle(fd, events, callback, opaque)
        self._wake()
        return watch

    def _update_handle(self, watch: int, events: int) -> None:
        with self._lock:
            handle = self._handles.get(watch)
            if handle is None:
                return
            added = events & ~handle.events
            handle.events = events
            if not added:
                # Interest only withdrawn: a poll already waiting may still report the
                # fd once, and its callback is then skipped (see _iterate).
                return
        self._wake()

    def _remove_handle(self, watch: int) -> int:
        with self._lock:
            handle = self._handles.pop(watch, None)
            if handle is None:
                return -1
            self._to_free.append(handle.opaque)
        self._wake()
        return 0

    def _add_timer(self, interval_ms: int, callback: Callable[..., Any], opaque: Any) -> int:
        with self._lock:
            timer_id = next(self._ids)
            self._timers[timer_id] = _Timer(
                interval_ms, time.monotonic() + max(interval_ms, 0) / 1000, callback, opaque
            )
        self._wake()
        return timer_id

    def _update_timer(self, timer_id: int, interval_ms: int) -> None:
        with self._lock:
            timer = self._timers.get(timer_id)
            if timer is None:
                return
            was_enabled, was_due = timer.interval_ms >= 0, timer.due
            timer.interval_ms = interval_ms
            timer.due = time.monotonic() + max(interval_ms, 0) / 1000
            if interval_ms < 0 or (was_enabled and timer.due >= was_due):
                # Disabled, or due later than the loop already plans to look: when it
                # looks it finds the new time. (Keepalive pushes its timer back on
                # every message received: thousands of wake-ups otherwise.)
                return
        self._wake()

    def _remove_timer(self, timer_id: int) -> int:
        with self._lock:
            timer = self._timers.pop(timer_id, None)
            if timer is None:
                return -1
            self._to_free.append(timer.opaque)
        self._wake()
        return 0

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is about to wake anyway

    # -- the loop thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._iterate()
            except Exception:  # a callback must never kill the loop
                _log.exception("libvirt event loop callback failed")

    def _iterate(self) -> None:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        with self._lock:
            interest: dict[int, int] = {}
            for handle in self._handles.copy().values():
                mask = 0
                for flag, poll_flag in _POLL_FROM_LIBVIRT.items():
                    if handle.events & flag:
                        mask |= poll_flag
                interest[handle.fd] = interest.get(handle.fd, 0) | mask
            now = time.monotonic()
            timeout_ms: float = -1
            for timer in self._timers.copy().values():
                if timer.interval_ms < 0:
                    continue
                wait = max(0.0, (timer.due - now) * 1000)
                timeout_ms = wait if timeout_ms < 0 else min(timeout_ms, wait)
        for fd, until in list(self._resting.items()):
            if until <= now:
                del self._resting[fd]
                continue
            interest.pop(fd, None)
            wait = (until - now) * 1000
            timeout_ms = wait if timeout_ms < 0 else min(timeout_ms, wait)
        for fd, mask in interest.items():
            if fd != self._wake_read:
                poller.register(fd, mask)

        ready = poller.poll(None if timeout_ms < 0 else max(0, int(timeout_ms + 0.999)))
        self.iterations += 1

        fired: list[tuple[int, int, int]] = []
        for fd, revents in ready:
            if fd == self._wake_read:
                try:
                    while os.read(self._wake_read, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            events = 0
            for poll_flag, flag in _LIBVIRT_FROM_POLL.items():
                if revents & poll_flag:
                    events |= flag
            fired.append((fd, revents, events))

        # A connection's socket stays readable while another thread that is inside a
        # libvirt call reads its own reply from it (libvirt's client re-enables our
        # watch while handing that job between its threads, and the callback leaves
        # the data for that thread). Polling again at once would spin here, in Python,
        # thousands of times a second, taking the GIL from every other thread. A socket
        # ready twice in a row rests for a moment: events reach us at most that late.
        ready_now = {fd for fd, _revents, _events in fired}
        rest_until = time.monotonic() + SPIN_REST_S
        for fd in ready_now & self._ready_before:
            self._resting[fd] = rest_until
        self._ready_before = ready_now

        for fd, _revents, events in fired:
            with self._lock:
                targets = [
                    (watch, handle)
                    for watch, handle in self._handles.copy().items()
                    if handle.fd == fd
                ]
            for watch, handle in targets:
                wanted = events & (
                    handle.events | libvirt.VIR_EVENT_HANDLE_ERROR | libvirt.VIR_EVENT_HANDLE_HANGUP
                )
                # Re-check: an earlier callback in this round may have removed it.
                with self._lock:
                    still_there = self._handles.get(watch) is handle
                if wanted and still_there:
                    handle.callback(watch, fd, wanted, handle.opaque)

        now = time.monotonic()
        with self._lock:
            due = [
                (timer_id, timer)
                for timer_id, timer in self._timers.copy().items()
                if timer.interval_ms >= 0 and timer.due <= now
            ]
            for _timer_id, timer in due:
                timer.due = now + timer.interval_ms / 1000
        for timer_id, timer in due:
            with self._lock:
                still_there = self._timers.get(timer_id) is timer
            if still_there:
                timer.callback(timer_id, timer.opaque)

        with self._lock:
            to_free, self._to_free = self._to_free, []
        for opaque in to_free:
            libvirt.virEventInvokeFreeCallback(opaque)


def _ignore_error(_context: Any, _error: Any) -> None:
    return None


_loop: LibvirtEventLoop | None = None
_loop_lock = threading.Lock()


def quiet_libvirt_errors() -> None:
    """Stop libvirt printing every error to stderr (idempotent).

    Ours arrive as exceptions and are explained where they are caught.
    """
    libvirt.registerErrorHandler(_ignore_error, None)


def ensure_event_loop() -> LibvirtEventLoop:
    """Start the event loop once per process; call before opening any connection."""
    global _loop
    with _loop_lock:
        if _loop is None:
            quiet_libvirt_errors()
            loop = LibvirtEventLoop()
            loop.start()
            _loop = loop
        return _loop
