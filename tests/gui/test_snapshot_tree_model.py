"""The snapshot tree model: shape, Now, the current marker, refresh as a diff, sizes."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QFont, QGuiApplication, QIcon, QPalette, QPixmap
from pytestqt.modeltest import ModelTester
from pytestqt.qtbot import QtBot

from tests.gui.conftest import (
    assert_every_role_at_once_matches,
    every_index,
    loaded_tree,
    snap,
)
from vmsnapgui.core.disk_usage import DomainUsage, SnapshotUsage
from vmsnapgui.core.snapshot import DomainState, MemoryKind
from vmsnapgui.qt import size_bar
from vmsnapgui.qt.snapshot_filter_proxy import SnapshotFilterProxy
from vmsnapgui.qt.snapshot_tree_model import NOW_KEY, Column, Role, SnapshotTreeModel

MIB = 1024 * 1024

# base ─ nginx ─┬─ tls ─ upgrade (current) ─ Now
#               └─ php ─ tuned
WEB = [
    snap("base", None, 1),
    snap("nginx", "base", 2, memory=MemoryKind.INTERNAL, description="apt install nginx\nmore"),
    snap("tls", "nginx", 3),
    snap("php", "nginx", 4, description="Tried php-fpm"),
    snap("upgrade", "tls", 5),
    snap("tuned", "php", 6),
]


def rows(model: SnapshotTreeModel) -> list[tuple[int, str]]:
    """(depth, display name) of every row, in display order."""
    result = []

    def walk(parent: QModelIndex, depth: int) -> None:
        for row in range(model.rowCount(parent)):
            index = model.index(row, 0, parent)
            result.append((depth, index.data()))
            walk(index, depth + 1)

    walk(QModelIndex(), 0)
    return result


def test_runs_of_only_children_share_a_column_and_branches_nest(
    qtmodeltester: ModelTester,
) -> None:
    # base -> nginx -> {tls -> upgrade (current) -> Now, php -> tuned}: one level per
    # snapshot would push a long run's names out of their column.
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    qtmodeltester.check(model)
    assert rows(model) == [
        (0, "base"),
        (0, "nginx"),
        (1, "tls"),
        (2, "upgrade"),
        (2, "Now"),
        (1, "php"),
        (2, "tuned"),
    ]


def test_a_run_of_a_thousand_snapshots_is_one_level(qtmodeltester: ModelTester) -> None:
    chain = [snap("s0000", None, 0)]
    chain += [snap(f"s{i:04d}", f"s{i - 1:04d}", i) for i in range(1, 1000)]
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(chain, "s0999"))
    assert model.rowCount() == 1001  # every snapshot and Now, at the top level
    assert model.index(1000, 0).data(Role.KEY) == NOW_KEY
    # A branch off the middle: from there on its two children nest.
    model.set_tree(loaded_tree([*chain, snap("side", "s0499", 2000)], "s0999"))
    qtmodeltester.check(model)
    assert model.rowCount() == 500
    branch_point = model.index(499, 0)
    assert branch_point.data(Role.KEY) == "s0499"
    heads = [model.index(r, 0, branch_point).data(Role.KEY) for r in range(2)]
    assert heads == ["s0500", "side"]
    first = model.index(0, 0, branch_point)
    assert model.rowCount(first) == 500  # s0501 … s0999 and Now, one level in


def test_the_current_snapshot_is_bold_and_now_is_marked(qtmodeltester: ModelTester) -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    current = model.index_of("upgrade")
    other = model.index_of("tls")
    assert isinstance(current.data(Qt.ItemDataRole.FontRole), QFont)
    assert current.data(Qt.ItemDataRole.FontRole).bold()
    assert other.data(Qt.ItemDataRole.FontRole) is None
    assert "current snapshot" in current.data(Qt.ItemDataRole.ToolTipRole)
    assert not current.data(Qt.ItemDataRole.DecorationRole).isNull()
    now = model.index_of(NOW_KEY)
    assert now.parent() == current.parent() and now.row() == current.row() + 1
    assert now.data(Role.IS_NOW) is True
    assert now.siblingAtColumn(Column.DESCRIPTION).data() == "You are here (shut off)"


def test_without_a_current_snapshot_now_sits_at_the_top_level() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree([snap("a", None, 1), snap("b", None, 2)], None))
    assert rows(model) == [(0, "a"), (0, "b"), (0, "Now")]


def test_columns_show_local_time_first_description_line_and_exact_time_tooltip() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    nginx = model.index_of("nginx")
    assert nginx.siblingAtColumn(Column.DESCRIPTION).data() == "apt install nginx"
    assert nginx.siblingAtColumn(Column.DESCRIPTION).data(Qt.ItemDataRole.ToolTipRole) == (
        "apt install nginx\nmore"
    )
    created = nginx.siblingAtColumn(Column.CREATED)
    assert len(created.data()) == len("1970-01-01 00:00")
    assert "(Unix time 2)" in created.data(Qt.ItemDataRole.ToolTipRole)
    assert model.headerData(Column.DELTA, Qt.Orientation.Horizontal) == "Delta"


def test_a_refresh_applies_only_the_difference_and_keeps_other_rows(
    qtmodeltester: ModelTester,
) -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    qtmodeltester.check(model)
    kept = QPersistentModelIndex(model.index_of("tuned"))
    reset_count = []
    model.modelReset.connect(lambda: reset_count.append(1))
    # "tls" deleted (its child moves up), a new snapshot taken from "upgrade".
    after = [s for s in WEB if s.name != "tls"]
    after = [snap("upgrade", "nginx", 5) if s.name == "upgrade" else s for s in after]
    after.append(snap("new", "upgrade", 7))
    model.set_tree(loaded_tree(after, "new"))
    qtmodeltester.check(model)  # rows moved: the indexes kept per row are made anew
    assert reset_count == []
    assert kept.isValid() and kept.data() == "tuned"
    assert rows(model) == [
        (0, "base"),
        (0, "nginx"),
        (1, "php"),
        (2, "tuned"),
        (1, "upgrade"),
        (2, "new"),
        (2, "Now"),
    ]


def test_a_description_change_redraws_its_row() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    cell = model.index_of("php").siblingAtColumn(Column.DESCRIPTION)
    assert cell.data() == "Tried php-fpm"  # shown (and kept) before the change
    changed = []
    # What a view reads when told a row changed is already the new text.
    model.dataChanged.connect(
        lambda first, last: changed.append(
            (first.data(Role.KEY), first.siblingAtColumn(Column.DESCRIPTION).data())
        )
    )
    edited = [
        snap("php", "nginx", 4, description="Kept after all") if s.name == "php" else s for s in WEB
    ]
    model.set_tree(loaded_tree(edited, "upgrade"))
    assert ("php", "Kept after all") in changed
    assert model.index_of("php").siblingAtColumn(Column.DESCRIPTION).data() == "Kept after all"


def test_another_vm_resets_the_model() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    resets = []
    model.modelReset.connect(lambda: resets.append(1))
    model.set_tree(loaded_tree([snap("x")], "x", uuid="00000000-0000-0000-0000-000000000002"))
    assert resets == [1]
    assert rows(model) == [(0, "x"), (0, "Now")]


def usage(**deltas: int | None) -> DomainUsage:
    return DomainUsage(
        "vm",
        tuple(SnapshotUsage(name, value) for name, value in deltas.items() if name != "now"),
        SnapshotUsage("Now", deltas.get("now")),
    )


def test_sizes_arrive_after_the_tree_and_are_pending_meanwhile() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    delta = model.index_of("php").siblingAtColumn(Column.DELTA)
    assert delta.data() == "…"
    assert delta.data(Qt.ItemDataRole.ToolTipRole) == "Measuring…"
    model.set_usage(
        usage(base=4 * MIB, nginx=MIB, tls=0, php=2 * MIB, upgrade=0, tuned=MIB, now=512 * 1024)
    )
    assert delta.data() == "2.00 MiB"
    assert delta.data(Qt.ItemDataRole.ToolTipRole).startswith("Delta: 2,097,152 bytes")


def test_the_size_bar_is_proportional_to_the_largest_delta_of_the_vm() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    model.set_usage(
        usage(base=4 * MIB, nginx=MIB, tls=0, php=2 * MIB, upgrade=0, tuned=MIB, now=MIB)
    )
    assert model.largest_delta == 4 * MIB
    bar = model.index_of("php").siblingAtColumn(Column.DELTA).data(Role.BAR_FRACTION)
    assert bar == 0.5
    assert model.index_of("base").siblingAtColumn(Column.DELTA).data(Role.BAR_FRACTION) == 1.0


def test_the_size_bar_is_a_picture_qt_paints_as_the_delta_cells_decoration(
    qtbot: QtBot,
) -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    model.set_usage(
        usage(base=4 * MIB, nginx=MIB, tls=0, php=2 * MIB, upgrade=0, tuned=MIB, now=MIB)
    )

    highlight = QGuiApplication.palette().color(QPalette.ColorRole.Highlight).rgb()

    def filled_along(key: str) -> list[bool]:
        """Whether each pixel across the middle of the bar is in the bar's colour."""
        pixmap = (
            model.index_of(key).siblingAtColumn(Column.DELTA).data(Qt.ItemDataRole.DecorationRole)
        )
        assert isinstance(pixmap, QPixmap)
        image = pixmap.toImage()
        middle = image.height() // 2
        return [image.pixelColor(x, middle).rgb() == highlight for x in range(image.width())]

    half = filled_along("php")  # 2 of the largest 4 MiB
    assert len(half) == size_bar.BAR_WIDTH
    filled = [x for x, inside in enumerate(half) if inside]
    assert filled[0] <= 2 and abs(len(filled) - size_bar.BAR_WIDTH / 2) <= 3
    assert all(filled_along("base")[2:-2])  # the largest: full
    assert not any(filled_along("tls"))  # nothing written
    # Unknown sizes have no bar at all; the Name column keeps its icon.
    model.set_usage(DomainUsage("vm", (SnapshotUsage("base", None, note="why"),), None))
    base = model.index_of("base")
    assert base.siblingAtColumn(Column.DELTA).data(Qt.ItemDataRole.DecorationRole) is None
    assert isinstance(base.data(Qt.ItemDataRole.DecorationRole), QIcon)


