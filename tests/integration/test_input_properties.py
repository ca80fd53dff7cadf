"""Property tests (hypothesis) of what people type, through every operation, on the real daemon.

Snapshot names, descriptions, VM names for clones, and folders for clones are drawn from
strategies full of what breaks tools: spaces, ``,`` ``=`` ``:`` quotes, backslashes,
``$`` ``;`` ``--``, a leading ``-``, emoji, combining marks, right-to-left text, names
exactly at the byte limit and one byte over it, control characters, 64 KiB of text.
Each input must either be refused in one clear line with *nothing* changed on the host
(libvirt's snapshots, every image's internal snapshot table, the files in the folders),
or be accepted and then give exactly the right result, read back independently of the
engine: virsh's own output compared as bytes, the qcow2 snapshot tables read from the
files here, and the disks' bytes read with qemu-io and compared with qemu-img.

Guests are reused across a test's examples; each example undoes what it did and the
next starts from the same host. The "ci" profile is deterministic and short; the
"soak" profile (``VMSNAP_HYPOTHESIS_PROFILE=soak``) tries twenty times as many inputs.
``--hypothesis-show-statistics`` shows how many each test tried, and the events say
how many were refused and where.

Five bugs these properties found are fixed, each kept fixed by a plain test below: U+FFFE
and U+FFFF (valid UTF-8, not XML) reached libvirt; a snapshot named like another internal
snapshot's number ("1") was reverted to that other one, since QEMU looks numbers up
first; a name that is not UTF-8 raised ``UnicodeEncodeError``; a 64 KiB missing name was
quoted whole; ``vmsnap clone VM @now NEW`` ignored a snapshot called ``@now``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.integration.conftest import (
    MIB,
    SESSION_PREFIX,
    SYSTEM_URI,
    Guest,
    GuestFactory,
    image_holds,
    qemu_img,
    qemu_io,
)
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.quoting import quoted
from vmsnapgui.core.validation import (
    LIBVIRT_NAME_BYTES,
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_BYTES,
    MAX_NAME_LENGTH,
    ValidationError,
    utf8_length,
    validate_description,
    validate_snapshot_name,
    validate_vm_name,
)
from vmsnapgui.virt.clone_domain import CloneRequest, clone_domain
from vmsnapgui.virt.delete_snapshot import DeleteMode, delete_snapshot
from vmsnapgui.virt.operations import set_description
from vmsnapgui.virt.revert_snapshot import revert_snapshot
from vmsnapgui.virt.snapshot_loader import SnapshotLoader
from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_snapshot

# -- profiles ---------------------------------------------------------------------

settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None)
settings.register_profile("soak", max_examples=2000, database=None, deadline=None)
PROFILE = settings.get_profile(os.environ.get("VMSNAP_HYPOTHESIS_PROFILE", "ci"))


def budget(ci_examples: int) -> settings:
    """This test's share of the active profile: ``ci_examples`` under "ci", twenty times
    that under "soak". Derived per test: loading this module changes no other test."""
    scale = PROFILE.max_examples / 100
    return settings(
        PROFILE,
        max_examples=max(1, round(ci_examples * scale)),
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )


# -- what a refusal must look like --------------------------------------------------

# Names are cut at 60 characters in messages, paths at 160: two paths and a sentence fit.
MAX_MESSAGE_CHARACTERS = 800


def assert_one_clear_line(message: str, *about: str) -> None:
    """One printable line (names escaped, never a control character raw), short even
    for 64 KiB inputs, no traceback, naming what it is about."""
    assert message, "an empty message"
    assert len(message.splitlines()) == 1, f"more than one line: {message!r}"
    assert message.isprintable(), f"raw unprintable characters in {message[:300]!r}"
    assert "Traceback" not in message
    assert len(message) <= MAX_MESSAGE_CHARACTERS, f"{len(message)} characters: {message[:200]!r}"
    if about:
        assert any(word.lower() in message.lower() for word in about), (
            f"{message!r} mentions none of {about}"
        )


# -- the host, read independently of the engine -------------------------------------

QCOW2_MAGIC = b"QFI\xfb"
SNAPSHOT_ENTRY = struct.Struct(">QIHHIIQII")  # the fixed 40 bytes of a table entry


def qcow2_table(path: Path) -> tuple[tuple[str, bytes], ...]:
    """(ID, name bytes) of every internal snapshot, as stored in the image's table."""
    with open(path, "rb") as image:
        header = image.read(72)
        if header[:4] != QCOW2_MAGIC:
            return ()
        count, offset = struct.unpack(">IQ", header[60:72])
        entries = []
        for _ in range(count):
            image.seek(offset)
            fields = SNAPSHOT_ENTRY.unpack(image.read(SNAPSHOT_ENTRY.size))
            id_size, name_size, extra_size = fields[2], fields[3], fields[8]
            image.seek(offset + SNAPSHOT_ENTRY.size + extra_size)
            ident = image.read(id_size).decode("ascii")
            entries.append((ident, image.read(name_size)))
            offset += SNAPSHOT_ENTRY.size + extra_size + id_size + name_size
            offset = (offset + 7) & ~7
    return tuple(entries)


def qemu_img_table(path: Path) -> tuple[tuple[str, str], ...]:
    """The same table as ``qemu-img info -U --output=json`` shows it.

    QEMU shows noncharacters (U+FDD0…, U+10FFFF) as U+FFFD there: byte-exact checks use
    :func:`qcow2_table`; this one is compared before and after."""
    info = json.loads(qemu_img("info", "-U", "--output=json", str(path)))
    return tuple((s["id"], s["name"]) for s in info.get("snapshots", []))


