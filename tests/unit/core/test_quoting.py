"""Names and paths quoted in messages: short ones whole, long ones cut and saying so."""

from __future__ import annotations

from vmsnapgui.core.quoting import byte_count, quoted, shortened


def test_a_short_name_is_quoted_whole() -> None:
    assert quoted("web") == "'web'"
    assert quoted("it's") == '"it\'s"'
    assert quoted("x" * 60) == repr("x" * 60)


def test_a_long_name_keeps_sixty_characters_and_says_how_long_it_was() -> None:
    text = quoted("n" * 65536)
    assert text == "'" + "n" * 60 + "…' (65536 bytes)"


def test_the_size_is_counted_in_bytes_not_characters() -> None:
    assert quoted("é" * 100).endswith("…' (200 bytes)")
    assert quoted("😀" * 100).endswith("…' (400 bytes)")


def test_control_characters_are_escaped_so_the_message_stays_one_line() -> None:
    assert quoted("a\nb\x1b[2J") == "'a\\nb\\x1b[2J'"
    assert "\n" not in quoted("\n" * 1000)
    assert shortened("a\nb") == "a\\nb"


def test_shortened_has_no_quotes_and_cuts_like_quoted() -> None:
    assert shortened("host.example:22") == "host.example:22"
    assert shortened("h" * 100) == "h" * 60 + "… (100 bytes)"


def test_undecodable_command_line_bytes_count_as_one_byte_each() -> None:
    # b"\xff" from argv arrives as "\udcff" (surrogateescape).
    assert byte_count("a\udcff") == 2
    assert byte_count("\ud800") == 3  # a lone surrogate from elsewhere still counts
    assert quoted("\udcff" * 61).endswith("(61 bytes)")
