"""Names and paths the user gave, quoted for a one-line message and kept short.

A message that quotes a 64 KiB snapshot name whole is no longer one line anyone can
read; a message that silently cuts it could name another, shorter name. So a long
value is cut and says so: its first characters, an ellipsis, and its full size in bytes.
Listings (``vmsnap tree``, the window's tree, JSON) show names whole; this is for
sentences.
"""

from __future__ import annotations

MAX_QUOTED_CHARACTERS = 60


def quoted(value: str, limit: int = MAX_QUOTED_CHARACTERS) -> str:
    """``value`` quoted like ``repr`` (control characters escaped), cut when long.

    ``quoted("web")`` is ``'web'``; a 65,536-character name becomes its first 60
    characters and an ellipsis in quotes, then ``(65536 bytes)``.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit] + '…'!r} ({byte_count(value)} bytes)"


def shortened(value: str, limit: int = MAX_QUOTED_CHARACTERS) -> str:
    """``value`` without quotes (a host, a user name), cut like :func:`quoted` when long.

    Control characters are escaped here too, so the message stays one line.
    """
    text = value if len(value) <= limit else value[:limit] + "…"
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(value) > limit:
        text += f" ({byte_count(value)} bytes)"
    return text


def byte_count(value: str) -> int:
    """Bytes ``value`` takes in UTF-8, counting undecodable argv bytes as the one byte each was."""
    try:
        # Undecodable bytes from the command line arrive as lone surrogates
        # (surrogateescape): each stands for one byte.
        return len(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(value.encode("utf-8", "surrogatepass"))
