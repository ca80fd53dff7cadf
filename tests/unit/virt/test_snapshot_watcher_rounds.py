"""The watcher's rounds: VMs with many snapshots are asked for their names less often."""

from __future__ import annotations

from functools import partial

import libvirt
import pytest

from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.virt.snapshot_loader import SnapshotLoader, SnapshotSignature
from vmsnapgui.virt.snapshot_watcher import ChangeKind, DomainChange, SnapshotWatcher


@pytest.fixture
def loader(lab_loader: SnapshotLoader) -> SnapshotLoader:
    return lab_loader


def changed(changes: list[DomainChange]) -> set[str | None]:
    return {c.name for c in changes if c.kind is ChangeKind.SNAPSHOTS}


def test_a_signature_without_names_still_tells_count_and_current(loader: SnapshotLoader) -> None:
    dom = loader.lookup("web")
    full = loader.signature(dom)
    cheap = loader.signature(dom, names=False)
    assert cheap.names is None and full.names is not None
    assert (cheap.count, cheap.current) == (len(full.names), full.current)
    assert not cheap.differs_from(full) and not full.differs_from(cheap)
    other_names = SnapshotSignature(full.count, full.current, frozenset({"x"}))
    assert other_names.differs_from(full)  # names compared when both have them
    assert not other_names.differs_from(cheap)


def test_many_snapshots_cheap_rounds_see_creates_and_names_rounds_see_the_rest(
    loader: SnapshotLoader,
) -> None:
    # Every VM counts as one with many snapshots; names every fourth round.
    watcher = SnapshotWatcher(loader, lambda change: None, many_snapshots=0, names_every=4)
    dom = loader.lookup("web")
    current = dom.snapshotCurrent().getName()

    def make_current(name: str) -> None:
        dom.snapshotCreateXML(
            dom.snapshotLookupByName(name).getXMLDesc(0),
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT,
        )

    assert changed(watcher.poll_once()) == set()  # round 0, names: the baseline
    dom.snapshotCreateXML(snapshot_request_xml("made-elsewhere"), 0)
    assert changed(watcher.poll_once()) == {"web"}  # round 1, count only: seen at once
    make_current(current)
    assert changed(watcher.poll_once()) == {"web"}  # round 2: a new current one, seen

    # Swap a leaf for another while the count and the current snapshot stay the same:
    # a round without names cannot tell, the next one with names does.
    dom.snapshotLookupByName("made-elsewhere").delete(0)
    dom.snapshotCreateXML(snapshot_request_xml("swapped-in"), 0)
    make_current(current)
    assert changed(watcher.poll_once()) == set()  # round 3, count only
    assert changed(watcher.poll_once()) == {"web"}  # round 4, names
    assert changed(watcher.poll_once()) == set()  # round 5: nothing new


def vanish_then_ask(dom: libvirt.virDomain, flags: int = 0) -> object:
    """The VM is removed just before its current snapshot is asked for."""
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    return libvirt.virDomain.snapshotCurrent(dom, flags)


def test_a_vm_undefined_in_the_middle_of_a_round_is_skipped_not_an_error(
    loader: SnapshotLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another client (virsh, another test) removes the VM between our calls about it.
    watcher = SnapshotWatcher(loader, lambda change: None)
    watcher.poll_once()
    conn = loader.connection.conn
    real_list = conn.listAllDomains

    def list_then_remove(flags: int = 0) -> list[libvirt.virDomain]:
        domains = real_list(flags)
        for dom in domains:
            if dom.name() == "web":
                monkeypatch.setattr(dom, "snapshotCurrent", partial(vanish_then_ask, dom))
        return domains

    monkeypatch.setattr(conn, "listAllDomains", list_then_remove)
    watcher.poll_once()  # no exception: web is left out of this round
    monkeypatch.setattr(conn, "listAllDomains", real_list)
    changes = watcher.poll_once()
    assert ChangeKind.DOMAINS in {c.kind for c in changes}
