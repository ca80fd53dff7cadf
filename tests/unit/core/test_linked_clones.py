"""Linked clones from plain data: whose files a VM's disks stand on, and the words for it."""

from __future__ import annotations

from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.linked_clones import (
    DiskChain,
    HostLinks,
    LayerRole,
    OwnedFile,
    VmFiles,
    chain_below,
    clones_text,
    definition_layers,
    find_links,
    link_json,
    short_marker,
    snapshot_layers,
    stands_on_text,
    vm_link_lines,
    xml_disk_chains,
)
from vmsnapgui.core.snapshot import DiskKind, Snapshot, SnapshotDisk

CHAINED_XML = """
<domain type='kvm'><name>lc</name><devices>
  <disk type='file' device='disk'>
    <source file='/img/./lc.qcow2'/>
    <backingStore type='file'><format type='qcow2'/><source file='/img/web.qcow2'/>
      <backingStore type='block'><source dev='/dev/vg/base'/><backingStore/></backingStore>
    </backingStore>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='network' device='disk'><source protocol='rbd' name='pool/x'/>
    <target dev='vdb'/></disk>
  <disk type='file' device='cdrom'><target dev='sda'/></disk>
</devices></domain>
"""


def external_snapshot(name: str, frozen: str, overlay: str, target: str = "vda") -> Snapshot:
    """An external snapshot record as libvirt writes it: the overlay it started, and the
    definition it recorded, whose disk source is the image that froze."""
    recorded = tiny_domain_xml("web", [DiskSpec(frozen, target=target)])
    xml = (
        f"<domainsnapshot><name>{name}</name><disks><disk name='{target}' "
        f"snapshot='external'><source file='{overlay}'/></disk></disks>{recorded}"
        "</domainsnapshot>"
    )
    return Snapshot(name=name, disks=(SnapshotDisk(target, DiskKind.EXTERNAL, overlay),), xml=xml)


def test_xml_chains_follow_backing_store_and_skip_disks_without_a_path() -> None:
    assert xml_disk_chains(CHAINED_XML) == [
        DiskChain("vda", ("/img/lc.qcow2", "/img/web.qcow2", "/dev/vg/base"))
    ]


def test_a_definition_owns_the_files_it_writes_to_not_its_backing_files() -> None:
    assert definition_layers("lc", CHAINED_XML) == [
        OwnedFile("/img/lc.qcow2", "lc", LayerRole.DISK, "vda")
    ]


def test_an_external_snapshot_owns_the_image_that_froze_and_its_overlay() -> None:
    base = external_snapshot("base", "/img/web.qcow2", "/img/web.base")
    assert snapshot_layers("web", base) == [
        OwnedFile("/img/web.qcow2", "web", LayerRole.SNAPSHOT, "vda", "base"),
        OwnedFile("/img/web.base", "web", LayerRole.OVERLAY, "vda", "base"),
    ]


def test_an_internal_snapshot_owns_nothing_more() -> None:
    inside = Snapshot(name="inside", disks=(SnapshotDisk("vda", DiskKind.INTERNAL),))
    assert snapshot_layers("web", inside) == []


def web_with_base() -> VmFiles:
    base = external_snapshot("base", "/img/web.qcow2", "/img/web.base")
    return VmFiles(
        "web",
        (DiskChain("vda", ("/img/web.base", "/img/web.qcow2")),),
        (
            OwnedFile("/img/web.base", "web", LayerRole.DISK, "vda"),
            *snapshot_layers("web", base),
        ),
    )