def virsh_bytes(*argv: str) -> bytes:
    return subprocess.run(
        ["virsh", "-q", "-c", SYSTEM_URI, *argv], capture_output=True, check=True
    ).stdout


def virsh_snapshot_names(domain: str) -> list[bytes]:
    out = virsh_bytes("snapshot-list", "--domain", domain, "--name")
    return [line for line in out.split(b"\n") if line]


def virsh_snapshot_xml(domain: str, name: str) -> ET.Element:
    # "--snapshotname=NAME": a name like "--x" or "-" stays a value.
    return ET.fromstring(
        virsh_bytes("snapshot-dumpxml", "--domain", domain, f"--snapshotname={name}")
    )


def virsh_domain_names() -> list[bytes]:
    return [line for line in virsh_bytes("list", "--all", "--name").split(b"\n") if line]


@dataclass(frozen=True)
class HostView:
    """What a refused input must leave exactly as it was."""

    snapshots: dict[str, tuple[tuple[str, ...], str | None]]  # domain: (names, current)
    tables: dict[str, tuple[tuple[str, bytes], ...]]  # image: its internal snapshots
    shown_tables: dict[str, tuple[tuple[str, str], ...]]  # the same, as qemu-img shows them
    files: dict[str, tuple[int, int, int, int]]  # path: (mode, size, mtime, inode)

    def same_content(self, other: HostView) -> bool:
        """Equal apart from file sizes and times (an undone example may grow an image)."""
        return (
            self.snapshots == other.snapshots
            and self.tables == other.tables
            and self.shown_tables == other.shown_tables
            and self.files.keys() == other.files.keys()
        )


def snapshots_of(dom: libvirt.virDomain) -> tuple[tuple[str, ...], str | None]:
    names = tuple(sorted(s.getName() for s in dom.listAllSnapshots(0)))
    current = dom.snapshotCurrent(0).getName() if dom.hasCurrentSnapshot(0) else None
    return names, current


def host_view(guests: list[Guest], roots: list[Path]) -> HostView:
    files: dict[str, tuple[int, int, int, int]] = {}
    tables: dict[str, tuple[tuple[str, bytes], ...]] = {}
    shown: dict[str, tuple[tuple[str, str], ...]] = {}
    for root in [g.directory for g in guests] + roots:
        for path in [root, *sorted(root.rglob("*"))]:
            info = path.lstat()
            files[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
            if path.is_file() and not path.is_symlink() and path.suffix == ".qcow2":
                tables[str(path)] = qcow2_table(path)
                shown[str(path)] = qemu_img_table(path)
    snapshots = {g.name: snapshots_of(g.dom) for g in guests}
    return HostView(snapshots, tables, shown, files)


def domain_exists(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.lookupByName(name)
    except (libvirt.libvirtError, UnicodeError, ValueError):  # ValueError: a NUL
        return False
    return True


def is_valid(check: object, *args: object) -> bool:
    try:
        check(*args)  # type: ignore[operator]
    except ValidationError:
        return False
    return True


# -- strategies -----------------------------------------------------------------------

SPECIAL_CHARACTERS = " ,=:;'\"\\$`*?!|&<>#~%@^()[]{}+-._/"
UNICODE_PIECES = [
    "\N{GRINNING FACE}",
    "\N{WOMAN}\u200d\N{WOMAN}\u200d\N{GIRL}",  # one glyph of five code points
    "e\u0301",  # a combining acute accent
    "\u20d1",  # a combining harpoon, 3 bytes
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic
    "\u00a0",
    "\u3000",
    "\u200b",
    "\ufeff",
    "\u96ea",
    "\U0010fffd",
    "\ufdd0",  # a noncharacter that XML allows
    "\u0130\u00df\ufb01",  # letters whose case mapping changes their length
]
ANY_CHARACTER = st.characters(exclude_categories=("Cs",))
NAME_PIECE = st.one_of(
    st.sampled_from(list(SPECIAL_CHARACTERS)),
    st.sampled_from(UNICODE_PIECES),
    ANY_CHARACTER,
    st.sampled_from(list("abcXYZ019")),
)
HOSTILE_NAME = st.lists(NAME_PIECE, min_size=1, max_size=16).map("".join)
SHELLISH_NAMES = [
    "--",
    "-",
    "-x",
    "--force",
    "--description",
    "$(reboot)",
    "`id`",
    "a;b",
    "a,b",
    "a=b",
    "a:b",
    "mine,snapshot.name=base",
    "mine,,x",
    "json:{}",
    "file:x",
    "~",
    "*",
    "..x",
    "x..",
    "a b  c",
    "NaN",
    "null",
    "0",
    "01",
    "C:\\Windows",
    "\\\\server\\share",
    "%s%n",
    "\u202eexe.txt",
]
WIDE_CHARACTERS = ["\N{GRINNING FACE}", "\u96ea", "\u20d1", "\U0010fffd", "\u05d0\u20d1"]


def filled(prefix: str, units: list[str], size: int) -> str:
    """``prefix`` and ``units`` over and over, then ASCII, to exactly ``size`` UTF-8 bytes."""
    name = prefix
    for unit in itertools.cycle(units):
        if utf8_length(name + unit) > size:
            break
        name += unit
    return name + "x" * (size - utf8_length(name))


def at_byte_limit(prefix: str = "") -> st.SearchStrategy[str]:
    """Names at the byte limit, one byte over, and at and over libvirt's own limit."""
    return st.builds(
        lambda units, size: filled(prefix, units, size),
        st.lists(st.sampled_from(WIDE_CHARACTERS), min_size=1, max_size=3),
        st.sampled_from(
            [MAX_NAME_BYTES, MAX_NAME_BYTES + 1, LIBVIRT_NAME_BYTES, LIBVIRT_NAME_BYTES + 1]
        ),
    )


BAD_PIECES = [
    "\x00",
    "\t",
    "\n",
    "\r",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\u2028",
    "/",
    "<",
    ">",
    "&",
    "'",
    '"',
    "\udcff",  # an undecodable argv byte, as Python hands it over
]
REFUSED_NAMES = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\u3000",
            " lead",
            "trail ",
            "trail\u00a0",
            ".hidden",
            ".",
            "..",
            "x" * (MAX_NAME_LENGTH + 1),
            "x" * 65536,
            "\N{GRINNING FACE}" * 100,
            "\ud800",
        ]
    ),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.text(max_size=5),
        st.sampled_from(BAD_PIECES),
        st.text(max_size=5),
    ),
)
SNAPSHOT_NAMES = st.one_of(
    HOSTILE_NAME, st.sampled_from(SHELLISH_NAMES), at_byte_limit(), REFUSED_NAMES
)


