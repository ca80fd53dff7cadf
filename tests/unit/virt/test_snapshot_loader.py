"""Loading snapshot trees on the test driver: shape, incremental refresh and domains."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import libvirt
import pytest

from tests.conftest import open_loader
from vmsnapgui.core.snapshot import DomainState, MemoryKind
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader


@pytest.fixture
def loader(lab_loader: SnapshotLoader) -> SnapshotLoader:
    return lab_loader


def test_the_web_tree_has_its_branches_current_and_order(loader: SnapshotLoader) -> None:
    loaded = loader.load("web")
    tree = loaded.tree
    assert loaded.domain.name == "web"
    assert loaded.domain.state is DomainState.RUNNING
    assert tree.roots == ("base",)
    assert tree.children("nginx-installed") == ("tls & certs", "php-experiment")
    assert tree.current == "before-upgrade"
    assert tree.names() == (
        "base",
        "nginx-installed",
        "tls & certs",
        "before-upgrade",
        "php-experiment",
        "php-tuned",
    )
    assert (
        tree["tls & certs"].description == 'Let\'s Encrypt <staging> certificates — "ünïcode" too'
    )
    assert tree["nginx-installed"].memory is MemoryKind.INTERNAL
    assert loaded.fetched == 6


def test_external_and_disk_only_snapshots_keep_their_files(loader: SnapshotLoader) -> None:
    tree = loader.load("db").tree
    first = tree["s1-disk-only"]
    assert first.is_disk_only and first.is_external and not first.has_memory
    assert [(d.target, d.kind.value, d.file) for d in first.disks] == [
        ("vda", "external", "/var/lib/libvirt/images/db.s1"),
        ("vdb", "no", None),
    ]
    assert tree["s2-with-memory"].memory_file == "/var/lib/libvirt/qemu/snapshot/db/s2.mem"


def test_a_refresh_fetches_only_new_snapshots(loader: SnapshotLoader) -> None:
    first = loader.load("web")
    assert first.fetched == 6
    again = loader.load("web")
    assert again.fetched == 0
    assert again.tree.names() == first.tree.names()

    dom = loader.lookup("web")
    dom.snapshotCreateXML(snapshot_request_xml("fresh", "made behind the loader's back"), 0)
    refreshed = loader.load("web")
    assert refreshed.fetched == 1
    assert refreshed.tree.current == "fresh"
    assert refreshed.tree.parent("fresh") == "before-upgrade"


def test_a_deleted_snapshot_vanishes_and_its_children_are_refetched(loader: SnapshotLoader) -> None:
    loader.load("web")
    dom = loader.lookup("web")
    dom.snapshotLookupByName("php-experiment", 0).delete(0)
    refreshed = loader.load("web")
    assert "php-experiment" not in refreshed.tree
    # php-tuned now hangs off nginx-installed; only it was fetched again.
    assert refreshed.tree.parent("php-tuned") == "nginx-installed"
    assert refreshed.fetched == 1


def test_refetch_all_after_a_revert_reads_everything_again(loader: SnapshotLoader) -> None:
    loader.load("web")
    assert loader.load("web", refetch_all=True).fetched == 6


def test_the_signature_changes_when_snapshots_do(loader: SnapshotLoader) -> None:
    dom = loader.lookup("web")
    before = loader.signature(dom)
    assert before.current == "before-upgrade" and len(before.names) == 6
    dom.snapshotCreateXML(snapshot_request_xml("another"), 0)
    after = loader.signature(dom)
    assert after != before
    assert after.current == "another"


def test_domains_are_listed_with_state_count_and_current(loader: SnapshotLoader) -> None:
    summaries = {d.name: d for d in loader.list_domains()}
    assert sorted(summaries) == ["build", "db", "odd", "web"]
    assert summaries["web"].snapshot_count == 6
    assert summaries["web"].current_snapshot == "before-upgrade"
    assert summaries["build"].state is DomainState.SHUTOFF
    assert summaries["build"].snapshot_count == 0
    assert summaries["db"].state is DomainState.RUNNING
    assert all(d.persistent for d in summaries.values())


def test_an_unknown_domain_is_one_sentence(loader: SnapshotLoader, lab_uri: str) -> None:
    with pytest.raises(VirtError) as caught:
        loader.load("nope")
    assert caught.value.message == f"There is no virtual machine called 'nope' on {lab_uri}."


def test_lookup_by_uuid_works_too(loader: SnapshotLoader) -> None:
    assert loader.load("6695eb01-f6a4-8304-79aa-97f2502e1931").domain.name == "db"


def test_a_domain_without_snapshots_has_an_empty_tree(loader: SnapshotLoader) -> None:
    loaded = loader.load("build")
    assert len(loaded.tree) == 0 and loaded.tree.current is None


def test_the_loader_uses_libvirt_objects_not_just_names(loader: SnapshotLoader) -> None:
    dom = loader.lookup("odd")
    assert isinstance(dom, libvirt.virDomain)
    assert loader.load(dom).tree.roots == ("same-time-a", "same-time-b")


def test_with_one_fetch_thread_the_calls_run_in_the_callers_thread(lab_uri: str) -> None:
    # In-process drivers get one: another thread would only hand the work over.
    for loader in open_loader(lab_uri, max_threads=1):
        here = threading.get_ident()
        assert set(loader.map_concurrently(lambda _: threading.get_ident(), range(5))) == {here}
        assert loader.load("web").fetched == 6


@pytest.fixture
def four_threads(lab_uri: str) -> Iterator[SnapshotLoader]:
    yield from open_loader(lab_uri, max_threads=4)


def test_the_fetch_threads_share_the_work_and_keep_the_order(four_threads: SnapshotLoader) -> None:
    barrier = threading.Barrier(3, timeout=5)
    threads: set[int] = set()

    def square(n: int) -> int:
        if n < 3:
            barrier.wait()  # returns only when three threads work at once
        threads.add(threading.get_ident())
        return n * n

    assert four_threads.map_concurrently(square, range(200)) == [n * n for n in range(200)]
    assert len(threads) >= 3


def test_a_failing_item_stops_the_rest_and_its_error_is_raised(
    four_threads: SnapshotLoader,
) -> None:
    done: list[int] = []

    def fetch(n: int) -> int:
        if n == 5:
            raise VirtError("snapshot 5 vanished")
        done.append(n)
        return n

    with pytest.raises(VirtError, match="snapshot 5 vanished"):
        four_threads.map_concurrently(fetch, range(10_000))
    assert len(done) < 10_000


def test_a_busy_pool_never_leaves_the_caller_waiting(four_threads: SnapshotLoader) -> None:
    release = threading.Event()
    # Every pool thread is taken by work that waits for this call to have finished.
    blockers = [four_threads._executor().submit(release.wait, 10) for _ in range(4)]
    assert four_threads.map_concurrently(lambda n: n + 1, range(50)) == list(range(1, 51))
    release.set()
    assert all(blocker.result(5) for blocker in blockers)
