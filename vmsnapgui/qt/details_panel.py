"""The right pane: everything about the selected snapshot (or Now).

Every property, the disks with their files and sizes, the description (editable; the
window saves it through libvirt as a job and reports back), and what the VM's
configuration changed compared with the parent snapshot (for Now: between the current
snapshot and the live definition, which the window fetches off-thread).

The panel only shows what it is given and asks through signals; it never calls libvirt.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFont, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from vmsnapgui.core.disk_usage import SnapshotUsage
from vmsnapgui.core.domain_diff import describe_changes, diff_domains
from vmsnapgui.core.domain_xml import domain_disks
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, Snapshot
from vmsnapgui.core.snapshot_xml import embedded_domain_xml
from vmsnapgui.core.units import format_bytes
from vmsnapgui.core.validation import validate_description
from vmsnapgui.qt.display_text import exact_time, local_time, size_text, stale_note
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY
from vmsnapgui.virt.snapshot_loader import DomainSnapshots

MAX_CHILDREN_LISTED = 6


@dataclass(frozen=True, slots=True)
class DetailsContext:
    """What the panel shows: one row of one VM's tree, with its sizes."""

    host_label: str
    loaded: DomainSnapshots
    key: str  # a snapshot name, or NOW_KEY
    usage: SnapshotUsage | None
    usage_unavailable: str | None = None
    vm_links: tuple[str, ...] = ()
    """Lines about the VM's linked clones: what it stands on, what stands on it."""
    links_tooltip: str = ""
    snapshot_clones: tuple[str, ...] = ()
    """Linked clones standing on what this snapshot froze (their VM names)."""

    @property
    def is_now(self) -> bool:
        """True for the Now row."""
        return self.key == NOW_KEY

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot shown (None for Now)."""
        return None if self.is_now else self.loaded.tree.get(self.key)


def _set_text(label: QLabel, text: str) -> None:
    """Change a label's text only when it differs (a change lays the form out again)."""
    if label.text() != text:
        label.setText(text)


def _value_label() -> QLabel:
    label = QLabel()
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return label


