"""``vmsnapgui``: start-up, argument parsing and the Qt application object.

Start-up stays light: Qt widgets and the window come first; libvirt connections open
in the background; pyqtgraph (and numpy) are imported in slices after the window has
shown.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vmsnapgui import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``vmsnapgui``."""
    parser = argparse.ArgumentParser(
        prog="vmsnapgui",
        description="Browse and manage the snapshots of libvirt virtual machines.",
    )
    parser.add_argument("--version", action="version", version=f"vmsnapgui {__version__}")
    parser.add_argument(
        "-c",
        "--connect",
        metavar="URI",
        action="append",
        default=[],
        help="open this libvirt connection (repeatable); remembered for the next start",
    )
    parser.add_argument("--demo", action="store_true", help="open the built-in demo lab")
    parser.add_argument(
        "--demo-reset", action="store_true", help="rebuild the demo lab from scratch first"
    )
    parser.add_argument(
        "--screenshot",
        metavar="FILE.png",
        help="render the window to FILE.png once everything has loaded, then exit",
    )
    parser.add_argument(
        "--select",
        metavar="VM[/SNAPSHOT]",
        help="select this virtual machine (and snapshot) after loading",
    )
    return parser


def parse_selection(text: str | None) -> tuple[str, str | None] | None:
    """``VM`` or ``VM/SNAPSHOT`` (a VM name cannot contain '/')."""
    if not text:
        return None
    vm, _, snapshot = text.partition("/")
    return vm, (snapshot or None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmsnapgui``."""
    args = build_parser().parse_args(argv)
    from vmsnapgui.core.errors import UserError
    from vmsnapgui.virt.connection import validate_uri

    try:
        uris = [validate_uri(uri) for uri in args.connect]
    except UserError as exc:
        print(f"vmsnapgui: {exc.message}", file=sys.stderr)
        return 2
    selection = parse_selection(args.select)
    if selection is not None and not selection[0]:
        print("vmsnapgui: --select needs a VM name (VM or VM/SNAPSHOT)", file=sys.stderr)
        return 2
    screenshot = Path(args.screenshot).resolve() if args.screenshot else None
    code = run(
        uris,
        demo=args.demo or args.demo_reset,
        demo_reset=args.demo_reset,
        screenshot=screenshot,
        selection=selection,
    )
    # Threads blocked in libvirt calls on a dead host (or the embedded driver's) would
    # hold up interpreter shutdown; everything is saved, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(
    uris: list[str],
    *,
    demo: bool = False,
    demo_reset: bool = False,
    screenshot: Path | None = None,
    selection: tuple[str, str | None] | None = None,
) -> int:
    """Create the application and the window, open the connections and run."""
    # A crash (ours or a library's) leaves every thread's Python stack on stderr, so a
    # bug report says where it happened.
    with contextlib.suppress(AttributeError, ValueError, OSError):
        faulthandler.enable()
    if screenshot is not None and not (
        os.environ.get("QT_QPA_PLATFORM")
        or os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
    ):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # headless: render without a screen
    from PySide6.QtWidgets import QApplication

    from vmsnapgui.qt.app_settings import AppSettings, settings_at, user_settings
    from vmsnapgui.qt.main_window import MainWindow

    quiet_offscreen_warnings()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("vmsnapgui")
    app.setOrganizationName("vmsnapgui")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("vmsnapgui")

    scratch: Path | None = None
    if screenshot is not None:
        # A screenshot run neither reads nor changes the user's remembered state.
        scratch = Path(tempfile.mkdtemp(prefix="vmsnapgui-screenshot-"))
        settings = AppSettings(settings_at(str(scratch / "settings.ini")), read_only=True)
    else:
        settings = AppSettings(user_settings())
    window = MainWindow(settings)

    start_connections(
        window, settings, uris, demo=demo, demo_reset=demo_reset, remember=screenshot is None
    )
    taker = None
    if screenshot is not None:
        from vmsnapgui.qt.screenshot import ScreenshotTaker

        window.resize(1480, 900)
        taker = ScreenshotTaker(window, screenshot, select=selection)
        taker.start()
    elif selection is not None:
        window.request_selection(*selection)
    window.show()
    code = app.exec()
    window.shutdown()
    if taker is not None and taker.exit_code is not None:
        code = taker.exit_code
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return int(code)


# Said by Qt's offscreen platform on every window show: true, harmless, and noise.
_OFFSCREEN_NOISE = ("This plugin does not support propagateSizeHints()",)


def quiet_offscreen_warnings() -> None:
    """Drop the offscreen platform's harmless chatter; pass every other Qt message on."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    def handler(kind: QtMsgType, context: object, message: str) -> None:
        if message in _OFFSCREEN_NOISE:
            return
        print(message, file=sys.stderr)

    qInstallMessageHandler(handler)


def start_connections(
    window: object,
    settings: object,
    uris: list[str],
    *,
    demo: bool,
    demo_reset: bool,
    remember: bool,
) -> None:
    """Open what the command line asks for, else what was remembered, else look around."""
    from vmsnapgui.qt.app_settings import AppSettings
    from vmsnapgui.qt.main_window import MainWindow

    assert isinstance(window, MainWindow) and isinstance(settings, AppSettings)
    if demo:
        window.open_demo_lab(reset=demo_reset, remember=remember)
    for uri in uris:
        window.add_connection(uri, remember=remember)
    if uris or demo:
        return
    remembered = settings.connections()
    if remembered:
        for entry in remembered:
            window.add_entry(entry)
    else:
        window.probe_local()


if __name__ == "__main__":
    sys.exit(main())
