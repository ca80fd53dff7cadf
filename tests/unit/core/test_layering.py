"""The layer rule from DESIGN.md: core imports neither Qt nor libvirt; virt never imports Qt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "vmsnapgui"

FORBIDDEN = {
    "core": (
        "PySide6",
        "libvirt",
        "libvirt_qemu",
        "libvirtaio",
        "pyqtgraph",
        "vmsnapgui.virt",
        "vmsnapgui.qt",
        "vmsnapgui.cli",
    ),
    "virt": ("PySide6", "pyqtgraph", "vmsnapgui.qt", "vmsnapgui.cli"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer: str) -> None:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"no modules found in {layer}/"
    offences = []
    for path in files:
        for module in imported_modules(path):
            for banned in FORBIDDEN[layer]:
                if module == banned or module.startswith(banned + "."):
                    offences.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert offences == []


def test_the_checker_notices_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import libvirt\nfrom PySide6.QtCore import QObject\n")
    assert imported_modules(bad) == {"libvirt", "PySide6.QtCore"}
