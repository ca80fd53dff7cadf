"""Analysing local qcow2 images in a helper process gives what analysing them here does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.core.qcow2_images import MIB, QEMU_IMG, QEMU_IO, create, io, snapshot
from vmsnapgui.core.qcow2 import Qcow2Error
from vmsnapgui.virt import analysis_process

pytestmark = pytest.mark.skipif(
    QEMU_IMG is None or QEMU_IO is None, reason="needs qemu-img and qemu-io"
)


@pytest.fixture
def helper() -> Iterator[None]:
    analysis_process.use_helper_process(True)
    yield
    analysis_process.use_helper_process(False)
    analysis_process.shutdown()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = create(tmp_path / "disk.qcow2", "256M")
    io(path, "write -P 0x11 0 3M")
    snapshot(path, "one")
    io(path, "write -P 0x22 0 1M", "write -P 0x33 64M 2M")
    snapshot(path, "two")
    io(path, "write -P 0x44 0 64k")
    return path


def test_the_helper_measures_what_this_process_does(helper: None, image: Path) -> None:
    parents = {"one": None, "two": "one"}
    there = analysis_process.analyse_file(str(image), parents, "two")
    pid = analysis_process.helper_pid()
    assert pid is not None and pid != os.getpid()  # it ran in another process
    analysis_process.use_helper_process(False)
    here = analysis_process.analyse_file(str(image), parents, "two")
    assert there == here
    assert there.snapshot("two").delta_bytes == 3 * MIB  # 1 MiB replaced, 2 MiB new
    assert there.now_delta_bytes == 64 * 1024


def test_failures_come_back_as_the_errors_they_are(helper: None, tmp_path: Path) -> None:
    not_qcow2 = tmp_path / "plain.img"
    not_qcow2.write_bytes(b"\0" * 4096)
    with pytest.raises(Qcow2Error) as failed:
        analysis_process.analyse_file(str(not_qcow2), None, None)
    assert failed.value.message
    with pytest.raises(OSError) as missing:
        analysis_process.analyse_file(str(tmp_path / "gone.qcow2"), None, None)
    assert missing.value.errno is not None and missing.value.errno > 0


def test_a_helper_that_died_is_replaced(helper: None, image: Path) -> None:
    analysis_process.analyse_file(str(image), None, None)
    first = analysis_process.helper_pid()
    assert first is not None
    os.kill(first, 9)
    # Whatever call finds it dead still answers; a new helper serves what follows.
    assert analysis_process.analyse_file(str(image), None, None).snapshots
    assert analysis_process.analyse_file(str(image), None, None).snapshots
    second = analysis_process.helper_pid()
    assert second is not None and second != first


def test_a_helper_that_cannot_start_is_given_up(
    helper: None, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    analysis_process.shutdown()
    monkeypatch.setattr(analysis_process.sys, "executable", "/bin/false")
    for _ in range(analysis_process.GIVE_UP_AFTER):
        assert analysis_process.analyse_file(str(image), None, None).snapshots  # here
    assert analysis_process.helper_pid() is None
    assert not analysis_process._enabled  # no more attempts to start it
