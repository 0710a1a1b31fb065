"""Inference backends behind one small interface; heavy imports happen only when one is opened.

``open_backend(source, name, providers)`` picks from ``BACKENDS`` by name. Today:

* ``onnxruntime``: the exported ONNX file in ONNX Runtime, on the execution providers named in
  ``providers`` (``cpu``, ``cuda``, ``tensorrt``), in order of preference. A provider this
  ONNX Runtime build lacks is an error, never a silent move to the CPU.

A TensorRT-engine backend (pinned buffers, one CUDA graph per batch size) is the next entry;
it needs a GPU to be written and tested honestly, so it is not stubbed here.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod

import numpy as np

from runtime.model import ModelSource


class Backend(ABC):
    """Runs batches of normalised clips (N, 3, T, H, W) → logits (N, classes)."""

    name: str
    # Largest batch the backend accepts (an engine's optimisation profile); None: any.
    max_batch: int | None = None
    # The model input's dtype: float16 for fp16 exports, whose clips are cast on the host
    # (half the bytes to move); logits come back as they are.
    input_dtype: np.dtype = np.dtype(np.float32)

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Free what the backend holds (device memory, sessions)."""


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    PROVIDERS = {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }

    def __init__(self, source: ModelSource, providers: tuple[str, ...] = ("cpu",), threads: int | None = None):
        import onnxruntime as ort

        if not providers:
            raise ValueError("name at least one ONNX Runtime execution provider")
        wanted = [self.PROVIDERS[_choose(p, self.PROVIDERS, "execution provider")] for p in providers]
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError(f"this ONNX Runtime build lacks {', '.join(missing)}; it has {', '.join(available)}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(source.onnx_path), options, providers=wanted)
        used = self._session.get_providers()
        if wanted[0] not in used:
            raise ValueError(f"ONNX Runtime could not start {wanted[0]} (session runs on {', '.join(used)})")
        (clip,) = self._session.get_inputs()
        self._input, self._output = clip.name, self._session.get_outputs()[0].name
        expected = [3, source.spec.frames, source.spec.height, source.spec.width]
        if list(clip.shape[1:]) != expected:
            raise ValueError(f"{source.onnx_path}: model input is {clip.shape}, its metadata says (N, {', '.join(map(str, expected))})")
        if clip.type not in _ONNX_TYPES:
            raise ValueError(f"{source.onnx_path}: model input is {clip.type}; the runtime feeds {' or '.join(_ONNX_TYPES)}")
        self.input_dtype = np.dtype(_ONNX_TYPES[clip.type])
        self.providers = tuple(used)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.providers)})"

    def close(self) -> None:
        self._session = None


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
BACKENDS = {"onnxruntime": OnnxRuntimeBackend}


def open_backend(source: ModelSource, name: str = "onnxruntime", providers: tuple[str, ...] = ("cpu",), threads: int | None = None) -> Backend:
    return BACKENDS[_choose(name, BACKENDS, "backend")](source, providers=providers, threads=threads)


def _choose(name: str, table: dict, what: str) -> str:
    if name in table:
        return name
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {what} {name!r}{hint}; known: {', '.join(table)}")
