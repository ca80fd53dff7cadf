"""The main window: connections and VMs on the left, the snapshot tree and charts in the
middle, the selected snapshot's details on the right.

The window wires hosts, models and widgets together and decides what is shown; the
work itself happens in :class:`~vmsnapgui.qt.host_connection.HostConnection` jobs.
Operations (take, revert, clone, delete) arrive with issue 6: their actions exist here,
disabled, in :attr:`MainWindow.operation_actions`, and run through
:meth:`HostConnection.submit_operation`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import (
    QByteArray,
    QItemSelection,
    QModelIndex,
    QPoint,
    Qt,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QGuiApplication,
    QKeySequence,
    QPixmap,
    QShortcut,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QSplitter,
    QStackedWidget,
    QToolBar,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from vmsnapgui.core.disk_usage import DomainUsage
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.linked_clones import link_details, vm_link_lines
from vmsnapgui.qt import gc_pauses, icons
from vmsnapgui.qt.app_settings import AppSettings
from vmsnapgui.qt.centre_pages import HostPage, WelcomePage
from vmsnapgui.qt.connection_dialog import AddConnectionDialog
from vmsnapgui.qt.details_panel import DetailsContext, DetailsPanel
from vmsnapgui.qt.host_connection import (
    CONNECT_LANE,
    DEMO_LAB_ENTRY,
    IN_PROCESS_LOAD_LANE,
    IN_PROCESS_OPEN_LANE,
    LOAD_LANE,
    HostConnection,
)
from vmsnapgui.qt.host_list_model import HostColumn, HostListModel
from vmsnapgui.qt.job_runner import Job, JobRunner
from vmsnapgui.qt.local_hypervisors import LOCAL_URIS, ProbeResult, probe_local_hypervisors
from vmsnapgui.qt.message_bar import MessageBar
from vmsnapgui.qt.operations_panel import OperationsPanel
from vmsnapgui.qt.redraw_pacer import RedrawPacer
from vmsnapgui.qt.sliced_import import SlicedImport
from vmsnapgui.qt.snapshot_filter_proxy import SnapshotFilterProxy
from vmsnapgui.qt.snapshot_operations import SnapshotOperations
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY, SnapshotTreeModel, UsageState
from vmsnapgui.qt.snapshot_tree_view import SnapshotTreeView
from vmsnapgui.qt.status_bar import AppStatusBar
from vmsnapgui.virt import analysis_process
from vmsnapgui.virt.connection import ConnectionState
from vmsnapgui.virt.snapshot_loader import DomainSnapshots, SnapshotLoader

if TYPE_CHECKING:  # pyqtgraph is imported in slices after the window shows
    from vmsnapgui.qt.usage_charts import UsageCharts

_log = logging.getLogger(__name__)

FILTER_DELAY_MS = 150
STATUS_DELAY_MS = 250
LOAD_LANE_LIMIT = 2  # loading jobs at once (see JobRunner.set_lane_limit)
# Connections opening at once: enough that a few unreachable hosts (which wait for a
# network timeout) do not hold up the rest.
CONNECT_LANE_LIMIT = 6
# In-process drivers work on our own CPUs: their opens may use all but one (the GUI
# thread's); their loading is Python, which runs one thread at a time anyway.
IN_PROCESS_OPEN_LANE_LIMIT = max(1, (os.cpu_count() or 2) - 1)
IN_PROCESS_LOAD_LANE_LIMIT = 1
GIL_SWITCH_INTERVAL = 0.0005
# Charts are redrawn at most this often: a tree that reloads, then its sizes, then a
# refresh each asked for a redraw of both plots (two scenes, two repaints, 10-30 ms
# each while background threads hold the GIL half the time) back to back with the
# work that asked. Gathered, the charts draw once, in an event-loop turn of their own.
CHARTS_DELAY_MS = 120
# What the redraw pacer runs.
CHARTS, DETAILS, OUTLINE = "charts", "details", "outline"
# Full garbage collections (see gc_pauses): when everything has loaded, at most once a
# minute; while loading goes on and on, at least every five minutes anyway.
GC_SHORTEST_WAIT_S = 60
GC_LONGEST_WAIT_S = 300

PAGE_WELCOME, PAGE_HOST, PAGE_TREE = range(3)
# The charts (pyqtgraph, numpy) are imported on the GUI thread in slices once the window
# shows (see sliced_import); pyqtgraph reads every name of these Qt modules.
CHARTS_MODULE = "vmsnapgui.qt.usage_charts"
CHARTS_QT_MODULES = ("PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets")


def save_description(
    uuid: str, snapshot: str, text: str, loader: SnapshotLoader, progress: object, cancel: object
) -> None:
    """The description edit as an operation (job)."""
    from vmsnapgui.virt.operations import set_description

    set_description(loader, uuid, snapshot, text or None)


class MainWindow(QMainWindow):
    """vmsnapgui's one window."""

    selection_changed = Signal()  # the shown VM or the selected snapshot changed
    settled_changed = Signal(bool)  # every host has loaded (or failed)

    def __init__(
        self,
        settings: AppSettings,
        *,
        runner: JobRunner | None = None,
        watch_interval: float = 2.0,
        charts: bool = True,
    ) -> None:
        super().__init__()
        # Qt calls release the GIL; with loaders busy in Python, getting it back costs
        # the GUI thread up to one switch interval per call (5 ms by default), which
        # adds up to visible stalls. A short interval keeps the GUI thread responsive.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        # Local images are analysed in a helper process with a GIL of its own.
        analysis_process.use_helper_process(True)
        self.settings = settings
        self.runner = runner or JobRunner(self)
        self.runner.set_lane_limit(LOAD_LANE, LOAD_LANE_LIMIT)
        self.runner.set_lane_limit(CONNECT_LANE, CONNECT_LANE_LIMIT)
        self.runner.set_lane_limit(IN_PROCESS_OPEN_LANE, IN_PROCESS_OPEN_LANE_LIMIT)
        self.runner.set_lane_limit(IN_PROCESS_LOAD_LANE, IN_PROCESS_LOAD_LANE_LIMIT)
        self.watch_interval = watch_interval
        self.hosts: list[HostConnection] = []
        self.current: tuple[HostConnection, str] | None = None
        self.charts: UsageCharts | None = None  # once pyqtgraph is imported
        self.charts_error: str | None = None
        self._charts_wanted = charts
        self._charts_importer: SlicedImport | None = None
        self._probing = False
        self._probe_failures: tuple[tuple[str, str], ...] = ()
        self._live_xml_jobs: dict[str, Job] = {}
        self._message_host: HostConnection | None = None  # whose trouble the bar shows
        self._pending_selection: tuple[str, str | None] | None = None
        self._user_chose_vm = False
        self._settled = False
        # Charts, details and the chart's selection outline are redrawn a turn of the
        # event loop after they were asked for, one at a time (see redraw_pacer).
        self._pacer = RedrawPacer(self)
        self._pacer.add(CHARTS, self._redraw_charts)
        self._pacer.add(DETAILS, self._show_details_now)
        self._pacer.add(OUTLINE, self._outline_selected_bar)
        self._warmed_up = False
        self._last_collection = time.monotonic()
        self._gc_timer = self._timer(
            GC_SHORTEST_WAIT_S * 1000, self._collect_garbage, single_shot=False
        )
        self._shut_down = False
        self.setWindowTitle("vmsnapgui — VM snapshots")
        self.setWindowIcon(icons.named_icon("app"))
        self._build()
        self._build_actions()
        self._connect_signals()
        self._restore_layout()
        self._update_actions()
        self._show_page()

    def _timer(
        self, interval_ms: int, slot: Callable[[], None], *, single_shot: bool = True
    ) -> QTimer:
        """A timer of this window that calls ``slot`` (once per start, by default)."""
        timer = QTimer(self)
        timer.setSingleShot(single_shot)
        timer.setInterval(interval_ms)
        timer.timeout.connect(slot)
        return timer

    # -- building ---------------------------------------------------------------------

    def _build(self) -> None:
        self.host_model = HostListModel(self)
        self.host_view = QTreeView()
        self.host_view.setAccessibleName("Connections and virtual machines")
        self.host_view.setModel(self.host_model)
        self.host_view.setUniformRowHeights(True)
        self.host_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.host_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.host_view.setAllColumnsShowFocus(True)
        # A scroll bar that appears once the first host's VMs overflow the pane narrows
        # every row after it is drawn: drawn twice, mid-load. Keep it there instead.
        self.host_view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        header = self.host_view.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(HostColumn.NAME, QHeaderView.ResizeMode.Stretch)
        # Fixed widths from the font: sizing to contents would read every row of every
        # host again on each change (seconds with hundreds of VMs).
        metrics = self.host_view.fontMetrics()
        for column, sample in (
            (HostColumn.SNAPSHOTS, "Snapshots"),
            (HostColumn.SPACE, "≥ 888 MiB"),
        ):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(column, metrics.horizontalAdvance(sample) + 18)

        self.tree_model = SnapshotTreeModel(self)
        self.proxy = SnapshotFilterProxy(self)
        self.proxy.setSourceModel(self.tree_model)
        self.tree_view = SnapshotTreeView()
        self.tree_view.setModel(self.proxy)
        self.tree_view.apply_default_widths()

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter snapshots by name or description (Ctrl+F)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setAccessibleName("Filter snapshots")
        self._filter_timer = self._timer(FILTER_DELAY_MS, self._on_filter_timer)
        # The status bar follows hundreds of jobs; redrawing it for each one would keep
        # the GUI thread busy, so it is refreshed a few times a second at most.
        self._status_timer = self._timer(STATUS_DELAY_MS, self._on_status_timer)
        self.vm_title = QLabel()
        title_font = self.vm_title.font()
        title_font.setBold(True)
        title_font.setPointSizeF(title_font.pointSizeF() * 1.15)
        self.vm_title.setFont(title_font)
        self.vm_title.setAccessibleName("Selected virtual machine")

        self.message_bar = MessageBar()

        self.charts_container = QWidget()
        self.charts_container.setAccessibleName("Space charts")
        charts_layout = QVBoxLayout(self.charts_container)
        self._charts_layout = charts_layout
        charts_layout.setContentsMargins(0, 0, 0, 0)
        self.charts_placeholder = QLabel("Loading charts…")
        self.charts_placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        charts_layout.addWidget(self.charts_placeholder)

        tree_page = QWidget()
        tree_layout = QVBoxLayout(tree_page)
        tree_layout.setContentsMargins(0, 0, 0, 0)
        top_row = QHBoxLayout()
        top_row.addWidget(self.vm_title, 1)
        top_row.addWidget(self.filter_edit, 1)
        tree_layout.addLayout(top_row)
        self.centre_splitter = QSplitter(Qt.Orientation.Vertical)
        self.centre_splitter.setObjectName("centre_splitter")
        self.centre_splitter.addWidget(self.tree_view)
        self.centre_splitter.addWidget(self.charts_container)
        self.centre_splitter.setStretchFactor(0, 3)
        self.centre_splitter.setStretchFactor(1, 2)
        self.centre_splitter.setChildrenCollapsible(False)
        self.centre_splitter.setSizes([480, 300])
        tree_layout.addWidget(self.centre_splitter, 1)

        self.welcome_page = WelcomePage()
        self.welcome_text = self.welcome_page.text
        self.demo_button = self.welcome_page.demo_button
        self.add_button = self.welcome_page.add_button
        self.host_page = HostPage()
        self.host_page_text = self.host_page.text
        self.retry_button = self.host_page.retry_button

        self.pages = QStackedWidget()
        self.pages.addWidget(self.welcome_page)
        self.pages.addWidget(self.host_page)
        self.pages.addWidget(tree_page)
        self.tree_page = tree_page

        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.addWidget(self.message_bar)
        centre_layout.addWidget(self.pages, 1)

        self.details = DetailsPanel()

        self.main_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.main_splitter.setObjectName("main_splitter")
        self.main_splitter.addWidget(self.host_view)
        self.main_splitter.addWidget(centre)
        self.main_splitter.addWidget(self.details)
        self.main_splitter.setStretchFactor(0, 0)
        self.main_splitter.setStretchFactor(1, 1)
        self.main_splitter.setStretchFactor(2, 0)
        self.main_splitter.setSizes([340, 720, 380])
        self.setCentralWidget(self.main_splitter)

        self.status = AppStatusBar()
        self.setStatusBar(self.status)
        self.status.show_hosts([])

    def _build_actions(self) -> None:
        self.add_connection_action = QAction(
            icons.named_icon("add-connection"), "&Add connection…", self
        )
        self.add_connection_action.setShortcut(QKeySequence("Ctrl+N"))
        self.add_connection_action.setToolTip("Connect to a libvirt host (Ctrl+N)")
        self.remove_connection_action = QAction(
            icons.named_icon("remove-connection"), "&Remove connection", self
        )
        self.remove_connection_action.setToolTip("Close the selected connection and forget it")
        self.retry_action = QAction("Re&try connection", self)
        self.demo_action = QAction("Open the &demo lab", self)
        self.quit_action = QAction("&Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.filter_action = QAction("&Filter snapshots", self)
        self.filter_action.setShortcut(QKeySequence.StandardKey.Find)
        self.focus_hosts_action = QAction("Go to &connections", self)
        self.focus_hosts_action.setShortcut(QKeySequence("Ctrl+L"))
        self.focus_tree_action = QAction("Go to the snapshot &tree", self)
        # Ctrl+T takes a snapshot (issue 6); the tree is one more key away.
        self.focus_tree_action.setShortcut(QKeySequence("Ctrl+Shift+T"))
        self.copy_name_action = QAction("&Copy name", self)
        self.edit_description_action = QAction("&Edit description", self)

        # SnapshotOperations decides when each is enabled; disabled ones say why.
        self.operation_actions: dict[str, QAction] = {}
        for name, label, icon in (
            ("take", "&Take snapshot…", "take-snapshot"),
            ("revert", "&Revert to snapshot…", "revert"),
            ("clone", "C&lone…", "clone"),
            ("delete", "&Delete…", "delete"),
        ):
            action = QAction(icons.named_icon(icon), label, self)
            action.setEnabled(False)
            self.operation_actions[name] = action
        toolbar_actions = list(self.operation_actions.values())
        self.operations_panel = OperationsPanel(self.runner)
        self.operations_dock = QDockWidget("Operations", self)
        self.operations_dock.setObjectName("operations_dock")
        self.operations_dock.setAccessibleName("Operations")
        self.operations_dock.setWidget(self.operations_panel)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.operations_dock)
        self.operations_dock.hide()
        self.operations = SnapshotOperations(self, self.operations_panel)

        for action in (self.filter_action, self.focus_hosts_action):
            self.addAction(action)

        menu_bar = self.menuBar()
        file_menu = menu_bar.addMenu("&File")
        file_menu.addActions(
            [self.add_connection_action, self.remove_connection_action, self.retry_action]
        )
        file_menu.addSeparator()
        file_menu.addAction(self.demo_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        snapshot_menu = menu_bar.addMenu("&Snapshot")
        snapshot_menu.setToolTipsVisible(True)
        for name in ("take", "revert", "clone"):
            snapshot_menu.addAction(self.operation_actions[name])
        delete_menu = snapshot_menu.addMenu("&Delete")
        delete_menu.setToolTipsVisible(True)
        delete_menu.addActions(list(self.operations.delete_actions.values()))
        snapshot_menu.addSeparator()
        snapshot_menu.addActions(
            [
                self.edit_description_action,
                self.copy_name_action,
                self.operation_actions["show-xml"],
            ]
        )
        view_menu = menu_bar.addMenu("&View")
        view_menu.addActions([self.filter_action, self.focus_hosts_action, self.focus_tree_action])
        view_menu.addAction(self.operations_dock.toggleViewAction())

        toolbar = QToolBar("Main")
        toolbar.setObjectName("main_toolbar")
        toolbar.setAccessibleName("Main toolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        toolbar.setMovable(False)
        toolbar.addAction(self.add_connection_action)
        toolbar.addAction(self.remove_connection_action)
        toolbar.addSeparator()
        toolbar.addActions(toolbar_actions)
        self.addToolBar(toolbar)
        self.toolbar = toolbar

    def _connect_signals(self) -> None:
        self.host_view.selectionModel().selectionChanged.connect(self._on_host_selection)
        self.host_view.customContextMenuRequested.connect(self._on_host_context_menu)
        self.tree_view.selectionModel().selectionChanged.connect(self._on_tree_selection)
        self.tree_view.context_menu_wanted.connect(self._on_tree_context_menu)
        self.filter_edit.textChanged.connect(self._on_filter_typed)
        self.details.description_save_requested.connect(self._on_save_description)
        self.details.live_xml_wanted.connect(self._on_live_xml_wanted)
        self.message_bar.action_triggered.connect(self._on_message_action)
        self.runner.activity_changed.connect(self._on_activity)
        self.add_connection_action.triggered.connect(self.ask_for_connection)
        self.add_button.clicked.connect(self.ask_for_connection)
        self.remove_connection_action.triggered.connect(self._on_remove_connection)
        self.retry_action.triggered.connect(self._on_retry_selected)
        self.retry_button.clicked.connect(self._on_retry_selected)
        self.demo_action.triggered.connect(self._on_open_demo)
        self.demo_button.clicked.connect(self._on_open_demo)
        self.quit_action.triggered.connect(self.close)
        self.filter_action.triggered.connect(self._on_focus_filter)
        self.focus_hosts_action.triggered.connect(self.host_view.setFocus)
        self.focus_tree_action.triggered.connect(self.tree_view.setFocus)
        self.copy_name_action.triggered.connect(self._on_copy_name)
        self.edit_description_action.triggered.connect(self._on_edit_description)
        escape = QShortcut(QKeySequence(Qt.Key.Key_Escape), self.filter_edit)
        escape.setContext(Qt.ShortcutContext.WidgetShortcut)
        escape.activated.connect(self._on_filter_escape)
        for key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            # Enter on a tree row shows its details (keyboard users land in the panel).
            enter = QShortcut(QKeySequence(key), self.tree_view)
            enter.setContext(Qt.ShortcutContext.WidgetShortcut)
            enter.activated.connect(self.details.setFocus)

    # -- connections ------------------------------------------------------------------

    def add_connection(self, uri: str, *, remember: bool = True) -> HostConnection | None:
        """Open a connection (unless already open); remembered for the next start."""
        for host in self.hosts:
            if host.entry == uri or host.uri == uri:
                return host
        try:
            host = HostConnection(uri, self.runner, watch_interval=self.watch_interval, parent=self)
        except UserError as exc:
            self.message_bar.show_error(exc)
            return None
        self._attach(host, remember)
        return host

    def open_demo_lab(
        self, *, root: Path | None = None, reset: bool = False, remember: bool = True
    ) -> HostConnection:
        """Open the demo lab, building it first when needed (progress in its row)."""
        for host in self.hosts:
            if host.is_demo:
                return host
        from vmsnapgui.virt.demo_lab import DemoLab, default_root

        lab_root = (root or default_root()).resolve()
        host = HostConnection(
            DemoLab(lab_root).uri,
            self.runner,
            demo_root=lab_root,
            demo_reset=reset,
            watch_interval=self.watch_interval,
            parent=self,
        )
        self._attach(host, remember)
        return host

    def add_entry(self, entry: str) -> None:
        """Reopen a remembered connection (a URI or the demo lab)."""
        if entry == DEMO_LAB_ENTRY:
            self.open_demo_lab(remember=False)
        else:
            self.add_connection(entry, remember=False)

    def probe_local(self) -> None:
        """Nothing configured: try the local system hypervisor, then the session one."""
        self._probing = True
        self._show_page()
        self.runner.submit(
            partial(probe_local_hypervisors, uris=LOCAL_URIS),
            key=("probe",),
            description="Looking for a hypervisor on this computer",
            on_done=self._on_probe_done,
            on_error=self._on_probe_failed,
        )

    def remove_host(self, host: HostConnection) -> None:
        """Close a connection and forget it."""
        if host not in self.hosts:
            return
        if self.current is not None and self.current[0] is host:
            self._show_vm(None)
        self.hosts.remove(host)
        host.close()
        self.host_model.remove_host(host)
        self.settings.remove_connection(host.entry)
        self._live_xml_jobs.clear()
        self._refresh_status()
        self._update_settled()
        self._show_page()

    @Slot()
    def ask_for_connection(self) -> None:
        """The "Add connection" dialog."""
        dialog = AddConnectionDialog([h.uri for h in self.hosts], self)
        if dialog.exec() == AddConnectionDialog.DialogCode.Accepted:
            host = self.add_connection(dialog.uri())
            if host is not None:
                self.host_view.setCurrentIndex(self.host_model.index_of_host(host))

    def _attach(self, host: HostConnection, remember: bool) -> None:
        self.hosts.append(host)
        host.status_changed.connect(partial(self._on_host_status, host))
        host.activity.connect(partial(self._on_host_activity, host))
        host.domains_changed.connect(partial(self._on_host_domains, host))
        host.domains_failed.connect(partial(self._on_host_domains_failed, host))
        host.tree_loaded.connect(partial(self._on_tree_loaded, host))
        host.tree_failed.connect(partial(self._on_tree_failed, host))
        host.usage_loaded.connect(partial(self._on_usage_loaded, host))
        host.usage_failed.connect(partial(self._on_usage_failed, host))
        host.links_changed.connect(partial(self._on_host_links, host))
        host.settled_changed.connect(self._on_host_settled)
        self.host_model.add_host(host)
        self.host_view.setFirstColumnSpanned(
            self.host_model.index_of_host(host).row(), QModelIndex(), True
        )
        self.host_view.expand(self.host_model.index_of_host(host))
        if remember:
            self.settings.add_connection(host.entry)
        self._show_page()
        self._refresh_status()
        self._settled = False
        host.open()

    # -- selection ----------------------------------------------------------------------

    def select_path(self, vm: str, snapshot: str | None = None) -> bool:
        """Select a VM by name (first host that has it) and optionally a snapshot."""
        for host in self.hosts:
            for uuid, summary in host.domains.items():
                if summary.name == vm:
                    self._user_chose_vm = True
                    self.host_view.setCurrentIndex(self.host_model.index_of_domain(host, uuid))
                    if snapshot is not None:
                        return self.tree_view.select_key(snapshot)
                    return True
        return False

    def selected_row(self) -> tuple[HostConnection, str, str] | None:
        """(host, VM uuid, snapshot name or NOW_KEY) of the selected tree row."""
        if self.current is None:
            return None
        key = self.tree_view.selected_key()
        if key is None:
            return None
        host, uuid = self.current
        return host, uuid, key

    def is_settled(self) -> bool:
        """True when every host has loaded everything (or failed) and charts are ready."""
        return self._settled

    def _show_vm(self, selection: tuple[HostConnection, str] | None) -> None:
        if selection == self.current:
            return
        self.current = selection
        self.filter_edit.blockSignals(True)
        self.filter_edit.clear()
        self.filter_edit.blockSignals(False)
        self.proxy.set_filter_text("")
        self._live_xml_jobs.clear()
        if selection is None:
            self.tree_model.clear()
            self.vm_title.setText("")
            self._update_charts()
            self.details.show_nothing("Select a virtual machine on the left to see its snapshots.")
        else:
            host, uuid = selection
            host.prioritize(uuid)
            self._present_tree(host, uuid, first=True)
        self._show_page()
        self._update_actions()
        self.selection_changed.emit()

    def _present_tree(self, host: HostConnection, uuid: str, *, first: bool) -> None:
        """Show (or refresh) the current VM's tree, sizes, charts and details."""
        loaded = host.trees.get(uuid)
        summary = host.domains.get(uuid)
        name = summary.name if summary else uuid
        self.vm_title.setText(f"{name} — {summary.state.value}" if summary else name)
        if loaded is None:
            self.tree_model.clear()
            error = host.tree_errors.get(uuid)
            self.details.show_nothing(
                f"Could not load the snapshots of {name}: {error.message}"
                if error
                else f"Loading the snapshots of {name}…"
            )
            self._update_charts()
            return
        selected = self.tree_view.selected_key()
        reset = first or self.tree_model.domain is None or self.tree_model.domain.uuid != uuid
        error = host.usage_errors.get(uuid)
        self.tree_model.set_tree(
            loaded,
            usage=host.usages.get(uuid),
            usage_unavailable=error.message if error else None,
        )
        if (
            not reset
            and self.tree_model.usage_state is UsageState.PENDING
            and (uuid in host.usages or error is not None)
        ):
            self._apply_usage(host, uuid)
        if self.proxy.words:
            self.proxy.refilter()
        if reset:
            self.tree_view.show_vm((host.entry, uuid))
            wanted = self._take_pending_snapshot_selection()
            target = wanted or loaded.tree.current or NOW_KEY
            if not self.tree_view.select_key(target):
                self.tree_view.select_key(NOW_KEY)
        elif selected is not None and self.tree_view.selected_key() is None:
            # The selected snapshot went away: select where Now is instead.
            self.tree_view.select_key(loaded.tree.current or NOW_KEY)
        if self.proxy.words:
            self.tree_view.expand_all_quietly()
        self._update_charts()
        self._details_soon()

    def _apply_usage(self, host: HostConnection, uuid: str) -> None:
        error = host.usage_errors.get(uuid)
        if error is not None:
            self.tree_model.set_usage(None, error.message)
        else:
            self.tree_model.set_usage(host.usages.get(uuid))

    def _details_soon(self) -> None:
        """Show the selected row's details in the next turn of the event loop.

        The tree is drawn first and the details (a form laid out again, its labels
        wrapped anew) in a turn of their own: together they kept the window from
        answering for longer than either alone, while operations finished and sizes
        arrived. Requests made meanwhile are served by one update.
        """
        if not self._pacer.is_pending(DETAILS):
            self._pacer.request(DETAILS)
            self._update_settled()

    @Slot()
    def _show_details_now(self) -> None:
        try:
            self._update_details()
        finally:
            self._update_settled()

    def _update_details(self) -> None:
        if self.current is None:
            return
        host = self.current[0]
        loaded = self.tree_model.loaded
        key = self.tree_view.selected_key()
        if loaded is None:
            return
        if key is None:
            self.details.show_nothing("Select a snapshot to see its details.")
            return
        unavailable = (
            self.tree_model.usage_reason
            if self.tree_model.usage_state is UsageState.UNAVAILABLE
            else None
        )
        vm_links: tuple[str, ...] = ()
        links_tooltip = ""
        snapshot_clones: tuple[str, ...] = ()
        links = host.links
        if links is not None:
            name = loaded.domain.name
            vm_links = vm_link_lines(links, name)
            links_tooltip = link_details(links, name)
            if key != NOW_KEY:
                clones = links.clones_of_snapshot(name, key)
                snapshot_clones = tuple(sorted({link.clone for link in clones}, key=str.casefold))
        self.details.show_details(
            DetailsContext(
                host.label,
                loaded,
                key,
                self.tree_model.usage_of(key),
                unavailable,
                vm_links=vm_links,
                links_tooltip=links_tooltip,
                snapshot_clones=snapshot_clones,
            )
        )

    def _update_charts(self) -> None:
        """Redraw the charts soon (requests made meanwhile are served by one redraw)."""
        if self.charts is None or self._pacer.is_pending(CHARTS):
            return
        self._pacer.request(CHARTS, CHARTS_DELAY_MS)
        self._update_settled()

    @Slot()
    def _redraw_charts(self) -> None:
        try:
            self._draw_charts()
        finally:
            self._update_settled()

    def _draw_charts(self) -> None:
        charts = self.charts
        if charts is None:
            return
        loaded = self.tree_model.loaded
        if loaded is None or self.current is None:
            charts.clear("Select a VM")
            return
        host, uuid = self.current
        error = host.usage_errors.get(uuid)
        charts.set_data(
            self.tree_model.keys(),
            loaded.tree,
            host.usages.get(uuid),
            unavailable=error.message if error else None,
        )
        charts.set_selected(self.tree_view.selected_key())

    @Slot()
    def _outline_selected_bar(self) -> None:
        if self.charts is not None and not self._pacer.is_pending(CHARTS):
            self.charts.set_selected(self.tree_view.selected_key())

    def _take_pending_snapshot_selection(self) -> str | None:
        pending = self._pending_selection
        if pending is None or self.current is None:
            return None
        vm, snapshot = pending
        summary = self.current[0].domains.get(self.current[1])
        if summary is None or summary.name != vm:
            return None
        self._pending_selection = None
        return snapshot

    def request_selection(self, vm: str, snapshot: str | None) -> None:
        """Select ``vm`` (and ``snapshot``) as soon as it has loaded (``--select``)."""
        self._pending_selection = (vm, snapshot)
        self._user_chose_vm = True
        self._try_pending_selection()

    def _try_pending_selection(self) -> None:
        pending = self._pending_selection
        if pending is None:
            return
        vm, snapshot = pending
        for host in self.hosts:
            for uuid, summary in host.domains.items():
                if summary.name == vm and uuid in host.trees:
                    if self.current != (host, uuid):
                        self.host_view.setCurrentIndex(self.host_model.index_of_domain(host, uuid))
                    elif snapshot is None or self.tree_view.select_key(snapshot):
                        self._pending_selection = None
                    # else: the snapshot is not in the tree yet (an operation just made
                    # it); keep asking until the reloaded tree has it.
                    return

    def pending_selection(self) -> tuple[str, str | None] | None:
        """A ``--select`` not satisfied yet."""
        return self._pending_selection

    def _select_something_useful(self) -> None:
        # Nothing chosen yet: show the first VM (by name, first host first) that has
        # snapshots, like a file manager opening on a folder.
        if self._user_chose_vm or self.current is not None or self._pending_selection:
            return
        for host in self.hosts:
            if not host.domains_loaded:
                return  # keep the order of the hosts: wait for this one
            for summary in sorted(host.domains.values(), key=lambda s: s.name.casefold()):
                if summary.snapshot_count:
                    self.host_view.setCurrentIndex(
                        self.host_model.index_of_domain(host, summary.uuid)
                    )
                    return

    # -- pages and actions --------------------------------------------------------------

    def _show_page(self) -> None:
        if self.current is not None:
            self.pages.setCurrentIndex(PAGE_TREE)
            return
        host = self._selected_host()
        if host is not None:
            self._show_host_page(host)
            self.pages.setCurrentIndex(PAGE_HOST)
            return
        self.pages.setCurrentIndex(PAGE_WELCOME)
        self.welcome_page.show_state(
            probing=self._probing, has_hosts=bool(self.hosts), failures=self._probe_failures
        )

    def _show_host_page(self, host: HostConnection) -> None:
        self.host_page.show_host(host)

    def _selected_host(self) -> HostConnection | None:
        index = self.host_view.currentIndex()
        return self.host_model.host_at(index) if index.isValid() else None

    def _update_actions(self) -> None:
        host = self._selected_host()
        self.remove_connection_action.setEnabled(host is not None)
        self.retry_action.setEnabled(
            host is not None and host.status.state is ConnectionState.FAILED
        )
        row = self.selected_row()
        is_snapshot = row is not None and row[2] != NOW_KEY
        self.copy_name_action.setEnabled(is_snapshot)
        self.edit_description_action.setEnabled(is_snapshot)
        self.operations.update_actions()

    def show_operations(self) -> None:
        """Bring the operations panel into view (an operation was just started)."""
        if not self.operations_dock.isVisible():
            self.operations_dock.show()  # as high as the panel's size hint
        self.operations_dock.raise_()

    def refresh_status_now(self) -> None:
        """Bring the status bar up to date at once (it is otherwise refreshed lazily)."""
        self._status_timer.stop()
        self._on_status_timer()

    def _refresh_status(self) -> None:
        if not self._status_timer.isActive():
            self._status_timer.start()

    @Slot()
    def _on_status_timer(self) -> None:
        self.status.show_hosts(self.hosts)
        times = [h.last_refresh for h in self.hosts if h.last_refresh is not None]
        self.status.show_refreshed(max(times) if times else None)
        jobs = self.runner.jobs()
        self.status.show_activity(len(jobs), jobs[0].description if jobs else "")

    def _update_settled(self) -> None:
        settled = (
            not self._probing
            and all(host.is_settled for host in self.hosts)
            and (
                not self._charts_wanted or self.charts is not None or self.charts_error is not None
            )
            and not self._pacer.is_pending(CHARTS)
            and not self._pacer.is_pending(DETAILS)
        )
        if settled != self._settled:
            self._settled = settled
            self.settled_changed.emit(settled)
            if settled and self._warmed_up:
                # Everything has loaded: a quiet moment for the full collection the
                # garbage collector no longer starts by itself (see gc_pauses).
                QTimer.singleShot(0, self._collect_garbage)

    @Slot()
    def _collect_garbage(self) -> None:
        now = time.monotonic()
        quiet = self._settled or now - self._last_collection > GC_LONGEST_WAIT_S
        if self._shut_down or not quiet or now - self._last_collection < GC_SHORTEST_WAIT_S:
            return
        self._last_collection = now
        gc_pauses.collect_while_quiet()

    # -- charts -------------------------------------------------------------------------

    def showEvent(self, event: object) -> None:
        super().showEvent(event)  # type: ignore[arg-type]
        if self._charts_wanted and self.charts is None and self._charts_importer is None:
            # After the first paint: the window shows at once, charts follow.
            QTimer.singleShot(0, self._import_charts)
        elif not self._charts_wanted and not self._warmed_up:
            QTimer.singleShot(0, self._warm_up_tree_page)

    @Slot()
    def _import_charts(self) -> None:
        self._charts_importer = SlicedImport(CHARTS_MODULE, CHARTS_QT_MODULES, self)
        self._charts_importer.finished.connect(self._on_charts_imported)
        self._charts_importer.start()

    @Slot(bool, str)
    def _on_charts_imported(self, ok: bool, error: str) -> None:
        if not ok:
            self.charts_error = f"Charts are not available: {error}"
            self.charts_placeholder.setText(self.charts_error)
            self._update_settled()
            QTimer.singleShot(0, self._warm_up_tree_page)
            return
        from vmsnapgui.qt.usage_charts import UsageCharts

        charts = UsageCharts()
        charts.snapshot_clicked.connect(self._on_chart_clicked)
        self._charts_layout.replaceWidget(self.charts_placeholder, charts)
        self.charts_placeholder.hide()
        self.charts = charts
        self._update_charts()
        self._update_settled()
        QTimer.singleShot(0, self._warm_up_tree_page)

    @Slot()
    def _warm_up_tree_page(self) -> None:
        """Draw the (hidden) tree page once, off screen, while nothing else happens.

        Its first appearance polished, laid out and drew for the first time a few dozen
        widgets and glyphs: some 50 ms, landing just as the first VM's tree arrives, when
        hosts are loading and the GUI thread is busiest.
        """
        if self._shut_down or self._warmed_up:
            return
        self._warmed_up = True
        if self.pages.currentIndex() != PAGE_TREE:
            page = self.tree_page
            page.resize(self.pages.size())
            page.render(QPixmap(page.size()))
        gc_pauses.start_up_done()
        self._gc_timer.start()

    # -- slots: hosts -------------------------------------------------------------------

    def _on_host_status(self, host: HostConnection, status: object) -> None:
        self.host_model.host_changed(host)
        self._refresh_status()
        if self._selected_host() is host and self.current is None:
            self._show_page()
        self._update_actions()
        state = host.status.state
        if state is ConnectionState.FAILED:
            reason = host.status.reason or "unknown reason"
            self._message_host = host
            self.message_bar.show_error(
                UserError(f"{host.label}: {reason}", host.status.detail),
                action=f"retry:{id(host)}",
                action_label="Retry",
            )
        elif state is ConnectionState.LOST:
            self._message_host = host
            self.message_bar.show_error(
                UserError(
                    f"{host.label}: connection lost ({host.status.reason}); reconnecting…",
                    host.status.detail,
                )
            )
        elif state is ConnectionState.CONNECTED and self._message_host is host:
            self._message_host = None
            self.message_bar.hide()

    def _on_host_activity(self, host: HostConnection, message: str) -> None:
        self.status.showMessage(f"{host.label}: {message}", 10000)

    def _on_host_domains(self, host: HostConnection, domains: object) -> None:
        self.host_model.sync_domains(host)
        self._refresh_status()
        if self.current is not None and self.current[0] is host:
            uuid = self.current[1]
            if uuid not in host.domains:
                self._show_vm(None)
            else:
                summary = host.domains[uuid]
                self.vm_title.setText(f"{summary.name} — {summary.state.value}")
        if self._selected_host() is host and self.current is None:
            self._show_page()
        self._try_pending_selection()
        self._select_something_useful()

    def _on_host_domains_failed(self, host: HostConnection, error: UserError) -> None:
        if host.status.state is ConnectionState.CONNECTED:
            self._message_host = host
            self.message_bar.show_error(error)

    def _on_tree_loaded(self, host: HostConnection, loaded: DomainSnapshots) -> None:
        uuid = loaded.domain.uuid
        self.host_model.domain_changed(host, uuid)
        self._refresh_status()
        if self.current == (host, uuid):
            if self.details.context is not None and self.details.context.is_now:
                self.details.forget_live_xml(uuid)
            self._present_tree(host, uuid, first=False)
            self._pacer.worked()  # the tree changed: it is drawn before what follows
        self._try_pending_selection()
        self._select_something_useful()

    def _on_tree_failed(self, host: HostConnection, uuid: str, error: UserError) -> None:
        self.host_model.domain_changed(host, uuid)
        if self.current == (host, uuid):
            if host.status.state is ConnectionState.CONNECTED:
                self._message_host = host
                self.message_bar.show_error(error)
            if host.trees.get(uuid) is None:
                self._present_tree(host, uuid, first=False)

    def _on_usage_loaded(self, host: HostConnection, uuid: str, usage: DomainUsage) -> None:
        self.host_model.domain_changed(host, uuid)
        if self.current == (host, uuid) and self.tree_model.domain is not None:
            self.tree_model.set_usage(usage)
            self._update_charts()
            self._details_soon()
            self._pacer.worked()

    def _on_usage_failed(self, host: HostConnection, uuid: str, error: UserError) -> None:
        self.host_model.domain_changed(host, uuid)
        if self.current == (host, uuid) and self.tree_model.domain is not None:
            self.tree_model.set_usage(None, error.message)
            self._update_charts()
            self._details_soon()

    def _on_host_links(self, host: HostConnection) -> None:
        self.host_model.links_changed(host)
        if self.current is not None and self.current[0] is host:
            self._details_soon()

    @Slot(bool)
    def _on_host_settled(self, settled: bool) -> None:
        self._update_settled()

    def _on_probe_done(self, result: ProbeResult) -> None:
        self._probing = False
        self._probe_failures = result.failures
        if result.uri is not None:
            self.add_connection(result.uri)
        self._show_page()
        self._update_settled()

    def _on_probe_failed(self, error: UserError) -> None:
        self._probing = False
        self._probe_failures = (("qemu:///system", error.message),)
        self._show_page()
        self._update_settled()

    # -- slots: widgets -----------------------------------------------------------------

    @Slot(QItemSelection, QItemSelection)
    def _on_host_selection(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        index = self.host_view.currentIndex()
        host = self.host_model.host_at(index)
        uuid = self.host_model.domain_uuid_at(index)
        if host is not None and uuid is not None:
            self._user_chose_vm = self._user_chose_vm or self.host_view.hasFocus()
            self._show_vm((host, uuid))
        else:
            self._show_vm(None)
            self._show_page()
        self._update_actions()

    @Slot(QItemSelection, QItemSelection)
    def _on_tree_selection(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        self._details_soon()
        if self.charts is not None and not self._pacer.is_pending(CHARTS):
            # Once this turn of the event loop is over: a refresh that clears the
            # selection and selects again (or selects twice) outlines a bar once.
            self._pacer.request(OUTLINE)
        self._update_actions()
        self.selection_changed.emit()

    @Slot(str)
    def _on_chart_clicked(self, key: str) -> None:
        if not self.tree_view.select_key(key) and self.proxy.words:
            # Filtered out: clear the filter so the clicked snapshot can be shown.
            self.filter_edit.clear()
            self._on_filter_timer()
            self.tree_view.select_key(key)

    @Slot(str)
    def _on_filter_typed(self, text: str) -> None:
        self._filter_timer.start()

    @Slot()
    def _on_filter_timer(self) -> None:
        self._filter_timer.stop()
        selected = self.tree_view.selected_key()
        self.proxy.set_filter_text(self.filter_edit.text())
        if self.proxy.words:
            self.tree_view.expand_all_quietly()
        else:
            self.tree_view.restore_expansion()
        if selected is not None:
            self.tree_view.select_key(selected)

    @Slot()
    def _on_filter_escape(self) -> None:
        self.filter_edit.clear()
        self._on_filter_timer()
        self.tree_view.setFocus()

    @Slot()
    def _on_focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    @Slot(QPoint)
    def _on_host_context_menu(self, position: QPoint) -> None:
        index = self.host_view.indexAt(position)
        host = self.host_model.host_at(index)
        menu = QMenu(self)
        if host is not None:
            self.host_view.setCurrentIndex(index)
            menu.addAction(self.retry_action)
            menu.addAction(self.remove_connection_action)
            menu.addSeparator()
        menu.addAction(self.add_connection_action)
        menu.exec(self.host_view.viewport().mapToGlobal(position))

    def _on_tree_context_menu(self, key: object, position: QPoint) -> None:
        menu = self.build_tree_menu(key if isinstance(key, str) else None)
        menu.exec(position)

    def build_tree_menu(self, key: str | None) -> QMenu:
        """The context menu of a tree row (Now gets "Take snapshot")."""
        menu = QMenu(self)
        menu.setToolTipsVisible(True)
        self.operations.update_actions()
        for action in self.operations.build_menu_actions(key):
            if action is None:
                menu.addSeparator()
            else:
                menu.addAction(action)
        if key is not None and key != NOW_KEY:
            menu.addSeparator()
            menu.addAction(self.edit_description_action)
            menu.addAction(self.copy_name_action)
        return menu

    @Slot()
    def _on_copy_name(self) -> None:
        row = self.selected_row()
        if row is not None and row[2] != NOW_KEY:
            QGuiApplication.clipboard().setText(row[2])

    @Slot()
    def _on_edit_description(self) -> None:
        self.details.description.setFocus()

    def _on_save_description(self, uuid: str, snapshot: str, text: str) -> None:
        if self.current is None or self.current[1] != uuid:
            return
        host = self.current[0]
        host.submit_operation(
            uuid,
            f"Saving the description of {snapshot}",
            partial(save_description, uuid, snapshot, text),
            on_done=self._on_description_saved,
            on_error=self.details.description_failed,
        )

    def _on_description_saved(self, result: object) -> None:
        self.details.description_saved()

    def _on_live_xml_wanted(self, uuid: str) -> None:
        if self.current is None or self.current[1] != uuid or uuid in self._live_xml_jobs:
            return
        host = self.current[0]
        self._live_xml_jobs[uuid] = host.fetch_domain_xml(
            uuid,
            partial(self._on_live_xml, uuid),
            partial(self._on_live_xml_failed, uuid),
        )

    def _on_live_xml(self, uuid: str, xml: str) -> None:
        self._live_xml_jobs.pop(uuid, None)
        self.details.set_live_xml(uuid, xml)

    def _on_live_xml_failed(self, uuid: str, error: UserError) -> None:
        self._live_xml_jobs.pop(uuid, None)
        self.details.set_live_xml(uuid, None, error.message)

    @Slot(str)
    def _on_message_action(self, action: str) -> None:
        if action.startswith("retry:"):
            for host in self.hosts:
                if f"retry:{id(host)}" == action:
                    self.message_bar.hide()
                    host.retry()

    @Slot()
    def _on_retry_selected(self) -> None:
        host = self._selected_host()
        if host is not None:
            host.retry()

    @Slot()
    def _on_remove_connection(self) -> None:
        host = self._selected_host()
        if host is not None:
            self.remove_host(host)

    @Slot()
    def _on_open_demo(self) -> None:
        host = self.open_demo_lab()
        self.host_view.setCurrentIndex(self.host_model.index_of_host(host))

    @Slot(int)
    def _on_activity(self, count: int) -> None:
        self._refresh_status()

    # -- layout memory and shutdown -------------------------------------------------------

    def _restore_layout(self) -> None:
        geometry = self.settings.state("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1440, 880)
        for key, splitter in (
            ("main_splitter", self.main_splitter),
            ("centre_splitter", self.centre_splitter),
        ):
            state = self.settings.state(key)
            if state is not None:
                splitter.restoreState(state)
        header = self.settings.state("tree_header")
        if header is not None:
            self.tree_view.header().restoreState(header)
        hosts_header = self.settings.state("hosts_header")
        if hosts_header is not None:
            self.host_view.header().restoreState(hosts_header)

    def save_layout(self) -> None:
        """Remember geometry, splitters and column widths."""
        self.settings.set_state("geometry", QByteArray(self.saveGeometry()))
        self.settings.set_state("main_splitter", self.main_splitter.saveState())
        self.settings.set_state("centre_splitter", self.centre_splitter.saveState())
        self.settings.set_state("tree_header", self.tree_view.header().saveState())
        self.settings.set_state("hosts_header", self.host_view.header().saveState())
        self.settings.sync()

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """Stop every host and wait for running jobs (at quit)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._pacer.stop()
        self._gc_timer.stop()
        for host in self.hosts:
            host.close()
        self.runner.shutdown(timeout_ms)
        analysis_process.shutdown()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_layout()
        self.shutdown()
        super().closeEvent(event)
