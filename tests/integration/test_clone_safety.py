"""Cloning safely on real guests: what it reads stays what it meant, names stay names,
new files are made exclusively with the permissions of what they copy (issue 11, items
3, 4, 14 and the clone parts of 15)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import (
    MIB,
    SESSION_PREFIX,
    SYSTEM_URI,
    Guest,
    GuestFactory,
    TmpfsFactory,
    image_holds,
    qemu_io,
    remove_domain,
    virsh,
)
from vmsnapgui.core.errors import UserError
from vmsnapgui.virt import clone_domain as clone_module
from vmsnapgui.virt.clone_domain import SPACE_MARGIN, CloneRequest, CloneResult, clone_domain
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot

GIB = 1024 * MIB


@pytest.fixture
def loader(system_loader: SnapshotLoader) -> SnapshotLoader:
    return system_loader


def domain_names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains(0)}


def disk_of(guest: Guest, clone: str, target: str = "vda", ext: str = "qcow2") -> Path:
    """Where a clone's disk goes by default: beside the source's."""
    return guest.directory / f"{clone}-{target}.{ext}"


class Clone:
    """``clone_domain`` on a thread of its own, so the test can act while it copies."""

    def __init__(self, loader: SnapshotLoader, guest: Guest, request: CloneRequest) -> None:
        self.outcome: CloneResult | BaseException | None = None

        def run() -> None:
            try:
                self.outcome = clone_domain(loader, guest.dom, request)
            except BaseException as exc:
                self.outcome = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float = 300) -> CloneResult | BaseException | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the clone never ended"
        return self.outcome


def wait_for(condition: Callable[[], bool], clone: Clone, timeout: float = 120) -> bool:
    """Wait until ``condition`` holds; False when the clone ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not clone.running():
            return False
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.002)
    return True


def partial_of(target: Path) -> Path | None:
    """The private file a clone's disk is written in until it is complete, if any."""
    try:
        names = os.listdir(target.parent)
    except OSError:
        return None
    prefix = f".{target.name}.partial-"
    found = sorted(name for name in names if name.startswith(prefix))
    return target.parent / found[0] if found else None


def written(target: Path, at_least: int) -> Callable[[], bool]:
    """True once the disk ``target`` holds ``at_least`` bytes (under its private name
    while the copy is under way, under its own once complete)."""

    def check() -> bool:
        for path in (partial_of(target), target):
            try:
                if path is not None and path.stat().st_blocks * 512 >= at_least:
                    return True
            except OSError:
                continue
        return False

    return check


# -- item 3: a clone reads what it meant to read ---------------------------------------


def internal_guest(make_guest: GuestFactory, loader: SnapshotLoader, size: int) -> Guest:
    """A running guest whose internal snapshot 'golden' holds 0xA1 over ``size`` bytes
    that only the snapshot still has (Now holds 0xB2 there)."""
    guest = make_guest(size="2G")
    qemu_io(str(guest.disks["vda"]), f"write -P 0xa1 0 {size}")
    take_snapshot(loader, guest.dom, TakeRequest("golden", mode=SnapshotMode.INTERNAL_DISK))
    qemu_io(str(guest.disks["vda"]), f"write -P 0xb2 0 {size}")
    guest.dom.create()
    return guest


