"""Property tests of connection URIs: whatever a user types is accepted as typed or
refused in one short, clear line, and opening a URI opens exactly what it names.

``validate_uri`` runs on text of any kind; opening runs on libvirt's test driver and on
strings that never leave this computer (no host part, no command-running transports).

Bugs these properties found, each fixed and kept fixed by a plain test below: text
``urlsplit`` cannot split let a ``ValueError`` out; long non-URIs and unprintable
test-driver paths were quoted raw and whole; ``%`` in a test-driver path was checked
literally while libvirt decodes it (so another file opened, and an encoded one was
refused).

Run with ``VMSNAP_HYPOTHESIS_PROFILE=soak`` for many more inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmsnapgui.virt.connection import MAX_URI_LENGTH, Connection, validate_uri
from vmsnapgui.virt.errors import VirtError

# Profiles: "ci" is deterministic and short; "soak" tries twenty times as many inputs.
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None)
settings.register_profile("soak", max_examples=2000, database=None, deadline=None)
PROFILE = settings.get_profile(os.environ.get("VMSNAP_HYPOTHESIS_PROFILE", "ci"))


def budget(ci_examples: int) -> settings:
    """This test's share of the active profile: ``ci_examples`` under "ci", scaled up under
    "soak". Derived per test so loading this module changes no other test's settings."""
    scale = PROFILE.max_examples / 100
    return settings(
        PROFILE,
        max_examples=max(1, round(ci_examples * scale)),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# Names are cut at 60 characters in messages, paths at 300: two paths and a sentence fit.
MAX_MESSAGE_CHARACTERS = 800


def assert_one_clear_line(message: str, *about: str) -> None:
    """One printable line of reasonable length that names what it is about."""
    assert message, "an empty message"
    assert len(message.splitlines()) == 1, f"more than one line: {message!r}"
    assert message.isprintable(), f"raw unprintable characters in {message[:300]!r}"
    assert "Traceback" not in message
    assert len(message) <= MAX_MESSAGE_CHARACTERS, f"{len(message)} characters: {message[:200]!r}"
    if about:
        assert any(word.lower() in message.lower() for word in about), (
            f"{message!r} mentions none of {about}"
        )


# -- strategies ---------------------------------------------------------------------

HOSTILE_CHARACTERS = list(
    " ,=:;'\"\\$`*?!|&<>#~%@^()[]{}+-._/\t\n\r\x00\x07\x1b\x7f\x85\xa0\u2028\u2029"
    "\u202e\u200f\u200b\ufeff\u3000\uff03\uff0f\ufe5f\u2100\u0301\u05d0\u0627\U0001f600"
)
ANY_CHARACTER = st.characters(exclude_categories=("Cs",))
HOSTILE_TEXT = st.text(
    st.one_of(st.sampled_from(HOSTILE_CHARACTERS), ANY_CHARACTER, st.sampled_from("qemu/sys")),
    max_size=40,
)
SCHEMES = st.sampled_from(
    ["qemu", "qemu+ssh", "qemu+unix", "qemu+tcp", "test", "xen", "lxc", "Qemu+TLS", "a1+b2", "9p"]
)
WHITESPACE = st.text(st.sampled_from(" \t\n\r\x0b\x0c\x1c\x85\xa0\u3000\u2028"), max_size=3)


URI_TEXT = st.one_of(
    HOSTILE_TEXT,
    st.builds(lambda scheme, rest: f"{scheme}://{rest}", SCHEMES, HOSTILE_TEXT),
    st.builds(
        lambda scheme, user, host, path, query: f"{scheme}://{user}{host}/{path}{query}",
        SCHEMES,
        st.sampled_from(["", "root@", "a:b@", "\u00e9@"]),
        st.sampled_from(["", "localhost", "127.0.0.1:16509", "[::1]", "h\u00f6st"]),
        HOSTILE_TEXT,
        st.sampled_from(["", "?no_verify=1", "?socket=/nonexistent", "#frag", "?"]),
    ),
    st.builds(lambda w1, uri, w2: w1 + uri + w2, WHITESPACE, st.just("qemu:///system"), WHITESPACE),
    # Around the length limit, and far beyond it (64 KiB).
    st.builds(
        lambda size: "qemu:///" + "s" * (size - len("qemu:///")),
        st.sampled_from([MAX_URI_LENGTH - 1, MAX_URI_LENGTH, MAX_URI_LENGTH + 1, 65536]),
    ),
    st.builds(lambda size: "x" * size, st.sampled_from([MAX_URI_LENGTH + 1, 65536])),
    st.sampled_from(["", " ", "qemu:///system", "test:///default", "test:///", "test://"]),
)


# -- validate_uri -------------------------------------------------------------------


@budget(300)
@given(text=URI_TEXT)
@example(text="qemu:///system\n")
@example(text="q" * 65536)
def test_a_uri_is_returned_as_typed_or_refused_in_one_clear_line(text: str) -> None:
    try:
        uri = validate_uri(text)
    except VirtError as exc:
        assert_one_clear_line(exc.message, "URI", "test-driver")
        return
    assert uri == text.strip()
    assert 0 < len(uri) <= MAX_URI_LENGTH
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in uri)
    scheme = urlsplit(uri).scheme
    assert scheme, f"{uri!r} has no scheme"
    if scheme == "test" and urlsplit(uri).path not in ("", "/default"):
        assert os.path.isfile(urlsplit(uri).path)


