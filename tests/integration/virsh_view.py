"""What virsh says about a domain's snapshots, read independently of our own parser."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from typing import Any


def _quote(arg: str) -> str:
    # virsh's own command parser: double quotes, with backslash escaping \ and ".
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def virsh_batch(uri: str, commands: list[list[str]]) -> list[str]:
    """Run many virsh commands in one virsh process (one connection); outputs in order.

    One process matters for ``qemu:///embed`` URIs, where each virsh start loads the
    whole embedded driver.
    """
    marker = "@@vmsnap-test-boundary@@"
    script = []
    for command in commands:
        script.append(" ".join(_quote(part) for part in command))
        script.append(f"echo {marker}")
    # One argument holding "cmd ; cmd ; …" is parsed by virsh itself, not by a shell.
    result = subprocess.run(
        ["virsh", "-q", "-c", uri, " ; ".join(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    # virsh's echo ends without a newline in this mode: split on the marker alone.
    chunks = result.stdout.split(marker)
    if len(chunks) != len(commands) + 1:
        raise AssertionError(
            f"virsh output did not split into {len(commands)} parts: {result.stderr}"
        )
    return [chunk.strip("\n") for chunk in chunks[:-1]]


def virsh_snapshot_view(uri: str, domain: str) -> dict[str, Any]:
    """Current snapshot and every snapshot's fields as virsh and its XML give them."""
    names_out, current_out = virsh_batch(
        uri, [["snapshot-list", domain, "--name"], ["snapshot-current", domain, "--name"]]
    )
    names = [line for line in names_out.splitlines() if line]
    commands: list[list[str]] = []
    for name in names:
        commands.append(["snapshot-parent", domain, name])
        commands.append(["snapshot-dumpxml", domain, name])
    outputs = virsh_batch(uri, commands) if commands else []
    snapshots = {}
    for index, name in enumerate(names):
        parent = outputs[2 * index].strip() or None
        root = ET.fromstring(outputs[2 * index + 1])
        memory = root.find("memory")
        disks = []
        for disk in root.findall("./disks/disk"):
            source = disk.find("source")
            disks.append(
                {
                    "target": disk.get("name"),
                    "kind": disk.get("snapshot", "no"),
                    "file": source.get("file") if source is not None else None,
                }
            )
        snapshots[name] = {
            "parent": parent,
            "created": int(root.findtext("creationTime", "0")),
            "state": root.findtext("state"),
            "description": root.findtext("description"),
            "memory": memory.get("snapshot") if memory is not None else "no",
            "memory_file": memory.get("file") if memory is not None else None,
            "disks": disks,
        }
    return {"current": current_out.strip() or None, "snapshots": snapshots}


def assert_tree_matches_virsh(document: dict[str, Any], uri: str, domain: str) -> None:
    """``vmsnap tree --json`` must say what virsh says, snapshot by snapshot."""
    view = virsh_snapshot_view(uri, domain)
    ours = {s["name"]: s for s in document["snapshots"]}
    assert set(ours) == set(view["snapshots"])
    assert document["current"] == view["current"]
    order = [s["name"] for s in document["snapshots"]]
    for name, theirs in view["snapshots"].items():
        mine = ours[name]
        for key in ("parent", "created", "state", "description", "memory", "memory_file", "disks"):
            assert mine[key] == theirs[key], f"{name}: {key} differs"
        assert mine["current"] == (name == view["current"])
        expected_children = sorted(
            (n for n, s in view["snapshots"].items() if s["parent"] == name),
            key=lambda n: (view["snapshots"][n]["created"], n),
        )
        assert mine["children"] == expected_children
        if theirs["parent"] is not None:
            assert order.index(theirs["parent"]) < order.index(name)
