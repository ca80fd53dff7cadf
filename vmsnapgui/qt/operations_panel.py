"""The operations panel: every running and finished operation with its progress.

Rows show the operation, the VM, the phase, a progress bar, the elapsed time and the
result; Cancel is enabled while the operation says it can be cancelled. Failures show
their one sentence, with the technical detail on demand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from vmsnapgui.core.units import format_bytes
from vmsnapgui.qt.job_runner import Job, JobRunner, JobState

COLUMNS = ("Operation", "VM", "Phase", "Progress", "Elapsed", "Result", "")
(OPERATION, VM, PHASE, PROGRESS, ELAPSED, RESULT, ACTION) = range(len(COLUMNS))


@dataclass
class _Row:
    job: Job
    item: QTreeWidgetItem
    bar: QProgressBar | None  # None once the job has ended: the row is text only
    cancel: QPushButton | None
    result_text: str = ""


def _elapsed(job: Job) -> str:
    if job.started_at is None:
        return "waiting"
    end = job.ended_at if job.ended_at is not None else time.monotonic()
    seconds = int(end - job.started_at)
    return f"{seconds // 60}:{seconds % 60:02d}"


PANEL_HEIGHT = 150


class OperationsPanel(QWidget):
    """A list of operations bound to a :class:`JobRunner`; call :meth:`track` per job."""

    finished = Signal(object)  # Job

    def sizeHint(self) -> QSize:
        """A strip, not half the window: the tree and details stay the main thing.

        The dock takes this height when it first appears, in one layout pass (resizing
        the dock after showing it laid the whole window out twice).
        """
        return QSize(super().sizeHint().width(), PANEL_HEIGHT)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName("Operations")
        self._runner = runner
        self._rows: dict[int, _Row] = {}
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        self.tree.setAccessibleName("Operations list")
        header = self.tree.header()
        header.setStretchLastSection(False)
        metrics = self.tree.fontMetrics()
        for column, sample in (
            (OPERATION, "Clone 'web-frontend' from 'nginx-installed' as 'x'"),
            (VM, "web-frontend"),
            (PROGRESS, "100% (99.9 GiB of 99.9 GiB)"),
            (ELAPSED, "Elapsed 00:00"),
            (ACTION, "  Cancel  "),
        ):
            header.resizeSection(column, metrics.horizontalAdvance(sample) + 24)
        header.setSectionResizeMode(PHASE, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(RESULT, QHeaderView.ResizeMode.Stretch)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setAccessibleName("Operation details")
        self.details.setMaximumHeight(90)
        self.details.hide()
        self.clear_button = QPushButton("Clear finished")
        self.summary = QLabel("No operations yet.")
        buttons = QHBoxLayout()
        buttons.addWidget(self.summary, 1)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        self._ticker = QTimer(self)
        self._ticker.setInterval(1000)
        self._connect_signals()

    def _connect_signals(self) -> None:
        self._runner.job_started.connect(self._on_job_changed)
        self._runner.job_progress.connect(self._on_job_changed)
        self._runner.job_ended.connect(self._on_job_ended)
        self._ticker.timeout.connect(self._on_tick)
        self.clear_button.clicked.connect(self.clear_finished)
        self.tree.currentItemChanged.connect(self._on_current_changed)

    def track(self, job: Job, operation: str, vm: str) -> None:
        """Show ``job`` as a row: ``operation`` ("Take snapshot 'x'") on ``vm``."""
        item = QTreeWidgetItem(["", "", "", "", "", "", ""])
        item.setText(OPERATION, operation)
        item.setText(VM, vm)
        item.setText(PHASE, "Waiting for the VM's earlier operations")
        item.setTextAlignment(PROGRESS, Qt.AlignmentFlag.AlignCenter)
        self.tree.insertTopLevelItem(0, item)
        bar = QProgressBar()
        _set_bar(bar, 1, 0)
        _set_format(bar, "waiting")
        bar.setAccessibleName(f"Progress of {operation}")
        cancel = QPushButton("Cancel")
        cancel.setAccessibleName(f"Cancel {operation}")
        cancel.setEnabled(job.state is JobState.QUEUED)
        # A bound slot, not a partial: a partial would hold the panel until the button
        # goes, and a button deleted after its row ended could then take the last
        # reference to a panel that nothing else keeps, and the panel, deleting its
        # children, would delete the button a second time (a crash seen in tests).
        cancel.clicked.connect(self._on_cancel_clicked)
        self.tree.setItemWidget(item, PROGRESS, bar)
        self.tree.setItemWidget(item, ACTION, cancel)
        # As high as the row's widgets, and so after they have gone: rows stay even.
        item.setSizeHint(
            OPERATION, QSize(0, max(bar.sizeHint().height(), cancel.sizeHint().height()))
        )
        self._rows[job.id] = _Row(job, item, bar, cancel)
        self._ticker.start()
        self._refresh(job)
        self._update_summary()

    def row_text(self, job: Job) -> dict[str, str]:
        """The texts of a job's row (for tests and accessibility)."""
        row = self._rows[job.id]
        return {name: row.item.text(index) for index, name in enumerate(COLUMNS) if name}

    def progress_bar(self, job: Job) -> QProgressBar | None:
        """The progress bar of a job's row (None once the job has ended)."""
        return self._rows[job.id].bar

    def cancel_button(self, job: Job) -> QPushButton | None:
        """The Cancel button of a job's row."""
        return self._rows[job.id].cancel

    @Slot()
    def clear_finished(self) -> None:
        """Remove the rows of operations that have ended."""
        for job_id, row in list(self._rows.items()):
            if row.job.is_finished:
                index = self.tree.indexOfTopLevelItem(row.item)
                self.tree.takeTopLevelItem(index)
                del self._rows[job_id]
        self._update_summary()

    @Slot(object)
    def _on_job_changed(self, job: Job) -> None:
        if job.id in self._rows:
            self._refresh(job)

    @Slot(object)
    def _on_job_ended(self, job: Job) -> None:
        row = self._rows.get(job.id)
        if row is None:
            return
        self._refresh(job)
        self._update_summary()
        self.finished.emit(job)

    @Slot()
    def _on_tick(self) -> None:
        running = False
        for row in self._rows.values():
            if not row.job.is_finished:
                running = True
                row.item.setText(ELAPSED, _elapsed(row.job))
        if not running:
            self._ticker.stop()

    @Slot()
    def _on_cancel_clicked(self) -> None:
        button = self.sender()
        row = next((row for row in self._rows.values() if row.cancel is button), None)
        if row is None:
            return
        row.job.cancel()
        if row.cancel is not None:
            row.cancel.setEnabled(False)
        row.item.setText(PHASE, "Cancelling…")

    @Slot(QTreeWidgetItem, QTreeWidgetItem)
    def _on_current_changed(self, current: QTreeWidgetItem | None, _previous: object) -> None:
        detail = ""
        for row in self._rows.values():
            if row.item is current and row.job.error is not None:
                detail = row.job.error.detail or row.job.error.message
        self.details.setPlainText(detail)
        self.details.setVisible(bool(detail))

    def _refresh(self, job: Job) -> None:
        row = self._rows[job.id]
        _set_text(row.item, ELAPSED, _elapsed(job))
        if job.is_finished:
            self._show_ended(row)
            return
        if row.bar is None or row.cancel is None:
            return
        progress = job.progress
        if job.state is JobState.RUNNING and progress is not None:
            _set_text(row.item, PHASE, progress.phase)
            fraction = progress.fraction
            if fraction is None:
                # No measure of how far: say so in words. (A busy bar animates at 60
                # frames a second, which was most of the GUI thread's painting while
                # operations ran; the elapsed time already shows it is alive.)
                _set_bar(row.bar, 1, 0)
                _set_format(row.bar, "working…")
            else:
                _set_bar(row.bar, 1000, int(fraction * 1000))
                if progress.unit == "bytes" and progress.total:
                    _set_format(
                        row.bar,
                        f"%p% ({format_bytes(progress.done)} of {format_bytes(progress.total)})",
                    )
                else:
                    _set_format(row.bar, "%p%")
            row.cancel.setEnabled(progress.can_cancel and not job.cancel_token.cancelled)
        elif job.state is JobState.RUNNING:
            _set_text(row.item, PHASE, "Starting")
            _set_format(row.bar, "working…")
            row.cancel.setEnabled(False)

    def _show_ended(self, row: _Row) -> None:
        """A finished row is text only: its bar and button go.

        Widgets in a list are moved one by one whenever a row is added above them (new
        operations come first) and each is a window-system object to lay out and paint:
        after a few dozen operations, every new one cost the window noticeably more.
        """
        job = row.job
        if row.bar is not None:
            self.tree.removeItemWidget(row.item, PROGRESS)
            row.bar = None
        if row.cancel is not None:
            self.tree.removeItemWidget(row.item, ACTION)
            row.cancel = None
        ended = {JobState.DONE: "done", JobState.CANCELLED: "cancelled"}.get(job.state, "failed")
        _set_text(row.item, PROGRESS, ended)
        _set_text(row.item, PHASE, "")
        if job.state is JobState.DONE:
            _set_text(row.item, RESULT, row.result_text or "Done")
        elif job.state is JobState.CANCELLED:
            _set_text(row.item, RESULT, job.error.message if job.error else "Cancelled")
        else:
            message = job.error.message if job.error else "Failed"
            _set_text(row.item, RESULT, message)
            row.item.setToolTip(RESULT, message)

    def set_result_text(self, job: Job, text: str) -> None:
        """What a finished operation achieved ("Snapshot 'x' taken")."""
        row = self._rows.get(job.id)
        if row is not None:
            row.result_text = text
            if job.state is JobState.DONE:
                row.item.setText(RESULT, text)

    def _update_summary(self) -> None:
        active = sum(1 for row in self._rows.values() if not row.job.is_finished)
        total = len(self._rows)
        if not total:
            self.summary.setText("No operations yet.")
        elif active:
            self.summary.setText(f"{active} running or waiting, {total - active} finished.")
        else:
            self.summary.setText(f"{total} finished.")


# Progress reports arrive many times a second; each change of a bar's range, value or
# text, or of a row's text, makes the list lay out and repaint (a few milliseconds on
# the GUI thread while an operation runs), so only real changes are passed on.


def _set_text(item: QTreeWidgetItem, column: int, text: str) -> None:
    if item.text(column) != text:
        item.setText(column, text)


def _set_bar(bar: QProgressBar, maximum: int, value: int | None = None) -> None:
    """Range 0..maximum and the value."""
    if bar.minimum() != 0 or bar.maximum() != maximum:
        bar.setRange(0, maximum)
    if value is not None and bar.value() != value:
        bar.setValue(value)


def _set_format(bar: QProgressBar, text: str) -> None:
    if bar.format() != text:
        bar.setFormat(text)
