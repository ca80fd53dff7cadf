"""Jobs: one at a time per key in order, keys in parallel, results on the GUI thread."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
from PySide6.QtCore import QThread
from pytestqt.qtbot import QtBot

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import CancelToken, Progress, ProgressCallback
from vmsnapgui.qt.job_runner import Job, JobRunner, JobState


@pytest.fixture
def runner(qtbot: QtBot) -> JobRunner:
    runner = JobRunner(max_threads=4)
    yield runner
    runner.shutdown(5000)


def test_jobs_with_the_same_key_run_one_after_another_in_order(
    qtbot: QtBot, runner: JobRunner
) -> None:
    log: list[str] = []
    active = []

    def work(name: str):
        def run(progress: ProgressCallback, cancel: CancelToken) -> str:
            active.append(name)
            assert len(active) == 1, "two jobs of one key ran at once"
            time.sleep(0.05)
            log.append(name)
            active.remove(name)
            return name

        return run

    jobs = [runner.submit(work(n), key="vm-1") for n in ("a", "b", "c")]
    qtbot.waitUntil(lambda: all(j.state is JobState.DONE for j in jobs), timeout=5000)
    assert log == ["a", "b", "c"]


def test_different_keys_run_in_parallel(qtbot: QtBot, runner: JobRunner) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def meet(progress: ProgressCallback, cancel: CancelToken) -> bool:
        barrier.wait()  # only returns if both jobs run at the same time
        return True

    jobs = [runner.submit(meet, key=key) for key in ("vm-1", "vm-2")]
    qtbot.waitUntil(lambda: all(j.state is JobState.DONE for j in jobs), timeout=5000)


def test_results_progress_and_errors_arrive_on_the_gui_thread(
    qtbot: QtBot, runner: JobRunner
) -> None:
    seen: list[tuple[str, object, bool]] = []
    gui = QThread.currentThread()

    def note(kind: str, value: object) -> None:
        seen.append((kind, value, QThread.currentThread() is gui))

    def work(progress: ProgressCallback, cancel: CancelToken) -> int:
        progress(Progress("copying", 1, 2))
        return 42

    def fail(progress: ProgressCallback, cancel: CancelToken) -> None:
        raise UserError("The disk is full.", detail="ENOSPC")

    runner.submit(
        work, on_done=lambda r: note("done", r), on_progress=lambda p: note("progress", p.phase)
    )
    runner.submit(fail, on_error=lambda e: note("error", (e.message, e.detail)))
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=5000)
    assert sorted(seen, key=str) == sorted(
        [
            ("progress", "copying", True),
            ("done", 42, True),
            ("error", ("The disk is full.", "ENOSPC"), True),
        ],
        key=str,
    )


def test_an_unexpected_exception_becomes_one_sentence_with_the_traceback_as_detail(
    qtbot: QtBot, runner: JobRunner
) -> None:
    errors: list[UserError] = []

    def broken(progress: ProgressCallback, cancel: CancelToken) -> None:
        raise KeyError("boom")

    runner.submit(broken, description="Loading", on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert errors[0].message == "Loading failed unexpectedly: 'boom'"
    assert "Traceback" in (errors[0].detail or "")


def test_a_cancelled_queued_job_never_starts(qtbot: QtBot, runner: JobRunner) -> None:
    release = threading.Event()
    started: list[str] = []

    def blocker(progress: ProgressCallback, cancel: CancelToken) -> None:
        started.append("first")
        release.wait(5)

    def second(progress: ProgressCallback, cancel: CancelToken) -> None:
        started.append("second")

    first_job = runner.submit(blocker, key="vm")
    second_job = runner.submit(second, key="vm")
    second_job.cancel()
    release.set()
    qtbot.waitUntil(lambda: first_job.is_finished and second_job.is_finished, timeout=5000)
    assert started == ["first"]
    assert second_job.state is JobState.CANCELLED


def test_cancel_reaches_a_running_job_through_its_token(qtbot: QtBot, runner: JobRunner) -> None:
    def patient(progress: ProgressCallback, cancel: CancelToken) -> None:
        while not cancel.wait(0.01):
            pass
        cancel.raise_if_cancelled()

    job = runner.submit(patient)
    qtbot.waitUntil(lambda: job.state is JobState.RUNNING, timeout=5000)
    job.cancel()
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    assert job.state is JobState.CANCELLED


def test_replace_pending_keeps_only_the_newest_waiting_request(
    qtbot: QtBot, runner: JobRunner
) -> None:
    release = threading.Event()
    ran: list[int] = []

    def run_number(n: int):
        def run(progress: ProgressCallback, cancel: CancelToken) -> None:
            if n == 0:
                release.wait(5)
            ran.append(n)

        return run

    jobs = [runner.submit(run_number(n), key="tree", replace_pending=True) for n in range(4)]
    release.set()
    qtbot.waitUntil(lambda: jobs[-1].is_finished, timeout=5000)
    assert ran == [0, 3]
    assert [j.state for j in jobs] == [
        JobState.DONE,
        JobState.CANCELLED,
        JobState.CANCELLED,
        JobState.DONE,
    ]


def test_a_lane_runs_no_more_jobs_at_once_than_its_limit(qtbot: QtBot, runner: JobRunner) -> None:
    runner.set_lane_limit("load", 2)
    lock = threading.Lock()
    running: list[int] = []
    most = [0]

    def work(progress: ProgressCallback, cancel: CancelToken) -> None:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        time.sleep(0.03)
        with lock:
            running.pop()

    jobs = [runner.submit(work, key=("tree", n), lane="load") for n in range(6)]
    qtbot.waitUntil(lambda: all(j.state is JobState.DONE for j in jobs), timeout=5000)
    assert most[0] == 2


def test_a_finished_job_and_what_its_function_holds_are_let_go(
    qtbot: QtBot, runner: JobRunner
) -> None:
    class Tree:
        """Stands for a loaded tree that a size job's function holds."""

    held: list[weakref.ref[Tree]] = []

    def submit_holding_a_tree() -> Job:
        tree = Tree()
        held.append(weakref.ref(tree))
        return runner.submit(lambda progress, cancel: tree is not None)

    done: list[bool] = []
    for _ in range(20):
        submit_holding_a_tree().on_done = done.append
    qtbot.waitUntil(lambda: len(done) == 20, timeout=5000)
    runner.wait_for_done(5000)
    gc.collect()
    assert [ref for ref in held if ref() is not None] == []


def test_a_full_lane_starts_its_waiting_jobs_by_priority_then_in_order(
    qtbot: QtBot, runner: JobRunner
) -> None:
    runner.set_lane_limit("load", 1)
    gate = threading.Event()
    order: list[str] = []

    def work(name: str):
        def run(progress: ProgressCallback, cancel: CancelToken) -> None:
            if name == "first":
                gate.wait(5)
            order.append(name)

        return run

    first = runner.submit(work("first"), key="first", lane="load")
    qtbot.waitUntil(lambda: first.started_at is not None, timeout=5000)
    names = ["a", "b", "urgent", "c", "raised", "d"]
    jobs = {
        name: runner.submit(
            work(name), key=name, lane="load", priority=5 if name == "urgent" else 0
        )
        for name in names
    }
    jobs["c"].cancel()  # waiting in the lane: it never runs
    runner.raise_priority(jobs["raised"], 9)
    gate.set()
    qtbot.waitUntil(lambda: all(job.is_finished for job in jobs.values()), timeout=5000)
    assert order == ["first", "raised", "urgent", "a", "b", "d"]
    assert jobs["c"].state is JobState.CANCELLED