def external_guest(make_guest: GuestFactory, loader: SnapshotLoader, size: int) -> Guest:
    """A running guest whose external snapshot 'golden' froze 0xA1 over ``size`` bytes;
    after it, the guest wrote 0xB2 over the last quarter (into the overlay)."""
    guest = make_guest(size="2G")
    qemu_io(str(guest.disks["vda"]), f"write -P 0xa1 0 {size}")
    guest.dom.create()
    take_snapshot(loader, guest.dom, TakeRequest("golden", mode=SnapshotMode.EXTERNAL_DISK))
    guest.write(0xB2, size * 3 // 4, size // 4)
    return guest


def assert_nothing_of_the_clone(guest: Guest, before: set[str], name: str) -> None:
    conn = guest.dom.connect()
    assert name not in domain_names(conn)
    assert set(os.listdir(guest.directory)) - before == set()  # a merge may remove some


def assert_changed(outcome: object) -> None:
    """The clone failed because its snapshot changed, said in one sentence."""
    assert isinstance(outcome, UserError), f"the clone was made: {outcome}"
    assert outcome.message.endswith("the clone was not made."), outcome.message
    assert "golden" in outcome.message and "\n" not in outcome.message


def assert_clone_holds(path: Path, pattern: int, size: int) -> None:
    assert image_holds(str(path), pattern, 0, size), f"{path} does not hold {pattern:#x}"


@pytest.mark.parametrize("kind", ["internal", "external"])
def test_a_clone_of_a_running_guests_snapshot_holds_the_snapshots_bytes(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str], kind: str
) -> None:
    size = 256 * MIB
    maker = internal_guest if kind == "internal" else external_guest
    guest = maker(make_guest, loader, size)
    name = f"{guest.name}-calm"
    clones.append(name)
    result = clone_domain(loader, guest.dom, CloneRequest(name, "golden"))
    assert result.files == (str(disk_of(guest, name)),)
    assert_clone_holds(disk_of(guest, name), 0xA1, size)


DELETERS = {
    "internal, deleted": ("internal", lambda guest: ["snapshot-delete", guest.name, "golden"]),
    "external, committed": (
        "external",
        lambda guest: ["blockcommit", guest.name, "vda", "--active", "--pivot", "--wait"],
    ),
    "external, deleted": ("external", lambda guest: ["snapshot-delete", guest.name, "golden"]),
}


@pytest.mark.parametrize("case", list(DELETERS))
def test_a_snapshot_deleted_while_it_is_copied_fails_the_clone_and_leaves_nothing(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str], case: str
) -> None:
    kind, command = DELETERS[case]
    if case == "external, deleted" and not loader.connection.capabilities.external_delete:
        pytest.skip("libvirt here cannot delete external snapshots")
    size = 1536 * MIB
    guest = (internal_guest if kind == "internal" else external_guest)(make_guest, loader, size)
    before = set(os.listdir(guest.directory))
    name = f"{guest.name}-raced"
    clones.append(name)
    target = disk_of(guest, name)

    clone = Clone(loader, guest, CloneRequest(name, "golden"))
    assert wait_for(written(target, 64 * MIB), clone), clone.result()
    # Half written: under a private name, readable by its owner alone.
    partial = partial_of(target)
    assert partial is not None and not target.exists()
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    virsh(SYSTEM_URI, *command(guest))
    outcome = clone.result()

    assert_changed(outcome)
    assert_nothing_of_the_clone(guest, before, name)