def usable(name: str) -> bool:
    """A name the validator takes, clear of the known bugs listed in the module docstring."""
    return is_valid(validate_snapshot_name, name, {"base"}) and not (
        name.isascii() and name.isdigit()  # the ID bug: test_reverting_to_a_name_that_is_an_id
    )


USABLE_SNAPSHOT_NAMES = SNAPSHOT_NAMES.filter(usable)

DESCRIPTION_PIECE = st.one_of(
    NAME_PIECE,
    st.sampled_from(["\n", "\t", "\n\n", "  ", "<b>", "&amp;", "]]>", "<!--", "'", '"', "\\n"]),
)
CONTROL_IN_TEXT = ["\x00", "\r", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"]
DESCRIPTIONS = st.one_of(
    st.none(),
    st.just(""),
    st.lists(DESCRIPTION_PIECE, max_size=40).map("".join),
    # The longest allowed (4000 characters, 16,000 bytes in UTF-8), and one more.
    st.builds(
        lambda unit, extra: (unit * MAX_DESCRIPTION_LENGTH)[: MAX_DESCRIPTION_LENGTH + extra],
        st.sampled_from(["\N{GRINNING FACE}", "line\n", "\t", "e\u0301"]),
        st.sampled_from([0, 1]),
    ),
    st.just("d" * 65536),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.text(max_size=20),
        st.sampled_from(CONTROL_IN_TEXT),
        st.text(max_size=20),
    ),
)

# Clone names carry this session's tag, so a crash leaves nothing another session's
# clean-up does not recognise; a few put the hostile part first.
CLONE_TAG = f"{SESSION_PREFIX}c"
VM_NAMES = st.one_of(
    HOSTILE_NAME.map(lambda s: f"{CLONE_TAG}{s}"),
    HOSTILE_NAME.map(lambda s: f"{s}{CLONE_TAG}"),
    st.sampled_from(SHELLISH_NAMES).map(lambda s: f"{s}{CLONE_TAG}"),
    at_byte_limit(CLONE_TAG),
    REFUSED_NAMES.map(lambda s: f"{s}{CLONE_TAG}" if s and s[0] in " ./" else f"{CLONE_TAG}{s}"),
    st.sampled_from(["", " ", CLONE_TAG + "x" * 65536]),
)

FOLDER_COMPONENT = (
    st.lists(NAME_PIECE, min_size=1, max_size=12)
    .map("".join)
    .filter(
        lambda c: "/" not in c and "\x00" not in c and c not in (".", "..") and utf8_length(c) < 200
    )
)
# How a clone's target folder is given; the refused kinds must be refused.
ACCEPTED_FOLDERS = ("beside", "folder", "nested", "own", "trailing-slash", "dot-dot")
REFUSED_FOLDERS = ("symlink", "dangling", "missing", "file", "under-file", "too-long")
FOLDER_KINDS = st.sampled_from(ACCEPTED_FOLDERS + REFUSED_FOLDERS)

# -- the guests ---------------------------------------------------------------------

DISK_SIZE = "16M"
# Three regions of every test disk: A written once, B before and after the snapshot,
# C only after it. A snapshot's bytes are A=0xa1, B=0xb1, C zeros.
REGION_A, REGION_B, REGION_C = 0, 2 * MIB, 5 * MIB
REGION = 1 * MIB


def write(path: str | Path, pattern: int, offset: int) -> None:
    qemu_io(str(path), f"write -P {pattern:#x} {offset} {REGION}")


def zero(path: str | Path, offset: int) -> None:
    qemu_io(str(path), f"write -z {offset} {REGION}")


def holds(path: str | Path, pattern: int, offset: int) -> bool:
    return image_holds(str(path), pattern, offset, REGION)


