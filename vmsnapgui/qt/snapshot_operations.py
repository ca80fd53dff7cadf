"""Operations from the tree: take, revert, clone and delete, with dialogs and progress.

The controller decides which actions the selected row allows (disabled ones say why in
their tooltip), gathers what each dialog should show off the GUI thread, opens the
dialog, and submits the operation to the VM's queue, where the operations panel shows
it. When an operation ends the tree reloads and the result is selected; a failure
shows its sentence in the message bar and the window stays usable.
"""

from __future__ import annotations

import logging
import os
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QPlainTextEdit, QVBoxLayout

from vmsnapgui.core.domain_xml import domain_disks
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import CancelToken, ProgressCallback
from vmsnapgui.core.snapshot_xml import embedded_domain_xml
from vmsnapgui.qt.operation_dialogs import (
    CloneDialog,
    DeleteDialog,
    RevertDialog,
    TakeSnapshotDialog,
)
from vmsnapgui.qt.operations_panel import OperationsPanel
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY
from vmsnapgui.virt.clone_domain import (
    CloneFolder,
    CloneRequest,
    CloneResult,
    clone_domain,
    clone_folders,
    clone_refusal_for,
    plan_clone,
)
from vmsnapgui.virt.connection import Capabilities, ConnectionState
from vmsnapgui.virt.delete_snapshot import (
    DeleteMode,
    DeletePlan,
    delete_snapshot,
    find_dependents,
    plan_delete,
)
from vmsnapgui.virt.revert_snapshot import ForceRequired, RevertResult, revert_snapshot
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import (
    TakeOptions,
    TakeResult,
    take_options,
    take_snapshot,
)

if TYPE_CHECKING:
    from vmsnapgui.qt.host_connection import HostConnection
    from vmsnapgui.qt.main_window import MainWindow

_log = logging.getLogger(__name__)
DEFAULT_IMAGE_DIR = "/var/lib/libvirt/images"

DELETE_MODES = (
    ("delete", DeleteMode.SNAPSHOT, "&Delete this snapshot…"),
    ("delete-children", DeleteMode.CHILDREN, "Delete with all its &children…"),
    ("delete-children-only", DeleteMode.CHILDREN_ONLY, "Delete its children &only…"),
    ("delete-metadata", DeleteMode.METADATA_ONLY, "Forget it, keep its data (&metadata only)…"),
)


@dataclass(frozen=True, slots=True)
class Target:
    """The row an action applies to: a host, a VM and a snapshot (None means Now)."""

    host: HostConnection
    uuid: str
    vm: str
    snapshot: str | None


