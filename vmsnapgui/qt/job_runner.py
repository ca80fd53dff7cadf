"""The one way the GUI runs blocking work: jobs on a thread pool, results as signals.

A job is a plain function ``fn(progress, cancel_token)`` that may block (libvirt calls,
disk reads). It runs on a :class:`QThreadPool` thread; its result, failure and progress
come back to the GUI thread through queued signals of a companion ``QObject`` (a
``QRunnable`` cannot have signals). Jobs submitted with the same key (one VM, say) run
one at a time in submission order; different keys run in parallel. Cancel is
cooperative: :meth:`Job.cancel` sets the job's :class:`CancelToken`, which the function
checks at safe points. The runner holds every job strongly until its end has been
delivered, so nothing is collected while a thread still uses it.

The operations of issue 6 (take, revert, clone, delete) are submitted here too and
shown by an operations panel listening to :attr:`JobRunner.job_started`,
:attr:`JobRunner.job_progress` and :attr:`JobRunner.job_ended`.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import CancelledError
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import Cancelled, CancelToken, Progress, ProgressCallback

_log = logging.getLogger(__name__)

JobFunction = Callable[[ProgressCallback, CancelToken], Any]
DoneCallback = Callable[[Any], None]
ErrorCallback = Callable[[UserError], None]
ProgressHandler = Callable[[Progress], None]

DEFAULT_MAX_THREADS = 24


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobSignals(QObject):
    """The signals of jobs, emitted from worker threads and received queued.

    One object serves every job of a runner (made and connected once, so starting a
    job costs the GUI thread almost nothing); each signal carries the job's id, and the
    runner, a QObject living on the GUI thread, receives them in its own methods: that
    is what makes the connections queued.
    """

    progressed = Signal(int, object)  # job id, Progress
    succeeded = Signal(int, object)  # job id, the function's result
    errored = Signal(int, object)  # job id, UserError


class Job:
    """A handle on submitted work: its description, state, progress and cancel."""

    def __init__(
        self,
        job_id: int,
        key: Hashable | None,
        description: str,
        fn: JobFunction,
        on_done: DoneCallback | None,
        on_error: ErrorCallback | None,
        on_progress: ProgressHandler | None,
        priority: int,
        lane: str | None = None,
    ) -> None:
        self.id = job_id
        self.lane = lane
        self.key = key
        self.description = description
        self.fn = fn
        self.on_done = on_done
        self.on_error = on_error
        self.on_progress = on_progress
        self.priority = priority
        self.cancel_token = CancelToken()
        self.state = JobState.QUEUED
        self.progress: Progress | None = None
        self.error: UserError | None = None
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.signals: JobSignals | None = None
        self.runnable: _JobRunnable | None = None

    def cancel(self) -> None:
        """Ask the job to stop; a queued job never starts."""
        self.cancel_token.cancel()

    @property
    def is_finished(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.description!r} {self.state.value}>"


class _JobRunnable(QRunnable):
    """Runs one job's function on a pool thread; reports only through its signals."""

    def __init__(self, job: Job, signals: JobSignals) -> None:
        super().__init__()
        # The runner owns this object; Qt must not delete it behind Python's back.
        self.setAutoDelete(False)
        self._job = job
        self._signals = signals

    def run(self) -> None:
        job, signals = self._job, self._signals
        job_id = job.id

        def report(progress: Progress) -> None:
            signals.progressed.emit(job_id, progress)

        try:
            job.cancel_token.raise_if_cancelled()
            result = job.fn(report, job.cancel_token)
        except UserError as exc:
            signals.errored.emit(job_id, exc)
        except CancelledError:
            # A thread pool the job waited on was shut down (closing a connection).
            signals.errored.emit(job_id, Cancelled())
        except Exception as exc:
            _log.exception("job %r failed unexpectedly", job.description)
            signals.errored.emit(
                job_id,
                UserError(
                    f"{job.description} failed unexpectedly: {exc or type(exc).__name__}",
                    detail="".join(traceback.format_exception(exc)),
                ),
            )
        else:
            signals.succeeded.emit(job_id, result)