def reference_image(folder: Path, name: str, *writes: tuple[int, int]) -> Path:
    """A fresh image holding exactly ``writes``: what a clone must be equal to."""
    path = folder / name
    qemu_img("create", "-q", "-f", "qcow2", str(path), DISK_SIZE)
    for pattern, offset in writes:
        write(path, pattern, offset)
    return path


def same_disk(left: str | Path, right: str | Path) -> bool:
    """``qemu-img compare``: the two disks read the same, byte for byte."""
    result = subprocess.run(
        ["qemu-img", "compare", "-U", str(left), str(right)], capture_output=True, check=False
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


@pytest.fixture
def loader(system_loader: SnapshotLoader) -> SnapshotLoader:
    return system_loader


@pytest.fixture
def guest(make_guest: GuestFactory, loader: SnapshotLoader) -> Guest:
    """A shut-off guest with region A written and an internal snapshot "base" (ID 1)."""
    made = make_guest(size=DISK_SIZE)
    write(made.disks["vda"], 0xA1, REGION_A)
    take_snapshot(loader, made.dom, TakeRequest("base", mode=SnapshotMode.INTERNAL_DISK))
    return made


@pytest.fixture
def workshop(guest_root: Path) -> Iterator[Path]:
    """A folder of this test's own for target folders and reference images."""
    folder = guest_root / f"work-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def remove_clone(conn: libvirt.virConnect, name: str) -> list[str]:
    """Undefine a clone and remove its disks; returns the disk files it had."""
    try:
        dom = conn.lookupByName(name)
    except (libvirt.libvirtError, UnicodeError, ValueError):  # ValueError: a NUL
        return []
    root = ET.fromstring(dom.XMLDesc(0))
    files = [s.get("file", "") for s in root.findall("./devices/disk/source") if s.get("file")]
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    for file in files:
        Path(file).unlink(missing_ok=True)
    return files


def assert_snapshot_is_exactly(guest: Guest, name: str, description: str | None) -> None:
    """virsh lists the name once, byte for byte, its XML carries it and the description."""
    encoded = name.encode("utf-8")
    assert virsh_snapshot_names(guest.name).count(encoded) == 1
    root = virsh_snapshot_xml(guest.name, name)
    assert (root.findtext("name") or "").encode("utf-8") == encoded
    stored = root.findtext("description")
    assert stored == (description or None), f"description {stored!r}, wanted {description!r}"
    assert [n for _, n in qcow2_table(guest.disks["vda"])].count(encoded) == 1


# -- take, describe, delete -----------------------------------------------------------


@budget(30)
@given(
    name=SNAPSHOT_NAMES,
    description=DESCRIPTIONS,
    child=st.one_of(st.none(), SNAPSHOT_NAMES),
    new_description=DESCRIPTIONS,
    mode=st.sampled_from(list(DeleteMode)),
)
@example(
    name="mine,snapshot.name=base",
    description="two\nlines",
    child="--",
    new_description="\t",
    mode=DeleteMode.CHILDREN,
)
@example(
    name=filled("", ["\N{GRINNING FACE}"], MAX_NAME_BYTES),
    description="\N{GRINNING FACE}" * MAX_DESCRIPTION_LENGTH,
    child=None,
    new_description=None,
    mode=DeleteMode.METADATA_ONLY,
)
def test_a_snapshot_is_taken_described_and_deleted_under_exactly_its_name(
    guest: Guest,
    loader: SnapshotLoader,
    name: str,
    description: str | None,
    child: str | None,
    new_description: str | None,
    mode: DeleteMode,
) -> None:
    image = guest.disks["vda"]
    start = host_view([guest], [])

    def take(snapshot: str, text: str | None) -> bool:
        before = host_view([guest], [])
        try:
            take_snapshot(
                loader, guest.dom, TakeRequest(snapshot, text, mode=SnapshotMode.INTERNAL_DISK)
            )
        except UserError as exc:
            event(f"take refused ({type(exc).__name__})")
            assert_one_clear_line(exc.message, "snapshot", "description")
            assert host_view([guest], []) == before
            existing = set(before.snapshots[guest.name][0])
            assert not (
                is_valid(validate_snapshot_name, snapshot, existing)
                and (not text or is_valid(validate_description, text))
            ), f"a valid name and description were refused: {exc.message}"
            return False
        event("take accepted")
        assert_snapshot_is_exactly(guest, snapshot, text)
        assert snapshots_of(guest.dom)[1] == snapshot
        return True

    if not take(name, description):
        return
    try:
        # A new description, or none: the image is not touched, the snapshot stays current.
        table = qcow2_table(image)
        try:
            set_description(loader, guest.dom, name, new_description)
        except UserError as exc:
            event("new description refused")
            assert_one_clear_line(exc.message, "description")
            assert_snapshot_is_exactly(guest, name, description)
        else:
            assert_snapshot_is_exactly(guest, name, new_description)
        assert qcow2_table(image) == table
        assert snapshots_of(guest.dom)[1] == name

        has_child = child is not None and child != name and take(child, None)
        removed = {
            DeleteMode.SNAPSHOT: {name},
            DeleteMode.CHILDREN: {name, child} if has_child else {name},
            DeleteMode.CHILDREN_ONLY: {child} if has_child else set(),
            DeleteMode.METADATA_ONLY: {name},
        }[mode]
        before = host_view([guest], [])
        try:
            delete_snapshot(loader, guest.dom, name, mode)
        except UserError as exc:
            event(f"delete refused ({mode})")
            assert_one_clear_line(exc.message, "snapshot", "children")
            assert host_view([guest], []) == before
            assert not removed, f"delete {mode} refused: {exc.message}"
        else:
            event(f"delete {mode}")
            names_before = set(before.snapshots[guest.name][0])
            assert set(snapshots_of(guest.dom)[0]) == names_before - removed
            listed = virsh_snapshot_names(guest.name)
            assert not {n.encode("utf-8") for n in removed} & set(listed)
            in_image = {n for _, n in qcow2_table(image)}
            for gone in removed:
                kept_in_image = mode is DeleteMode.METADATA_ONLY
                assert (gone.encode("utf-8") in in_image) is kept_in_image
    finally:
        undo_snapshots(guest, loader, keep={"base"})
    assert host_view([guest], []).same_content(start)


def undo_snapshots(guest: Guest, loader: SnapshotLoader, keep: set[str]) -> None:
    """Delete every snapshot but ``keep`` (leaves first), in libvirt and in the image."""
    loader.invalidate(guest.dom.UUIDString())
    while True:
        left = [s for s in guest.dom.listAllSnapshots(0) if s.getName() not in keep]
        if not left:
            break
        leaves = [s for s in left if s.numChildren(0) == 0] or left
        delete_snapshot(loader, guest.dom, leaves[0].getName())
    wanted = {n.encode("utf-8") for n in keep}
    for _ident, name in qcow2_table(guest.disks["vda"]):
        if name not in wanted:  # what a metadata-only delete left in the image
            subprocess.run(
                [b"qemu-img", b"snapshot", b"-d", name, bytes(guest.disks["vda"])], check=True
            )
    loader.invalidate(guest.dom.UUIDString())


@pytest.mark.parametrize(("name", "description"), [("a\ufffeb", None), ("ok", "\uffff")])
def test_a_name_xml_cannot_carry_is_refused_up_front(
    guest: Guest, loader: SnapshotLoader, name: str, description: str | None
) -> None:
    before = host_view([guest], [])
    with pytest.raises(ValidationError) as refused:
        take_snapshot(
            loader, guest.dom, TakeRequest(name, description, mode=SnapshotMode.INTERNAL_DISK)
        )
    assert_one_clear_line(refused.value.message, "snapshot", "description")
    assert host_view([guest], []) == before


# -- revert ---------------------------------------------------------------------------


@budget(12)
@given(name=USABLE_SNAPSHOT_NAMES, safety=st.booleans())
@example(name="a,b", safety=True)
def test_reverting_brings_back_exactly_the_snapshots_bytes(
    guest: Guest, loader: SnapshotLoader, name: str, safety: bool
) -> None:
    image = guest.disks["vda"]
    start = host_view([guest], [])
    write(image, 0xB1, REGION_B)
    try:
        take_snapshot(loader, guest.dom, TakeRequest(name, mode=SnapshotMode.INTERNAL_DISK))
        write(image, 0xB2, REGION_B)
        write(image, 0xC2, REGION_C)
        result = revert_snapshot(loader, guest.dom, name, safety_snapshot=safety)
        assert result.reverted_to == name
        assert holds(image, 0xA1, REGION_A)
        assert holds(image, 0xB1, REGION_B)
        assert holds(image, 0x00, REGION_C)
        assert snapshots_of(guest.dom)[1] == name
        if safety:
            safety_name = result.safety_snapshot
            assert safety_name is not None
            root = virsh_snapshot_xml(guest.name, safety_name)
            assert f"'{name}'" in (root.findtext("description") or "")
            # The safety snapshot holds the state the revert left, byte for byte.
            guest.dom.revertToSnapshot(guest.dom.snapshotLookupByName(safety_name), 0)
            assert holds(image, 0xB2, REGION_B)
            assert holds(image, 0xC2, REGION_C)
        else:
            assert result.safety_snapshot is None
            assert len(snapshots_of(guest.dom)[0]) == 2
    finally:
        undo_snapshots(guest, loader, keep={"base"})
        zero(image, REGION_B)
        zero(image, REGION_C)
    assert host_view([guest], []).same_content(start)


def test_reverting_to_a_name_that_is_an_id_restores_its_own_bytes(
    guest: Guest, loader: SnapshotLoader
) -> None:
    image = guest.disks["vda"]
    write(image, 0xB1, REGION_B)
    try:
        take_snapshot(loader, guest.dom, TakeRequest("1", mode=SnapshotMode.INTERNAL_DISK))
    except ValidationError as exc:  # refusing such names up front is a fix too
        assert_one_clear_line(exc.message, "snapshot")
        return
    write(image, 0xB2, REGION_B)
    try:
        revert_snapshot(loader, guest.dom, "1", safety_snapshot=False)
    except UserError as exc:  # so is refusing the revert
        assert_one_clear_line(exc.message, "snapshot")
        assert holds(image, 0xB2, REGION_B)
        return
    assert holds(image, 0xB1, REGION_B), "reverted to 'base' (ID 1), not to '1'"


# -- operations on snapshots and VMs that do not exist --------------------------------

MISSING_NAMES = st.one_of(SNAPSHOT_NAMES, HOSTILE_NAME.map(lambda s: s + "\U0001f47b")).filter(
    lambda name: name != "base"
)
CLONE_OF_MISSING = f"{CLONE_TAG}missing"


def _on_missing(operation: str, loader: SnapshotLoader, guest: Guest, name: str) -> None:
    """Run ``operation`` on snapshot (or VM) ``name``, which does not exist."""
    if operation == "revert":
        revert_snapshot(loader, guest.dom, name)
    elif operation == "delete on a missing VM":
        delete_snapshot(loader, name, "base")
    elif operation.startswith("delete "):
        delete_snapshot(loader, guest.dom, name, DeleteMode(operation.removeprefix("delete ")))
    elif operation == "clone":
        clone_domain(loader, guest.dom, CloneRequest(CLONE_OF_MISSING, name))
    elif operation == "describe":
        set_description(loader, guest.dom, name, "text")
    elif operation == "take on a missing VM":
        take_snapshot(loader, name, TakeRequest("s"))
    else:
        raise AssertionError(operation)


MISSING_OPERATIONS = [
    "revert",
    *(f"delete {mode}" for mode in DeleteMode),
    "clone",
    "describe",
    "take on a missing VM",
    "delete on a missing VM",
]


@pytest.mark.parametrize("operation", MISSING_OPERATIONS)
@budget(6)
@given(name=MISSING_NAMES)
@example(name="x" * 65536)
@example(name="mine,snapshot.name=base")
def test_every_operation_on_a_snapshot_that_does_not_exist_says_so_and_changes_nothing(
    guest: Guest, loader: SnapshotLoader, system_conn: libvirt.virConnect, operation: str, name: str
) -> None:
    before = host_view([guest], [])
    with pytest.raises(UserError) as refused:
        _on_missing(operation, loader, guest, name)
    assert_one_clear_line(refused.value.message, "snapshot", "virtual machine", "VM")
    assert host_view([guest], []) == before
    assert not domain_exists(system_conn, CLONE_OF_MISSING)


def test_deleting_a_long_name_that_does_not_exist_says_so_in_a_short_line(
    guest: Guest, loader: SnapshotLoader
) -> None:
    with pytest.raises(UserError) as refused:
        delete_snapshot(loader, guest.dom, "x" * 65536)
    assert_one_clear_line(refused.value.message, "snapshot")


@pytest.mark.parametrize("operation", ["revert", "clone", "describe", "vm"])
def test_a_name_that_is_not_utf8_is_refused_in_one_line(
    guest: Guest, loader: SnapshotLoader, operation: str
) -> None:
    name = "a\udcffb"
    calls = {
        "revert": lambda: revert_snapshot(loader, guest.dom, name),
        "clone": lambda: clone_domain(loader, guest.dom, CloneRequest(f"{CLONE_TAG}u", name)),
        "describe": lambda: set_description(loader, guest.dom, name, "text"),
        "vm": lambda: take_snapshot(loader, name, TakeRequest("s")),
    }
    with pytest.raises(UserError) as refused:
        calls[operation]()
    assert_one_clear_line(refused.value.message, "snapshot", "virtual machine")


# -- clone ------------------------------------------------------------------------------


@dataclass
class CloneSources:
    """One guest for internal snapshots (and "Now"), one for external ones."""

    internal: Guest
    external: Guest
    external_xml: str  # its definition before any snapshot, to undo one by hand
    expected_snapshot: Path  # what a clone of a snapshot reads: A, B=0xb1, C zeros
    expected_now: Path  # what a clone of "Now" reads: A, B=0xb2, C=0xc2


@pytest.fixture
def sources(make_guest: GuestFactory, workshop: Path) -> CloneSources:
    internal = make_guest(size=DISK_SIZE)
    external = make_guest(size=DISK_SIZE)
    for made in (internal, external):
        write(made.disks["vda"], 0xA1, REGION_A)
    return CloneSources(
        internal,
        external,
        external.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE),
        reference_image(workshop, "snapshot.qcow2", (0xA1, REGION_A), (0xB1, REGION_B)),
        reference_image(
            workshop, "now.qcow2", (0xA1, REGION_A), (0xB2, REGION_B), (0xC2, REGION_C)
        ),
    )


