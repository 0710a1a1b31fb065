"""The runtime runs on camera boxes without torch: importing any of its modules (and starting
the CLI) must not load torch — nor onnx, onnxscript, triton or sklearn, which a camera box does
not install either — checked in a fresh interpreter."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_never_imports_torch():
    # A subpackage's __main__ may run its CLI on import; runtime.__main__ is guarded and checked.
    modules = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.") if m.name.count("__main__") == 0 or m.name == "runtime.__main__")
    assert {"runtime.api", "runtime.backends", "runtime.sources", "runtime.__main__"} <= set(modules)
    code = (
        "import importlib, sys\n"
        "import runtime\n"
        "from runtime import Runtime, RuntimeOptions, StreamOptions, SourceOptions\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import onnxruntime\n"
        "heavy = {'torch', 'onnx', 'onnxscript', 'triton', 'sklearn'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print('modules a camera box lacks:', loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