class DetailsPanel(QScrollArea):
    """Properties, disks, description and configuration changes of the selected row."""

    description_save_requested = Signal(str, str, str)  # uuid, snapshot name, text
    live_xml_wanted = Signal(str)  # uuid: the window fetches the live definition

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAccessibleName("Snapshot details")
        self._context: DetailsContext | None = None
        self._saved_description = ""
        self._saving = False
        self._live_xml: dict[str, str] = {}
        self._live_error: dict[str, str] = {}
        self._build()
        self._connect_signals()
        self.show_nothing("Select a virtual machine on the left to see its snapshots.")

    # -- layout -------------------------------------------------------------------------

    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(10)

        self.title = QLabel()
        font = QFont(self.title.font())
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.title.setFont(font)
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.subtitle = QLabel()
        self.subtitle.setWordWrap(True)
        self.subtitle.setForegroundRole(self.subtitle.foregroundRole())
        # The VM's place among linked clones, whatever row of its tree is selected.
        self.links_label = QLabel()
        self.links_label.setWordWrap(True)
        self.links_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.links_label.setAccessibleName("Linked clones")
        self.links_label.setStyleSheet("color: #b3661a;")
        self.links_label.hide()
        self.placeholder = QLabel()
        self.placeholder.setWordWrap(True)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self.properties_box = QGroupBox("Properties")
        self.properties = QFormLayout(self.properties_box)
        self.properties.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.properties.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        # (name label, value label) of every row made so far. Rows are reused, their
        # texts changed, the ones not needed hidden: making widgets anew for every
        # selection was most of the cost of showing one (each new widget is shown,
        # polished and laid out later, one queued event at a time).
        self._property_rows: list[tuple[QLabel, QLabel]] = []
        self._disk_rows: list[tuple[list[str], str | None]] | None = None

        self.disks_box = QGroupBox("Disks")
        disks_layout = QVBoxLayout(self.disks_box)
        self.disks = QTreeWidget()
        self.disks.setAccessibleName("Disks of the snapshot")
        self.disks.setHeaderLabels(["Disk", "Snapshot", "File", "Delta"])
        self.disks.setRootIsDecorated(False)
        self.disks.setUniformRowHeights(True)
        self.disks.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.disks.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        disks_layout.addWidget(self.disks)

        self.description_box = QGroupBox("Description")
        description_layout = QVBoxLayout(self.description_box)
        self.description = QPlainTextEdit()
        self.description.setAccessibleName("Snapshot description")
        self.description.setPlaceholderText("No description. Type one and press Save.")
        self.description.setTabChangesFocus(True)
        self.description.setFixedHeight(self.fontMetrics().lineSpacing() * 4 + 14)
        self.description_error = QLabel()
        self.description_error.setWordWrap(True)
        self.description_error.setStyleSheet("color: #d93a2b;")
        self.description_error.setAccessibleName("Description problem")
        self.description_error.hide()
        buttons = QHBoxLayout()
        self.description_state = QLabel()
        self.save_button = QPushButton("&Save")
        self.save_button.setToolTip("Save the description in libvirt (Ctrl+S)")
        self.undo_button = QPushButton("&Undo")
        self.undo_button.setToolTip("Go back to the saved description")
        buttons.addWidget(self.description_state, 1)
        buttons.addWidget(self.undo_button)
        buttons.addWidget(self.save_button)
        description_layout.addWidget(self.description)
        description_layout.addWidget(self.description_error)
        description_layout.addLayout(buttons)
        self._save_shortcut = QShortcut(QKeySequence.StandardKey.Save, self.description)
        self._save_shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)

        self.changes_box = QGroupBox("Configuration changes")
        changes_layout = QVBoxLayout(self.changes_box)
        self.changes_caption = _value_label()
        self.changes = _value_label()
        self.changes.setAccessibleName("Configuration changes")
        changes_layout.addWidget(self.changes_caption)
        changes_layout.addWidget(self.changes)

        for widget in (
            self.title,
            self.subtitle,
            self.links_label,
            self.placeholder,
            self.properties_box,
            self.disks_box,
            self.description_box,
            self.changes_box,
        ):
            layout.addWidget(widget)
        layout.addStretch(1)
        self.setWidget(body)

    def _connect_signals(self) -> None:
        self.description.textChanged.connect(self._on_description_edited)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.undo_button.clicked.connect(self._on_undo_clicked)
        self._save_shortcut.activated.connect(self._on_save_clicked)

    # -- public -------------------------------------------------------------------------

    @property
    def context(self) -> DetailsContext | None:
        """What is shown."""
        return self._context

    def show_nothing(self, message: str) -> None:
        """Show only a hint (nothing selected, a VM without snapshots…)."""
        self._context = None
        self.title.setText("")
        self.subtitle.setText("")
        self.placeholder.setText(message)
        self.placeholder.show()
        for box in (self.properties_box, self.disks_box, self.description_box, self.changes_box):
            box.hide()
        self.title.hide()
        self.subtitle.hide()
        self.links_label.hide()

    def show_details(self, context: DetailsContext) -> None:
        """Show one row; an unsaved description edit of the same snapshot is kept."""
        previous = self._context
        if (
            previous is not None
            and previous.loaded is context.loaded
            and previous.key == context.key
            and previous.usage is context.usage
            and previous.usage_unavailable == context.usage_unavailable
            and previous.host_label == context.host_label
            and previous.vm_links == context.vm_links
            and previous.links_tooltip == context.links_tooltip
            and previous.snapshot_clones == context.snapshot_clones
        ):
            # Shown already (selecting a row and presenting its tree both ask): rebuilding
            # the properties makes new widgets, which is slow while trees load.
            return
        same_row = (
            previous is not None
            and previous.key == context.key
            and previous.loaded.domain.uuid == context.loaded.domain.uuid
        )
        keep_edit = same_row and (self._is_dirty() or self._saving)
        self._context = context
        self.placeholder.hide()
        self.title.show()
        self.subtitle.show()
        for box in (self.properties_box, self.changes_box):
            box.show()
        domain = context.loaded.domain
        self.subtitle.setText(f"{domain.name} on {context.host_label}")
        self._show_links(context)
        if context.is_now:
            self._show_now(context)
        else:
            snapshot = context.snapshot
            if snapshot is None:
                self.show_nothing("This snapshot no longer exists.")
                return
            self._show_snapshot(context, snapshot, keep_edit, same_row)

    def set_live_xml(self, uuid: str, xml: str | None, error: str | None = None) -> None:
        """The live definition of a VM arrived (or could not be read)."""
        if xml is not None:
            self._live_xml[uuid] = xml
            self._live_error.pop(uuid, None)
        elif error is not None:
            self._live_error[uuid] = error
        context = self._context
        if context is not None and context.is_now and context.loaded.domain.uuid == uuid:
            self._show_now(context)

    def forget_live_xml(self, uuid: str) -> None:
        """The VM changed: the live definition must be read again when shown."""
        self._live_xml.pop(uuid, None)
        self._live_error.pop(uuid, None)

    def description_saved(self) -> None:
        """The window saved the description."""
        self._saving = False
        self._saved_description = self.description.toPlainText()
        self.description_error.hide()
        self.description_state.setText("Saved.")
        self._update_description_buttons()

    def description_failed(self, error: UserError) -> None:
        """Saving the description failed: say why under the text box."""
        self._saving = False
        self.description_error.setText(error.message)
        self.description_error.setToolTip(error.detail or "")
        self.description_error.show()
        self.description_state.setText("")
        self._update_description_buttons()

    # -- rows ---------------------------------------------------------------------------

    def _show_snapshot(
        self, context: DetailsContext, snapshot: Snapshot, keep_edit: bool, same_row: bool
    ) -> None:
        tree = context.loaded.tree
        current = tree.current == snapshot.name
        self.title.setText(snapshot.name + ("  (current)" if current else ""))
        usage = context.usage
        unavailable = context.usage_unavailable
        parent = tree.parent(snapshot.name)
        children = tree.children(snapshot.name)
        child_text = ", ".join(children[:MAX_CHILDREN_LISTED])
        if len(children) > MAX_CHILDREN_LISTED:
            child_text += f" and {len(children) - MAX_CHILDREN_LISTED} more"
        rows = [
            ("Created", local_time(snapshot.created), exact_time(snapshot.created)),
            ("VM state", _state_text(snapshot), None),
            ("Memory", _memory_text(snapshot), None),
            ("Kind", _kind_text(snapshot), None),
            ("Parent", parent or "none (a root snapshot)", None),
            ("Children", child_text or "none", None),
            ("Current", "yes: Now grows from it" if current else "no", None),
        ]
        delta = size_text(
            usage, usage.delta_bytes if usage else None, what="delta", unavailable=unavailable
        )
        exclusive = size_text(
            usage,
            usage.exclusive_bytes if usage else None,
            what="exclusive size",
            unavailable=unavailable,
        )
        rows.append(("Delta", delta.text or "not available", delta.tooltip))
        rows.append(("Exclusive", exclusive.text or "not available", exclusive.tooltip))
        if snapshot.has_memory:
            vmstate = size_text(
                usage,
                usage.vmstate_bytes if usage else None,
                what="saved memory",
                unavailable=unavailable,
            )
            rows.append(("Saved memory", vmstate.text or "not available", vmstate.tooltip))
        if context.snapshot_clones:
            rows.append(
                (
                    "Linked clones",
                    ", ".join(context.snapshot_clones),
                    "These VMs' disks stand on the image this snapshot froze: the snapshot "
                    "must stay while they do.",
                )
            )
        for problem in tree.problems.get(snapshot.name, ()):
            rows.append(("Note", problem, None))
        self._set_properties(rows)
        self._show_snapshot_disks(snapshot, usage)
        self.description_box.show()
        if not keep_edit:
            self._saved_description = snapshot.description or ""
            if self.description.toPlainText() != self._saved_description:
                self.description.blockSignals(True)
                self.description.setPlainText(self._saved_description)
                self.description.blockSignals(False)
            self.description_error.hide()
            if not same_row:
                self.description_state.setText("")
        self._update_description_buttons()
        if parent is None:
            self.changes_caption.setText("A root snapshot: there is no parent to compare with.")
            self.changes.setText("")
        else:
            self.changes_caption.setText(f"Compared with its parent {parent!r}:")
            before = _embedded(tree[parent].xml)
            after = _embedded(snapshot.xml)
            self.changes.setText(_changes_text(before, after))

    def _show_links(self, context: DetailsContext) -> None:
        text = "\n".join(context.vm_links)
        _set_text(self.links_label, text)
        if self.links_label.toolTip() != context.links_tooltip:
            self.links_label.setToolTip(context.links_tooltip)
        self.links_label.setVisible(bool(text))

    def _show_now(self, context: DetailsContext) -> None:
        loaded = context.loaded
        domain = loaded.domain
        current = loaded.tree.current
        self.title.setText("Now (you are here)")
        usage = context.usage
        delta = size_text(
            usage,
            usage.delta_bytes if usage else None,
            what="change since the current snapshot",
            unavailable=context.usage_unavailable,
            stale=domain.state,
        )
        rows = [
            ("VM state", domain.state.value, None),
            ("Current snapshot", current or "none", None),
            ("Changed since", delta.text or "not available", delta.tooltip),
        ]
        if domain.state.is_active:
            rows.append(("Note", stale_note(domain.state), None))
        self._set_properties(rows)
        self.description_box.hide()
        uuid = domain.uuid
        live = self._live_xml.get(uuid)
        if live is None:
            self._set_disk_rows([])
            if uuid in self._live_error:
                self.changes_caption.setText("The VM's configuration could not be read:")
                self.changes.setText(self._live_error[uuid])
            else:
                self.changes_caption.setText("Reading the VM's configuration…")
                self.changes.setText("")
                self.live_xml_wanted.emit(uuid)
            return
        try:
            disks = domain_disks(live)
        except Exception:  # an unreadable definition still shows the rest
            disks = []
        disk_rows: list[tuple[list[str], str | None]] = []
        for disk in disks:
            per_disk = usage.disks.get(disk.target) if usage else None
            size = format_bytes(per_disk.delta_bytes) if per_disk and per_disk.delta_bytes else ""
            disk_rows.append(([disk.target, disk.device, disk.source or "—", size], None))
        self._set_disk_rows(disk_rows)
        if current is None:
            self.changes_caption.setText("There is no current snapshot to compare with.")
            self.changes.setText("")
            return
        self.changes_caption.setText(f"Compared with the current snapshot {current!r}:")
        self.changes.setText(_changes_text(_embedded(loaded.tree[current].xml), live))

    def _set_properties(self, rows: list[tuple[str, str, str | None]]) -> None:
        while len(self._property_rows) < len(rows):
            name_label, value_label = QLabel(), _value_label()
            self.properties.addRow(name_label, value_label)
            self._property_rows.append((name_label, value_label))
        for index, (name_label, value_label) in enumerate(self._property_rows):
            shown = index < len(rows)
            if self.properties.isRowVisible(index) != shown:
                self.properties.setRowVisible(index, shown)
            if not shown:
                continue
            name, value, tooltip = rows[index]
            _set_text(name_label, f"{name}:")
            _set_text(value_label, value)
            if value_label.accessibleName() != name:
                value_label.setAccessibleName(name)
            if value_label.toolTip() != (tooltip or ""):
                value_label.setToolTip(tooltip or "")

    def _show_snapshot_disks(self, snapshot: Snapshot, usage: SnapshotUsage | None) -> None:
        images = dict(_disk_sources(_embedded(snapshot.xml) if snapshot.xml else None))
        rows: list[tuple[list[str], str | None]] = []
        for disk in snapshot.disks:
            if disk.kind is DiskKind.EXTERNAL:
                file = disk.file or "—"
                file_tip = "The overlay this snapshot started; the image below it froze."
            else:
                file = images.get(disk.target) or disk.file or "—"
                file_tip = "The image that holds this snapshot inside it."
            per_disk = usage.disks.get(disk.target) if usage else None
            size = ""
            if per_disk is not None and per_disk.delta_bytes is not None:
                size = format_bytes(per_disk.delta_bytes)
            rows.append(([disk.target, disk.kind.value, file, size], f"{file}\n{file_tip}"))
        if snapshot.memory is MemoryKind.EXTERNAL and snapshot.memory_file:
            vmstate = ""
            if usage is not None and usage.vmstate_bytes is not None:
                vmstate = format_bytes(usage.vmstate_bytes)
            rows.append((["memory", "external", snapshot.memory_file, vmstate], None))
        self._set_disk_rows(rows)

    def _set_disk_rows(self, rows: list[tuple[list[str], str | None]]) -> None:
        """Fill the disks table (left alone when it shows these rows already: a refill
        lays the panel out again)."""
        self.disks_box.setVisible(bool(rows))
        if rows == self._disk_rows:
            return
        self._disk_rows = rows
        self.disks.clear()
        for texts, file_tip in rows:
            item = QTreeWidgetItem(self.disks, texts)
            if file_tip is not None:
                item.setToolTip(2, file_tip)
        self._fit_disks()

    def _fit_disks(self) -> None:
        rows = self.disks.topLevelItemCount()
        self.disks_box.setVisible(rows > 0)
        row_height = self.disks.sizeHintForRow(0) if rows else 0
        header = self.disks.header().sizeHint().height()
        self.disks.setFixedHeight(header + row_height * rows + 2 * self.disks.frameWidth() + 2)

    # -- description editing ----------------------------------------------------------

    def _is_dirty(self) -> bool:
        return self.description.toPlainText() != self._saved_description

    def _update_description_buttons(self) -> None:
        dirty = self._is_dirty()
        self.save_button.setEnabled(
            dirty and not self._saving and self.description_error.isHidden()
        )
        self.undo_button.setEnabled(dirty and not self._saving)
        self.description.setReadOnly(self._saving)

    @Slot()
    def _on_description_edited(self) -> None:
        text = self.description.toPlainText()
        self.description_state.setText("Not saved yet." if self._is_dirty() else "")
        try:
            validate_description(text)
        except UserError as exc:
            self.description_error.setText(exc.message)
            self.description_error.setToolTip("")
            self.description_error.show()
        else:
            self.description_error.hide()
        self._update_description_buttons()

    @Slot()
    def _on_save_clicked(self) -> None:
        context = self._context
        if context is None or context.is_now or not self.save_button.isEnabled():
            return
        self._saving = True
        self.description_state.setText("Saving…")
        self._update_description_buttons()
        self.description_save_requested.emit(
            context.loaded.domain.uuid, context.key, self.description.toPlainText()
        )

    @Slot()
    def _on_undo_clicked(self) -> None:
        self.description.setPlainText(self._saved_description)
        self.description_error.hide()
        self.description_state.setText("")
        self._update_description_buttons()