def target_folder(kind: str, root: Path, first: str, second: str, own: Path) -> str | None:
    """Make the folder ``kind`` describes under ``root``; return what the user would type."""
    real = root / "real"
    real.mkdir(exist_ok=True)
    named = root / first
    if kind == "beside":
        return None
    if kind == "own":
        return str(own)
    if kind in ("folder", "trailing-slash", "dot-dot"):
        named.mkdir()
        return {
            "folder": str(named),
            "trailing-slash": f"{named}/",
            "dot-dot": f"{named}/../{first}",
        }[kind]
    if kind == "nested":
        (named / second).mkdir(parents=True)
        return str(named / second)
    if kind == "symlink":
        named.symlink_to(real, target_is_directory=True)
        return str(named)
    if kind == "dangling":
        named.symlink_to(root / "nowhere")
        return str(named)
    if kind == "missing":
        return str(named / second)
    if kind == "file":
        named.write_bytes(b"not a folder")
        return str(named)
    if kind == "under-file":
        named.write_bytes(b"not a folder")
        return str(named / second)
    if kind == "too-long":
        return str(root / ("x" * 256))
    raise AssertionError(kind)


def undo_external_snapshot(sources: CloneSources, loader: SnapshotLoader, name: str) -> None:
    """Forget an external snapshot and go back to the base image, by hand.

    The engine's delete merges the overlay into the base image (tested on its own in
    test_deleting_an_external_snapshot_keeps_every_byte_of_now); here each example must
    only be undone quickly.
    """
    guest = sources.external
    overlay = guest.active_image()
    guest.dom.snapshotLookupByName(name).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    guest.dom.connect().defineXML(sources.external_xml)
    if overlay != str(guest.disks["vda"]):
        Path(overlay).unlink()
    loader.invalidate(guest.dom.UUIDString())


