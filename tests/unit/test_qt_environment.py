"""What importing the Qt layer sets up for Qt before the first paint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env_after_import(**preset: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "QT_NO_GUI_THREADPOOL"}
    env.update(preset)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, vmsnapgui.qt; print(os.environ.get('QT_NO_GUI_THREADPOOL'))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_fills_are_painted_on_the_gui_thread_unless_the_user_says_otherwise() -> None:
    # Qt's helper threads for large fills made repaints several times slower while
    # the CPUs were busy with a guest (see vmsnapgui/qt/__init__.py).
    assert env_after_import() == "1"
    assert env_after_import(QT_NO_GUI_THREADPOOL="") == ""
