"""The note that Now's size may be stale names the VM's state, in cells and the panel."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from tests.gui.conftest import loaded_tree
from tests.gui.test_details_panel import property_labels, shown
from tests.gui.test_snapshot_tree_model import WEB
from vmsnapgui.core.disk_usage import SnapshotUsage
from vmsnapgui.core.snapshot import DomainState
from vmsnapgui.qt.details_panel import DetailsContext, DetailsPanel
from vmsnapgui.qt.display_text import STALE_NOTE, size_text, stale_note
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY

NOW = SnapshotUsage("Now", 1 << 20, approximate=True)


def test_the_stale_note_names_the_state_it_is_given() -> None:
    assert stale_note(DomainState.PAUSED).startswith("The VM is paused:")
    assert stale_note(DomainState.RUNNING).startswith("The VM is running:")
    assert "running" not in stale_note() and stale_note() == STALE_NOTE


def test_a_size_cell_of_a_paused_vm_says_paused() -> None:
    tooltip = size_text(NOW, NOW.delta_bytes, what="delta", stale=DomainState.PAUSED).tooltip
    assert stale_note(DomainState.PAUSED) in tooltip
    assert "running" not in tooltip


def test_a_size_cell_of_an_inactive_vm_has_no_stale_note() -> None:
    tooltip = size_text(NOW, NOW.delta_bytes, what="delta", stale=DomainState.SHUTOFF).tooltip
    assert "stale" not in tooltip


def test_a_size_cell_told_only_active_says_so_without_naming_a_state() -> None:
    tooltip = size_text(NOW, NOW.delta_bytes, what="delta", stale=True).tooltip
    assert STALE_NOTE in tooltip and "running" not in tooltip


def test_the_details_of_now_on_a_paused_vm_say_paused(qtbot: QtBot) -> None:
    panel = DetailsPanel()
    qtbot.addWidget(panel)
    panel.show()
    loaded = loaded_tree(WEB, "upgrade", state=DomainState.PAUSED)
    panel.show_details(DetailsContext("host", loaded, NOW_KEY, NOW))
    rows = shown(panel)
    assert rows["Note"] == stale_note(DomainState.PAUSED)
    assert "running" not in " ".join(rows.values())
    changed = next(
        label for label in property_labels(panel) if label.accessibleName() == "Changed since"
    )
    assert stale_note(DomainState.PAUSED) in changed.toolTip()