@budget(25)
@given(
    source=st.sampled_from(["internal", "external", "now"]),
    snapshot=USABLE_SNAPSHOT_NAMES,
    clone_name=VM_NAMES,
    folder=FOLDER_KINDS,
    first=FOLDER_COMPONENT,
    second=FOLDER_COMPONENT,
    linked=st.booleans(),
)
@example(
    source="internal",
    snapshot="mine,snapshot.name=base",
    clone_name=f"{CLONE_TAG} a,b=c:d",
    folder="folder",
    first="dir with, comma=and:colon",
    second="x",
    linked=False,
)
@example(
    source="external",
    snapshot="--",
    clone_name=f"-{CLONE_TAG}",
    folder="symlink",
    first="link",
    second="x",
    linked=True,
)
def test_a_clone_reads_exactly_the_snapshots_bytes_or_nothing_of_it_exists(
    sources: CloneSources,
    loader: SnapshotLoader,
    system_conn: libvirt.virConnect,
    workshop: Path,
    source: str,
    snapshot: str,
    clone_name: str,
    folder: str,
    first: str,
    second: str,
    linked: bool,
) -> None:
    guest = sources.external if source == "external" else sources.internal
    targets = workshop / f"targets-{uuid.uuid4().hex[:6]}"
    targets.mkdir()
    guests = [sources.internal, sources.external]
    start = host_view(guests, [])
    taken: str | None = None
    try:
        write(guest.active_image(), 0xB1, REGION_B)
        if source != "now":
            mode = (
                SnapshotMode.EXTERNAL_DISK if source == "external" else SnapshotMode.INTERNAL_DISK
            )
            taken = take_snapshot(loader, guest.dom, TakeRequest(snapshot, mode=mode)).name
            assert taken == snapshot
        write(guest.active_image(), 0xB2, REGION_B)
        write(guest.active_image(), 0xC2, REGION_C)
        target_dir = target_folder(folder, targets, first, second, guest.directory)
        before = host_view(guests, [targets])
        existing = {d.name() for d in system_conn.listAllDomains(0)}
        should_refuse = (
            folder in REFUSED_FOLDERS
            or (linked and source != "external")
            or not is_valid(validate_vm_name, clone_name, existing)
        )
        request = CloneRequest(clone_name, taken, linked=linked, target_dir=target_dir)
        try:
            result = clone_domain(loader, guest.dom, request)
        except UserError as exc:
            event(f"clone refused ({folder if folder in REFUSED_FOLDERS else 'other'})")
            assert_one_clear_line(
                exc.message, "folder", "clone", "name", "virtual machine", "file", "snapshot"
            )
            assert host_view(guests, [targets]) == before
            assert not domain_exists(system_conn, clone_name)
            assert should_refuse, f"refused: {exc.message}"
            return
        try:
            event(f"clone made ({source}, {'linked' if linked else 'full'}, {folder})")
            assert not should_refuse, f"a clone was made with folder {folder!r}, linked={linked}"
            assert result.name == clone_name
            assert virsh_domain_names().count(clone_name.encode("utf-8")) == 1
            clone = system_conn.lookupByName(clone_name)
            root = ET.fromstring(clone.XMLDesc(0))
            disks = [s.get("file", "") for s in root.findall("./devices/disk/source")]
            assert len(disks) == 1 and disks == list(result.files)
            disk = Path(disks[0])
            wanted_folder = Path(target_dir) if target_dir else guest.directory
            assert disk.parent.resolve() == wanted_folder.resolve()
            expected = sources.expected_now if source == "now" else sources.expected_snapshot
            assert same_disk(disk, expected), "the clone's disk is not the snapshot's bytes"
            assert holds(disk, 0xB1 if source != "now" else 0xB2, REGION_B)
            backing = json.loads(qemu_img("info", "-U", "--output=json", str(disk)))
            assert ("backing-filename" in backing) is linked
            # Nothing else appeared: only the clone's disk is new.
            after = host_view(guests, [targets])
            assert set(after.files) - set(before.files) == {str(disk)}
        finally:
            remove_clone(system_conn, clone_name)
    finally:
        remove_clone(system_conn, clone_name)
        if taken is not None and source == "external":
            undo_external_snapshot(sources, loader, taken)
            zero(guest.active_image(), REGION_B)
        else:
            undo_snapshots(guest, loader, keep=set())
            zero(guest.active_image(), REGION_B)
            zero(guest.active_image(), REGION_C)
        shutil.rmtree(targets)
    assert host_view(guests, []).same_content(start)


