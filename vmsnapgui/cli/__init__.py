"""``vmsnap``: the command-line face of the snapshot engine.

Exit status: 0 on success, 1 with one line on stderr on failure, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from vmsnapgui import __version__
from vmsnapgui.cli import du_command, read_commands, write_commands
from vmsnapgui.cli.common import EXIT_FAILURE, EXIT_USAGE, Session, printable
from vmsnapgui.core.errors import UserError

# Each module adds its verbs to the parser: register(subparsers) and set_defaults(run=…).
COMMAND_MODULES = (read_commands, write_commands, du_command)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``vmsnap``."""
    parser = _Parser(
        prog="vmsnap",
        description="Snapshot trees, sizes and operations for libvirt virtual machines.",
    )
    parser.add_argument("--version", action="version", version=f"vmsnap {__version__}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "-c", "--connect", metavar="URI", help="libvirt URI (default: libvirt's default)"
    )
    where.add_argument(
        "--demo", action="store_true", help="use the built-in demo lab (built on first use)"
    )
    parser.add_argument(
        "--demo-reset", action="store_true", help="rebuild the demo lab from scratch first"
    )
    parser.add_argument("--read-only", action="store_true", help="open the connection read-only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmsnap``."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        print(f"vmsnap: {printable(exc.message)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("vmsnap: interrupted", file=sys.stderr)
        return EXIT_FAILURE


def _run(args: argparse.Namespace) -> int:
    # Heavy imports (libvirt) wait until a command really needs them.
    from vmsnapgui.virt.connection import Connection
    from vmsnapgui.virt.snapshot_loader import SnapshotLoader

    uri = args.connect
    if args.demo or args.demo_reset:
        from vmsnapgui.virt.demo_lab import ensure_demo_lab

        uri = ensure_demo_lab(reset=args.demo_reset, progress=_progress_to_stderr).uri
    connection = Connection(uri, read_only=args.read_only, monitor=False)
    connection.open()
    loader = SnapshotLoader(connection)
    try:
        code: int = args.run(args, Session(connection, loader))
        return code
    finally:
        loader.close()
        connection.close()


def _progress_to_stderr(message: str) -> None:
    print(f"vmsnap: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
