"""The demo lab: built on the embedded QEMU driver, reused, and described truthfully."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.virsh_view import assert_tree_matches_virsh
from vmsnapgui.virt.demo_lab import DemoLab, remove_demo_lab


def vmsnap(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VMSNAP_DEMO_ROOT=str(root))
    return subprocess.run(
        [sys.executable, "-m", "vmsnapgui", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory, system_conn: object) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("demo") / "lab"
    built = vmsnap(root, "--demo", "list", "--json")
    assert built.returncode == 0, built.stderr
    assert "building the demo lab" in built.stderr
    yield root
    # Its guests outlive processes by design: stop them and delete everything.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from vmsnapgui.virt.demo_lab import remove_demo_lab; "
            "remove_demo_lab(Path(sys.argv[1]))",
            str(root),
        ],
        check=True,
    )
    assert not root.exists()


def test_the_lab_has_running_and_shut_off_vms_with_branching_trees(demo_root: Path) -> None:
    listed = vmsnap(demo_root, "--demo", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "building" not in listed.stderr  # reused, not rebuilt
    domains = {d["name"]: d for d in json.loads(listed.stdout)["domains"]}
    assert set(domains) == {"web-frontend", "database", "build-box", "scratch"}
    assert domains["web-frontend"]["state"] == "shutoff"
    assert domains["database"]["state"] == "running"
    assert domains["build-box"]["state"] == "running"
    assert domains["web-frontend"]["snapshots"] == 5
    assert domains["database"]["current"] == "migration-retry"


@pytest.mark.parametrize("domain", ["web-frontend", "database", "build-box", "scratch"])
def test_vmsnap_tree_matches_virsh_for_every_lab_vm(demo_root: Path, domain: str) -> None:
    result = vmsnap(demo_root, "--demo", "tree", domain, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert_tree_matches_virsh(document, DemoLab(demo_root.resolve()).uri, domain)


def test_the_lab_mixes_internal_external_memory_and_disk_only(demo_root: Path) -> None:
    kinds = set()
    for domain in ("web-frontend", "database", "build-box"):
        document = json.loads(vmsnap(demo_root, "--demo", "tree", domain, "--json").stdout)
        for snapshot in document["snapshots"]:
            kinds.add((snapshot["disks"][0]["kind"], snapshot["memory"]))
    assert kinds == {
        ("internal", "no"),
        ("internal", "internal"),
        ("external", "no"),
        ("external", "external"),
    }


def test_branches_come_from_reverts(demo_root: Path) -> None:
    document = json.loads(vmsnap(demo_root, "--demo", "tree", "web-frontend", "--json").stdout)
    by_name = {s["name"]: s for s in document["snapshots"]}
    assert by_name["nginx-installed"]["children"] == [
        "tls-configured",
        "php-experiment",
    ] or by_name["nginx-installed"]["children"] == ["php-experiment", "tls-configured"]
    assert document["current"] == "tls-configured"


def test_external_files_really_exist(demo_root: Path) -> None:
    document = json.loads(vmsnap(demo_root, "--demo", "tree", "build-box", "--json").stdout)
    compiled = next(s for s in document["snapshots"] if s["name"] == "compiled")
    assert Path(compiled["memory_file"]).stat().st_size > 0
    assert Path(compiled["disks"][0]["file"]).exists()


def test_removing_a_lab_that_does_not_exist_is_harmless(tmp_path: Path) -> None:
    remove_demo_lab(tmp_path / "never-built")
