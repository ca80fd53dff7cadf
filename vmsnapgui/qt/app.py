"""``vmsnapgui``: start-up, argument parsing and the Qt application object."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmsnapgui``."""
    args = build_parser().parse_args(argv)
    from vmsnapgui.core.errors import UserError

    try:
        from vmsnapgui.virt.connection import validate_uri

        for uri in args.connect:
            validate_uri(uri)
    except UserError as exc:
        print(f"vmsnapgui: {exc.message}", file=sys.stderr)
        return 2
    print(
        "vmsnapgui: the snapshot browser window is not built yet; "
        "use 'vmsnap list' and 'vmsnap tree VM' meanwhile.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
