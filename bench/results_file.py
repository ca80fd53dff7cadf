"""Writing benchmark results into bench/RESULTS.md: one section per benchmark.

Other sections belong to other benchmarks (which may be run meanwhile), so the file is
read and written back at once, touching only the lines of the section concerned.
"""

from __future__ import annotations

from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"
_EMPTY = "# Benchmark results\n"


def _section_bounds(lines: list[str], heading: str) -> tuple[int, int] | None:
    """(first line, line after the last) of the section under ``heading``, if any."""
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def replace_section(heading: str, block: str, path: Path = RESULTS_FILE) -> None:
    """Put ``block`` (which starts with ``heading``) in place of that section, or at the end."""
    text = path.read_text(encoding="utf-8") if path.exists() else _EMPTY
    lines = text.splitlines()
    bounds = _section_bounds(lines, heading)
    new_lines = block.strip("\n").splitlines()
    if bounds is None:
        lines = [*lines, "", *new_lines]
    else:
        start, end = bounds
        lines = [*lines[:start], *new_lines, *([""] if end < len(lines) else []), *lines[end:]]
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def append_to_section(heading: str, block: str, path: Path = RESULTS_FILE) -> None:
    """Add ``block`` at the end of the section under ``heading`` (made if missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else _EMPTY
    lines = text.splitlines()
    bounds = _section_bounds(lines, heading)
    new_lines = block.strip("\n").splitlines()
    if bounds is None:
        lines = [*lines, "", heading, "", *new_lines]
    else:
        _start, end = bounds
        head = lines[:end]
        while head and not head[-1].strip():
            head.pop()
        lines = [*head, "", *new_lines, *([""] if end < len(lines) else []), *lines[end:]]
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
