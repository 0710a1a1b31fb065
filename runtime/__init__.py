"""Torch-free multi-stream runtime (numpy, PyAV, ONNX Runtime). `from runtime import Runtime`."""

import importlib

# Loaded on first use (PEP 562), so `import runtime` stays light for its numpy-only parts.
_LAZY = {
    "Runtime": "runtime.api", "RuntimeOptions": "runtime.api", "StreamOptions": "runtime.streams",
    "SourceOptions": "runtime.sources", "CompoundOptions": "runtime.post", "QueuePolicy": "runtime.batcher",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
