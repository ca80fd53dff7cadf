"""``vmsnap``: the command-line face of the snapshot engine.

Exit status: 0 on success, 1 with one line on stderr on failure, 2 for usage errors,
141 (quietly) when the reader of the output has gone away, as with coreutils.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from vmsnapgui import __version__
from vmsnapgui.cli import du_command, read_commands, write_commands
from vmsnapgui.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_USAGE,
    Session,
    report_failure,
)
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.quoting import quoted

# Each module adds its verbs to the parser: register(subparsers) and set_defaults(run=…).
COMMAND_MODULES = (read_commands, write_commands, du_command)


# CPython's argparse until its fix of gh-81691 (3.13, late 3.12 releases; this is
# 3.11) takes the first "--" out of each positional's words, so in ``take VM -- --``
# the name "--" vanished and a default name was used. Every "--" after the first one
# stands for a literal "--" while argparse parses; no real argument can contain NUL.
_LITERAL_DOUBLE_DASH = "\0--"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        message = message.replace(_LITERAL_DOUBLE_DASH, "--")
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


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``vmsnap``'s arguments; after a first ``--`` every word is a value, ``--`` too."""
    words = list(sys.argv[1:] if argv is None else argv)
    if "--" in words:
        first = words.index("--") + 1
        words[first:] = [_LITERAL_DOUBLE_DASH if w == "--" else w for w in words[first:]]
    parser = build_parser()
    args, extra = parser.parse_known_args(words)
    literal = bool(extra) and extra[0] == "--"
    if literal:
        extra.pop(0)
    # argparse before Python 3.12 gives an optional positional nothing when an option
    # stands between it and the positional before it: `take VM --memory none NAME`.
    if extra and getattr(args, "name", "") is None and (literal or extra[0][:1] != "-"):
        args.name = extra.pop(0)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    for key, value in vars(args).items():
        if value == _LITERAL_DOUBLE_DASH:
            setattr(args, key, "--")
        elif isinstance(value, list):
            setattr(args, key, ["--" if v == _LITERAL_DOUBLE_DASH else v for v in value])
    return args


# The exit status main() settled on, once it has: see _end_stuck_command.
_settled: list[int] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``vmsnap``."""
    _settled.clear()
    code = _main(parse_arguments(argv))
    _settled.append(code)
    return code


def _end_stuck_command(sentence: str) -> None:
    """Calls on a dead host never returned (the connection's watchdog says): end the process.

    Threads stuck inside libvirt cannot be ended, and the interpreter would wait for
    them at exit. Runs on the watchdog's thread: says ``sentence`` unless main() has
    already settled how the command ends, then leaves at once with that status.
    """
    status = _settled[-1] if _settled else None
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    if status is None:
        report_failure(sentence)
        status = EXIT_FAILURE
    os._exit(status)


def _main(args: argparse.Namespace) -> int:
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except UserError as exc:
        report_failure(exc.message)
        return EXIT_FAILURE
    except OSError as exc:  # a file the engine could not use: still one line
        where = f": {quoted(os.fsdecode(exc.filename))}" if exc.filename is not None else ""
        report_failure(f"{exc.strerror or exc}{where}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        report_failure("interrupted")
        return EXIT_FAILURE


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail loudly.

    Python's documented recipe for SIGPIPE: output still buffered is dropped quietly.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (a test's capture)
        pass


def _run(args: argparse.Namespace) -> int:
    needs_write = getattr(args, "needs_write", None)
    if args.read_only and needs_write:
        raise UserError(
            f"The connection is read-only (--read-only); {needs_write} needs a "
            "read-write connection."
        )
    # Heavy imports (libvirt) wait until a command really needs them.
    from vmsnapgui.virt.connection import Connection
    from vmsnapgui.virt.snapshot_loader import SnapshotLoader

    uri = args.connect
    if args.demo or args.demo_reset:
        from vmsnapgui.virt.demo_lab import ensure_demo_lab

        uri = ensure_demo_lab(reset=args.demo_reset, progress=_progress_to_stderr).uri
    connection = Connection(
        uri, read_only=args.read_only, monitor=False, on_stuck_calls=_end_stuck_command
    )
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
