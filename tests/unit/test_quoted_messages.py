"""A 64 KiB name in a message is cut to a line that still says which name it was.

The names below are as long as the test driver takes; every message that names them
must stay one short sentence, naming the start of the name and its size in bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from vmsnapgui.cli import main
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.validation import (
    MAX_NAME_LENGTH,
    ValidationError,
    validate_snapshot_name,
    validate_vm_name,
)
from vmsnapgui.virt.disk_usage import measure
from vmsnapgui.virt.errors import VirtError
from vmsnapgui.virt.operations import domain_state, set_description, snapshot_names
from vmsnapgui.virt.snapshot_loader import SnapshotLoader

HUGE = 64 * 1024
SHORT_ENOUGH = 200


def huge_name(letter: str) -> str:
    return letter * HUGE


def assert_short_and_naming(message: str, name: str) -> None:
    """One short line that quotes the start of ``name`` and says how long it is."""
    assert len(message) < SHORT_ENOUGH, message
    assert "\n" not in message
    assert f"'{name[:60]}…' ({len(name.encode())} bytes)" in message


@pytest.fixture
def vanished_vm(lab_loader: SnapshotLoader) -> Iterator[libvirt.virDomain]:
    """A VM with a 64 KiB name, undefined after it was found: every call on it fails."""
    conn = lab_loader.connection.conn
    name = huge_name("v")
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    dom.undefine()
    yield dom


def test_looking_up_a_missing_vm_with_a_huge_name(lab_loader: SnapshotLoader) -> None:
    name = huge_name("m")
    with pytest.raises(VirtError) as caught:
        lab_loader.lookup(name)
    assert caught.value.message.startswith("There is no virtual machine called ")
    assert_short_and_naming(caught.value.message, name)


def test_a_failed_lookup_of_a_huge_name_names_it_short(
    lab_loader: SnapshotLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = huge_name("f")

    def refuse(_name: str) -> None:
        raise libvirt.libvirtError("the host refused")

    monkeypatch.setattr(lab_loader.connection.conn, "lookupByName", refuse)
    with pytest.raises(VirtError) as caught:
        lab_loader.lookup(name)
    assert caught.value.message.startswith("Failed looking up ")
    assert_short_and_naming(caught.value.message, name)


def test_the_command_line_says_which_vm_is_missing_in_one_short_line(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    name = huge_name("c")
    assert main(["-c", lab_uri, "tree", name]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert_short_and_naming(err.rstrip("\n"), name)


def test_loading_the_snapshots_of_a_vanished_vm_with_a_huge_name(
    lab_loader: SnapshotLoader, vanished_vm: libvirt.virDomain
) -> None:
    with pytest.raises(VirtError) as caught:
        lab_loader.load(vanished_vm)
    assert caught.value.message.startswith("Failed reading the snapshots of ")
    assert_short_and_naming(caught.value.message, vanished_vm.name())


def test_the_signature_of_a_vanished_vm_with_a_huge_name(
    lab_loader: SnapshotLoader, vanished_vm: libvirt.virDomain
) -> None:
    with pytest.raises(VirtError) as caught:
        lab_loader.signature(vanished_vm)
    assert caught.value.message.startswith("Failed listing the snapshots of ")
    assert_short_and_naming(caught.value.message, vanished_vm.name())


def test_the_state_of_a_vanished_vm_with_a_huge_name(vanished_vm: libvirt.virDomain) -> None:
    with pytest.raises(VirtError) as caught:
        domain_state(vanished_vm)
    assert caught.value.message.startswith("Failed reading the state of ")
    assert_short_and_naming(caught.value.message, vanished_vm.name())


def test_the_snapshot_names_of_a_vanished_vm_with_a_huge_name(
    vanished_vm: libvirt.virDomain,
) -> None:
    with pytest.raises(VirtError) as caught:
        snapshot_names(vanished_vm)
    assert caught.value.message.startswith("Failed listing the snapshots of ")
    assert_short_and_naming(caught.value.message, vanished_vm.name())


def test_describing_a_missing_snapshot_with_a_huge_name(lab_loader: SnapshotLoader) -> None:
    name = huge_name("s")
    with pytest.raises(VirtError) as caught:
        set_description(lab_loader, "web", name, "a description")
    assert caught.value.message.startswith("Failed changing the description of ")
    assert_short_and_naming(caught.value.message, name)


def test_measuring_a_vm_with_a_huge_name_that_vanished(lab_loader: SnapshotLoader) -> None:
    conn = lab_loader.connection.conn
    name = huge_name("d")
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    loaded = lab_loader.load(dom)
    dom.undefine()
    with pytest.raises(VirtError) as caught:
        measure(lab_loader, loaded)
    assert caught.value.message.startswith("Failed finding ")
    assert_short_and_naming(caught.value.message, name)


@pytest.mark.parametrize(
    ("validate", "existing_message"),
    [
        (validate_snapshot_name, "There is already a snapshot called "),
        (validate_vm_name, "There is already a virtual machine called "),
    ],
)
def test_a_duplicate_of_the_longest_allowed_name_is_quoted_short(
    validate: object, existing_message: str
) -> None:
    assert callable(validate)
    name = "n" * MAX_NAME_LENGTH
    with pytest.raises(ValidationError) as caught:
        validate(name, {name})
    message = caught.value.message
    assert message.startswith(existing_message)
    assert_short_and_naming(message, name)


@pytest.mark.parametrize("validate", [validate_snapshot_name, validate_vm_name])
def test_a_huge_new_name_is_refused_without_being_quoted_whole(validate: object) -> None:
    assert callable(validate)
    name = huge_name("h")
    with pytest.raises(UserError) as caught:
        validate(name, {name})
    assert len(caught.value.message) < SHORT_ENOUGH
    assert "too long" in caught.value.message
