"""``vmsnap du`` on the test driver: the JSON document, the table, exit codes."""

from __future__ import annotations

import json

import pytest

from vmsnapgui.cli import main
from vmsnapgui.cli.du_command import render_usage
from vmsnapgui.core.disk_usage import DiskUsage, DomainUsage, PoolSpace, SnapshotUsage
from vmsnapgui.core.snapshot import Snapshot
from vmsnapgui.core.snapshot_tree import SnapshotTree

MIB = 1024 * 1024


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_du_json_is_the_documented_document_with_nulls_and_notes(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, err = run_cli(capsys, "-c", lab_uri, "du", "db", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert set(document) == {"domain", "complete", "snapshots", "now", "total_bytes", "pool"}
    assert document["domain"] == "db"
    assert document["complete"] is False
    assert document["total_bytes"] is None
    assert document["pool"] is None
    assert [s["name"] for s in document["snapshots"]] == [
        "s1-disk-only",
        "s2-with-memory",
        "s3-paused",
    ]
    assert document["snapshots"][0] == {
        "name": "s1-disk-only",
        "delta_bytes": None,
        "exclusive_bytes": None,
        "vmstate_bytes": 0,
        "note": "vda: its overlay /var/lib/libvirt/images/db.s1: file missing; "
        "exclusive bytes are measured for internal snapshots only",
        "disks": {
            "vda": {"delta_bytes": None, "exclusive_bytes": None},
            "vdb": {"delta_bytes": 0, "exclusive_bytes": 0},
        },
    }
    assert document["now"] == {
        "delta_bytes": None,
        "disks": {"vda": {"delta_bytes": None}, "vdb": {"delta_bytes": None}},
    }


def test_du_prints_a_table_in_tree_order_with_unknowns_marked_and_explained(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, err = run_cli(capsys, "-c", lab_uri, "du", "web")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"web (running) on {lab_uri}: 6 snapshots"
    assert lines[1:10] == [
        "SNAPSHOT                    DELTA  EXCLUSIVE  VMSTATE",
        "base                            ?          ?      0 B",
        "  nginx-installed               ?          ?        ?",
        "    tls & certs                 ?          ?        ?",
        "      before-upgrade *          ?          ?        ?",
        "    php-experiment              ?          ?      0 B",
        "      php-tuned                 ?          ?      0 B",
        "Now (since before-upgrade)      ?",
        "total                           ?",
    ]
    assert lines[10] == "notes:"
    assert "  base: /var/lib/libvirt/images/web.qcow2: file missing" in lines
    assert "  The first disk is not in a storage pool, so its free space is not known." in lines


def test_the_table_shows_sizes_in_human_units_with_stale_ones_marked() -> None:
    tree = SnapshotTree([Snapshot("base"), Snapshot("next", parent="base")], current="next")
    usage = DomainUsage(
        domain="web",
        snapshots=(
            SnapshotUsage("base", 48 * MIB, 0, 0, disks={"vda": DiskUsage(48 * MIB, 0)}),
            SnapshotUsage("next", 16 * MIB, 16 * MIB, 512 * 1024),
        ),
        now=SnapshotUsage("Now", 2 * MIB, approximate=True, note="the VM is running"),
        pool=PoolSpace("default", 100 * 1024 * MIB, 50 * 1024 * MIB),
    )
    assert render_usage(usage, tree) == [
        "SNAPSHOT              DELTA  EXCLUSIVE  VMSTATE",
        "base               48.0 MiB        0 B      0 B",
        "  next *           16.0 MiB   16.0 MiB  512 KiB",
        "Now (since next)  ~2.00 MiB",
        "total              66.5 MiB",
        "pool default: 50.0 GiB free of 100 GiB",
        "notes:",
        "  Now: the VM is running",
    ]


def test_du_of_an_unknown_domain_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code, out, err = run_cli(capsys, "-c", lab_uri, "du", "no-such-vm")
    assert code == 1
    assert out == ""
    assert err == f"vmsnap: There is no virtual machine called 'no-such-vm' on {lab_uri}.\n"


def test_du_without_a_domain_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["du"])
    assert caught.value.code == 2
    assert "the following arguments are required: DOMAIN" in capsys.readouterr().err
