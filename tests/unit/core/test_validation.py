"""What users type is checked, each problem with its own sentence."""

from __future__ import annotations

import os

import pytest

from vmsnapgui.core.validation import (
    LIBVIRT_NAME_BYTES,
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_BYTES,
    ValidationError,
    utf8_length,
    validate_description,
    validate_snapshot_name,
    validate_vm_name,
)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "A snapshot name cannot be empty."),
        ("   ", "A snapshot name cannot be empty."),
        ("x" * 101, "A snapshot name is too long (101 characters; at most 100)."),
        ("a/b", "A snapshot name cannot contain '/'."),
        (".hidden", "A snapshot name cannot start with '.'."),
        (
            "tab\there",
            "A snapshot name cannot contain control characters (such as tabs or line breaks).",
        ),
        (
            "line\nbreak",
            "A snapshot name cannot contain control characters (such as tabs or line breaks).",
        ),
        (
            "esc\x1b",
            "A snapshot name cannot contain control characters (such as tabs or line breaks).",
        ),
        ("a<b>", "A snapshot name cannot contain < > (they break XML and shell scripts)."),
        ("Tom & Jerry's", "A snapshot name cannot contain & ' (they break XML and shell scripts)."),
        (' "quoted"', 'A snapshot name cannot contain " (they break XML and shell scripts).'),
        (" padded", "A snapshot name cannot start or end with a space."),
        ("taken", "There is already a snapshot called 'taken'."),
    ],
)
def test_bad_snapshot_names_are_refused_with_a_reason(name: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_snapshot_name(name, existing={"taken"})
    assert caught.value.message == message


@pytest.mark.parametrize(
    "name", ["before-upgrade", "Vor dem Update (2024)", "ünïcode ✓", "a" * 100, "x.y"]
)
def test_good_snapshot_names_pass(name: str) -> None:
    assert validate_snapshot_name(name, existing={"other"}) == name


def test_vm_names_follow_the_same_rules_with_their_own_words() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_vm_name("web", existing={"web"})
    assert caught.value.message == "There is already a virtual machine called 'web'."
    with pytest.raises(ValidationError) as caught:
        validate_vm_name("a/b")
    assert caught.value.message == "A virtual machine name cannot contain '/'."
    assert validate_vm_name("web-clone") == "web-clone"


def test_descriptions_may_span_lines_and_hold_xml_characters() -> None:
    text = "Line one <ok> & 'fine'\n\tindented"
    assert validate_description(text) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x" * 4001, "The description is too long (4001 characters; at most 4000)."),
        (
            "bell\x07",
            "The description contains control characters; only line breaks and tabs are allowed.",
        ),
        (
            "ok\ufffe",
            "The description contains \\ufffe at position 3, which is not a character XML "
            "(and so libvirt) can store.",
        ),
    ],
)
def test_bad_descriptions_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_description(text)
    assert caught.value.message == message


# -- lengths in UTF-8 bytes: what libvirt stores in file names ----------------------------

EMOJI = "\N{GRINNING FACE}"  # 4 bytes in UTF-8
SNOW = "\N{CJK UNIFIED IDEOGRAPH-96EA}"  # 3 bytes
ACUTE = "\N{COMBINING ACUTE ACCENT}"  # 2 bytes, a character of its own
HARPOON = "\N{COMBINING LEFT HARPOON ABOVE}"  # 3 bytes, a character of its own


def test_the_byte_limit_leaves_room_for_what_libvirt_appends() -> None:
    # NAME.xml.new must fit in 255 bytes, and a running VM's NAME.log.N beside it.
    assert MAX_NAME_BYTES + len(".xml.new") <= 255
    assert MAX_NAME_BYTES + len(".log.10") <= 255
    assert MAX_NAME_BYTES <= LIBVIRT_NAME_BYTES == 255 - len(".xml.new")


