"""Operations on one VM run one at a time, in order; different VMs run in parallel.

Plain threads, no Qt: the GUI's job runner and scripts share the same rule by
submitting through :class:`OperationQueue` with the VM's UUID as the key.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")


class OperationQueue:
    """A FIFO per key on a shared pool of worker threads."""

    def __init__(self, max_workers: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="vm-operation")
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, deque[tuple[Callable[[], Any], Future[Any]]]] = {}
        self._busy: set[Hashable] = set()

    def submit(self, key: Hashable, work: Callable[[], _T]) -> Future[_T]:
        """Run ``work`` after every earlier submission with the same key has finished."""
        future: Future[_T] = Future()
        with self._lock:
            self._waiting.setdefault(key, deque()).append((work, future))
            if key in self._busy:
                return future
            self._busy.add(key)
        self._pool.submit(self._drain, key)
        return future

    def pending(self, key: Hashable) -> int:
        """How many operations for ``key`` are waiting (not counting a running one)."""
        with self._lock:
            return len(self._waiting.get(key, ()))

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work; with ``wait``, let queued operations finish first."""
        self._pool.shutdown(wait=wait)

    def _drain(self, key: Hashable) -> None:
        while True:
            with self._lock:
                queue = self._waiting.get(key)
                if not queue:
                    self._busy.discard(key)
                    self._waiting.pop(key, None)
                    return
                work, future = queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
