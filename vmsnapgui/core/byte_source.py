"""Random-access, read-only byte sources: a local file, bytes in memory, or a remote volume.

The qcow2 reader asks for everything one phase needs in a single :meth:`ByteSource.read_many`
call, so a remote source (libvirt's volume download API) can fetch the ranges concurrently
and a local one can merge neighbours into fewer system calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

__all__ = ["ByteSource", "BytesByteSource", "FileByteSource", "coalesce_ranges"]

# Ranges closer than this are read as one piece: one pread of a few kilobytes more is cheaper
# than another system call (or, remotely, another round trip).
_MERGE_GAP = 16 * 1024
# A merged piece never grows beyond this, so a batch never needs one huge buffer.
_MERGE_LIMIT = 8 * 1024 * 1024


@runtime_checkable
class ByteSource(Protocol):
    """Read-only random access to the bytes of one image file."""

    def size(self) -> int:
        """Return the length of the source in bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``; fewer only where the source ends."""
        ...

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return the bytes of each ``(offset, length)`` range, in the order asked.

        Each result is short only where the source ends. Implementations may fetch the
        ranges concurrently and in any order and merge neighbouring ones.
        """
        ...

    def describe(self) -> str:
        """Return a short human-readable name of the source, for messages."""
        ...


def coalesce_ranges(
    ranges: Sequence[tuple[int, int]],
    gap: int = _MERGE_GAP,
    limit: int = _MERGE_LIMIT,
) -> list[tuple[int, int, list[int]]]:
    """Group ranges into merged pieces ``(offset, length, indices of the ranges inside)``.

    Ranges are merged when they overlap, touch, or lie at most ``gap`` bytes apart, as long
    as the merged piece stays within ``limit`` bytes (a single larger range stays whole).
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    pieces: list[tuple[int, int, list[int]]] = []
    start = end = 0
    members: list[int] = []
    for i in order:
        offset, length = ranges[i]
        stop = offset + max(length, 0)
        if members and offset <= end + gap and max(end, stop) - start <= limit:
            end = max(end, stop)
            members.append(i)
            continue
        if members:
            pieces.append((start, end - start, members))
        start, end, members = offset, stop, [i]
    if members:
        pieces.append((start, end - start, members))
    return pieces


class FileByteSource:
    """A local file opened read-only, without locks, read with ``pread``.

    Usable as a context manager; :meth:`close` releases the descriptor. Taking no lock
    matters: QEMU holds its own lock on the image of a running VM, and we only look.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._fd: int | None = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self._path} is closed")
        return self._fd

    def size(self) -> int:
        """Return the current length of the file (it may grow while a VM runs)."""
        return os.fstat(self._descriptor()).st_size

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``; fewer only at the end of the file."""
        return self._read(offset, length, self.size())

    def _read(self, offset: int, length: int, file_size: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        fd = self._descriptor()
        # Clamp first: os.pread allocates the whole requested length before reading,
        # and a hostile header may ask for petabytes.
        length = max(0, min(length, file_size - offset))
        parts: list[bytes] = []
        while length > 0:
            chunk = os.pread(fd, length, offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read every range, merging near neighbours into single reads."""
        results: list[bytes] = [b""] * len(ranges)
        file_size = self.size()
        for start, length, members in coalesce_ranges(ranges):
            if len(members) == 1:
                i = members[0]
                results[i] = self._read(ranges[i][0], ranges[i][1], file_size)
                continue
            piece = memoryview(self._read(start, length, file_size))
            for i in members:
                offset, size = ranges[i]
                results[i] = bytes(piece[offset - start : offset - start + max(size, 0)])
        return results

    def describe(self) -> str:
        """Return the file's path."""
        return self._path

    def close(self) -> None:
        """Close the file descriptor; further reads raise ``ValueError``."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BytesByteSource:
    """Bytes held in memory; for tests, fuzzing, and images already downloaded whole."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self._data = bytes(data)
        self._name = name

    def size(self) -> int:
        """Return the number of bytes held."""
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``; fewer only at the end."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        return self._data[offset : offset + length]

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return each range in turn."""
        return [self.read(offset, length) for offset, length in ranges]

    def describe(self) -> str:
        """Return the name given at construction."""
        return self._name
