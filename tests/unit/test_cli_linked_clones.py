"""``vmsnap list`` names linked clones: a LINKED column (only when there are any) and,
in JSON, what each VM stands on and what stands on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_cli import run_cli

HOST_URI = f"test://{Path(__file__).resolve().parents[1] / 'data' / 'linked-clones-host.xml'}"

LINK = {
    "clone": "web-test",
    "disk": "vda",
    "source": "web",
    "kind": "snapshot",
    "snapshot": "base",
    "source_disk": "vda",
    "file": "/images/web.qcow2",
}


def test_the_list_has_a_linked_column_naming_source_and_clones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "-c", HOST_URI, "list")
    assert code == 0, err
    assert err == ""
    assert out.splitlines() == [
        "NAME      STATE     SNAPSHOTS  CURRENT  LINKED",
        "plain     shut off  0          -        -",
        "web       running   1          base     1 linked clone",
        "web-test  shut off  0          -        clone of web (on 'base')",
    ]


def test_the_json_names_the_link_from_both_sides(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-c", HOST_URI, "list", "--json")
    assert code == 0, err
    document = json.loads(out)
    by_name = {d["name"]: d for d in document["domains"]}
    assert by_name["web-test"]["linked_clone_of"] == [LINK]
    assert by_name["web-test"]["linked_clones"] == []
    assert by_name["web"]["linked_clones"] == [LINK]
    assert by_name["web"]["linked_clone_of"] == []
    assert by_name["plain"]["linked_clone_of"] == by_name["plain"]["linked_clones"] == []
    assert document["linked_clones_checked"] == {"from_images": False, "notes": []}