# -- delete of an external snapshot -------------------------------------------------------


@budget(1)
@given(name=USABLE_SNAPSHOT_NAMES)
def test_deleting_an_external_snapshot_keeps_every_byte_of_now(
    make_guest: GuestFactory, loader: SnapshotLoader, name: str
) -> None:
    """One example under "ci": the delete reads every domain's snapshots on the host
    first (read_host_references), which takes 40 s beside a 10,000-snapshot VM."""
    guest = make_guest(size=DISK_SIZE)
    write(guest.disks["vda"], 0xA1, REGION_A)
    base_files = {p.name for p in guest.directory.iterdir()}
    take_snapshot(loader, guest.dom, TakeRequest(name, mode=SnapshotMode.EXTERNAL_DISK))
    overlay = guest.active_image()
    assert overlay != str(guest.disks["vda"])
    assert virsh_snapshot_names(guest.name) == [name.encode("utf-8")]
    write(overlay, 0xB2, REGION_B)
    delete_snapshot(loader, guest.dom, name)
    assert virsh_snapshot_names(guest.name) == []
    assert guest.active_image() == str(guest.disks["vda"])
    assert {p.name for p in guest.directory.iterdir()} == base_files
    assert holds(guest.disks["vda"], 0xA1, REGION_A)
    assert holds(guest.disks["vda"], 0xB2, REGION_B)


