"""Run Python in a fresh interpreter where some packages cannot be imported, as on a machine
without them: the import system's path finder is told not to find them (nothing is mocked;
the code under test meets a real ImportError)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_hiding(modules: tuple[str, ...], code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code (with sys.argv[1:] = args) from the repository root, hiding these top-level packages."""
    script = (
        "import importlib.machinery, sys\n"
        "class Hidden(importlib.machinery.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {tuple(modules)!r}:\n"
        "            return None\n"
        "        return super().find_spec(name, path, target)\n"
        "sys.meta_path = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]\n"
    ) + code
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