@pytest.mark.parametrize("case", list(DELETERS))
def test_a_snapshot_deleted_as_the_copy_ends_never_gives_a_clone_with_other_bytes(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str], case: str
) -> None:
    """Whether the delete lands before the copy ends or after, the clone either fails
    leaving nothing or holds exactly the snapshot's bytes."""
    kind, command = DELETERS[case]
    if case == "external, deleted" and not loader.connection.capabilities.external_delete:
        pytest.skip("libvirt here cannot delete external snapshots")
    size = 512 * MIB
    guest = (internal_guest if kind == "internal" else external_guest)(make_guest, loader, size)
    before = set(os.listdir(guest.directory))
    name = f"{guest.name}-late"
    clones.append(name)
    target = disk_of(guest, name)

    clone = Clone(loader, guest, CloneRequest(name, "golden"))
    wait_for(written(target, size * 9 // 10), clone)
    virsh(SYSTEM_URI, *command(guest))
    outcome = clone.result()

    if isinstance(outcome, CloneResult):
        assert_clone_holds(target, 0xA1, size)
    else:
        assert_changed(outcome)
        assert_nothing_of_the_clone(guest, before, name)


def test_a_snapshot_replaced_by_one_of_the_same_name_during_the_copy_fails_the_clone(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    size = 1536 * MIB
    guest = internal_guest(make_guest, loader, size)
    before = set(os.listdir(guest.directory))
    name = f"{guest.name}-replaced"
    clones.append(name)
    clone = Clone(loader, guest, CloneRequest(name, "golden"))
    assert wait_for(written(disk_of(guest, name), 64 * MIB), clone), clone.result()
    virsh(SYSTEM_URI, "snapshot-delete", guest.name, "golden")
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "golden")
    assert_changed(clone.result())
    assert_nothing_of_the_clone(guest, before, name)


# -- item 4: names are never options --------------------------------------------------

HOSTILE_NAMES = [
    "good",
    "mine,snapshot.name=good",
    "a,b",
    "a,,b",
    "x=y",
    "nbd:x",
    'json:{"driver":"null-co"}',
    "with space",
    "1",
]


def test_snapshot_names_with_commas_equals_colons_and_json_clone_their_own_bytes(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    guest = make_guest()
    patterns = {}
    for index, snapshot in enumerate(HOSTILE_NAMES):
        pattern = 0x30 + index
        guest.write(pattern, 0, MIB)
        virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "--name", snapshot)
        patterns[snapshot] = pattern
    for index, snapshot in enumerate(HOSTILE_NAMES):
        name = f"{guest.name}-n{index}"
        clones.append(name)
        result = clone_domain(loader, guest.dom, CloneRequest(name, snapshot))
        for other, pattern in patterns.items():
            holds = image_holds(result.files[0], pattern, 0, MIB)
            assert holds == (other == snapshot), (snapshot, other)


def test_a_relative_target_folder_that_looks_like_a_protocol_is_a_folder(
    make_guest: GuestFactory,
    loader: SnapshotLoader,
    clones: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guest = make_guest()
    guest.write(0x44, 0, MIB)
    virsh(SYSTEM_URI, "snapshot-create-as", guest.name, "--name", "s")
    for index, folder in enumerate(["nbd:x", 'json:{"driver":"null-co"}']):
        (guest.directory / folder).mkdir()
        monkeypatch.chdir(guest.directory)
        name = f"{guest.name}-p{index}"
        clones.append(name)
        result = clone_domain(loader, guest.dom, CloneRequest(name, "s", target_dir=folder))
        assert result.files == (str(guest.directory / folder / f"{name}-vda.qcow2"),)
        assert image_holds(result.files[0], 0x44, 0, MIB)


# -- item 14: new files are ours alone ---------------------------------------------------


def test_clone_disks_get_the_mode_and_owner_of_what_they_copy(
    make_guest: GuestFactory, loader: SnapshotLoader, clones: list[str]
) -> None:
    guest = make_guest()
    source = guest.disks["vda"]
    os.chown(source, 4242, 4343)
    os.chmod(source, 0o640)
    take_snapshot(loader, guest.dom, TakeRequest("inside"))
    take_snapshot(loader, guest.dom, TakeRequest("outside", mode=SnapshotMode.EXTERNAL_DISK))
    old_umask = os.umask(0o022)  # what a shell usually has: new files readable by all
    try:
        for snapshot, linked in (("inside", False), ("outside", False), ("outside", True)):
            name = f"{guest.name}-{snapshot}-{'l' if linked else 'f'}"
            clones.append(name)
            result = clone_domain(loader, guest.dom, CloneRequest(name, snapshot, linked=linked))
            info = os.stat(result.files[0])
            assert stat.S_IMODE(info.st_mode) == 0o640, (name, oct(info.st_mode))
            assert (info.st_uid, info.st_gid) == (4242, 4343), name
    finally:
        os.umask(old_umask)


@pytest.fixture
def uefi_guest(guest_root: Path, system_conn: libvirt.virConnect) -> Iterator[Guest]:
    """A shut-off guest with UEFI variables (never started: no firmware is needed)."""
    name = f"{SESSION_PREFIX}uefi-{uuid.uuid4().hex[:6]}"
    directory = guest_root / name
    directory.mkdir()
    disk = directory / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    (directory / "CODE.fd").write_bytes(b"\0" * 65536)
    variables = directory / "VARS.fd"
    variables.write_bytes(os.urandom(131072))
    os.chown(variables, 4242, 4343)
    os.chmod(variables, 0o600)
    xml = f"""<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64' machine='pc'>hvm</type>
        <loader readonly='yes' type='pflash'>{directory}/CODE.fd</loader>
        <nvram>{variables}</nvram></os>
      <features><acpi/></features>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
        <source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""
    dom = system_conn.defineXML(xml)
    yield Guest(dom, directory, {"vda": disk})
    remove_domain(dom)
    shutil.rmtree(directory, ignore_errors=True)


def test_the_uefi_variables_are_copied_exclusively_with_their_mode_and_owner(
    uefi_guest: Guest, loader: SnapshotLoader, clones: list[str]
) -> None:
    name = f"{uefi_guest.name}-c"
    clones.append(name)
    result = clone_domain(loader, uefi_guest.dom, CloneRequest(name, None))
    copy = uefi_guest.directory / f"{name}_VARS.fd"
    assert str(copy) in result.files
    assert copy.read_bytes() == (uefi_guest.directory / "VARS.fd").read_bytes()
    info = copy.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == (4242, 4343)


def test_a_target_folder_that_is_a_symlink_is_refused_saying_where_it_points(
    make_guest: GuestFactory, loader: SnapshotLoader, tmp_path: Path
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "looks-harmless"
    link.symlink_to(elsewhere)
    with pytest.raises(VirtError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(f"{guest.name}-l", "s", target_dir=str(link)))
    assert caught.value.message == (
        f"The folder {link} is a symbolic link to {elsewhere}; name the real folder if the "
        "clone's disks should go there."
    )
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_at_the_disks_name_is_never_followed(
    make_guest: GuestFactory, loader: SnapshotLoader, tmp_path: Path
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    name = f"{guest.name}-trap"
    victim = tmp_path / "victim"
    disk_of(guest, name).symlink_to(victim)  # dangling: exists() says no
    with pytest.raises(VirtError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(name, "s"))
    assert "exists already" in caught.value.message
    assert not victim.exists()
    assert disk_of(guest, name).is_symlink()


def test_a_symlink_put_at_the_disks_name_after_planning_is_not_followed_nor_removed(
    make_guest: GuestFactory,
    loader: SnapshotLoader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    system_conn: libvirt.virConnect,
) -> None:
    guest = make_guest()
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    name = f"{guest.name}-late-trap"
    victim = tmp_path / "victim"
    real_plan = clone_module.plan_clone

    def plan_then_race(*args: object, **kwargs: object) -> clone_module.ClonePlan:
        plan = real_plan(*args, **kwargs)  # type: ignore[arg-type]
        Path(plan.disks[0].target).symlink_to(victim)  # another program, just then
        return plan

    monkeypatch.setattr(clone_module, "plan_clone", plan_then_race)
    with pytest.raises(VirtError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(name, "s"))
    assert "exists already" in caught.value.message
    assert not victim.exists()
    assert disk_of(guest, name).is_symlink()  # not ours: left alone
    assert name not in domain_names(system_conn)


def test_a_file_put_at_the_disks_name_during_the_copy_is_neither_overwritten_nor_removed(
    make_guest: GuestFactory,
    loader: SnapshotLoader,
    monkeypatch: pytest.MonkeyPatch,
    system_conn: libvirt.virConnect,
) -> None:
    guest = make_guest()
    guest.write(0x77, 0, MIB)
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    before = set(os.listdir(guest.directory))
    name = f"{guest.name}-raced-name"
    target = disk_of(guest, name)
    real_run = clone_module._run_qemu_img

    def copy_then_race(*args: object, **kwargs: object) -> None:
        real_run(*args, **kwargs)  # type: ignore[arg-type]
        target.write_bytes(b"another program's file")  # just as the copy ends

    monkeypatch.setattr(clone_module, "_run_qemu_img", copy_then_race)
    with pytest.raises(VirtError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(name, "s"))
    assert caught.value.message == (
        f"The file {target} exists already; choose another name or folder."
    )
    assert target.read_bytes() == b"another program's file"
    assert set(os.listdir(guest.directory)) == before | {target.name}
    assert name not in domain_names(system_conn)


# -- item 15: folders and space said plainly -----------------------------------------------


def refusal(loader: SnapshotLoader, guest: Guest, folder: str) -> str:
    with pytest.raises(UserError) as caught:
        clone_domain(loader, guest.dom, CloneRequest(f"{guest.name}-f", "s", target_dir=folder))
    message = caught.value.message
    assert "\n" not in message
    return message


@pytest.fixture
def shut_off_guest(make_guest: GuestFactory, loader: SnapshotLoader) -> Guest:
    guest = make_guest()
    guest.write(0x55, 0, 4 * MIB)
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    return guest


def test_a_read_only_folder_is_called_read_only(
    shut_off_guest: Guest, loader: SnapshotLoader, small_disk: TmpfsFactory
) -> None:
    folder = small_disk("8M")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    assert refusal(loader, shut_off_guest, str(folder)) == (
        f"The folder {folder} is read-only (its file system is mounted read-only)."
    )


def test_a_folder_the_user_cannot_write_in_says_so(
    shut_off_guest: Guest,
    loader: SnapshotLoader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        clone_module.os,
        "access",
        lambda path, mode, **kw: False if str(path) == str(folder) else real_access(path, mode),
    )
    assert refusal(loader, shut_off_guest, str(folder)) == f"You cannot write in {folder}."


def test_a_file_given_as_the_folder_is_called_a_file(
    shut_off_guest: Guest, loader: SnapshotLoader, tmp_path: Path
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("hello")
    assert refusal(loader, shut_off_guest, str(file)) == f"{file} is a file, not a folder."
    missing = tmp_path / "nowhere"
    assert refusal(loader, shut_off_guest, str(missing)) == f"The folder {missing} does not exist."


def test_a_folder_name_too_long_for_the_file_system_is_one_sentence(
    shut_off_guest: Guest, loader: SnapshotLoader, tmp_path: Path
) -> None:
    folder = str(tmp_path / ("x" * 300))
    message = refusal(loader, shut_off_guest, folder)
    assert "too long" in message and message.count(".") >= 1


def test_when_only_the_margin_does_not_fit_the_message_says_so(
    shut_off_guest: Guest, loader: SnapshotLoader, small_disk: TmpfsFactory
) -> None:
    folder = small_disk("48M")  # the copy (about 4 MiB) fits; it and the margin do not
    message = refusal(loader, shut_off_guest, str(folder))
    assert message.startswith("The clone needs ")
    assert "64.0 MiB more must stay free as a margin" in message, message
    assert message.endswith(f"is free in {folder}.")
    assert SPACE_MARGIN == 64 * MIB
    assert os.listdir(folder) == []


# -- rollback: only what is ours and unused -----------------------------------------------


def test_a_vm_of_the_same_name_made_during_the_copy_fails_the_clone_and_is_left_alone(
    make_guest: GuestFactory, loader: SnapshotLoader, system_conn: libvirt.virConnect
) -> None:
    guest = make_guest(size="1G")
    qemu_io(str(guest.disks["vda"]), f"write -P 0x66 0 {512 * MIB}")
    take_snapshot(loader, guest.dom, TakeRequest("s"))
    before = set(os.listdir(guest.directory))
    name = f"{guest.name}-taken"
    other_xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    other_xml = other_xml.replace(f"<name>{guest.name}</name>", f"<name>{name}</name>")
    other_xml = "\n".join(line for line in other_xml.splitlines() if "<uuid>" not in line)
    clone = Clone(loader, guest, CloneRequest(name, "s"))
    assert wait_for(written(disk_of(guest, name), 32 * MIB), clone), clone.result()
    other = system_conn.defineXML(other_xml)  # another client takes the name meanwhile
    try:
        outcome = clone.result()
        assert isinstance(outcome, VirtError), outcome
        assert name in outcome.message and "\n" not in outcome.message
        assert set(os.listdir(guest.directory)) == before
        assert system_conn.lookupByName(name).UUIDString() == other.UUIDString()
    finally:
        remove_domain(other)