def test_approximate_sizes_are_marked_and_missing_ones_say_why() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    model.set_usage(
        DomainUsage(
            "vm",
            (
                SnapshotUsage("base", 3 * MIB, approximate=True),
                SnapshotUsage("nginx", None, note="vda: permission denied"),
            ),
            None,
        )
    )
    base = model.index_of("base").siblingAtColumn(Column.DELTA)
    assert base.data() == "≈ 3.00 MiB"
    assert "approximate" in base.data(Qt.ItemDataRole.ToolTipRole)
    nginx = model.index_of("nginx").siblingAtColumn(Column.DELTA)
    assert nginx.data() == "—"
    assert nginx.data(Qt.ItemDataRole.ToolTipRole) == "vda: permission denied"
    assert nginx.data(Role.BAR_FRACTION) is None


def test_saved_memory_is_named_in_the_delta_tooltip() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    model.set_usage(DomainUsage("vm", (SnapshotUsage("nginx", MIB, vmstate_bytes=64 * MIB),), None))
    tooltip = (
        model.index_of("nginx").siblingAtColumn(Column.DELTA).data(Qt.ItemDataRole.ToolTipRole)
    )
    assert "Saved memory: 64.0 MiB" in tooltip


def test_when_sizes_cannot_be_measured_the_cells_stay_empty_and_say_why() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    model.set_usage(None, "the size engine is not installed")
    cell = model.index_of("base").siblingAtColumn(Column.EXCLUSIVE)
    assert cell.data() == ""
    assert cell.data(Qt.ItemDataRole.ToolTipRole) == (
        "Sizes are not available: the size engine is not installed"
    )