def _state_text(snapshot: Snapshot) -> str:
    state = snapshot.state or "unknown"
    return {
        "disk-snapshot": "running (disk only: memory not saved)",
        "shutoff": "shut off",
    }.get(state, state)


def _memory_text(snapshot: Snapshot) -> str:
    if snapshot.memory is MemoryKind.INTERNAL:
        return "saved inside the disk image (internal)"
    if snapshot.memory is MemoryKind.EXTERNAL:
        return f"saved to {snapshot.memory_file}" if snapshot.memory_file else "saved to a file"
    return "not saved (reverting starts the VM from its disks)"


def _kind_text(snapshot: Snapshot) -> str:
    if snapshot.is_external and snapshot.is_internal:
        return "mixed: internal and external"
    if snapshot.is_external:
        return "external (overlay files)"
    if snapshot.is_internal:
        return "internal (inside the qcow2 image)"
    return "no disk captured"


# Details are shown again and again for the same few snapshots (a refresh, sizes
# arriving, moving up and down the tree); what they derive from a snapshot's XML is
# kept for the last few hundred XML texts instead of parsed each time.


@functools.lru_cache(maxsize=256)
def _embedded(snapshot_xml: str) -> str | None:
    return embedded_domain_xml(snapshot_xml)


@functools.lru_cache(maxsize=256)
def _disk_sources(domain_xml: str | None) -> tuple[tuple[str, str | None], ...]:
    """(target, source file) of every disk of a domain definition."""
    if not domain_xml:
        return ()
    try:
        return tuple((disk.target, disk.source) for disk in domain_disks(domain_xml))
    except Exception:  # an unreadable definition still shows the rest
        return ()


@functools.lru_cache(maxsize=128)
def _changes_text(before: str | None, after: str | None) -> str:
    changes = diff_domains(before, after)
    if not changes:
        return "No configuration changes."
    return "\n".join(describe_changes(changes))
