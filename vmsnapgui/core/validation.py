"""Checks on what users type: snapshot names, VM names, descriptions.

Each problem gets its own plain sentence. What passes is still escaped by an XML
library wherever it goes; these rules keep names usable as file names and in shells.
"""

from __future__ import annotations

from collections.abc import Container

from vmsnapgui.core.errors import UserError

MAX_NAME_LENGTH = 100
MAX_DESCRIPTION_LENGTH = 4000
_XML_METACHARACTERS = "<>&'\""


class ValidationError(UserError):
    """A value the user typed cannot be used; the message says why."""


def validate_snapshot_name(name: str, existing: Container[str] = ()) -> str:
    """Return ``name`` when it can name a new snapshot, else raise :class:`ValidationError`."""
    return _validate_name(name, "snapshot", existing, "There is already a snapshot called {!r}.")


def validate_vm_name(name: str, existing: Container[str] = ()) -> str:
    """Return ``name`` when it can name a new virtual machine."""
    return _validate_name(
        name, "virtual machine", existing, "There is already a virtual machine called {!r}."
    )


def validate_description(text: str) -> str:
    """Return ``text`` when it can be a description (several lines are fine)."""
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise ValidationError(
            f"The description is too long ({len(text)} characters; "
            f"at most {MAX_DESCRIPTION_LENGTH})."
        )
    if any(_is_control(ch) and ch not in "\n\t" for ch in text):
        raise ValidationError(
            "The description contains control characters; only line breaks and tabs are allowed."
        )
    return text


def _validate_name(name: str, what: str, existing: Container[str], duplicate: str) -> str:
    label = f"A {what} name"
    if not name or not name.strip():
        raise ValidationError(f"{label} cannot be empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"{label} is too long ({len(name)} characters; at most {MAX_NAME_LENGTH})."
        )
    if "/" in name:
        raise ValidationError(f"{label} cannot contain '/'.")
    if name.startswith("."):
        raise ValidationError(f"{label} cannot start with '.'.")
    if any(_is_control(ch) for ch in name):
        raise ValidationError(
            f"{label} cannot contain control characters (such as tabs or line breaks)."
        )
    bad = sorted({ch for ch in name if ch in _XML_METACHARACTERS})
    if bad:
        raise ValidationError(
            f"{label} cannot contain {' '.join(bad)} (they break XML and shell scripts)."
        )
    if name != name.strip():
        raise ValidationError(f"{label} cannot start or end with a space.")
    if name in existing:
        raise ValidationError(duplicate.format(name))
    return name


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 32 or 127 <= code < 160 or ch in "\u2028\u2029"
