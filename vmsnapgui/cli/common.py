"""What every ``vmsnap`` command shares: the session, output helpers, exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmsnapgui.virt.connection import Connection
    from vmsnapgui.virt.snapshot_loader import SnapshotLoader

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The reader of our output went away (``vmsnap tree --json | head``): what a shell
# reports for coreutils' commands, which die of SIGPIPE there (128 + 13).
EXIT_BROKEN_PIPE = 141


@dataclass
class Session:
    """The open connection and loader a command works with."""

    connection: Connection
    loader: SnapshotLoader


def text_width(text: str) -> int:
    """Columns a string takes in a terminal (one per character here)."""
    return len(text)


def printable(text: str) -> str:
    """Text safe for a terminal: control characters shown as escapes, not obeyed."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def report_failure(message: str) -> None:
    """The one line on stderr that a failure gets: ``vmsnap: <message>``."""
    print(f"vmsnap: {printable(message)}", file=sys.stderr, flush=True)


def print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Left-aligned columns with a header row."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def print_json(payload: Any) -> None:
    """JSON on stdout: indented at a terminal, compact (and fast) otherwise."""
    # Indented for a person at a terminal; compact otherwise, which lets the json
    # module use its C encoder (json.dump with indent is pure Python: seconds for a
    # 10,000-snapshot tree).
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(payload, indent=indent, ensure_ascii=False))
    sys.stdout.write("\n")