class SnapshotOperations(QObject):
    """Wires the window's operation actions to dialogs, jobs and the operations panel."""

    def __init__(self, window: MainWindow, panel: OperationsPanel) -> None:
        super().__init__(window)
        self.window = window
        self.panel = panel
        self.dialog: QDialog | None = None  # the one open operation dialog (tests use it)
        self._capabilities: dict[int, Capabilities] = {}
        actions = window.operation_actions
        self.delete_actions: dict[DeleteMode, QAction] = {}
        for key, mode, label in DELETE_MODES:
            if key == "delete":
                action = actions["delete"]
                action.setText(label)
            else:
                action = QAction(label, window)
                actions[key] = action
            self.delete_actions[mode] = action
        actions["show-xml"] = QAction("Show &XML", window)
        actions["take"].setShortcut(QKeySequence("Ctrl+T"))
        actions["delete"].setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        actions["delete"].setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        window.tree_view.addAction(actions["delete"])
        self._connect_signals()
        self.update_actions()

    def _connect_signals(self) -> None:
        actions = self.window.operation_actions
        actions["take"].triggered.connect(self.take)
        actions["revert"].triggered.connect(self.revert)
        actions["clone"].triggered.connect(self.clone)
        actions["show-xml"].triggered.connect(self.show_xml)
        for mode, action in self.delete_actions.items():
            action.triggered.connect(partial(self.delete, mode))
        self.window.selection_changed.connect(self.update_actions)
        self.panel.finished.connect(self._on_operation_finished)

    # -- which actions the selection allows --------------------------------------------

    def target(self) -> Target | None:
        """What the selected row is, or None when nothing usable is selected."""
        row = self.window.selected_row()
        if row is None:
            return None
        host, uuid, key = row
        summary = host.domains.get(uuid)
        vm = summary.name if summary is not None else uuid
        return Target(host, uuid, vm, None if key == NOW_KEY else key)

    @Slot()
    def update_actions(self) -> None:
        """Enable what the selected row allows; the tooltip of anything else says why."""
        actions = self.window.operation_actions
        target = self.target()
        reasons: dict[str, str | None] = {}
        if target is None:
            reason = "Select a VM's snapshot or its Now row first."
            reasons = {name: reason for name in actions}
        elif target.host.status.state is not ConnectionState.CONNECTED:
            reason = f"{target.host.label} is not connected."
            reasons = {name: reason for name in actions}
        else:
            loaded = target.host.trees.get(target.uuid)
            record = loaded.tree.get(target.snapshot) if loaded and target.snapshot else None
            summary = target.host.domains.get(target.uuid)
            running = summary is not None and summary.state.is_active
            reasons["take"] = None
            not_now = "Select a snapshot (not Now) first."
            if target.snapshot is None:
                for name in ("revert", "show-xml", *(k for k, _m, _l in DELETE_MODES)):
                    reasons[name] = not_now
                reasons["clone"] = clone_refusal_for(target.host.uri) or (
                    "A running VM's disks cannot be copied consistently: shut it down, or "
                    "take a snapshot and clone that."
                    if running
                    else None
                )
            elif record is None:
                reason = "That snapshot is still loading."
                for name in actions:
                    if name != "take":
                        reasons[name] = reason
            else:
                caps = self._capabilities.get(id(target.host))
                reasons["revert"] = (
                    f"Reverting to an external snapshot needs libvirt 9.9 or newer; this host "
                    f"runs {caps.libvirt_version_text}."
                    if record.is_external and caps is not None and not caps.external_revert
                    else None
                )
                reasons["clone"] = clone_refusal_for(target.host.uri)
                reasons["show-xml"] = None
                for _key, mode, _label in DELETE_MODES:
                    refusal = None
                    if caps is not None:
                        refusal = plan_delete(loaded.tree, record.name, mode, caps).refusal  # type: ignore[union-attr]
                    elif mode is DeleteMode.CHILDREN_ONLY and not loaded.tree.children(record.name):  # type: ignore[union-attr]
                        refusal = f"{record.name!r} has no children to delete."
                    reasons[self._delete_key(mode)] = refusal
            if id(target.host) not in self._capabilities:
                self._fetch_capabilities(target.host)
        for name, action in actions.items():
            why = reasons.get(name)
            action.setEnabled(why is None)
            base = action.text().replace("&", "").rstrip("…")
            action.setToolTip(why if why else base)
            action.setStatusTip(why or "")
        clone = actions["clone"]
        clone.setText(
            "C&lone current state…" if target is not None and target.snapshot is None else "C&lone…"
        )

    @staticmethod
    def _delete_key(mode: DeleteMode) -> str:
        return next(key for key, m, _label in DELETE_MODES if m is mode)

    def _fetch_capabilities(self, host: HostConnection) -> None:
        def read(progress: ProgressCallback, cancel: CancelToken) -> Capabilities:
            return host.connection.capabilities

        self.window.runner.submit(
            read,
            key=("capabilities", id(host)),
            description=f"Reading what {host.label} supports",
            on_done=partial(self._on_capabilities, host),
            on_error=self._ignore_error,
            replace_pending=True,
        )

    def _on_capabilities(self, host: HostConnection, caps: Capabilities) -> None:
        self._capabilities[id(host)] = caps
        self.update_actions()

    @staticmethod
    def _ignore_error(error: UserError) -> None:
        _log.info("could not read capabilities: %s", error.message)

    def build_menu_actions(self, key: str | None) -> list[QAction | None]:
        """The context menu of a row, None for separators (Now gets take and clone)."""
        actions = self.window.operation_actions
        if key == NOW_KEY:
            return [actions["take"], actions["clone"]]
        if key is None:
            return []
        return [
            actions["revert"],
            actions["clone"],
            None,
            *self.delete_actions.values(),
            None,
            actions["show-xml"],
        ]

    # -- take ---------------------------------------------------------------------------

    @Slot()
    def take(self) -> None:
        """Ask what to take (options come from the engine, off the GUI thread)."""
        target = self.target()
        if target is None:
            return

        def prepare(progress: ProgressCallback, cancel: CancelToken) -> TakeOptions:
            return take_options(target.host.loader_for(target.uuid), target.uuid)

        self._prepare(
            target,
            "Checking what kind of snapshot the VM allows",
            prepare,
            partial(self._open_take_dialog, target),
        )

    def _open_take_dialog(self, target: Target, options: TakeOptions) -> None:
        loaded = target.host.trees.get(target.uuid)
        existing = set(loaded.tree.names()) if loaded else set()
        usage = target.host.usages.get(target.uuid)
        dialog = TakeSnapshotDialog(options, existing, usage.pool if usage else None, self.window)
        self._open(dialog, partial(self._submit_take, target, dialog))

    def _submit_take(self, target: Target, dialog: TakeSnapshotDialog) -> None:
        request = dialog.request()

        def operation(
            loader: SnapshotLoader, progress: ProgressCallback, cancel: CancelToken
        ) -> TakeResult:
            return take_snapshot(loader, target.uuid, request, progress, cancel)

        self._submit(target, f"Take snapshot {request.name!r}", operation, self._on_taken)

    def _on_taken(self, target: Target, result: TakeResult) -> str:
        self.window.request_selection(target.vm, result.name)
        done = f"Snapshot {result.name!r} taken ({result.mode.label})"
        return f"{done}. {result.note}" if result.note else done

    # -- revert -------------------------------------------------------------------------

    @Slot()
    def revert(self) -> None:
        """Show what a revert loses, then revert (with a safety snapshot by default).

        No parameters: ``triggered(bool)`` would fill any defaulted one. Force is only
        offered when libvirt has refused without it (see :meth:`_on_revert_failed`).
        """
        target = self.target()
        if target is None or target.snapshot is None:
            return
        self._open_revert_dialog(target, None)

    def _open_revert_dialog(self, target: Target, force_reason: str | None) -> None:
        loaded = target.host.trees.get(target.uuid)
        record = loaded.tree.get(target.snapshot or "") if loaded else None
        if loaded is None or record is None:
            return
        usage = target.host.usages.get(target.uuid)
        summary = target.host.domains.get(target.uuid)
        caps = self._capabilities.get(id(target.host))
        refusal = None
        if record.is_external and caps is not None and not caps.external_revert:
            refusal = (
                f"Reverting to an external snapshot needs libvirt 9.9 or newer; this host runs "
                f"{caps.libvirt_version_text}."
            )
        dialog = RevertDialog(
            target.vm,
            record,
            loaded.tree.current,
            usage.now if usage else None,
            running=summary is not None and summary.state.is_active,
            refusal=refusal,
            force_reason=force_reason,
            parent=self.window,
        )
        self._open(dialog, partial(self._submit_revert, target, dialog))

    def _submit_revert(self, target: Target, dialog: RevertDialog) -> None:
        snapshot = target.snapshot or ""
        end_state, safety, force = dialog.end_state(), dialog.safety_snapshot(), dialog.force()

        def operation(
            loader: SnapshotLoader, progress: ProgressCallback, cancel: CancelToken
        ) -> RevertResult:
            return revert_snapshot(
                loader,
                target.uuid,
                snapshot,
                end_state=end_state,
                force=force,
                safety_snapshot=safety,
                progress=progress,
                cancel=cancel,
            )

        self._submit(
            target,
            f"Revert to {snapshot!r}",
            operation,
            self._on_reverted,
            refetch_all=True,
            on_error=partial(self._on_revert_failed, target),
        )

    def _on_reverted(self, target: Target, result: RevertResult) -> str:
        self.window.request_selection(target.vm, result.reverted_to)
        done = f"Reverted to {result.reverted_to!r}"
        if result.safety_snapshot:
            done = f"Reverted; {result.safety_snapshot!r} keeps the state before"
        return f"{done}. {result.note}" if result.note else done

    def _on_revert_failed(self, target: Target, error: UserError) -> bool:
        if isinstance(error, ForceRequired) and self.target() == target:
            self._open_revert_dialog(target, error.detail or error.message)
            return True
        return False

    # -- clone --------------------------------------------------------------------------

    @Slot()
    def clone(self) -> None:
        """Ask for the clone's name, kind and folder while the space it needs is measured."""
        target = self.target()
        if target is None:
            return
        loaded = target.host.trees.get(target.uuid)
        record = loaded.tree.get(target.snapshot) if loaded and target.snapshot else None
        if target.snapshot is None:
            linked_refusal = '"Now" keeps changing; a linked clone needs an external snapshot.'
        elif record is not None and record.is_internal:
            linked_refusal = (
                "an internal snapshot lives inside the VM's own disk image, which keeps "
                "changing; linked clones need an external snapshot."
            )
        else:
            linked_refusal = None
        existing = {summary.name for summary in target.host.domains.values()}
        if record is None and loaded is not None and loaded.tree.current:
            # Now: a first guess from the current snapshot's definition; the measuring
            # job below says where the disks really are.
            record = loaded.tree.get(loaded.tree.current)
        dialog = CloneDialog(
            target.vm,
            target.snapshot,
            existing,
            self._default_dir(record),
            linked_refusal=linked_refusal,
            parent=self.window,
        )
        self._open(dialog, partial(self._submit_clone, target, dialog))

        def estimate(progress: ProgressCallback, cancel: CancelToken) -> tuple[int, str]:
            """The bytes a full copy needs, and the folder it goes to unless told otherwise."""
            probe = CloneRequest(f"vmsnap-estimate-{uuid_module.uuid4().hex[:8]}", target.snapshot)
            plan = plan_clone(
                target.host.loader_for(target.uuid), target.uuid, probe, check_space=False
            )
            return plan.required_bytes, os.path.dirname(plan.disks[0].target)

        self.window.runner.submit(
            estimate,
            description=f"Measuring a clone of {target.vm}",
            on_done=partial(self._on_estimate, dialog),
            on_error=partial(self._on_estimate_failed, dialog),
        )

        def folders(progress: ProgressCallback, cancel: CancelToken) -> list[CloneFolder]:
            return clone_folders(target.host.loader_for(target.uuid))

        self.window.runner.submit(
            folders,
            description=f"Listing the storage pools of {target.host.label}",
            on_done=partial(self._on_clone_folders, dialog),
            on_error=partial(self._on_clone_folders_failed, dialog),
        )

    @staticmethod
    def _default_dir(record: Any) -> str:
        if record is not None:
            domain = embedded_domain_xml(record.xml) if record.xml else None
            if domain:
                for disk in domain_disks(domain):
                    if disk.source and not disk.read_only:
                        return os.path.dirname(disk.source)
        return DEFAULT_IMAGE_DIR

    def _on_estimate(self, dialog: CloneDialog, estimate: tuple[int, str]) -> None:
        if self.dialog is dialog:  # closed dialogs are deleted; never touch them
            required, folder = estimate
            dialog.suggest_folder(folder)
            dialog.set_estimate(required)

    def _on_estimate_failed(self, dialog: CloneDialog, error: UserError) -> None:
        if self.dialog is dialog:
            dialog.set_estimate(None, error.message)

    def _on_clone_folders(self, dialog: CloneDialog, folders: list[CloneFolder]) -> None:
        if self.dialog is dialog:
            dialog.set_folders(folders)

    def _on_clone_folders_failed(self, dialog: CloneDialog, error: UserError) -> None:
        _log.info("could not list storage pools: %s", error.message)
        if self.dialog is dialog:
            dialog.set_folders([])  # a folder can still be typed or browsed for

    def _submit_clone(self, target: Target, dialog: CloneDialog) -> None:
        request = dialog.request()

        def operation(
            loader: SnapshotLoader, progress: ProgressCallback, cancel: CancelToken
        ) -> CloneResult:
            return clone_domain(loader, target.uuid, request, progress, cancel)

        source = repr(target.snapshot) if target.snapshot else "its current state"
        self._submit(
            target,
            f"Clone {target.vm!r} from {source} as {request.new_name!r}",
            operation,
            self._on_cloned,
        )

    def _on_cloned(self, target: Target, result: CloneResult) -> str:
        target.host.refresh_domains()
        self.window.request_selection(result.name, None)
        return f"Clone {result.name!r} made{' and started' if result.started else ''}"

    # -- delete -------------------------------------------------------------------------

    def delete(self, mode: DeleteMode) -> None:
        """Say what will go and what it frees, then delete.

        Connected through a ``partial`` that fixes ``mode``; no default, so a signal's
        ``checked`` can never stand in for it.
        """
        target = self.target()
        if target is None or target.snapshot is None:
            return
        loaded = target.host.trees.get(target.uuid)
        if loaded is None:
            return
        usage = target.host.usages.get(target.uuid)
        snapshot = target.snapshot

        def prepare(progress: ProgressCallback, cancel: CancelToken) -> DeletePlan:
            caps = target.host.connection.capabilities
            dependents = find_dependents(
                target.host.loader, loaded.domain.name, loaded.tree, snapshot, mode
            )
            return plan_delete(loaded.tree, snapshot, mode, caps, usage, dependents)

        self._prepare(
            target,
            "Working out what the delete removes",
            prepare,
            partial(self._open_delete_dialog, target),
        )

    def _open_delete_dialog(self, target: Target, plan: DeletePlan) -> None:
        dialog = DeleteDialog(target.vm, plan, self.window)
        self._open(dialog, partial(self._submit_delete, target, plan))

    def _submit_delete(self, target: Target, plan: DeletePlan) -> None:
        def operation(
            loader: SnapshotLoader, progress: ProgressCallback, cancel: CancelToken
        ) -> DeletePlan:
            return delete_snapshot(loader, target.uuid, plan.snapshot, plan.mode, progress)

        count = len(plan.removes)
        what = repr(plan.snapshot) if plan.mode is DeleteMode.SNAPSHOT else f"{count} snapshot(s)"
        self._submit(target, f"Delete {what}", operation, self._on_deleted, refetch_all=True)

    def _on_deleted(self, target: Target, plan: DeletePlan) -> str:
        loaded = target.host.trees.get(target.uuid)
        parent = (
            loaded.tree.parent(plan.snapshot) if loaded and plan.snapshot in loaded.tree else None
        )
        keep = plan.snapshot if plan.mode is DeleteMode.CHILDREN_ONLY else parent
        self.window.request_selection(target.vm, keep)
        names = ", ".join(repr(n) for n in plan.removes[:3])
        return f"Deleted {names}{'…' if len(plan.removes) > 3 else ''}"

    # -- show XML -----------------------------------------------------------------------

    @Slot()
    def show_xml(self) -> None:
        """The selected snapshot's XML, read-only."""
        target = self.target()
        if target is None or target.snapshot is None:
            return
        loaded = target.host.trees.get(target.uuid)
        record = loaded.tree.get(target.snapshot) if loaded else None
        if record is None:
            return
        dialog = QDialog(self.window)
        dialog.setWindowTitle(f"XML of snapshot {record.name}")
        text = QPlainTextEdit(record.xml)
        text.setReadOnly(True)
        text.setAccessibleName("Snapshot XML")
        text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        layout = QVBoxLayout(dialog)
        layout.addWidget(text)
        dialog.resize(720, 560)
        self.dialog = dialog
        dialog.open()

    # -- plumbing -----------------------------------------------------------------------

    def _prepare(
        self,
        target: Target,
        description: str,
        work: Callable[[ProgressCallback, CancelToken], Any],
        then: Callable[[Any], None],
    ) -> None:
        """Gather a dialog's facts off the GUI thread, then open it."""
        self.window.runner.submit(
            work,
            key=("prepare", id(target.host), target.uuid),
            description=description,
            on_done=then,
            on_error=self.window.message_bar.show_error,
            replace_pending=True,
        )

    def _open(self, dialog: QDialog, on_accept: Callable[[], None]) -> None:
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.reject()
        self.dialog = dialog
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(on_accept)
        dialog.finished.connect(partial(self._on_dialog_finished, dialog))
        dialog.open()
        # The panel where the operation will run comes into view now, behind the
        # dialog: its first appearance lays the whole window out again (~40 ms), which
        # would otherwise happen just as the operation starts.
        self.window.show_operations()

    def _on_dialog_finished(self, dialog: QDialog, _result: int) -> None:
        if self.dialog is dialog:
            self.dialog = None

    def _submit(
        self,
        target: Target,
        label: str,
        operation: Callable[[SnapshotLoader, ProgressCallback, CancelToken], Any],
        on_result: Callable[[Target, Any], str],
        *,
        refetch_all: bool = False,
        on_error: Callable[[UserError], bool] | None = None,
    ) -> None:
        job_holder: list[Any] = []

        def done(result: Any) -> None:
            text = on_result(target, result)
            if job_holder:
                self.panel.set_result_text(job_holder[0], text)
            self.window.statusBar().showMessage(text, 8000)

        def failed(error: UserError) -> None:
            if on_error is not None and on_error(error):
                return
            self.window.message_bar.show_error(error)

        job = target.host.submit_operation(
            target.uuid, label, operation, on_done=done, on_error=failed, refetch_all=refetch_all
        )
        job_holder.append(job)
        self.panel.track(job, label, target.vm)
        self.window.show_operations()

    @Slot(object)
    def _on_operation_finished(self, job: object) -> None:
        self.update_actions()
