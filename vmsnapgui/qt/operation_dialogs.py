"""The dialogs in front of take, revert, clone and delete: they inform before OK.

Each dialog takes plain data (what the engine says is possible, sizes, plans) and gives
back a request; none of them calls libvirt. Values are validated as they are typed,
with the reason shown beside the field and OK disabled until they are right.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from vmsnapgui.core.disk_usage import PoolSpace, SnapshotUsage
from vmsnapgui.core.snapshot import Snapshot
from vmsnapgui.core.units import format_bytes
from vmsnapgui.core.validation import (
    ValidationError,
    validate_description,
    validate_snapshot_name,
    validate_vm_name,
)
from vmsnapgui.virt.clone_domain import CloneFolder, CloneRequest
from vmsnapgui.virt.delete_snapshot import DeletePlan
from vmsnapgui.virt.revert_snapshot import EndState
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeOptions, TakeRequest

_ERROR_STYLE = "color: palette(bright-text); background: #b3261e; padding: 2px 4px;"
_WARNING_STYLE = "color: #7a4b00; background: #fff1c2; padding: 2px 4px;"


def _problem_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(_ERROR_STYLE)
    label.hide()
    return label


def _note_label(text: str = "", warning: bool = False) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.PlainText)
    if warning:
        label.setStyleSheet(_WARNING_STYLE)
    return label


def _show_problem(label: QLabel, message: str | None) -> None:
    label.setText(message or "")
    label.setVisible(bool(message))


class _RequestDialog(QDialog):
    """OK/Cancel buttons whose OK is only enabled while the input is valid."""

    def __init__(self, title: str, ok_text: str, parent: QWidget | None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setAccessibleName(title)
        self.layout_ = QVBoxLayout(self)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText(ok_text)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

    def finish_layout(self) -> None:
        self.layout_.addStretch(1)
        self.layout_.addWidget(self.buttons)


# -- take -----------------------------------------------------------------------------


class TakeSnapshotDialog(_RequestDialog):
    """Name, description, and the kinds of snapshot this VM allows (others say why not)."""

    def __init__(
        self,
        options: TakeOptions,
        existing: Collection[str],
        pool: PoolSpace | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(f"Take a snapshot of {options.domain}", "Take snapshot", parent)
        self.options = options
        self.existing = set(existing)
        self.pool = pool

        form = QFormLayout()
        self.name_edit = QLineEdit(options.default_name)
        self.name_edit.setAccessibleName("Snapshot name")
        self.name_problem = _problem_label()
        self.description_edit = QPlainTextEdit()
        self.description_edit.setAccessibleName("Description")
        self.description_edit.setPlaceholderText("What state is the VM in? (optional)")
        self.description_edit.setMaximumHeight(80)
        self.description_problem = _problem_label()
        form.addRow("&Name:", self.name_edit)
        form.addRow("", self.name_problem)
        form.addRow("&Description:", self.description_edit)
        form.addRow("", self.description_problem)
        self.layout_.addLayout(form)

        self.layout_.addWidget(QLabel("Kind of snapshot:"))
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[SnapshotMode, QRadioButton] = {}
        for mode, availability in options.modes.items():
            button = QRadioButton(mode.label)
            button.setAccessibleName(mode.label)
            button.setEnabled(availability.allowed)
            if availability.reason:
                button.setToolTip(availability.reason)
                button.setText(f"{mode.label} — unavailable: {availability.reason}")
            self.mode_group.addButton(button)
            self.mode_buttons[mode] = button
            self.layout_.addWidget(button)
        if options.default_mode is not None:
            self.mode_buttons[options.default_mode].setChecked(True)

        self.quiesce_box = QCheckBox("&Quiesce guest file systems (needs the guest agent)")
        self.quiesce_box.setToolTip(options.quiesce.reason or "")
        self.layout_.addWidget(self.quiesce_box)
        self.space_label = _note_label()
        self.mixing_label = _note_label(warning=True)
        self.layout_.addWidget(self.space_label)
        self.layout_.addWidget(self.mixing_label)
        self.finish_layout()
        self._connect_signals()
        self._update()

    def _connect_signals(self) -> None:
        self.name_edit.textChanged.connect(self._update)
        self.description_edit.textChanged.connect(self._update)
        self.mode_group.buttonToggled.connect(self._update)

    def selected_mode(self) -> SnapshotMode | None:
        """The kind chosen, or None when this VM allows none."""
        for mode, button in self.mode_buttons.items():
            if button.isChecked():
                return mode
        return None

    def request(self) -> TakeRequest:
        """What to ask the engine for."""
        description = self.description_edit.toPlainText().strip() or None
        return TakeRequest(
            name=self.name_edit.text(),
            description=description,
            mode=self.selected_mode(),
            quiesce=self.quiesce_box.isChecked() and self.quiesce_box.isEnabled(),
        )

    @Slot()
    def _update(self) -> None:
        problems = False
        try:
            validate_snapshot_name(self.name_edit.text(), self.existing)
            _show_problem(self.name_problem, None)
        except ValidationError as exc:
            _show_problem(self.name_problem, exc.message)
            problems = True
        try:
            validate_description(self.description_edit.toPlainText())
            _show_problem(self.description_problem, None)
        except ValidationError as exc:
            _show_problem(self.description_problem, exc.message)
            problems = True
        mode = self.selected_mode()
        quiesce_possible = self.options.quiesce.allowed and mode is SnapshotMode.EXTERNAL_DISK
        self.quiesce_box.setEnabled(quiesce_possible)
        if not quiesce_possible:
            self.quiesce_box.setChecked(False)
            self.quiesce_box.setToolTip(
                self.options.quiesce.reason
                or "Quiescing works only with external, disk-only snapshots."
            )
        space = ""
        if mode is not None and mode.with_memory and self.options.memory_bytes:
            space = f"The memory state needs up to {format_bytes(self.options.memory_bytes)}"
            if self.pool is not None:
                space += (
                    f"; the pool {self.pool.name!r} has {format_bytes(self.pool.available)} free"
                )
                if self.pool.available < self.options.memory_bytes:
                    space += " — not enough"
                    problems = True
            space += "."
        self.space_label.setText(space)
        self.space_label.setVisible(bool(space))
        warning = self.options.mixing_warning(mode) if mode is not None else None
        self.mixing_label.setText(warning or "")
        self.mixing_label.setVisible(bool(warning))
        self.ok_button.setEnabled(mode is not None and not problems)


# -- revert ---------------------------------------------------------------------------


class RevertDialog(_RequestDialog):
    """What a revert throws away, the safety snapshot, the end state, and force if needed."""

    def __init__(
        self,
        domain: str,
        target: Snapshot,
        current: str | None,
        now_usage: SnapshotUsage | None,
        *,
        running: bool,
        refusal: str | None = None,
        force_reason: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(f"Revert {domain}", "Revert", parent)
        created = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(target.created))
            if target.created
            else "an unknown time"
        )
        self.layout_.addWidget(
            _note_label(f"Revert {domain!r} to snapshot {target.name!r}, taken {created}.")
        )
        self.layout_.addWidget(
            _note_label(self._loss_text(current, now_usage, running), warning=True)
        )
        self.safety_box = QCheckBox(
            "Save the current state as a &safety snapshot first (recommended)"
        )
        self.safety_box.setChecked(True)
        self.safety_box.setAccessibleName("Take a safety snapshot first")
        self.layout_.addWidget(self.safety_box)
        self.safety_note = _note_label()
        self.layout_.addWidget(self.safety_note)
        self.safety_box.toggled.connect(self._on_safety_toggled)
        self._on_safety_toggled(True)

        self.layout_.addWidget(QLabel("After the revert the VM is:"))
        saved_state = (
            "running" if target.has_memory and target.state in ("running", "paused") else "shut off"
        )
        self.end_buttons = {
            EndState.SAVED: QRadioButton(f"as the snapshot was ({saved_state})"),
            EndState.RUNNING: QRadioButton("running"),
            EndState.PAUSED: QRadioButton("paused"),
        }
        self.end_group = QButtonGroup(self)
        for button in self.end_buttons.values():
            self.end_group.addButton(button)
            self.layout_.addWidget(button)
        self.end_buttons[EndState.SAVED].setChecked(True)

        self.force_box = QCheckBox("&Force the revert")
        self._force_offered = force_reason is not None
        self.force_box.setVisible(self._force_offered)
        if force_reason:
            self.force_box.setToolTip(force_reason)
            self.layout_.addWidget(
                _note_label(f"libvirt asks for force: {force_reason}", warning=True)
            )
        self.layout_.addWidget(self.force_box)
        self.refusal = _problem_label()
        _show_problem(self.refusal, refusal)
        self.layout_.addWidget(self.refusal)
        self.finish_layout()
        self.ok_button.setEnabled(refusal is None)
        if force_reason is not None:
            self.force_box.toggled.connect(self.ok_button.setEnabled)
            self.ok_button.setEnabled(False)

    @Slot(bool)
    def _on_safety_toggled(self, checked: bool) -> None:
        self.safety_note.setText(
            "Those changes are kept in a snapshot named before-revert-<time>."
            if checked
            else "Without a safety snapshot those changes are lost for good."
        )

    @staticmethod
    def _loss_text(current: str | None, usage: SnapshotUsage | None, running: bool) -> str:
        since = f"since snapshot {current!r}" if current else "on its disks"
        if usage is not None and usage.delta_bytes is not None:
            amount = format_bytes(usage.delta_bytes)
            prefix = "about " if usage.approximate else ""
            text = (
                f"Reverting discards what the VM changed {since}: {prefix}{amount} of disk changes"
            )
        else:
            text = f"Reverting discards what the VM changed {since} (how much is not known)"
        if running:
            text += ", and its running programs and unsaved memory"
        return text + "."

    def end_state(self) -> EndState:
        """How the VM should end up."""
        for state, button in self.end_buttons.items():
            if button.isChecked():
                return state
        return EndState.SAVED

    def safety_snapshot(self) -> bool:
        """Whether to save Now first."""
        return self.safety_box.isChecked()

    def force(self) -> bool:
        """Whether to pass libvirt's force flag."""
        return self._force_offered and self.force_box.isChecked()


