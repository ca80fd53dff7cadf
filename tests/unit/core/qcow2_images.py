"""Build real qcow2 images with qemu-img and qemu-io for the qcow2 reader's tests.

Every command is an argv list (never a shell). Helpers raise ``AssertionError`` with the
tool's output when a command fails, so a broken fixture reads as such, not as a wrong size.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")
QEMU_SYSTEM = shutil.which("qemu-system-x86_64")


def run(argv: list[str], timeout: float = 60) -> str:
    """Run a command, fail loudly with its output, return its stdout."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{argv!r} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done.stdout


def create(path: Path, size: int | str, **options: str | int) -> Path:
    """``qemu-img create -f qcow2 -o key=value,... path size``."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if options:
        argv += ["-o", ",".join(f"{key}={value}" for key, value in options.items())]
    run([*argv, str(path), str(size)])
    return path


def io(path: Path, *commands: str, options: tuple[str, ...] = ()) -> None:
    """Run qemu-io commands (``write -P 0xab 0 4M``) on the image in one process."""
    argv = ["qemu-io", "-f", "qcow2", *options]
    for command in commands:
        argv += ["-c", command]
    out = run([*argv, str(path)])
    # qemu-io reports failed commands on stdout and still exits 0.
    if "failed" in out or "error" in out.lower():
        raise AssertionError(f"qemu-io {commands!r}: {out}")


def snapshot(path: Path, name: str) -> None:
    """Take an internal snapshot of the (stopped) image."""
    run(["qemu-img", "snapshot", "-c", name, str(path)])


def apply(path: Path, name: str) -> None:
    """Revert the active layer to a snapshot."""
    run(["qemu-img", "snapshot", "-a", name, str(path)])


def info(path: Path) -> dict[str, Any]:
    """``qemu-img info --output=json``."""
    result: dict[str, Any] = json.loads(
        run(["qemu-img", "info", "--force-share", "--output=json", str(path)])
    )
    return result


def mapped_data_bytes(path: Path) -> int:
    """Guest bytes that hold data in the active layer, as ``qemu-img map`` sees them."""
    extents = json.loads(run(["qemu-img", "map", "--output=json", str(path)]))
    return sum(e["length"] for e in extents if e["data"] and not e["zero"])


def layer_data_bytes(path: Path, name: str | None, scratch: Path) -> int:
    """``mapped_data_bytes`` of a snapshot's layer: map a copy reverted to it."""
    if name is None:
        return mapped_data_bytes(path)
    copy = scratch / f"map-{name}.qcow2"
    shutil.copyfile(path, copy)
    apply(copy, name)
    try:
        return mapped_data_bytes(copy)
    finally:
        copy.unlink()


def copy_with(path: Path, target: Path, patches: dict[int, bytes]) -> Path:
    """Copy an image and overwrite bytes at the given offsets in the copy."""
    data = bytearray(path.read_bytes())
    for offset, value in patches.items():
        data[offset : offset + len(value)] = value
    target.write_bytes(bytes(data))
    return target


def header_field(path: Path, offset: int, fmt: str) -> int:
    """One big-endian header field (``>Q`` at 72 is the incompatible feature bits)."""
    with path.open("rb") as f:
        f.seek(offset)
        raw = f.read(struct.calcsize(fmt))
    value: int = struct.unpack(fmt, raw)[0]
    return value


def savevm(path: Path, name: str) -> None:
    """Save a VM state snapshot with QEMU's monitor (``qemu-img`` cannot write a vmstate)."""
    assert QEMU_SYSTEM is not None
    done = subprocess.run(
        [
            QEMU_SYSTEM,
            "-machine",
            "none",
            "-m",
            "16",
            "-nodefaults",
            "-display",
            "none",
            "-drive",
            f"file={path},if=none,id=d0,format=qcow2",
            "-monitor",
            "stdio",
        ],
        input=f"savevm {name}\nquit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 or "Error" in done.stdout:
        raise AssertionError(f"savevm failed: {done.stdout}{done.stderr}")


def compressed_sector_bytes(path: Path) -> int:
    """An independent, plain-struct sum over the active layer's compressed L2 entries.

    Counts 512-byte sectors as the qcow2 specification defines them: the sector holding
    the offset plus the "additional sectors" field. Used to check the numpy reader.
    """
    data = path.read_bytes()
    cluster_bits = struct.unpack_from(">I", data, 20)[0]
    l1_size, l1_offset = struct.unpack_from(">IQ", data, 36)
    cluster_size = 1 << cluster_bits
    shift = 62 - (cluster_bits - 8)
    total = 0
    for i in range(l1_size):
        l2 = struct.unpack_from(">Q", data, l1_offset + 8 * i)[0] & 0x00FF_FFFF_FFFF_FE00
        if not l2:
            continue
        for j in range(cluster_size // 8):
            entry = struct.unpack_from(">Q", data, l2 + 8 * j)[0]
            if entry >> 62 & 1:
                extra = entry >> shift & ((1 << (cluster_bits - 8)) - 1)
                total += (extra + 1) * 512
    return total
