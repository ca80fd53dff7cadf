"""Start-up: arguments, exit codes, the screenshot mode and what opens with no configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from tests.gui.conftest import LOAD_TIMEOUT_MS, WindowFactory
from vmsnapgui.qt import main_window
from vmsnapgui.qt.app import main, parse_selection, start_connections
from vmsnapgui.qt.app_settings import AppSettings


def run_app(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"))
    return subprocess.run(
        [sys.executable, "-m", "vmsnapgui.qt.app", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_bad_uri_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--connect", "not a uri"]) == 2
    assert "is not a libvirt URI" in capsys.readouterr().err


def test_select_takes_a_vm_and_optionally_a_snapshot() -> None:
    assert parse_selection("web") == ("web", None)
    assert parse_selection("web/tls & certs") == ("web", "tls & certs")
    assert parse_selection(None) is None


def test_screenshot_renders_the_loaded_window_and_exits_0(tmp_path: Path, lab_uri: str) -> None:
    picture = tmp_path / "window.png"
    result = run_app(
        tmp_path, "--connect", lab_uri, "--screenshot", str(picture), "--select", "web/tls & certs"
    )
    assert result.returncode == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size > 20_000
    # A screenshot run leaves the user's remembered connections alone.
    assert not (tmp_path / "config" / "vmsnapgui").exists()


def test_screenshot_exits_1_when_what_was_asked_for_did_not_load(
    tmp_path: Path, lab_uri: str
) -> None:
    missing_vm = run_app(
        tmp_path,
        "--connect",
        lab_uri,
        "--screenshot",
        str(tmp_path / "a.png"),
        "--select",
        "nosuch",
    )
    assert missing_vm.returncode == 1, missing_vm.stderr
    assert "there is no virtual machine called 'nosuch'" in missing_vm.stderr
    failed = run_app(
        tmp_path,
        "--connect",
        "qemu+tcp://127.0.0.1:1/system",
        "--screenshot",
        str(tmp_path / "b.png"),
    )
    assert failed.returncode == 1, failed.stderr
    assert "refused" in failed.stderr
    assert (tmp_path / "b.png").exists()  # the failure is on the picture too


def test_with_nothing_configured_it_tries_local_hypervisors_then_offers_the_demo_lab(
    make_window: WindowFactory,
    qtbot: QtBot,
    settings: AppSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unreachable = ("qemu+tcp://127.0.0.1:1/system", "qemu+tcp://127.0.0.1:1/session")
    monkeypatch.setattr(main_window, "LOCAL_URIS", unreachable)
    window = make_window()
    window.show()
    start_connections(window, settings, [], demo=False, demo_reset=False, remember=True)
    qtbot.waitUntil(window.is_settled, timeout=LOAD_TIMEOUT_MS)
    assert window.hosts == []
    text = window.welcome_text.text()
    assert "No hypervisor answered" in text
    assert "qemu+tcp://127.0.0.1:1/system:" in text and "/session:" in text
    assert window.demo_button.isVisible() and window.add_button.isVisible()


def test_with_nothing_configured_the_first_local_hypervisor_that_answers_is_used(
    make_window: WindowFactory,
    qtbot: QtBot,
    settings: AppSettings,
    lab_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(main_window, "LOCAL_URIS", ("qemu+tcp://127.0.0.1:1/system", lab_uri))
    window = make_window()
    start_connections(window, settings, [], demo=False, demo_reset=False, remember=True)
    qtbot.waitUntil(lambda: len(window.hosts) == 1 and window.is_settled(), timeout=LOAD_TIMEOUT_MS)
    assert window.hosts[0].uri == lab_uri
    assert settings.connections() == [lab_uri]


def test_the_window_starts_without_numpy_or_pyqtgraph() -> None:
    # Heavy modules are loaded when first needed: numpy and pyqtgraph once the window
    # shows (charts) or an image is analysed, not before the first window.
    probe = (
        "import sys\n"
        "import vmsnapgui.qt.app, vmsnapgui.qt.main_window\n"
        "print(sorted({'numpy', 'pyqtgraph'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
