"""Metadata-only operations on the test driver."""

from __future__ import annotations

import pytest

from vmsnapgui.core.validation import ValidationError
from vmsnapgui.virt.operations import set_description
from vmsnapgui.virt.snapshot_loader import SnapshotLoader


@pytest.fixture
def loader(lab_loader: SnapshotLoader) -> SnapshotLoader:
    return lab_loader


def test_editing_a_description_saves_it_through_libvirt_and_keeps_current(
    loader: SnapshotLoader,
) -> None:
    loader.load("web")
    set_description(loader, "web", "before-upgrade", "Kernel 6.1 <LTS> & co\nsecond line")
    tree = loader.load("web").tree
    assert tree["before-upgrade"].description == "Kernel 6.1 <LTS> & co\nsecond line"
    assert tree.current == "before-upgrade"
    assert tree.parent("before-upgrade") == "tls & certs"
    # Only that snapshot was fetched again.
    assert loader.load("web").fetched == 0


def test_clearing_a_description_removes_it(loader: SnapshotLoader) -> None:
    set_description(loader, "web", "base", None)
    assert loader.load("web").tree["base"].description is None


def test_a_bad_description_is_refused_before_libvirt_is_asked(loader: SnapshotLoader) -> None:
    with pytest.raises(ValidationError):
        set_description(loader, "web", "base", "bad\x00byte")
    assert loader.load("web").tree["base"].description == "Fresh install of Debian 12"


def test_editing_a_missing_snapshot_is_one_sentence(loader: SnapshotLoader) -> None:
    with pytest.raises(Exception) as caught:
        set_description(loader, "web", "ghost", "x")
    assert str(caught.value) == (
        "Failed changing the description of 'ghost': that snapshot does not exist (any more)."
    )