# -- clone ----------------------------------------------------------------------------


class CloneDialog(_RequestDialog):
    """New name, full or linked (and what linked means), folder, start afterwards, space."""

    def __init__(
        self,
        domain: str,
        snapshot: str | None,
        existing_vms: Collection[str],
        default_dir: str,
        *,
        linked_refusal: str | None,
        parent: QWidget | None = None,
    ) -> None:
        source = f"snapshot {snapshot!r}" if snapshot else "its current state"
        super().__init__(f"Clone {domain}", "Clone", parent)
        self.domain = domain
        self.snapshot = snapshot
        self.existing = set(existing_vms)
        self.required: int | None = None
        self.estimate_problem: str | None = None
        self._folder_chosen = False  # by the user: suggestions no longer replace it
        self.layout_.addWidget(_note_label(f"Make a new VM from {domain!r} at {source}."))
        form = QFormLayout()
        self.name_edit = QLineEdit(self._default_name())
        self.name_edit.setAccessibleName("New VM name")
        self.name_problem = _problem_label()
        form.addRow("&Name:", self.name_edit)
        form.addRow("", self.name_problem)
        folder_row = QHBoxLayout()
        self.folder_edit = QLineEdit(default_dir)
        self.folder_edit.setAccessibleName("Folder for the clone's disks")
        self.browse_button = QPushButton("Browse…")
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.browse_button)
        folder_label = QLabel("Disks &in:")
        folder_label.setBuddy(self.folder_edit)
        self.pool_combo = QComboBox()
        self.pool_combo.setAccessibleName("Storage pool for the clone's disks")
        self.pool_combo.addItem("Looking for storage pools…")
        self.pool_combo.setEnabled(False)
        form.addRow("Storage &pool:", self.pool_combo)
        form.addRow(folder_label, folder_row)
        self.layout_.addLayout(form)

        self.full_button = QRadioButton("&Full clone: an independent copy of the disks")
        self.linked_button = QRadioButton(
            "&Linked clone: small overlay files on the snapshot's images"
        )
        self.kind_group = QButtonGroup(self)
        self.kind_group.addButton(self.full_button)
        self.kind_group.addButton(self.linked_button)
        self.full_button.setChecked(True)
        self.linked_button.setEnabled(linked_refusal is None)
        self.layout_.addWidget(self.full_button)
        self.layout_.addWidget(self.linked_button)
        linked_text = (
            f"A linked clone is made in a moment and takes little space, but it reads the "
            f"snapshot's files: {source} must stay as long as the clone exists."
            if linked_refusal is None
            else f"Linked clone unavailable: {linked_refusal}"
        )
        self.linked_note = _note_label(linked_text, warning=linked_refusal is None)
        self.linked_button.setToolTip(linked_text)
        self.layout_.addWidget(self.linked_note)
        self.start_box = QCheckBox("&Start the clone afterwards")
        self.layout_.addWidget(self.start_box)
        self.space_label = _note_label("Measuring the space a full copy needs…")
        self.space_problem = _problem_label()
        self.layout_.addWidget(self.space_label)
        self.layout_.addWidget(self.space_problem)
        self.finish_layout()
        self._connect_signals()
        self._update()

    def _default_name(self) -> str:
        base = f"{self.domain}-clone"
        name, counter = base, 2
        while name in self.existing:
            name, counter = f"{base}-{counter}", counter + 1
        return name

    def _connect_signals(self) -> None:
        self.name_edit.textChanged.connect(self._update)
        self.folder_edit.textChanged.connect(self._update)
        self.folder_edit.textChanged.connect(self._show_pool_of_folder)
        self.folder_edit.textEdited.connect(self._on_folder_chosen)
        self.pool_combo.activated.connect(self._on_pool_chosen)
        self.kind_group.buttonToggled.connect(self._update)
        self.browse_button.clicked.connect(self._on_browse)

    def set_folders(self, folders: Sequence[CloneFolder]) -> None:
        """The host's storage pools that are folders (listed off the GUI thread)."""
        self.pool_combo.clear()
        for folder in folders:
            self.pool_combo.addItem(
                f"{folder.pool} — {folder.path} ({format_bytes(folder.available)} free)",
                folder.path,
            )
        self.pool_combo.addItem("No pool: the folder below", None)
        self.pool_combo.setEnabled(True)
        self._show_pool_of_folder()

    def suggest_folder(self, folder: str) -> None:
        """Where the engine would put the disks (beside the source's), unless already chosen."""
        if not self._folder_chosen:
            self.folder_edit.setText(folder)

    @Slot()
    def _on_folder_chosen(self) -> None:
        self._folder_chosen = True

    @Slot(int)
    def _on_pool_chosen(self, index: int) -> None:
        path = self.pool_combo.itemData(index)
        if path:
            self._folder_chosen = True
            self.folder_edit.setText(path)

    @Slot()
    def _show_pool_of_folder(self) -> None:
        if not self.pool_combo.isEnabled():
            return  # the pools are still being listed
        folder = os.path.normpath(self.folder_edit.text()) if self.folder_edit.text() else ""
        last = self.pool_combo.count() - 1
        match = next(
            (
                i
                for i in range(last)
                if os.path.normpath(str(self.pool_combo.itemData(i))) == folder
            ),
            last,
        )
        self.pool_combo.setCurrentIndex(match)

    @Slot()
    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Folder for the clone's disks", self.folder_edit.text()
        )
        if folder:
            self._folder_chosen = True
            self.folder_edit.setText(folder)

    def set_estimate(self, required: int | None, problem: str | None = None) -> None:
        """The bytes a full copy needs (from the engine, measured off the GUI thread)."""
        self.required = required
        self.estimate_problem = problem
        self._update()

    def request(self) -> CloneRequest:
        """What to ask the engine for."""
        return CloneRequest(
            new_name=self.name_edit.text(),
            snapshot=self.snapshot,
            linked=self.linked_button.isChecked(),
            target_dir=self.folder_edit.text() or None,
            start=self.start_box.isChecked(),
        )

    @Slot()
    def _update(self) -> None:
        problems = False
        try:
            validate_vm_name(self.name_edit.text(), self.existing)
            _show_problem(self.name_problem, None)
        except ValidationError as exc:
            _show_problem(self.name_problem, exc.message)
            problems = True
        folder = self.folder_edit.text()
        free: int | None = None
        if not os.path.isdir(folder):
            _show_problem(self.space_problem, f"The folder {folder!r} does not exist.")
            problems = True
        else:
            stats = os.statvfs(folder)
            free = stats.f_bavail * stats.f_frsize
            _show_problem(self.space_problem, None)
        linked = self.linked_button.isChecked()
        if linked:
            self.space_label.setText("A linked clone needs almost no space.")
            problems = problems or (self.required is None and self.estimate_problem is None)
        elif self.estimate_problem is not None:
            self.space_label.setText("")
            _show_problem(self.space_problem, self.estimate_problem)
            problems = True
        elif self.required is None:
            # OK waits for the measurement: it also says where the disks go by default.
            self.space_label.setText("Measuring the space a full copy needs…")
            problems = True
        else:
            text = f"A full copy needs {format_bytes(self.required)}"
            if free is not None:
                text += f"; {format_bytes(free)} is free in {folder}"
                if free < self.required:
                    _show_problem(
                        self.space_problem, "There is not enough free space for a full copy."
                    )
                    problems = True
            self.space_label.setText(text + ".")
        self.ok_button.setEnabled(not problems)