def test_a_running_vms_now_row_warns_its_size_may_be_stale() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade", state=DomainState.RUNNING))
    model.set_usage(usage(now=MIB))
    tooltip = (
        model.index_of(NOW_KEY).siblingAtColumn(Column.DELTA).data(Qt.ItemDataRole.ToolTipRole)
    )
    assert "slightly stale" in tooltip


def test_sizes_survive_a_refresh_only_where_the_parent_is_unchanged() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    model.set_usage(usage(base=1, nginx=2, tls=3, php=4, upgrade=5, tuned=6, now=7))
    after = [s for s in WEB if s.name != "tls"]
    after = [snap("upgrade", "nginx", 5) if s.name == "upgrade" else s for s in after]
    model.set_tree(loaded_tree(after, "upgrade"))
    assert model.index_of("php").siblingAtColumn(Column.DELTA).data() == "4 B"
    # Its parent changed: its delta is measured again.
    assert model.index_of("upgrade").siblingAtColumn(Column.DELTA).data() == "…"


def test_a_size_update_names_the_roles_it_changes_and_not_the_filters() -> None:
    model = SnapshotTreeModel()
    model.set_tree(loaded_tree(WEB, "upgrade"))
    announced: list[set[int]] = []
    model.dataChanged.connect(lambda first, last, roles: announced.append(set(roles)))
    model.set_usage(usage(base=MIB, nginx=MIB, tls=0, php=MIB, upgrade=0, tuned=MIB, now=MIB))
    assert announced
    for roles in announced:
        assert Qt.ItemDataRole.DisplayRole in roles and Role.BAR_FRACTION in roles
        # The filter proxy walks up to every ancestor of a row whose filter role changed.
        assert SnapshotFilterProxy().filterRole() not in roles


