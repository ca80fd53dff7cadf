"""The libvirt event loop's own rules: timers, handles, and no spinning on a busy socket.

Each test runs a private loop thread (not registered with libvirt: only one loop can be,
and the app's is) and drives it through the interface libvirt calls.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import libvirt
import pytest

from vmsnapgui.virt.event_loop import LibvirtEventLoop


@pytest.fixture
def loop() -> Iterator[LibvirtEventLoop]:
    loop = LibvirtEventLoop()
    loop.thread.start()  # the thread only; libvirt keeps the app's registered loop
    yield loop


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe2(os.O_NONBLOCK)
    yield read, write
    os.close(read)
    os.close(write)


def test_a_timer_brought_forward_fires_at_its_new_time(loop: LibvirtEventLoop) -> None:
    fired = threading.Event()
    timer = loop._add_timer(60_000, lambda *_: fired.set(), None)
    loop._update_timer(timer, 20)
    assert fired.wait(2)


def test_a_timer_pushed_back_waits_for_its_new_time(loop: LibvirtEventLoop) -> None:
    fired: list[float] = []
    start = time.monotonic()
    timer = loop._add_timer(50, lambda *_: fired.append(time.monotonic() - start), None)
    loop._update_timer(timer, 400)
    time.sleep(0.25)
    assert fired == []
    deadline = time.monotonic() + 3
    while not fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired and fired[0] >= 0.4
    loop._update_timer(timer, -1)  # disabled: stops firing


def test_a_handle_that_gains_interest_is_polled_at_once(
    loop: LibvirtEventLoop, pipe: tuple[int, int]
) -> None:
    read, write = pipe
    called = threading.Event()

    def on_ready(watch: int, fd: int, events: int, opaque: object) -> None:
        os.read(fd, 100)
        called.set()

    watch = loop._add_handle(read, 0, on_ready, None)
    os.write(write, b"x")
    time.sleep(0.1)
    assert not called.is_set()  # no interest yet
    loop._update_handle(watch, libvirt.VIR_EVENT_HANDLE_READABLE)
    assert called.wait(2)


def test_a_withdrawn_interest_stops_the_callbacks(
    loop: LibvirtEventLoop, pipe: tuple[int, int]
) -> None:
    read, write = pipe
    calls: list[int] = []
    watch = loop._add_handle(
        read, libvirt.VIR_EVENT_HANDLE_READABLE, lambda *_: calls.append(1), None
    )
    loop._update_handle(watch, 0)
    os.write(write, b"x")  # readable, and never read
    time.sleep(0.2)
    assert calls == []


def test_a_socket_someone_else_reads_does_not_make_the_loop_spin(
    loop: LibvirtEventLoop, pipe: tuple[int, int]
) -> None:
    # libvirt leaves a reply for the thread that waits for it; the loop must not poll
    # that socket in a tight loop meanwhile (each round takes the GIL).
    read, write = pipe
    calls: list[int] = []
    loop._add_handle(read, libvirt.VIR_EVENT_HANDLE_READABLE, lambda *_: calls.append(1), None)
    os.write(write, b"reply for another thread")
    time.sleep(0.3)
    assert calls, "a readable socket must still be reported"
    # Resting 1 ms after two reports in a row: about 600 in 0.3 s; spinning made 10,000s.
    assert len(calls) < 2000


def test_a_finalizer_that_calls_back_inside_the_loops_lock_does_not_hang_it(
    loop: LibvirtEventLoop, pipe: tuple[int, int]
) -> None:
    # The garbage collector may free a virDomain on the loop thread while the loop holds
    # its lock; libvirt then updates or removes handles and timers from that thread.
    read, _write = pipe
    watch = loop._add_handle(read, libvirt.VIR_EVENT_HANDLE_READABLE, lambda *_: None, None)
    timer = loop._add_timer(-1, lambda *_: None, None)
    finished = threading.Event()

    def nested() -> None:
        with loop._lock:  # where the loop is when the collector runs a finalizer
            loop._update_handle(watch, 0)
            loop._update_timer(timer, 10)
            loop._remove_timer(timer)
            loop._remove_handle(watch)
        finished.set()

    threading.Thread(target=nested, daemon=True).start()
    assert finished.wait(5), "the loop's lock is not re-entrant: it waits for itself"
    fired = threading.Event()
    loop._add_timer(0, lambda *_: fired.set(), None)
    assert fired.wait(2)  # and the loop goes on
