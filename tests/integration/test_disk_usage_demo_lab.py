"""``vmsnap du --json`` on the demo lab: every number exact and matching the lab's writes.

The lab (vmsnapgui/virt/demo_lab.py) writes known patterns between its snapshots; its
images use 64 KiB clusters and every write is cluster-aligned, so each delta is exactly
the bytes written. It is built in a temporary root and removed afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import qemu_img

MIB = 1024 * 1024
CLUSTER = 64 * 1024
EXTERNAL_NOTE = "exclusive bytes are measured for internal snapshots only"

# The lab's running guests write through QEMU, which may keep the active layer's metadata
# in its cache; flushing first makes "Now" on disk current, so it can be asserted exactly.
FLUSH_RUNNING_GUESTS = """
import sys
from pathlib import Path
import libvirt, libvirt_qemu
from vmsnapgui.virt.demo_lab import DemoLab
from vmsnapgui.virt.event_loop import ensure_event_loop
ensure_event_loop()
conn = libvirt.open(DemoLab(Path(sys.argv[1])).uri)
for name in ("database", "build-box"):
    reply = libvirt_qemu.qemuMonitorCommand(
        conn.lookupByName(name),
        'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "flush"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    )
    assert not reply.strip(), reply
conn.close()
"""


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
def lab(tmp_path_factory: pytest.TempPathFactory, system_conn: object) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("demo-du") / "lab"
    built = vmsnap(root, "--demo", "list")
    assert built.returncode == 0, built.stderr
    subprocess.run([sys.executable, "-c", FLUSH_RUNNING_GUESTS, str(root)], check=True)
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


def du(lab: Path, domain: str) -> dict[str, Any]:
    result = vmsnap(lab, "--demo", "du", domain, "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def row(
    name: str,
    delta: int,
    exclusive: int | None,
    vmstate: int,
    note: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "delta_bytes": delta,
        "exclusive_bytes": exclusive,
        "vmstate_bytes": vmstate,
        "note": note,
        "disks": {"vda": {"delta_bytes": delta, "exclusive_bytes": exclusive}},
    }


def tree_order(lab: Path, domain: str) -> list[str]:
    result = vmsnap(lab, "--demo", "tree", domain, "--json")
    assert result.returncode == 0, result.stderr
    return [s["name"] for s in json.loads(result.stdout)["snapshots"]]


def saved_state(image: Path) -> dict[str, int]:
    """Each internal snapshot's saved memory, as qemu-img reports it, in whole clusters."""
    info = json.loads(qemu_img("info", "-U", "--output=json", str(image)))
    return {s["name"]: -(-int(s["vm-state-size"]) // CLUSTER) * CLUSTER for s in info["snapshots"]}


def test_web_frontend_internal_branches_hold_exactly_what_was_written(lab: Path) -> None:
    document = du(lab, "web-frontend")
    assert [s["name"] for s in document["snapshots"]] == tree_order(lab, "web-frontend")
    assert sorted(document["snapshots"], key=lambda s: s["name"]) == [
        row("fresh-install", 48 * MIB, 0, 0),  # 48 MiB at 0
        row("nginx-installed", 16 * MIB, 0, 0),  # 16 MiB at 64 MiB
        row("php-experiment", 24 * MIB, 0, 0),  # 24 MiB, kept by php-tuned
        row("php-tuned", 4 * MIB, 4 * MIB, 0),  # the branch tip no one else shares
        row("tls-configured", 12 * MIB, 0, 0),  # 8 MiB new + 4 MiB rewritten; Now shares it
    ]
    assert document["now"] == {"delta_bytes": 2 * MIB, "disks": {"vda": {"delta_bytes": 2 * MIB}}}
    assert document["total_bytes"] == 106 * MIB
    assert document["complete"] is True
    assert document["pool"] is None  # the embedded driver has no storage pools


def test_database_snapshots_of_a_running_guest_hold_their_writes_and_memory(lab: Path) -> None:
    document = du(lab, "database")
    state = saved_state(lab / "images" / "database.qcow2")
    assert all(size > 0 for size in state.values())
    assert document["snapshots"] == [
        row("schema-v1", 32 * MIB, 0, state["schema-v1"]),
        row("data-loaded", 16 * MIB, 0, state["data-loaded"]),
        row("before-migration", 8 * MIB, 8 * MIB, state["before-migration"]),
        row("migration-retry", 12 * MIB, 0, state["migration-retry"]),
    ]
    assert document["now"] == {"delta_bytes": 1 * MIB, "disks": {"vda": {"delta_bytes": 1 * MIB}}}
    assert document["total_bytes"] == 69 * MIB + sum(state.values())
    assert document["complete"] is True


def test_build_box_external_layers_hold_their_writes_and_the_memory_file(lab: Path) -> None:
    document = du(lab, "build-box")
    memory = (lab / "images" / "build-box.compiled.mem").stat().st_blocks * 512
    assert memory > 0
    assert document["snapshots"] == [
        row("deps-installed", 24 * MIB, None, 0, EXTERNAL_NOTE),
        row("compiled", 12 * MIB, None, memory, EXTERNAL_NOTE),
    ]
    assert document["now"] == {"delta_bytes": 6 * MIB, "disks": {"vda": {"delta_bytes": 6 * MIB}}}
    assert document["total_bytes"] == 42 * MIB + memory
    assert document["complete"] is True


def test_scratch_without_snapshots_is_all_now_its_raw_file_allocation(lab: Path) -> None:
    document = du(lab, "scratch")
    allocated = (lab / "images" / "scratch.img").stat().st_blocks * 512
    assert document == {
        "domain": "scratch",
        "complete": True,
        "snapshots": [],
        "now": {"delta_bytes": allocated, "disks": {"vda": {"delta_bytes": allocated}}},
        "total_bytes": allocated,
        "pool": None,
    }


def test_the_table_names_every_vm_snapshot_and_the_total(lab: Path) -> None:
    result = vmsnap(lab, "--demo", "du", "web-frontend")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["SNAPSHOT", "DELTA", "EXCLUSIVE", "VMSTATE"]
    assert lines[2].split() == ["fresh-install", "48.0", "MiB", "0", "B", "0", "B"]
    assert ["total", "106", "MiB"] in [line.split() for line in lines]
