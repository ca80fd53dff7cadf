"""Checks on what users type: snapshot names, VM names, descriptions.

Each problem gets its own plain sentence. What passes is still escaped by an XML
library wherever it goes; these rules keep names usable as file names and in shells.

Lengths are checked twice: in characters, so a name stays readable in the tree and a
terminal, and in UTF-8 bytes, because that is what libvirt stores. libvirt 9.0 saves a
snapshot's metadata as ``/var/lib/libvirt/qemu/snapshot/VM/NAME.xml`` and a VM's
definition as ``/etc/libvirt/qemu/NAME.xml``, each written first to ``NAME.xml.new``;
a file name holds at most 255 bytes (NAME_MAX), so NAME may have at most 247. Measured
here (libvirt 9.0, QEMU 7.2): a 247-byte name works for both, 248 fails ("unable to
save metadata" after QEMU has already written the internal snapshot into the qcow2,
which then stays there as an orphan; "Failed to create file" for a VM). A running VM's
log ``NAME.log`` and its rotations ``NAME.log.N`` add a few bytes more, hence the margin.
Names that UTF-8 cannot encode (lone surrogates, as ``os.fsdecode`` makes of stray
bytes) cannot travel to libvirt at all and are refused first.

Descriptions have no file behind them: libvirt took a 4,000,000-byte one and refused
5,000,000 bytes ("Unable to encode message payload", its RPC string limit), so the
4000-character limit, at most 16,000 bytes, is the one that binds.
"""

from __future__ import annotations

from collections.abc import Container

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.quoting import quoted

MAX_NAME_LENGTH = 100  # characters: readable in the tree, a terminal and scripts
LIBVIRT_NAME_BYTES = 247  # bytes: NAME_MAX (255) minus the ".xml.new" libvirt appends
MAX_NAME_BYTES = 240  # what we allow: LIBVIRT_NAME_BYTES less a margin for NAME.log.N
MAX_DESCRIPTION_LENGTH = 4000
_XML_METACHARACTERS = "<>&'\""


class ValidationError(UserError):
    """A value the user typed cannot be used; the message says why."""


def validate_snapshot_name(name: str, existing: Container[str] = ()) -> str:
    """Return ``name`` when it can name a new snapshot, else raise :class:`ValidationError`."""
    _validate_name(name, "snapshot", existing, "There is already a snapshot called {}.")
    if name.isascii() and name.isdigit():
        # QEMU finds an internal snapshot by number or by name, whichever comes first in
        # the image's table: a snapshot called "1" would be mistaken for snapshot number 1.
        raise ValidationError(
            "A snapshot name cannot be only digits: QEMU would mistake it for the number "
            "of another snapshot."
        )
    if name.startswith("@"):
        raise ValidationError(
            "A snapshot name cannot start with '@': vmsnap keeps such words for itself "
            "(@now is the VM as it is now)."
        )
    return name


def validate_vm_name(name: str, existing: Container[str] = ()) -> str:
    """Return ``name`` when it can name a new virtual machine."""
    return _validate_name(
        name, "virtual machine", existing, "There is already a virtual machine called {}."
    )


def validate_description(text: str) -> str:
    """Return ``text`` when it can be a description (several lines are fine)."""
    _refuse_unencodable(text, "The description")
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise ValidationError(
            f"The description is too long ({len(text)} characters; "
            f"at most {MAX_DESCRIPTION_LENGTH})."
        )
    if any(_is_control(ch) and ch not in "\n\t" for ch in text):
        raise ValidationError(
            "The description contains control characters; only line breaks and tabs are allowed."
        )
    _refuse_non_xml(text, "The description")
    return text


def unstorable(name: str) -> str | None:
    """Why libvirt cannot hold ``name`` at all (so nothing by that name exists), or None.

    For names being looked up: a NUL byte or text that is not UTF-8 (what an undecodable
    byte on the command line becomes) would fail inside libvirt's bindings otherwise.
    """
    if "\x00" in name:
        return "the name contains a NUL character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    return None


def utf8_length(text: str) -> int:
    """How many bytes ``text`` takes in UTF-8 (what libvirt and file names count)."""
    return len(text.encode("utf-8"))


def _validate_name(name: str, what: str, existing: Container[str], duplicate: str) -> str:
    label = f"A {what} name"
    if not name or not name.strip():
        raise ValidationError(f"{label} cannot be empty.")
    _refuse_unencodable(name, label)
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"{label} is too long ({len(name)} characters; at most {MAX_NAME_LENGTH})."
        )
    size = utf8_length(name)
    if size > MAX_NAME_BYTES:
        raise ValidationError(
            f"{label} is {size} bytes in UTF-8 ({len(name)} characters); "
            f"libvirt allows at most {MAX_NAME_BYTES} bytes."
        )
    if "/" in name:
        raise ValidationError(f"{label} cannot contain '/'.")
    if name.startswith("."):
        raise ValidationError(f"{label} cannot start with '.'.")
    if any(_is_control(ch) for ch in name):
        raise ValidationError(
            f"{label} cannot contain control characters (such as tabs or line breaks)."
        )
    _refuse_non_xml(name, label)
    bad = sorted({ch for ch in name if ch in _XML_METACHARACTERS})
    if bad:
        raise ValidationError(
            f"{label} cannot contain {' '.join(bad)} (they break XML and shell scripts)."
        )
    if name != name.strip():
        raise ValidationError(f"{label} cannot start or end with a space.")
    if name in existing:
        raise ValidationError(duplicate.format(quoted(name)))
    return name


def _refuse_unencodable(text: str, label: str) -> None:
    """Refuse text UTF-8 cannot encode, naming the first bad character safely (escaped)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValidationError(
            f"{label} contains {bad.encode('unicode_escape').decode('ascii')} at position "
            f"{exc.start + 1}, which is not a character (a stray byte from a file name?); "
            f"it must be valid UTF-8."
        ) from None


def _refuse_non_xml(text: str, label: str) -> None:
    """Refuse U+FFFE and U+FFFF: valid UTF-8, but XML 1.0 (and so libvirt) forbids them."""
    for position, ch in enumerate(text, start=1):
        if ch in "\ufffe\uffff":
            raise ValidationError(
                f"{label} contains {ch.encode('unicode_escape').decode('ascii')} at position "
                f"{position}, which is not a character XML (and so libvirt) can store."
            )


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 32 or 127 <= code < 160 or ch in "\u2028\u2029"
