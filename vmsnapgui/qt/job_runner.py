"""The one way the GUI runs blocking work: jobs on a thread pool, results on the GUI thread.

A job is a plain function ``fn(progress, cancel_token)`` that may block (libvirt calls,
disk reads). It runs on a :class:`QThreadPool` thread; its result, failure and progress
come back to the GUI thread through a companion ``QObject``, :class:`JobReports` (a
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
import heapq
import itertools
import logging
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import CancelledError
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal, Slot

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import Cancelled, CancelToken, Progress, ProgressCallback

_log = logging.getLogger(__name__)

JobFunction = Callable[[ProgressCallback, CancelToken], Any]
DoneCallback = Callable[[Any], None]
ErrorCallback = Callable[[UserError], None]
ProgressHandler = Callable[[Progress], None]

DEFAULT_MAX_THREADS = 24
# How long one turn of handing reports to the GUI thread may go on before the event
# loop gets a turn (a report whose callbacks take longer is still handed on whole).
HAND_ON_BUDGET_S = 0.01


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobReports(QObject):
    """What jobs report (progress, result, failure), handed to the GUI thread in order.

    Pool threads add reports to a queue; the first report after the queue was empty
    wakes a zero-delay timer on the GUI thread, which hands the reports on. A Qt timer of
    zero delay fires once the events already waiting have been handled, and Qt's event
    loop runs timers only when no posted event is left: one queued signal per report
    made a chain of posted events whenever hosts loaded (a result, the repaint and
    layouts it caused, the next result…) that kept every timer of the window waiting for
    a fifth of a second. Now each report's consequences are drawn before the next report
    is handed on, and a turn of handing on stops after :data:`HAND_ON_BUDGET_S`.
    """

    wake = Signal()  # emitted from a pool thread; starts the timer (queued)

    def __init__(
        self, deliver: Callable[[str, int, object], None], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self._deliver = deliver
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, int, object]] = deque()
        self._woken = False
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._on_timer)
        self.wake.connect(self._timer.start)

    def post(self, kind: str, job_id: int, payload: object) -> None:
        """Queue a report (any thread): kind is "progress", "done" or "error"."""
        with self._lock:
            self._queue.append((kind, job_id, payload))
            if self._woken:
                return
            self._woken = True
        self.wake.emit()

    @Slot()
    def _on_timer(self) -> None:
        deadline = time.monotonic() + HAND_ON_BUDGET_S
        while True:
            with self._lock:
                if not self._queue:
                    self._woken = False
                    return
                kind, job_id, payload = self._queue.popleft()
            try:
                self._deliver(kind, job_id, payload)
            except BaseException:
                self._timer.start()  # the reports behind this one still get handed on
                raise
            if time.monotonic() >= deadline:
                self._timer.start()
                return


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
        # Weak: PySide's QThreadPool keeps the runnable alive until Qt deletes it after
        # run(); a strong reference here would keep it (and this job) alive for ever.
        self._runnable: weakref.ref[_JobRunnable] | None = None

    def cancel(self) -> None:
        """Ask the job to stop; a queued job never starts."""
        self.cancel_token.cancel()

    @property
    def runnable(self) -> _JobRunnable | None:
        """The pool's handle on this job while it is queued or running, if it still exists."""
        return self._runnable() if self._runnable is not None else None

    @runnable.setter
    def runnable(self, runnable: _JobRunnable | None) -> None:
        self._runnable = weakref.ref(runnable) if runnable is not None else None

    @property
    def is_finished(self) -> bool:
        """True once the job has succeeded, failed or been cancelled."""
        return self.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.description!r} {self.state.value}>"