@pytest.mark.parametrize("text", ["qemu://[x/system", "qemu://a\uff03b/system"])
def test_a_uri_urlsplit_cannot_split_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(VirtError) as refused:
        validate_uri(text)
    assert_one_clear_line(refused.value.message, "URI")


def test_a_long_text_that_is_no_uri_is_refused_in_a_short_line() -> None:
    with pytest.raises(VirtError) as refused:
        validate_uri("x" * MAX_URI_LENGTH)
    assert_one_clear_line(refused.value.message, "URI")


@pytest.mark.parametrize("path", ["/tmp/a\x85b.xml", "/tmp/\u202ecod.xml", "/" + "p" * 4000])
def test_a_missing_test_driver_file_is_named_escaped_and_short(path: str) -> None:
    with pytest.raises(VirtError) as refused:
        validate_uri(f"test://{path}")
    assert_one_clear_line(refused.value.message, "test-driver")


# -- opening ------------------------------------------------------------------------

LAB_XML = """<node>
  <domain type='test'>
    <name>{name}</name>
    <memory>1024</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
"""
FILE_NAME = st.text(
    st.one_of(st.sampled_from(HOSTILE_CHARACTERS), ANY_CHARACTER),
    min_size=1,
    max_size=30,
).filter(
    lambda name: (
        "/" not in name
        and "\x00" not in name
        and name not in (".", "..")
        and len(name.encode("utf-8")) <= 200
    )
)


def _host_names(uri: str) -> list[str]:
    connection = Connection(uri, monitor=False)
    try:
        conn = connection.open()
        return sorted(dom.name() for dom in conn.listAllDomains(0))
    finally:
        connection.close()


@budget(60)
@given(file_name=FILE_NAME, encoded=st.booleans())
def test_opening_a_test_driver_file_opens_that_file_or_says_why(
    tmp_path_factory: pytest.TempPathFactory, file_name: str, encoded: bool
) -> None:
    folder = tmp_path_factory.mktemp("lab")
    path = folder / file_name
    expected = "hostile-lab"
    path.write_text(LAB_XML.format(name=expected), encoding="utf-8")
    uri = "test://" + (quote(str(path)) if encoded else str(path))
    try:
        names = _host_names(uri)
    except VirtError as exc:
        assert_one_clear_line(exc.message, "URI", "test-driver")
        return
    assert names == [expected]


def test_a_percent_in_a_test_driver_path_never_opens_another_file(tmp_path: Path) -> None:
    (tmp_path / "real%41.xml").write_text(LAB_XML.format(name="real"), encoding="utf-8")
    (tmp_path / "realA.xml").write_text(LAB_XML.format(name="decoy"), encoding="utf-8")
    try:
        names = _host_names(f"test://{tmp_path}/real%41.xml")
    except VirtError as exc:
        assert_one_clear_line(exc.message, "test-driver")
        return
    assert names == ["real"]


def test_a_test_driver_file_with_a_space_can_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "my lab.xml"
    path.write_text(LAB_XML.format(name="spaced"), encoding="utf-8")
    assert _host_names("test://" + quote(str(path))) == ["spaced"]


OPENABLE = st.one_of(
    # The test driver with whatever follows: paths, queries, fragments.
    st.builds(lambda rest: "test://" + rest, HOSTILE_TEXT),
    st.builds(lambda rest: "test:///default" + rest, HOSTILE_TEXT),
    # Schemes no driver has: the local daemon (or the missing socket) says so.
    st.builds(
        lambda scheme, rest: f"{scheme}:///{rest}",
        st.sampled_from(["nosuch", "vmsnap+unix", "Bogus"]),
        HOSTILE_TEXT,
    ),
    # The system daemon with hostile query parameters (no host: nothing leaves here).
    st.builds(lambda query: "qemu:///system?" + query, HOSTILE_TEXT),
)


@budget(60)
@given(text=OPENABLE)
@example(text="test:///default")
@example(text="test:///default?x=\u202e")
def test_opening_any_local_uri_connects_or_says_why_in_one_line(text: str) -> None:
    try:
        connection = Connection(text, monitor=False)
        connection.open()
    except VirtError as exc:
        assert_one_clear_line(exc.message, "URI", "test-driver", "connect", "libvirt", "daemon")
        return
    try:
        uri = connection.conn.getURI()
        assert connection.display_uri == uri
        if text.strip() == "test:///default":
            assert uri == "test:///default"
            assert [d.name() for d in connection.conn.listAllDomains(0)] == ["test"]
    finally:
        connection.close()