def test_a_clone_on_a_snapshots_frozen_image_stands_on_that_snapshot() -> None:
    clone = VmFiles(
        "web-test",
        (DiskChain("vda", ("/img/web-test.qcow2", "/img/web.qcow2")),),
        (OwnedFile("/img/web-test.qcow2", "web-test", LayerRole.DISK, "vda"),),
    )
    (link,) = find_links([web_with_base(), clone])
    assert (link.clone, link.disk, link.source, link.role, link.snapshot, link.file) == (
        "web-test",
        "vda",
        "web",
        LayerRole.SNAPSHOT,
        "base",
        "/img/web.qcow2",
    )
    links = HostLinks((link,))
    assert links.stands_on("web-test") == (link,)
    assert links.clones_of("web") == (link,)
    assert links.stands_on("web") == ()
    assert links.clones_of_snapshot("web", "base") == (link,)
    assert links.clones_of_snapshot("web", "other") == ()
    assert stands_on_text(links.stands_on("web-test")) == (
        "Linked clone of web — stands on its snapshot 'base'"
    )
    assert clones_text(links.clones_of("web")) == "Linked clones: web-test (on 'base')"
    assert short_marker(links.stands_on("web-test")) == "clone of web (on 'base')"
    assert vm_link_lines(links, "web") == ("Linked clones: web-test (on 'base')",)
    assert link_json(link)["kind"] == "snapshot"


def test_a_vms_own_history_below_its_overlays_is_not_a_link() -> None:
    # web's chain goes through the image its own snapshot froze: that is web's own.
    assert find_links([web_with_base()]) == ()


def test_the_first_foreign_file_down_the_chain_decides() -> None:
    # web-test took a snapshot of its own: its chain passes its own frozen image first.
    own = external_snapshot("mine", "/img/web-test.qcow2", "/img/web-test.mine")
    clone = VmFiles(
        "web-test",
        (DiskChain("vda", ("/img/web-test.mine", "/img/web-test.qcow2", "/img/web.qcow2")),),
        (
            OwnedFile("/img/web-test.mine", "web-test", LayerRole.DISK, "vda"),
            *snapshot_layers("web-test", own),
        ),
    )
    (link,) = find_links([clone, web_with_base()])
    assert (link.source, link.snapshot) == ("web", "base")


def test_a_clone_of_a_clone_names_the_vm_it_stands_on_directly() -> None:
    middle_snapshot = external_snapshot("gold", "/img/mid.qcow2", "/img/mid.gold")
    middle = VmFiles(
        "mid",
        (DiskChain("vda", ("/img/mid.gold", "/img/mid.qcow2", "/img/web.qcow2")),),
        (
            OwnedFile("/img/mid.gold", "mid", LayerRole.DISK, "vda"),
            *snapshot_layers("mid", middle_snapshot),
        ),
    )
    leaf = VmFiles(
        "leaf",
        (DiskChain("vda", ("/img/leaf.qcow2", "/img/mid.qcow2", "/img/web.qcow2")),),
        (OwnedFile("/img/leaf.qcow2", "leaf", LayerRole.DISK, "vda"),),
    )
    links = HostLinks(find_links([web_with_base(), middle, leaf]))
    assert [(x.clone, x.source, x.snapshot) for x in links.links] == [
        ("mid", "web", "base"),
        ("leaf", "mid", "gold"),
    ]
    assert vm_link_lines(links, "mid") == (
        "Linked clone of web — stands on its snapshot 'base'",
        "Linked clones: leaf (on 'gold')",
    )


def test_a_template_image_nobody_owns_links_nothing() -> None:
    first = VmFiles(
        "a",
        (DiskChain("vda", ("/img/a.qcow2", "/img/template.qcow2")),),
        (OwnedFile("/img/a.qcow2", "a", LayerRole.DISK, "vda"),),
    )
    second = VmFiles(
        "b",
        (DiskChain("vda", ("/img/b.qcow2", "/img/template.qcow2")),),
        (OwnedFile("/img/b.qcow2", "b", LayerRole.DISK, "vda"),),
    )
    assert find_links([first, second]) == ()