class _JobRunnable(QRunnable):
    """Runs one job's function on a pool thread; reports only through its reports."""

    def __init__(self, job: Job, reports: JobReports) -> None:
        super().__init__()
        # Qt deletes the C++ side when run() returns, which also drops the reference
        # PySide's QThreadPool.start() keeps to the Python object. With auto-delete off
        # that reference was never dropped: every job, its function and whatever that
        # holds (a whole tree, for a size job) stayed alive.
        self.setAutoDelete(True)
        self._job = job
        self._reports = reports
        # PySide takes its reference after QThreadPool.start() returns; a run that ended
        # (and was deleted) before that would leave the reference behind for ever.
        self._started = threading.Event()

    def started(self) -> None:
        """QThreadPool.start() has returned (called on the GUI thread)."""
        self._started.set()

    def run(self) -> None:
        self._started.wait()
        job, post = self._job, self._reports.post
        job_id = job.id

        def report(progress: Progress) -> None:
            post("progress", job_id, progress)

        try:
            job.cancel_token.raise_if_cancelled()
            result = job.fn(report, job.cancel_token)
        except UserError as exc:
            post("error", job_id, exc)
        except CancelledError:
            # A thread pool the job waited on was shut down (closing a connection).
            post("error", job_id, Cancelled())
        except Exception as exc:
            _log.exception("job %r failed unexpectedly", job.description)
            post(
                "error",
                job_id,
                UserError(
                    f"{job.description} failed unexpectedly: {exc or type(exc).__name__}",
                    detail="".join(traceback.format_exception(exc)),
                ),
            )
        else:
            post("done", job_id, result)


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
        # Per lane, the jobs whose turn has come but whose lane is full: a heap of
        # (-priority, order parked, job id, job). Raising a parked job's priority pushes
        # a second entry; entries whose priority no longer matches are skipped. A fleet
        # parks hundreds of jobs at once: picking the next must not scan them all.
        self._lane_waiting: dict[str, list[tuple[int, int, int, Job]]] = {}
        self._parked: dict[int, int] = {}  # job id -> order parked
        self._park_order = itertools.count()
        self._shut_down = False
        self._reports = JobReports(self._on_report, self)

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
        job = Job(
            next(self._ids), key, description, fn, on_done, on_error, on_progress, priority, lane
        )
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
        order = self._parked.get(job.id)
        if order is not None and job.lane is not None:
            # Picked by priority when its lane has room.
            heapq.heappush(self._lane_waiting[job.lane], (-priority, order, job.id, job))
            return
        runnable = job.runnable
        if job.state is not JobState.RUNNING or runnable is None:
            return
        try:
            taken = self._pool.tryTake(runnable)
        except RuntimeError:
            return  # it has run and Qt has deleted it; its result is on its way
        if taken:
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
                order = next(self._park_order)
                self._parked[job.id] = order
                heapq.heappush(
                    self._lane_waiting.setdefault(lane, []), (-job.priority, order, job.id, job)
                )
                return
            self._lane_running[lane] = self._lane_running.get(lane, 0) + 1
        self._launch(job)

    def _launch(self, job: Job) -> None:
        runnable = _JobRunnable(job, self._reports)
        job.runnable = runnable
        job.state = JobState.RUNNING
        job.started_at = time.monotonic()
        self._running[job.id] = job
        self.job_started.emit(job)
        self._pool.start(runnable, job.priority)
        runnable.started()

    def _lane_freed(self, lane: str | None) -> None:
        if lane is None or lane not in self._lane_limits:
            return
        self._lane_running[lane] = max(0, self._lane_running.get(lane, 0) - 1)
        waiting = self._lane_waiting.get(lane, [])
        while waiting and self._lane_running[lane] < self._lane_limits[lane]:
            # Highest priority first; among equals, the first that came.
            negative_priority, order, job_id, job = heapq.heappop(waiting)
            if self._parked.get(job_id) != order or -negative_priority != job.priority:
                continue  # launched already, or an entry from before a priority raise
            del self._parked[job_id]
            if job.cancel_token.cancelled or self._shut_down:
                self._running.pop(job.id, None)
                self._finish_cancelled(job)
                continue
            self._lane_running[lane] += 1
            self._launch(job)

    def _on_report(self, kind: str, job_id: int, payload: object) -> None:
        if kind == "progress":
            self._on_job_progressed(job_id, payload)
        elif kind == "done":
            self._on_job_succeeded(job_id, payload)
        else:
            self._on_job_errored(job_id, payload)

    def _on_job_progressed(self, job_id: int, progress: object) -> None:
        job = self._running.get(job_id)
        if job is None or not isinstance(progress, Progress):
            return
        job.progress = progress
        if job.on_progress is not None:
            job.on_progress(progress)
        self.job_progress.emit(job)

    def _on_job_succeeded(self, job_id: int, result: object) -> None:
        job = self._running.get(job_id)
        if job is not None:
            self._finish(job, result, None)

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
            # Drop the runnable only now: its last report has been handed on.
            job.runnable = None
            if job.key is not None:
                queue = self._queues.get(job.key)
                if queue and queue[0] is job:
                    queue.popleft()
                self._start_next(job.key)
            self.activity_changed.emit(self.active_count)