class JobRunner(QObject):
    """Runs jobs on a private thread pool; same key one at a time, others in parallel."""

    job_started = Signal(object)  # Job
    job_progress = Signal(object)  # Job (its .progress is the latest)
    job_ended = Signal(object)  # Job (its .state says how)
    activity_changed = Signal(int)  # how many jobs are queued or running

    def __init__(self, parent: QObject | None = None, max_threads: int = DEFAULT_MAX_THREADS):
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._ids = itertools.count(1)
        self._queues: dict[Hashable, deque[Job]] = {}
        self._running: dict[int, Job] = {}
        self._waiting: dict[int, Job] = {}
        self._lane_limits: dict[str, int] = {}
        self._lane_running: dict[str, int] = {}
        self._lane_waiting: dict[str, list[Job]] = {}
        self._shut_down = False
        self._signals = JobSignals(self)
        self._signals.progressed.connect(self._on_job_progressed)
        self._signals.succeeded.connect(self._on_job_succeeded)
        self._signals.errored.connect(self._on_job_errored)

    # -- public -----------------------------------------------------------------------

    def submit(
        self,
        fn: JobFunction,
        *,
        key: Hashable | None = None,
        description: str = "Working",
        on_done: DoneCallback | None = None,
        on_error: ErrorCallback | None = None,
        on_progress: ProgressHandler | None = None,
        replace_pending: bool = False,
        priority: int = 0,
        lane: str | None = None,
    ) -> Job:
        """Run ``fn(progress, cancel_token)`` off the GUI thread.

        ``on_done(result)``, ``on_error(UserError)`` and ``on_progress(Progress)`` are
        called on the GUI thread. Jobs with the same ``key`` run one after another in
        the order submitted; ``None`` means no ordering. ``replace_pending`` drops a
        job with the same key that has not started yet (useful for "reload" requests
        that pile up). Higher ``priority`` starts first when threads are scarce.
        """
        job = Job(next(self._ids), key, description, fn, on_done, on_error, on_progress, priority)
        if self._shut_down:
            job.state = JobState.CANCELLED
            return job
        if key is None:
            self._start(job)
        else:
            queue = self._queues.setdefault(key, deque())
            if replace_pending:
                for pending in [j for j in queue if j.state is JobState.QUEUED]:
                    queue.remove(pending)
                    self._waiting.pop(pending.id, None)
                    pending.state = JobState.CANCELLED
            queue.append(job)
            self._waiting[job.id] = job
            if len(queue) == 1 or all(j.state is JobState.QUEUED for j in queue):
                self._start_next(key)
        self.activity_changed.emit(self.active_count)
        return job

    @property
    def active_count(self) -> int:
        """Jobs queued or running."""
        return len(self._running) + len(self._waiting)

    def jobs(self) -> list[Job]:
        """Every job not yet ended, running first."""
        return [*self._running.values(), *self._waiting.values()]

    def is_busy(self, key: Hashable) -> bool:
        """True while a job with ``key`` is queued or running."""
        return bool(self._queues.get(key))

    def set_lane_limit(self, lane: str, limit: int) -> None:
        """Run at most ``limit`` jobs of ``lane`` at once.

        CPU-bound Python work (parsing thousands of snapshot XMLs) gains nothing from more
        threads than cores and starves the GUI thread of the GIL; waiting on the network
        does not, so such work gets its own lane and the rest runs freely.
        """
        self._lane_limits[lane] = max(1, limit)

    def raise_priority(self, job: Job, priority: int) -> None:
        """Start ``job`` before lower-priority work if no thread has picked it up yet."""
        if priority <= job.priority or job.is_finished:
            return
        job.priority = priority
        if job.lane is not None and job in self._lane_waiting.get(job.lane, []):
            return  # picked by priority when its lane has room
        runnable = job.runnable
        if job.state is JobState.RUNNING and runnable is not None and self._pool.tryTake(runnable):
            self._pool.start(runnable, priority)

    def cancel_all(self) -> None:
        """Ask every job to stop; queued ones never start."""
        for job in self.jobs():
            job.cancel()

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel everything and wait for running jobs (at quit); True when all ended."""
        self._shut_down = True
        self.cancel_all()
        for queue in self._queues.values():
            for job in list(queue):
                if job.state is JobState.QUEUED:
                    queue.remove(job)
                    self._waiting.pop(job.id, None)
                    job.state = JobState.CANCELLED
        return bool(self._pool.waitForDone(timeout_ms))

    def wait_for_done(self, timeout_ms: int = -1) -> bool:
        """Block until the pool is idle (tests and benchmarks only)."""
        return bool(self._pool.waitForDone(timeout_ms))

    # -- internals ---------------------------------------------------------------------

    def _start_next(self, key: Hashable) -> None:
        queue = self._queues.get(key)
        while queue:
            head = queue[0]
            if head.state is JobState.RUNNING:
                return
            if head.cancel_token.cancelled:
                queue.popleft()
                self._waiting.pop(head.id, None)
                head.state = JobState.CANCELLED
                head.error = Cancelled()
                self.job_ended.emit(head)
                continue
            self._waiting.pop(head.id, None)
            self._start(head)
            return
        self._queues.pop(key, None)

    def _start(self, job: Job) -> None:
        lane = job.lane
        if lane is not None and lane in self._lane_limits:
            if self._lane_running.get(lane, 0) >= self._lane_limits[lane]:
                job.state = JobState.RUNNING  # its key's turn has come; the lane is full
                self._waiting.pop(job.id, None)
                self._running[job.id] = job
                self._lane_waiting.setdefault(lane, []).append(job)
                return
            self._lane_running[lane] = self._lane_running.get(lane, 0) + 1
        self._launch(job)

    def _launch(self, job: Job) -> None:
        job.signals = self._signals
        job.runnable = _JobRunnable(job, self._signals)
        job.state = JobState.RUNNING
        job.started_at = time.monotonic()
        self._running[job.id] = job
        self.job_started.emit(job)
        self._pool.start(job.runnable, job.priority)

    def _lane_freed(self, lane: str | None) -> None:
        if lane is None or lane not in self._lane_limits:
            return
        self._lane_running[lane] = max(0, self._lane_running.get(lane, 0) - 1)
        waiting = self._lane_waiting.get(lane, [])
        while waiting and self._lane_running[lane] < self._lane_limits[lane]:
            # Highest priority first; among equals, the first that came.
            best = max(range(len(waiting)), key=lambda i: (waiting[i].priority, -i))
            job = waiting.pop(best)
            if job.cancel_token.cancelled or self._shut_down:
                self._running.pop(job.id, None)
                self._finish_cancelled(job)
                continue
            self._lane_running[lane] += 1
            self._launch(job)

    @Slot(int, object)
    def _on_job_progressed(self, job_id: int, progress: object) -> None:
        job = self._running.get(job_id)
        if job is None or not isinstance(progress, Progress):
            return
        job.progress = progress
        if job.on_progress is not None:
            job.on_progress(progress)
        self.job_progress.emit(job)

    @Slot(int, object)
    def _on_job_succeeded(self, job_id: int, result: object) -> None:
        job = self._running.get(job_id)
        if job is not None:
            self._finish(job, result, None)

    @Slot(int, object)
    def _on_job_errored(self, job_id: int, error: object) -> None:
        job = self._running.get(job_id)
        if job is not None:
            if not isinstance(error, UserError):
                error = UserError(str(error))
            self._finish(job, None, error)

    def _finish_cancelled(self, job: Job) -> None:
        """End a job that never ran (cancelled while waiting for its lane)."""
        self._finish(job, None, Cancelled(), lane_held=False)

    def _finish(
        self, job: Job, result: object, error: UserError | None, *, lane_held: bool = True
    ) -> None:
        if job.is_finished:
            return
        self._running.pop(job.id, None)
        if lane_held:
            self._lane_freed(job.lane)
        job.ended_at = time.monotonic()
        if error is None:
            job.state = JobState.DONE
        else:
            job.error = error
            job.state = JobState.CANCELLED if isinstance(error, Cancelled) else JobState.FAILED
        try:
            if error is None:
                if job.on_done is not None:
                    job.on_done(result)
            elif job.on_error is not None:
                job.on_error(error)
            elif not isinstance(error, Cancelled):
                _log.warning("%s: %s", job.description, error.message)
        finally:
            self.job_ended.emit(job)
            # Drop the runnable only now: its last signal has been delivered.
            job.signals = None
            job.runnable = None
            if job.key is not None:
                queue = self._queues.get(job.key)
                if queue and queue[0] is job:
                    queue.popleft()
                self._start_next(job.key)
            self.activity_changed.emit(self.active_count)
