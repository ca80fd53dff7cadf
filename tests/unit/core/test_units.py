"""Human-readable byte counts."""

from __future__ import annotations

import pytest

from vmsnapgui.core.units import format_bytes


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (None, "?"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (4 * 1024 * 1024, "4.00 MiB"),
        (268435456, "256 MiB"),
        (50 * 1024**3, "50.0 GiB"),
        (-2048, "-2.00 KiB"),
        (3 * 1024**5, "3.00 PiB"),
        (3 * 1024**6, "3072 PiB"),
    ],
)
def test_format_bytes(count: int | None, text: str) -> None:
    assert format_bytes(count) == text