@pytest.mark.parametrize("validate", [validate_snapshot_name, validate_vm_name])
@pytest.mark.parametrize(
    "name",
    [
        EMOJI * (MAX_NAME_BYTES // 4),  # 60 characters, exactly the limit
        SNOW * (MAX_NAME_BYTES // 3),  # 80 characters, exactly the limit
        "a" + HARPOON * ((MAX_NAME_BYTES - 1) // 3) + "b" * ((MAX_NAME_BYTES - 1) % 3),
        EMOJI * 59 + "abcd",
    ],
    ids=["emoji", "cjk", "combining", "mixed"],
)
def test_a_name_of_exactly_the_most_bytes_passes(validate: object, name: str) -> None:
    assert utf8_length(name) == MAX_NAME_BYTES
    assert validate(name) == name  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "size", "characters"),
    [
        (EMOJI * 100, 400, 100),  # the name: 100 characters, 4 bytes each
        (EMOJI * 60 + "a", 241, 61),  # one byte over
        (SNOW * 80 + "a", 241, 81),
        ("a" + HARPOON * 80, 241, 81),  # combining marks count by their own bytes
    ],
    ids=["100-emoji", "emoji-plus-one", "cjk-plus-one", "combining-plus-one"],
)
def test_one_byte_more_is_refused_with_both_counts(name: str, size: int, characters: int) -> None:
    assert utf8_length(name) == size and len(name) == characters
    with pytest.raises(ValidationError) as caught:
        validate_snapshot_name(name)
    assert caught.value.message == (
        f"A snapshot name is {size} bytes in UTF-8 ({characters} characters); "
        f"libvirt allows at most {MAX_NAME_BYTES} bytes."
    )
    with pytest.raises(ValidationError) as caught:
        validate_vm_name(name)
    assert caught.value.message.startswith(f"A virtual machine name is {size} bytes in UTF-8")


def test_emoji_count_as_four_bytes_and_combining_marks_as_their_own() -> None:
    assert utf8_length(EMOJI) == 4
    assert utf8_length("e" + ACUTE) == 3 and len("e" + ACUTE) == 2
    assert utf8_length("\N{LATIN SMALL LETTER E WITH ACUTE}") == 2  # the composed form
    # 60 emoji fit, 61 do not, although 61 characters are well under 100.
    assert validate_snapshot_name(EMOJI * 60)
    with pytest.raises(ValidationError):
        validate_snapshot_name(EMOJI * 61)
    # 100 characters of "e" + combining acute: 50 pairs, 150 bytes, fine.
    assert validate_snapshot_name(("e" + ACUTE) * 50)


def test_the_character_limit_still_comes_first_for_long_plain_names() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_snapshot_name("x" * 300)
    assert caught.value.message == "A snapshot name is too long (300 characters; at most 100)."


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "\udcff",
            "A snapshot name contains \\udcff at position 1, which is not a character "
            "(a stray byte from a file name?); it must be valid UTF-8.",
        ),
        (
            "abc\udc80def",
            "A snapshot name contains \\udc80 at position 4, which is not a character "
            "(a stray byte from a file name?); it must be valid UTF-8.",
        ),
        (
            "ok\ud83d",  # half of a surrogate pair
            "A snapshot name contains \\ud83d at position 3, which is not a character "
            "(a stray byte from a file name?); it must be valid UTF-8.",
        ),
    ],
    ids=["lone", "inside", "half-pair"],
)
def test_names_utf8_cannot_encode_are_refused_plainly(name: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_snapshot_name(name)
    assert caught.value.message == message
    caught.value.message.encode("utf-8")  # the message itself can be printed anywhere


def test_a_name_from_a_file_name_with_a_stray_byte_is_refused() -> None:
    name = os.fsdecode(b"backup-\xff")
    with pytest.raises(ValidationError) as caught:
        validate_vm_name(name)
    assert "\\udcff at position 8" in caught.value.message
    assert caught.value.message.startswith("A virtual machine name contains")


def test_descriptions_utf8_cannot_encode_are_refused_and_emoji_are_fine() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_description("line one\nbad \udcfe")
    assert caught.value.message == (
        "The description contains \\udcfe at position 14, which is not a character "
        "(a stray byte from a file name?); it must be valid UTF-8."
    )
    text = EMOJI * MAX_DESCRIPTION_LENGTH  # 16,000 bytes: libvirt takes millions
    assert validate_description(text) == text


def test_xml_noncharacters_are_refused_in_names() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_snapshot_name("a\uffffb")
    assert caught.value.message == (
        "A snapshot name contains \\uffff at position 2, which is not a character XML "
        "(and so libvirt) can store."
    )