# -- delete ---------------------------------------------------------------------------


class DeleteDialog(_RequestDialog):
    """Which snapshots go, the space that comes back, and the merge work it causes."""

    def __init__(self, domain: str, plan: DeletePlan, parent: QWidget | None = None) -> None:
        count = len(plan.removes)
        title = f"Delete {'snapshot' if count == 1 else f'{count} snapshots'} of {domain}"
        ok_text = "Delete" if count <= 1 else f"Delete {count} snapshots"
        super().__init__(title, ok_text, parent)
        self.plan = plan
        mode_text = {
            "snapshot": "Its children move up to its parent.",
            "children": "Its children and their children go with it.",
            "children-only": "The snapshot itself stays.",
            "metadata-only": "Only libvirt's record of it goes; its data stays on disk.",
        }[plan.mode.value]
        self.layout_.addWidget(_note_label(f"These snapshots will be deleted. {mode_text}"))
        self.list = QListWidget()
        self.list.setAccessibleName("Snapshots that will be deleted")
        self.list.addItems(list(plan.removes))
        self.list.setMaximumHeight(140)
        self.layout_.addWidget(self.list)
        frees = (
            f"Space that comes back: about {format_bytes(plan.frees_bytes)}."
            if plan.frees_bytes is not None
            else "Space that comes back: not known (external layers are merged, not freed)."
            if plan.merges
            else "Space that comes back: not known yet."
        )
        self.layout_.addWidget(_note_label(frees))
        for line in plan.merges:
            self.layout_.addWidget(_note_label(f"Merge: {line}", warning=True))
        for line in plan.warnings:
            self.layout_.addWidget(_note_label(line, warning=True))
        self.refusal = _problem_label()
        _show_problem(self.refusal, plan.refusal)
        self.layout_.addWidget(self.refusal)
        self.finish_layout()
        self.ok_button.setEnabled(plan.allowed)
        # Destructive: Enter must not delete by accident.
        cancel = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setDefault(True)
        self.ok_button.setAutoDefault(False)