# -- the command line -------------------------------------------------------------------


def vmsnap(*argv: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vmsnapgui.cli", "-c", SYSTEM_URI, *argv],
        capture_output=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )


def assert_printed_safely(output: bytes) -> str:
    text = output.decode("utf-8")
    for line in text.splitlines():
        assert line.isprintable(), f"a raw unprintable character in {line!r}"
    return text


def _fits_argv(text: str) -> bool:
    """No argv carries a NUL; a lone surrogate travels only as the byte it stands for."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


ARGV_SAFE = st.one_of(SNAPSHOT_NAMES, st.sampled_from(["@now", "-h", "--help", "--yes"])).filter(
    _fits_argv
)


@budget(10)
@given(
    name=ARGV_SAFE,
    description=DESCRIPTIONS.filter(lambda d: d is None or "\x00" not in d),
    undecodable=st.booleans(),
    clone=st.booleans(),
)
@example(name="--", description=None, undecodable=False, clone=True)
def test_vmsnap_takes_clones_and_deletes_what_the_engine_accepts_and_says_it_safely(
    guest: Guest,
    system_conn: libvirt.virConnect,
    loader: SnapshotLoader,
    name: str,
    description: str | None,
    undecodable: bool,
    clone: bool,
) -> None:
    image = guest.disks["vda"]
    start = host_view([guest], [])
    argument = os.fsencode(name) + (b"\xff" if undecodable else b"")
    accepted = is_valid(validate_snapshot_name, os.fsdecode(argument), {"base"}) and (
        not description or is_valid(validate_description, description)
    )
    options = [f"--description={description}"] if description is not None else []
    write(image, 0xB1, REGION_B)
    try:
        taken = vmsnap("take", guest.name, "--memory=none", *options, "--", argument)
        if not accepted:
            event("vmsnap take refused")
            assert taken.returncode == 1, taken
            assert taken.stdout == b""
            message = assert_printed_safely(taken.stderr)
            assert message.startswith("vmsnap: ") and message.count("\n") == 1, message
            assert_one_clear_line(
                message[len("vmsnap: ") :].rstrip("\n"), "snapshot", "description"
            )
            assert host_view([guest], []).same_content(start)
            return
        event("vmsnap take accepted")
        assert taken.returncode == 0, taken.stderr
        printed = assert_printed_safely(taken.stdout)
        assert printed == f"Took snapshot {quoted(name)} of {guest.name} (internal, disks only).\n"
        assert_snapshot_is_exactly(guest, name, description or None)
        write(image, 0xB2, REGION_B)

        if clone and name != "@now":  # "@now": test_vmsnap_clones_a_snapshot_named_at_now
            clone_name = f"{CLONE_TAG}cli"
            try:
                made = vmsnap("clone", guest.name, "--json", "--", name, clone_name)
                assert made.returncode == 0, made.stderr
                files = json.loads(made.stdout)["files"]
                assert json.loads(made.stdout)["snapshot"] == name
                assert holds(files[0], 0xB1, REGION_B)
                assert holds(files[0], 0xA1, REGION_A)
            finally:
                remove_clone(system_conn, clone_name)

        deleted = vmsnap("delete", guest.name, "--yes", "--json", "--", name)
        assert deleted.returncode == 0, deleted.stderr
        assert json.loads(deleted.stdout)["deleted"] == [name]
        assert virsh_snapshot_names(guest.name) == [b"base"]
        assert [n for _, n in qcow2_table(image)] == [b"base"]
    finally:
        undo_snapshots(guest, loader, keep={"base"})
        zero(image, REGION_B)
    assert host_view([guest], []).same_content(start)


def test_vmsnap_clones_a_snapshot_named_at_now(
    guest: Guest, system_conn: libvirt.virConnect, loader: SnapshotLoader
) -> None:
    image = guest.disks["vda"]
    write(image, 0xB1, REGION_B)
    # Made elsewhere: vmsnap refuses names that start with '@'.
    guest.dom.snapshotCreateXML("<domainsnapshot><name>@now</name></domainsnapshot>", 0)
    write(image, 0xB2, REGION_B)
    clone_name = f"{CLONE_TAG}at-now"
    try:
        made = vmsnap("clone", guest.name, "--json", "--", "@now", clone_name)
        if made.returncode != 0:  # refusing the ambiguous name is a fix too
            assert_one_clear_line(made.stderr.decode().removeprefix("vmsnap: ").strip())
            return
        files = json.loads(made.stdout)["files"]
        assert holds(files[0], 0xB1, REGION_B), "cloned Now, not the snapshot '@now'"
    finally:
        remove_clone(system_conn, clone_name)
