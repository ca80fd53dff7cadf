"""``vmsnap`` read verbs on the test driver: exact JSON, text tree, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmsnapgui.cli import main
from vmsnapgui.cli.common import printable


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tree_json_has_exactly_the_documented_shape(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, err = run_cli(capsys, "-c", lab_uri, "tree", "db", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document == {
        "connection": lab_uri,
        "domain": {
            "name": "db",
            "uuid": "6695eb01-f6a4-8304-79aa-97f2502e1931",
            "state": "running",
        },
        "current": "s3-paused",
        "snapshots": [
            {
                "name": "s1-disk-only",
                "parent": None,
                "children": ["s2-with-memory"],
                "created": 1700100000,
                "state": "disk-snapshot",
                "description": "External, disk only",
                "memory": "no",
                "memory_file": None,
                "current": False,
                "disks": [
                    {"target": "vda", "kind": "external", "file": "/var/lib/libvirt/images/db.s1"},
                    {"target": "vdb", "kind": "no", "file": None},
                ],
            },
            {
                "name": "s2-with-memory",
                "parent": "s1-disk-only",
                "children": ["s3-paused"],
                "created": 1700103600,
                "state": "running",
                "description": "External with memory",
                "memory": "external",
                "memory_file": "/var/lib/libvirt/qemu/snapshot/db/s2.mem",
                "current": False,
                "disks": [
                    {"target": "vda", "kind": "external", "file": "/var/lib/libvirt/images/db.s2"},
                    {"target": "vdb", "kind": "no", "file": None},
                ],
            },
            {
                "name": "s3-paused",
                "parent": "s2-with-memory",
                "children": [],
                "created": 1700107200,
                "state": "paused",
                "description": None,
                "memory": "external",
                "memory_file": "/var/lib/libvirt/qemu/snapshot/db/s3.mem",
                "current": True,
                "disks": [
                    {"target": "vda", "kind": "external", "file": "/var/lib/libvirt/images/db.s3"},
                    {"target": "vdb", "kind": "no", "file": None},
                ],
            },
        ],
    }


def test_tree_json_lists_parents_before_children(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, _ = run_cli(capsys, "-c", lab_uri, "tree", "web", "--json")
    assert code == 0
    names = [s["name"] for s in json.loads(out)["snapshots"]]
    assert names == [
        "base",
        "nginx-installed",
        "tls & certs",
        "before-upgrade",
        "php-experiment",
        "php-tuned",
    ]


def test_text_tree_marks_current_and_now(capsys: pytest.CaptureFixture[str], lab_uri: str) -> None:
    code, out, _ = run_cli(capsys, "-c", lab_uri, "tree", "web")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"web (running) on {lab_uri}: 6 snapshots, current 'before-upgrade'"
    expected = [
        "base",
        "└─ nginx-installed",
        "   ├─ tls & certs",
        "   │  └─ before-upgrade *",
        "   │     └─ ▶ Now",
        "   └─ php-experiment",
        "      └─ php-tuned",
    ]
    # The first column is padded to one width; each row starts with its tree cell.
    width = len(expected[3])
    assert [line[: width + 2].rstrip() for line in lines[1:]] == expected


def test_text_tree_without_snapshots_still_shows_now(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, _ = run_cli(capsys, "-c", lab_uri, "tree", "build")
    assert code == 0
    assert out.splitlines()[1].startswith("└─ ▶ Now")


def test_list_shows_state_count_and_current(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, _ = run_cli(capsys, "-c", lab_uri, "list")
    assert code == 0
    assert out.splitlines() == [
        "NAME   STATE     SNAPSHOTS  CURRENT",
        "build  shut off  0          -",
        "db     running   3          s3-paused",
        "odd    shut off  2          -",
        "web    running   6          before-upgrade",
    ]


def test_list_json(capsys: pytest.CaptureFixture[str], lab_uri: str) -> None:
    code, out, _ = run_cli(capsys, "-c", lab_uri, "list", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["connection"] == lab_uri
    web = next(d for d in document["domains"] if d["name"] == "web")
    assert web == {
        "name": "web",
        "uuid": "6695eb01-f6a4-8304-79aa-97f2502e1930",
        "state": "running",
        "persistent": True,
        "snapshots": 6,
        "current": "before-upgrade",
        "linked_clone_of": [],
        "linked_clones": [],
    }
    # The test driver's files are not on this computer: only its XML was read.
    assert document["linked_clones_checked"] == {"from_images": False, "notes": []}


def test_failures_print_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, err = run_cli(capsys, "-c", lab_uri, "tree", "missing-vm")
    assert code == 1
    assert out == ""
    assert err == f"vmsnap: There is no virtual machine called 'missing-vm' on {lab_uri}.\n"


def test_a_bad_uri_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "-c", "nonsense", "list")
    assert code == 1
    assert err.count("\n") == 1 and "is not a libvirt URI" in err


@pytest.mark.parametrize("argv", [[], ["tree"], ["frobnicate"], ["list", "--bogus"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmsnapgui", *argv], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "usage: vmsnap" in result.stderr


def test_the_installed_command_runs_without_libvirt_noise(lab_uri: str) -> None:
    # A real process: nothing but our own output on stderr (libvirt's log is silenced).
    result = subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "-c", lab_uri, "tree", "web", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stderr == ""
    assert json.loads(result.stdout)["current"] == "before-upgrade"


def test_control_characters_are_shown_escaped_not_obeyed() -> None:
    assert printable("plain name") == "plain name"
    assert printable("evil\x1b[2Jname\n") == "evil\\x1b[2Jname\\n"


@pytest.mark.parametrize("domain", ["web", "db", "build", "odd"])
def test_tree_json_matches_virsh_on_the_test_driver_file(
    capsys: pytest.CaptureFixture[str], lab_uri: str, domain: str
) -> None:
    from tests.integration.virsh_view import assert_tree_matches_virsh

    code, out, err = run_cli(capsys, "-c", lab_uri, "tree", domain, "--json")
    assert code == 0, err
    assert_tree_matches_virsh(json.loads(out), lab_uri, domain)