def test_all_roles_at_once_answer_what_each_role_does_even_when_views_reuse_them(
    qtbot: QtBot,
) -> None:
    # Views ask for all the roles of a cell in one call and reuse the same role slots
    # from cell to cell: a role this cell lacks must be cleared, not left as it was.
    model = SnapshotTreeModel()
    usage = DomainUsage("vm", (SnapshotUsage("php", 3 << 20),), SnapshotUsage(NOW_KEY, 0))
    model.set_tree(loaded_tree(WEB, "upgrade"), usage=usage)
    proxy = SnapshotFilterProxy()
    proxy.setSourceModel(model)
    proxy.set_filter_text("p")
    roles = [
        Qt.ItemDataRole.DisplayRole,
        Qt.ItemDataRole.DecorationRole,
        Qt.ItemDataRole.ToolTipRole,
        Qt.ItemDataRole.FontRole,
        Qt.ItemDataRole.TextAlignmentRole,
        Role.KEY,
        Role.BAR_FRACTION,
    ]
    for target in (model, proxy):
        assert_every_role_at_once_matches(target, roles)


def test_after_each_change_of_the_tree_every_cell_reads_as_in_a_model_built_afresh(
    qtbot: QtBot,
) -> None:
    # Cells the new tree does not change keep their worked-out values; the others must
    # not keep stale ones (a revert moves the bold font, the icon and Now; an edit
    # changes a description; a new snapshot changes the largest delta and its bars).
    roles = [
        Qt.ItemDataRole.DisplayRole,
        Qt.ItemDataRole.DecorationRole,
        Qt.ItemDataRole.ToolTipRole,
        Qt.ItemDataRole.FontRole,
        Qt.ItemDataRole.TextAlignmentRole,
        Qt.ItemDataRole.AccessibleTextRole,
        Role.KEY,
        Role.IS_NOW,
        Role.BAR_FRACTION,
        Role.FILTER_TEXT,
    ]
    # Now's delta is the largest: a revert forgets it, and every bar changes.
    sizes = usage(base=4 * MIB, nginx=MIB, tls=0, php=2 * MIB, upgrade=0, tuned=MIB, now=8 * MIB)
    edited = [s if s.name != "php" else snap("php", "nginx", 4, description="kept") for s in WEB]
    steps = [
        loaded_tree(WEB, "upgrade"),
        loaded_tree(WEB, "tuned"),  # a revert
        loaded_tree(list(WEB), "tuned"),  # a reload that finds the same
        loaded_tree(edited, "tuned"),  # a description edited elsewhere
        loaded_tree([*edited, snap("big", "tuned", 7)], "big"),  # a new snapshot
        loaded_tree(WEB, "base"),  # it was deleted; another revert
    ]
    model = SnapshotTreeModel()
    model.set_tree(steps[0], usage=sizes)

    def every_value(target: SnapshotTreeModel) -> dict[tuple[str, int, int], object]:
        values = {}
        for index in every_index(target):
            key = target.key_of(index)
            for role in roles:
                value = target.data(index, role)
                if isinstance(value, QIcon | QPixmap):
                    value = ("picture", value.cacheKey())
                elif isinstance(value, QFont):
                    value = value.toString()
                values[(str(key), index.column(), int(role))] = value
        return values

    for step in steps[1:]:
        every_value(model)  # everything worked out (and cached) before the change
        model.set_tree(step)
        # The same tree and the sizes that still hold, given to a new model.
        shown = model.keys()
        kept = tuple(
            found for key in shown if key != NOW_KEY and (found := model.usage_of(key)) is not None
        )
        afresh = SnapshotTreeModel()
        afresh.set_tree(step)
        afresh.set_usage(DomainUsage("vm", kept, model.usage_of(NOW_KEY)))
        assert every_value(model) == every_value(afresh)
