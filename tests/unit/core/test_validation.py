"""What users type is checked, each problem with its own sentence."""

from __future__ import annotations

import pytest

from vmsnapgui.core.validation import (
    ValidationError,
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
    ],
)
def test_bad_descriptions_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_description(text)
    assert caught.value.message == message
