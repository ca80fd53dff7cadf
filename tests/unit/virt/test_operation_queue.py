"""One VM's operations run in order, one at a time; different VMs run side by side."""

from __future__ import annotations

import threading
import time

import pytest

from vmsnapgui.virt.operation_queue import OperationQueue


def test_operations_on_one_vm_run_in_order_and_never_overlap() -> None:
    queue = OperationQueue(max_workers=4)
    log: list[str] = []
    running = threading.Semaphore(1)

    def step(name: str) -> str:
        assert running.acquire(blocking=False), "two operations of one VM overlapped"
        log.append(f"start {name}")
        time.sleep(0.05)
        log.append(f"end {name}")
        running.release()
        return name

    futures = [queue.submit("vm-a", lambda n=n: step(n)) for n in ("take", "revert", "delete")]
    assert [f.result(timeout=5) for f in futures] == ["take", "revert", "delete"]
    assert log == [
        "start take",
        "end take",
        "start revert",
        "end revert",
        "start delete",
        "end delete",
    ]
    queue.shutdown()


def test_operations_on_two_vms_run_concurrently() -> None:
    queue = OperationQueue(max_workers=4)
    both_running = threading.Barrier(2, timeout=5)

    def meet() -> bool:
        both_running.wait()  # only passes when the other VM's work runs at the same time
        return True

    first = queue.submit("vm-a", meet)
    second = queue.submit("vm-b", meet)
    assert first.result(timeout=5) and second.result(timeout=5)
    queue.shutdown()


def test_a_failure_is_reported_and_the_next_operation_still_runs() -> None:
    queue = OperationQueue(max_workers=2)

    def fail() -> None:
        raise RuntimeError("libvirt said no")

    failed = queue.submit("vm", fail)
    after = queue.submit("vm", lambda: "ran")
    with pytest.raises(RuntimeError, match="libvirt said no"):
        failed.result(timeout=5)
    assert after.result(timeout=5) == "ran"
    queue.shutdown()


def test_a_cancelled_queued_operation_is_skipped() -> None:
    queue = OperationQueue(max_workers=2)
    gate = threading.Event()
    ran: list[str] = []
    blocker = queue.submit("vm", gate.wait)
    skipped = queue.submit("vm", lambda: ran.append("skipped"))
    assert queue.pending("vm") == 1
    assert skipped.cancel()
    gate.set()
    blocker.result(timeout=5)
    last = queue.submit("vm", lambda: ran.append("last"))
    last.result(timeout=5)
    assert ran == ["last"]
    queue.shutdown()
