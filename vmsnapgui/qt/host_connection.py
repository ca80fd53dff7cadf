"""One libvirt host as the GUI sees it: a bridge from the engine's threads to Qt signals.

A :class:`HostConnection` owns the :class:`~vmsnapgui.virt.connection.Connection`, the
:class:`~vmsnapgui.virt.snapshot_loader.SnapshotLoader` and the
:class:`~vmsnapgui.virt.snapshot_watcher.SnapshotWatcher` of one URI. Every blocking
call runs as a job on the shared :class:`~vmsnapgui.qt.job_runner.JobRunner`; listener
callbacks from the engine's threads are re-emitted as queued signals, so everything a
slot sees happens on the GUI thread. Loading goes: connect, list the VMs, load every
VM's tree (the selected one first), then measure every VM's sizes. The watcher's news
reloads what changed: a VM's tree when its snapshots change, everything of the VM at
once after a revert, the VM list when VMs come, go or change state. Once no tree is
loading, the host's linked clones are looked for (again after each change).

A lost or slow host only delays its own jobs; nothing here ever waits on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from vmsnapgui.core.disk_usage import DomainUsage
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.linked_clones import HostLinks
from vmsnapgui.core.progress import CancelToken, Progress, ProgressCallback
from vmsnapgui.core.snapshot import DomainSummary
from vmsnapgui.qt import gc_pauses
from vmsnapgui.qt.display_text import connection_label, sizes_unavailable
from vmsnapgui.qt.job_runner import Job, JobRunner
from vmsnapgui.virt.connection import Connection, ConnectionState, ConnectionStatus
from vmsnapgui.virt.errors import explain
from vmsnapgui.virt.snapshot_loader import DomainSnapshots, SnapshotLoader
from vmsnapgui.virt.snapshot_watcher import ChangeKind, DomainChange, SnapshotWatcher

_log = logging.getLogger(__name__)

DEMO_LAB_ENTRY = "demo-lab"  # how the demo lab is remembered among connection URIs
SELECTED_PRIORITY = 10
WATCH_INTERVAL = 2.0
# The test and embedded drivers run inside this process: each call is CPU work under
# the driver's lock and, around it, Python under the GIL. More threads cannot make it
# faster; each one more only lengthens the queue the GUI thread joins for the GIL.
IN_PROCESS_FETCH_THREADS = 1
POLL_THREADS = 4
IN_PROCESS_POLL_THREADS = 1
# A VM's sizes are measured this long after its new tree arrived: the measurement's
# Python (libvirt calls, XML, the analysis's bookkeeping) then no longer competes for
# the GIL with the repaint of the tree it follows.
USAGE_AFTER_TREE_MS = 40
# Linked clones are looked for this long after the last tree or listing arrived, once
# no tree is loading: never ahead of the first paint of a tree, and once per burst.
LINKS_AFTER_MS = 500
# VMs with more snapshots than this load through a loader (and thread pool) of their
# own, so fetching ten thousand snapshot XMLs never queues ahead of a small VM's refresh.
BULK_SNAPSHOTS = 200

# The lane of loading work: parsing snapshot XML is Python, bound by the GIL; more of
# it at once than there are cores only starves the GUI thread.
LOAD_LANE = "load"
# Opening connections: mostly waiting, but each open lists the VMs in Python too.
CONNECT_LANE = "connect"
# An in-process driver (test:, qemu:///embed) does on our CPUs what libvirtd does for
# other hosts. Opening one parses its whole definition (seconds of C for a big file):
# a lane of its own, so the trees of hosts already open load meanwhile. Its trees and
# sizes are Python under the GIL as well as driver work: one at a time, in their own lane
# (the loading lane's second job only adds GIL contention for the GUI thread).
IN_PROCESS_OPEN_LANE = "in-process-open"
IN_PROCESS_LOAD_LANE = "in-process-load"

OperationFunction = Callable[[SnapshotLoader, ProgressCallback, CancelToken], Any]


def _is_in_process(uri: str) -> bool:
    """The test driver and the embedded QEMU driver run inside this process."""
    return uri.startswith("test:") or uri.startswith("qemu:///embed")


class HostConnection(QObject):
    """A libvirt connection, its VMs, their trees and sizes, kept fresh in the background."""

    status_changed = Signal(object)  # ConnectionStatus
    activity = Signal(str)  # a line about work in progress ("building the demo lab…")
    domains_changed = Signal(object)  # list[DomainSummary]
    domains_failed = Signal(object)  # UserError
    tree_loaded = Signal(object)  # DomainSnapshots
    tree_failed = Signal(str, object)  # uuid, UserError
    usage_loaded = Signal(str, object)  # uuid, DomainUsage
    usage_failed = Signal(str, object)  # uuid, UserError
    links_changed = Signal()  # self.links (or self.links_error) is new
    settled_changed = Signal(bool)  # True when nothing is loading for this host

    # Bridges from the engine's threads; received queued on the GUI thread.
    _status_from_engine = Signal(object)
    _change_from_engine = Signal(object)

    def __init__(
        self,
        uri: str,
        runner: JobRunner,
        *,
        demo_root: Path | None = None,
        demo_reset: bool = False,
        watch_interval: float = WATCH_INTERVAL,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._runner = runner
        self._demo_root = demo_root
        self._demo_reset = demo_reset
        self.is_demo = demo_root is not None
        self.entry = DEMO_LAB_ENTRY if self.is_demo else uri
        self.uri = uri
        self.label = "Demo lab" if self.is_demo else connection_label(uri)
        self.connection = Connection(uri)
        self._in_process = _is_in_process(uri)
        self.loader = self._new_loader()
        self._bulk_loader: SnapshotLoader | None = None
        self._bulk_uuids: set[str] = set()
        # The watcher polls through its own small pool: its cheap calls must not wait
        # behind a big tree's fetches.
        self._poll_loader = SnapshotLoader(
            self.connection,
            max_threads=IN_PROCESS_POLL_THREADS if self._in_process else POLL_THREADS,
        )
        self._connect_lane = IN_PROCESS_OPEN_LANE if self._in_process else CONNECT_LANE
        self._load_lane = IN_PROCESS_LOAD_LANE if self._in_process else LOAD_LANE
        self._watch_interval = watch_interval
        self._watcher: SnapshotWatcher | None = None
        self._alive = True
        self._alive_lock = threading.Lock()
        self.status = ConnectionStatus(uri, ConnectionState.DISCONNECTED)
        self.domains: dict[str, DomainSummary] = {}
        self.domains_loaded = False
        self.trees: dict[str, DomainSnapshots] = {}
        self.tree_errors: dict[str, UserError] = {}
        self.usages: dict[str, DomainUsage] = {}
        self.usage_errors: dict[str, UserError] = {}
        self.open_error: UserError | None = None
        self.links: HostLinks | None = None  # None until first looked for
        self.links_error: UserError | None = None
        self.last_refresh: float | None = None
        self._pending: set[tuple[str, str]] = set()
        self._tree_jobs: dict[str, Job] = {}
        self._focus: str | None = None  # the VM the user looks at (see prioritize)
        self._refetch_all: set[str] = set()
        self._ever_connected = False
        self._was_lost = False
        self._settled = False
        self._links_timer = QTimer(self)
        self._links_timer.setSingleShot(True)
        self._links_timer.setInterval(LINKS_AFTER_MS)
        self._connect_signals()
        self.connection.add_status_listener(self._on_engine_status)

    def _connect_signals(self) -> None:
        self._status_from_engine.connect(self._on_status)
        self._change_from_engine.connect(self._on_change)
        self._links_timer.timeout.connect(self._on_links_timer)

    def _new_loader(self) -> SnapshotLoader:
        if self._in_process:
            # The test and embedded drivers run inside this process under one lock:
            # threads only add GIL contention (see IN_PROCESS_FETCH_THREADS).
            return SnapshotLoader(self.connection, max_threads=IN_PROCESS_FETCH_THREADS)
        return SnapshotLoader(self.connection)

    def loader_for(self, uuid: str) -> SnapshotLoader:
        """The loader that loads (and caches) this VM's snapshots."""
        if uuid in self._bulk_uuids and self._bulk_loader is not None:
            return self._bulk_loader
        return self.loader

    def _assign_loader(self, uuid: str) -> None:
        summary = self.domains.get(uuid)
        if summary is not None and (summary.snapshot_count or 0) > BULK_SNAPSHOTS:
            if self._bulk_loader is None:
                self._bulk_loader = self._new_loader()
            self._bulk_uuids.add(uuid)

    # -- engine callbacks (any thread): hand over only -----------------------------------

    def _on_engine_status(self, status: ConnectionStatus) -> None:
        with self._alive_lock:
            if self._alive:
                self._status_from_engine.emit(status)

    def _on_engine_change(self, change: DomainChange) -> None:
        with self._alive_lock:
            if self._alive:
                self._change_from_engine.emit(change)

    # -- public -------------------------------------------------------------------------

    @property
    def is_settled(self) -> bool:
        """True when the host has failed, or is connected with everything loaded."""
        return self._settled

    def open(self) -> None:
        """Connect (building the demo lab first if needed), then load everything."""
        self.open_error = None
        self._mark_pending("open", "")
        self._runner.submit(
            self._open_job,
            key=("connect", self.entry),
            description=f"Connecting to {self.label}",
            on_done=self._on_opened,
            on_error=self._on_open_failed,
            on_progress=self._on_open_progress,
            lane=self._connect_lane,
        )

    def retry(self) -> None:
        """Try to connect again after a failure."""
        if self.status.state in (
            ConnectionState.FAILED,
            ConnectionState.CLOSED,
            ConnectionState.DISCONNECTED,
        ):
            self.open()

    def refresh_domains(self) -> None:
        """List the VMs again (their states, counts and current snapshots).

        News (a VM started, an operation ended) must not wait behind the loading of
        big trees: the listing is one quick job, so it runs outside the loading lane.
        """
        if not self.connection.is_connected:
            return
        self._mark_pending("domains", "")
        self._runner.submit(
            self._list_job,
            key=("domains", self.entry),
            description=f"Listing the VMs of {self.label}",
            on_done=self._on_domains_listed,
            on_error=self._on_domains_failed,
            replace_pending=True,
        )

    def load_tree(
        self, uuid: str, *, refetch_all: bool = False, priority: int = 0, bulk: bool = False
    ) -> Job | None:
        """Load (or refresh) one VM's snapshot tree; its sizes follow.

        A first load, or one of a reload of every VM at once (``bulk``), waits its turn
        in the loading lane. A refresh of a loaded tree (news from the watcher or an
        operation) fetches only what changed and runs at once: a snapshot made with
        virsh shows within seconds even while big trees load.
        """
        if not self.connection.is_connected or not self._alive:
            return None
        if refetch_all:
            self._refetch_all.add(uuid)
        name = self.domains[uuid].name if uuid in self.domains else uuid
        if uuid not in self.trees:
            self._assign_loader(uuid)
        self._mark_pending("tree", uuid)
        job = self._runner.submit(
            self._tree_job_for(uuid, uuid in self._refetch_all),
            key=("tree", self.entry, uuid),
            description=f"Loading the snapshots of {name}",
            on_done=self._on_tree_loaded,
            on_error=self._tree_failed_for(uuid),
            replace_pending=True,
            priority=self._priority_of(uuid, priority),
            lane=self._load_lane if bulk or uuid not in self.trees else None,
        )
        self._tree_jobs[uuid] = job
        return job

    def prioritize(self, uuid: str) -> None:
        """The user looks at this VM: load its tree and sizes before the other VMs'."""
        self._focus = uuid
        job = self._tree_jobs.get(uuid)
        if job is not None and not job.is_finished:
            self._runner.raise_priority(job, SELECTED_PRIORITY)

    def _priority_of(self, uuid: str, priority: int) -> int:
        return max(priority, SELECTED_PRIORITY) if uuid == self._focus else priority

    def measure_usage(self, uuid: str, *, after_ms: int = 0) -> None:
        """Measure the disk space of one VM's snapshots (after its tree is loaded).

        ``after_ms``: start the measurement that much later (it counts as pending at
        once, so nothing looks settled meanwhile).
        """
        if self.trees.get(uuid) is None or not self._alive:
            return
        self._mark_pending("usage", uuid)
        if after_ms > 0:
            QTimer.singleShot(after_ms, self, partial(self._submit_usage, uuid))
        else:
            self._submit_usage(uuid)

    def _submit_usage(self, uuid: str) -> None:
        loaded = self.trees.get(uuid)
        if loaded is None or not self._alive:
            self._clear_pending("usage", uuid)
            self._update_settled()
            return
        self._runner.submit(
            self._usage_job_for(loaded),
            key=("usage", self.entry, uuid),
            description=f"Measuring the snapshots of {loaded.domain.name}",
            on_done=self._usage_loaded_for(uuid),
            on_error=self._usage_failed_for(uuid),
            replace_pending=True,
            priority=self._priority_of(uuid, 0),
            lane=self._load_lane,
        )

    def look_for_links(self) -> None:
        """Find the host's linked clones again, soon: once no tree is loading, in the
        background, after what is loading now (it never delays a tree's first paint)."""
        if self._alive:
            self._links_timer.start()

    @Slot()
    def _on_links_timer(self) -> None:
        if not self._alive or not self.connection.is_connected:
            return
        if any(kind in ("open", "domains", "tree") for kind, _ in self._pending):
            self._links_timer.start()  # trees still load: look once they are all here
            return
        trees = {uuid: loaded.tree for uuid, loaded in self.trees.items()}
        loader = self.loader

        def find(progress: ProgressCallback, cancel: CancelToken) -> HostLinks:
            from vmsnapgui.virt.linked_clones import read_linked_clones

            return read_linked_clones(loader, trees=trees)

        self._runner.submit(
            find,
            key=("links", self.entry),
            description=f"Looking for linked clones on {self.label}",
            on_done=self._on_links_found,
            on_error=self._on_links_failed,
            replace_pending=True,
            priority=-1,
            lane=self._load_lane,
        )

    def _on_links_found(self, links: HostLinks) -> None:
        if not self._alive:
            return
        changed = links != self.links or self.links_error is not None
        self.links = links
        self.links_error = None
        if changed:
            self.links_changed.emit()

    def _on_links_failed(self, error: UserError) -> None:
        if not self._alive:
            return
        self.links_error = error
        self.links_changed.emit()

    def fetch_domain_xml(
        self,
        uuid: str,
        on_done: Callable[[str], None],
        on_error: Callable[[UserError], None],
    ) -> Job:
        """The VM's live definition (for the "Now" configuration diff), off-thread."""
        loader = self.loader

        def read(progress: ProgressCallback, cancel: CancelToken) -> str:
            dom = loader.lookup(uuid)
            try:
                return str(dom.XMLDesc(0))
            except Exception as exc:  # libvirt.libvirtError; qt/ does not import libvirt
                raise explain(exc, "reading the VM's configuration") from None

        return self._runner.submit(
            read,
            description="Reading the VM's configuration",
            on_done=on_done,
            on_error=on_error,
        )

    def submit_operation(
        self,
        uuid: str,
        description: str,
        operation: OperationFunction,
        *,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[UserError], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        refetch_all: bool = False,
    ) -> Job:
        """Run a change to one VM (edit, take, revert, clone, delete) in its queue.

        Operations on one VM run one at a time in order; the VM's tree is reloaded
        when each ends, whether it worked or not. This is the hook issue 6 builds on.
        """
        loader = self.loader_for(uuid)

        def run(progress: ProgressCallback, cancel: CancelToken) -> Any:
            return operation(loader, progress, cancel)

        def done(result: Any) -> None:
            self.load_tree(uuid, refetch_all=refetch_all, priority=SELECTED_PRIORITY)
            if on_done is not None:
                on_done(result)

        def failed(error: UserError) -> None:
            self.load_tree(uuid, refetch_all=refetch_all, priority=SELECTED_PRIORITY)
            if on_error is not None:
                on_error(error)

        return self._runner.submit(
            run,
            key=("operation", self.entry, uuid),
            description=description,
            on_done=done,
            on_error=failed,
            on_progress=on_progress,
        )

    def close(self) -> None:
        """Stop watching and close the connection (in the background)."""
        with self._alive_lock:
            self._alive = False
        if self._watcher is not None:
            self._watcher.stop()
        connection = self.connection
        loaders = [self.loader, self._poll_loader]
        if self._bulk_loader is not None:
            loaders.append(self._bulk_loader)

        def close_quietly() -> None:
            for loader in loaders:
                loader.close()
            connection.close()

        threading.Thread(target=close_quietly, name="libvirt-close", daemon=True).start()

    # -- jobs (worker threads: no Qt, no self state except the engine objects) ----------

    def _open_job(self, progress: ProgressCallback, cancel: CancelToken) -> list[DomainSummary]:
        if self._demo_root is not None:
            from vmsnapgui.virt.demo_lab import ensure_demo_lab

            def say(message: str) -> None:
                progress(Progress(message, unit="steps"))

            ensure_demo_lab(self._demo_root, reset=self._demo_reset, progress=say)
        self.connection.open()
        return self.loader.list_domains()

    def _list_job(self, progress: ProgressCallback, cancel: CancelToken) -> list[DomainSummary]:
        return self.loader.list_domains()

    def _tree_job_for(
        self, uuid: str, refetch_all: bool
    ) -> Callable[[ProgressCallback, CancelToken], DomainSnapshots]:
        loader = self.loader_for(uuid)

        def load(progress: ProgressCallback, cancel: CancelToken) -> DomainSnapshots:
            return loader.load(uuid, refetch_all=refetch_all)

        return load

    def _usage_job_for(
        self, loaded: DomainSnapshots
    ) -> Callable[[ProgressCallback, CancelToken], DomainUsage]:
        loader = self.loader_for(loaded.domain.uuid)

        def measure_sizes(progress: ProgressCallback, cancel: CancelToken) -> DomainUsage:
            try:
                from vmsnapgui.virt.disk_usage import measure
            except ImportError as exc:
                raise UserError(
                    "Sizes are not available: the size engine "
                    "(vmsnapgui.virt.disk_usage) is not installed.",
                    detail=str(exc),
                ) from None
            return measure(loader, loaded)

        return measure_sizes

    # -- results (GUI thread) -----------------------------------------------------------

    @Slot(object)
    def _on_status(self, status: ConnectionStatus) -> None:
        if not self._alive:
            return
        previous = self.status
        self.status = status
        if status.state is ConnectionState.LOST:
            self._was_lost = True
        self.status_changed.emit(status)
        if (
            status.state is ConnectionState.CONNECTED
            and self._was_lost
            and previous.state is not ConnectionState.CONNECTED
        ):
            # Back after a loss: anything may have changed meanwhile.
            self._was_lost = False
            self.refresh_domains()
            for uuid in list(self.domains):
                self.load_tree(uuid, refetch_all=True, bulk=True)
        self._update_settled()

    def _on_open_progress(self, progress: Progress) -> None:
        self.activity.emit(progress.phase)

    def _on_opened(self, domains: list[DomainSummary]) -> None:
        self._ever_connected = True
        self._clear_pending("open", "")
        if self._watcher is None:
            self._watcher = SnapshotWatcher(
                self._poll_loader, self._on_engine_change, interval=self._watch_interval
            )
            self._watcher.start()
        self._on_domains_listed(domains)

    def _on_open_failed(self, error: UserError) -> None:
        self.open_error = error
        self._clear_pending("open", "")
        if self.status.state is not ConnectionState.FAILED:
            # The demo lab can fail before the connection is even tried.
            self.status = ConnectionStatus(
                self.uri, ConnectionState.FAILED, error.message, error.detail
            )
            self.status_changed.emit(self.status)
        self._update_settled()

    def _on_domains_listed(self, domains: list[DomainSummary]) -> None:
        self._clear_pending("domains", "")
        before = self.domains
        self.domains = {summary.uuid: summary for summary in domains}
        self.domains_loaded = True
        self.last_refresh = time.time()
        for uuid in set(before) - set(self.domains):
            self.trees.pop(uuid, None)
            self.usages.pop(uuid, None)
            self.tree_errors.pop(uuid, None)
            self.usage_errors.pop(uuid, None)
            self._pending.discard(("tree", uuid))
            self._pending.discard(("usage", uuid))
        self.domains_changed.emit(domains)
        self.look_for_links()
        for summary in domains:
            loaded = self.trees.get(summary.uuid)
            if loaded is None:
                if ("tree", summary.uuid) not in self._pending:
                    self.load_tree(summary.uuid)
            elif (
                loaded.domain.snapshot_count != summary.snapshot_count
                or loaded.domain.current_snapshot != summary.current_snapshot
                or loaded.domain.state != summary.state
            ):
                self.load_tree(summary.uuid)
        self._update_settled()

    def _on_domains_failed(self, error: UserError) -> None:
        self._clear_pending("domains", "")
        self.domains_failed.emit(error)
        self._update_settled()

    def _on_tree_loaded(self, loaded: DomainSnapshots) -> None:
        uuid = loaded.domain.uuid
        self._clear_pending("tree", uuid)
        self._tree_jobs.pop(uuid, None)
        self._refetch_all.discard(uuid)
        if not self._alive or uuid not in self.domains:
            self._update_settled()
            return
        previous = self.trees.get(uuid)
        self.last_refresh = time.time()
        if previous is not None and uuid not in self.tree_errors and _same(previous, loaded):
            # A refresh found what is shown already (an operation's reload and the
            # watcher's often both ask): the shown objects stay, nobody redraws.
            if uuid not in self.usages:
                self.measure_usage(uuid)
            self._update_settled()
            return
        self.trees[uuid] = loaded
        self.tree_errors.pop(uuid, None)
        self.domains[uuid] = loaded.domain
        gc_pauses.loaded_data_arrived()
        self.tree_loaded.emit(loaded)
        self.look_for_links()
        if previous is None or _shape(previous) != _shape(loaded) or uuid not in self.usages:
            self.measure_usage(uuid, after_ms=USAGE_AFTER_TREE_MS)
        self._update_settled()

    def _tree_failed_for(self, uuid: str) -> Callable[[UserError], None]:
        def failed(error: UserError) -> None:
            self._clear_pending("tree", uuid)
            self._tree_jobs.pop(uuid, None)
            self._refetch_all.discard(uuid)
            if self._alive and uuid in self.domains:
                self.tree_errors[uuid] = error
                self.tree_failed.emit(uuid, error)
            self._update_settled()

        return failed

    def _usage_loaded_for(self, uuid: str) -> Callable[[DomainUsage], None]:
        def loaded(usage: DomainUsage) -> None:
            self._clear_pending("usage", uuid)
            if self._alive and uuid in self.domains:
                self.usages[uuid] = usage
                self.usage_errors.pop(uuid, None)
                gc_pauses.loaded_data_arrived()
                self.usage_loaded.emit(uuid, usage)
            self._update_settled()

        return loaded

    def _usage_failed_for(self, uuid: str) -> Callable[[UserError], None]:
        def failed(error: UserError) -> None:
            self._clear_pending("usage", uuid)
            if self._alive and uuid in self.domains:
                self.usages.pop(uuid, None)
                self.usage_errors[uuid] = UserError(
                    sizes_unavailable(error.message), detail=error.detail
                )
                self.usage_failed.emit(uuid, self.usage_errors[uuid])
            self._update_settled()

        return failed

    @Slot(object)
    def _on_change(self, change: DomainChange) -> None:
        if not self._alive:
            return
        uuid = change.uuid
        if change.kind is ChangeKind.SNAPSHOTS and uuid is not None:
            self.load_tree(uuid)
        elif change.kind is ChangeKind.REVERTED and uuid is not None:
            self.load_tree(uuid, refetch_all=True, priority=SELECTED_PRIORITY)
            self.refresh_domains()
        else:
            self.refresh_domains()

    # -- bookkeeping ----------------------------------------------------------------------

    def _mark_pending(self, kind: str, uuid: str) -> None:
        self._pending.add((kind, uuid))
        self._update_settled()

    def _clear_pending(self, kind: str, uuid: str) -> None:
        self._pending.discard((kind, uuid))

    def _update_settled(self) -> None:
        state = self.status.state
        if state is ConnectionState.FAILED and not self._pending:
            settled = True
        else:
            settled = (
                state is ConnectionState.CONNECTED and self.domains_loaded and not self._pending
            )
        if settled != self._settled:
            self._settled = settled
            self.settled_changed.emit(settled)


def _same(shown: DomainSnapshots, loaded: DomainSnapshots) -> bool:
    """True when ``loaded`` says nothing ``shown`` does not (same VM state, same records).

    Unchanged snapshots are the loader's cached records, so comparing them is mostly
    comparing identities.
    """
    return (
        shown.domain == loaded.domain
        and shown.tree.current == loaded.tree.current
        and len(shown.tree) == len(loaded.tree)
        and tuple(shown.tree) == tuple(loaded.tree)
    )


def _shape(loaded: DomainSnapshots) -> tuple[Any, ...]:
    """What decides a VM's sizes: its snapshots, their parents, the current one, its state."""
    tree = loaded.tree
    return (
        tuple((name, tree.parent(name)) for name in tree.names()),
        tree.current,
        loaded.domain.state,
    )