def test_an_overlay_on_a_live_disk_says_the_source_still_writes_to_it() -> None:
    source = VmFiles(
        "db",
        (DiskChain("vdb", ("/img/db.qcow2",)),),
        (OwnedFile("/img/db.qcow2", "db", LayerRole.DISK, "vdb"),),
    )
    clone = VmFiles(
        "db-copy",
        (DiskChain("vda", ("/img/db-copy.qcow2", "/img/db.qcow2")),),
        (OwnedFile("/img/db-copy.qcow2", "db-copy", LayerRole.DISK, "vda"),),
    )
    links = find_links([source, clone])
    assert stands_on_text(links) == (
        "Linked clone of db — stands on its live disk vdb, which it still writes to"
    )
    assert clones_text(links) == "Linked clones: db-copy (on the live disk vdb)"


def test_two_disks_on_two_snapshots_are_both_named_once() -> None:
    base = external_snapshot("base", "/img/web.qcow2", "/img/web.base")
    later = external_snapshot("later", "/img/web.base", "/img/web.later")
    source = VmFiles(
        "web",
        (DiskChain("vda", ("/img/web.later", "/img/web.base", "/img/web.qcow2")),),
        (
            OwnedFile("/img/web.later", "web", LayerRole.DISK, "vda"),
            *snapshot_layers("web", base),
            *snapshot_layers("web", later),
        ),
    )
    clone = VmFiles(
        "two",
        (
            DiskChain("vda", ("/img/two-a.qcow2", "/img/web.qcow2")),
            DiskChain("vdb", ("/img/two-b.qcow2", "/img/web.base")),
        ),
        (
            OwnedFile("/img/two-a.qcow2", "two", LayerRole.DISK, "vda"),
            OwnedFile("/img/two-b.qcow2", "two", LayerRole.DISK, "vdb"),
        ),
    )
    links = find_links([source, clone])
    # web.base is both base's overlay and the image 'later' froze: the frozen image wins.
    assert [(x.disk, x.snapshot, x.role) for x in links] == [
        ("vda", "base", LayerRole.SNAPSHOT),
        ("vdb", "later", LayerRole.SNAPSHOT),
    ]
    assert stands_on_text(links) == (
        "Linked clone of web — stands on its snapshot 'base' and its snapshot 'later'"
    )
    assert clones_text(links) == "Linked clones: two (on 'base', on 'later')"


def test_hostile_names_stay_one_line() -> None:
    source = VmFiles(
        "we\nb",
        (DiskChain("vda", ("/img/w.qcow2",)),),
        (OwnedFile("/img/w.qcow2", "we\nb", LayerRole.DISK, "vda"),),
    )
    clone = VmFiles(
        "x" * 200,
        (DiskChain("vda", ("/img/x.qcow2", "/img/w.qcow2")),),
        (OwnedFile("/img/x.qcow2", "x" * 200, LayerRole.DISK, "vda"),),
    )
    links = find_links([source, clone])
    for text in (stands_on_text(links), clones_text(links)):
        assert text is not None and "\n" not in text and len(text) < 200


def test_no_links_say_nothing() -> None:
    assert stands_on_text(()) is None
    assert clones_text(()) is None
    assert short_marker(()) is None
    assert vm_link_lines(HostLinks(), "web") == ()


def test_an_overlay_in_the_current_chain_names_its_frozen_image_without_the_xml() -> None:
    chains = [DiskChain("vda", ("/img/web.later", "/img/web.base", "/img/web.qcow2"))]
    bare = Snapshot(name="later", disks=(SnapshotDisk("vda", DiskKind.EXTERNAL, "/img/web.later"),))
    assert snapshot_layers("web", bare, chain_below(chains)) == [
        OwnedFile("/img/web.base", "web", LayerRole.SNAPSHOT, "vda", "later"),
        OwnedFile("/img/web.later", "web", LayerRole.OVERLAY, "vda", "later"),
    ]
    # Off the current chain (another branch), the recorded definition says it.
    elsewhere = external_snapshot("old", "/img/old.qcow2", "/img/old.top")
    assert snapshot_layers("web", elsewhere, chain_below(chains))[0].path == "/img/old.qcow2"
