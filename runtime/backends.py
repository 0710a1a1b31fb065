"""Inference backends behind one small interface; heavy imports happen only when one is opened.

``open_backend(source, name, providers, threads)`` picks from ``BACKENDS`` by name:

* ``onnxruntime``: the exported ONNX file in ONNX Runtime, on the execution providers named in
  ``providers`` (``cpu``, ``cuda``, ``tensorrt``), in order of preference. A provider this
  ONNX Runtime build lacks is an error, never a silent move to the CPU.
* ``tensorrt``: the bundle's TensorRT engine for this GPU (runtime.trt_backend), with pinned
  buffers and CUDA graphs.
* ``triton``: an NVIDIA Triton Inference Server at ``server`` (runtime.triton_backend), one
  gRPC request per batch; never chosen by auto.
* ``auto`` (the default): the engine when TensorRT and a GPU it fits are here, else ONNX
  Runtime on CUDA when this build and machine have it, else on the CPU. Each backend it passes
  over is named with the reason in ``describe()``, so the choice is never silent.

A backend that cannot run on this machine raises BackendUnavailable when it opens, with one
line saying what is missing (package, driver, GPU, engine); auto moves on only past those.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from runtime.gpu import local_gpu_sm
from runtime.model import ModelSource


class BackendUnavailable(ValueError):
    """This backend cannot run here (a package, driver, GPU or engine is missing); one line says which."""


class BackendClosed(ValueError):
    """The backend was used after close(): its session or device memory is gone. A ValueError,
    as Python's own for a closed file (and the tensorrt backend's)."""


# What an exported graph's inputs are called (export.onnx): the clip, then a landmarks model's renderings.
GRAPH_INPUTS = ("clip", "landmarks")


def refuse_landmarks(source: ModelSource, backend: str) -> None:
    """BackendUnavailable for a landmarks model (two inputs) on a backend that feeds one."""
    if source.spec.landmarks:
        raise BackendUnavailable(f"the {backend} backend feeds one input; {source.path.name} also takes landmark renderings "
                                 f"(spec landmarks): run it with --backend onnxruntime")


class Backend(ABC):
    """Runs batches of normalised clips (N, 3, T, H, W) → logits (N, classes); a landmarks
    model (ModelSpec.landmarks) also takes the clips' renderings, shaped like the clips. Only
    ONNX Runtime feeds that second input; the others refuse such a model when they open."""

    name: str
    # Largest batch the backend accepts (an engine's optimisation profile); None: any.
    max_batch: int | None = None
    # The model input's dtype: float16 for fp16 exports, whose clips are cast on the host
    # (half the bytes to move); logits come back as they are.
    input_dtype: np.dtype = np.dtype(np.float32)
    # Why auto chose this backend (the ones it passed over and their reasons); "" when named.
    reason: str = ""
    # Batches it is built to run at once, each from its own thread (runtime.dispatch): 1 for a
    # backend that owns the machine's cores or GPU; more for one whose model sits across a network.
    in_flight: int = 1

    @abstractmethod
    def run(self, batch: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray: ...

    def input_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """Where the caller should stack batches: a GPU backend hands out pinned host memory,
        so a batch goes to the device without another host copy."""
        return np.empty(shape, self.input_dtype)

    def details(self) -> str:
        return self.name

    def describe(self) -> str:
        return f"{self.details()}; {self.reason}" if self.reason else self.details()

    def close(self) -> None:
        """Free what the backend holds (device memory, sessions)."""


def import_onnxruntime():
    """The onnxruntime module, or BackendUnavailable saying which of its two builds to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailable(
            f"ONNX Runtime is not installed ({err}): pip install 'dfer-edge[cpu]', or 'dfer-edge[gpu]' on NVIDIA GPUs (never both)"
        ) from err
    return onnxruntime


def _why_no_gpu_provider() -> str:
    if local_gpu_sm() is None:
        return "no NVIDIA driver or GPU on this machine"
    return "the GPU is there, so its CUDA or cuDNN libraries did not load (ONNX Runtime's log names the missing one)"


def onnx_session(path: str | Path, providers: list[str] | None = None, threads: int | None = None):
    """An ONNX Runtime session (CPU unless providers are named) that logs errors only: fp16
    graphs make ONNX Runtime warn about constant folding on every load."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    PROVIDERS = {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }

    def __init__(self, source: ModelSource, providers: tuple[str, ...] = ("cpu",), threads: int | None = None):
        ort = import_onnxruntime()
        wanted = provider_names(providers)
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailable(f"this ONNX Runtime build lacks {', '.join(missing)}; it has {', '.join(available)}")
        self._session = onnx_session(source.verified_onnx(), wanted, threads)
        used = self._session.get_providers()
        if wanted[0] not in used:
            raise BackendUnavailable(f"ONNX Runtime could not start {wanted[0]} (session runs on {', '.join(used)}): {_why_no_gpu_provider()}")
        graph_inputs = self._session.get_inputs()
        names = [i.name for i in graph_inputs]
        wanted_names = list(GRAPH_INPUTS[: 2 if source.spec.landmarks else 1])
        if len(names) != len(wanted_names) or (source.spec.landmarks and names != wanted_names):
            raise ValueError(f"{source.onnx_path}: the graph takes inputs {names}; its metadata says {wanted_names} "
                             f"(landmarks: {source.spec.landmarks})")
        self._inputs, self._output = names, self._session.get_outputs()[0].name
        expected = list(source.spec.input_shape(1)[1:])
        for clip in graph_inputs:
            if list(clip.shape[1:]) != expected:
                raise ValueError(f"{source.onnx_path}: model input {clip.name} is {clip.shape}, its metadata says (N, {', '.join(map(str, expected))})")
            if clip.type not in _ONNX_TYPES or clip.type != graph_inputs[0].type:
                raise ValueError(f"{source.onnx_path}: model input {clip.name} is {clip.type}; the runtime feeds {' or '.join(_ONNX_TYPES)}, one for every input")
        self.input_dtype = np.dtype(_ONNX_TYPES[graph_inputs[0].type])
        self.providers = tuple(used)

    def run(self, batch: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        if self._session is None:
            raise BackendClosed("the onnxruntime backend is closed")
        given = [batch] if landmarks is None else [batch, landmarks]
        if len(given) != len(self._inputs):
            raise ValueError(f"this model takes {' and '.join(self._inputs)}; got {len(given)} input(s)")
        return self._session.run([self._output], dict(zip(self._inputs, given)))[0]

    def details(self) -> str:
        return f"onnxruntime ({', '.join(self.providers)})"

    def close(self) -> None:
        self._session = None


def _open_tensorrt(source: ModelSource, providers, threads) -> Backend:
    for option, value in (("providers", providers), ("threads", threads)):
        if value:
            raise ValueError(f"{option} apply to ONNX Runtime; the tensorrt backend runs the bundle's engine")
    from runtime.trt_backend import TensorRtBackend  # tensorrt and cuda-python load only here

    return TensorRtBackend(source)


def _open_onnxruntime(source: ModelSource, providers, threads) -> Backend:
    return OnnxRuntimeBackend(source, providers or ("cpu",), threads)


def _open_auto(source: ModelSource, providers, threads) -> Backend:
    """The engine if it runs here, else ONNX Runtime (CUDA, then CPU); the reasons go in describe()."""
    passed_over = []
    try:
        return _open_tensorrt(source, None, None)
    except BackendUnavailable as err:
        passed_over.append(f"tensorrt: {err}")
    for choice in [tuple(providers)] if providers else [("cuda", "cpu"), ("cpu",)]:
        try:
            backend = OnnxRuntimeBackend(source, choice, threads)
        except BackendUnavailable as err:
            passed_over.append(f"onnxruntime {','.join(choice)}: {err}")
            continue
        backend.reason = "auto passed over " + "; ".join(passed_over)
        return backend
    raise BackendUnavailable("no backend can run here: " + "; ".join(passed_over))


_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def _open_triton(source: ModelSource, providers, threads, *, server: str | None = None, triton_model: str | None = None,
                 in_flight: int | None = None) -> Backend:
    for option, value in (("providers", providers), ("threads", threads)):
        if value:
            raise ValueError(f"{option} apply to ONNX Runtime; the triton backend runs the model on its server")
    if not server:
        raise ValueError("the triton backend needs the server's gRPC address: --server HOST:PORT (RuntimeOptions.server)")
    from runtime.triton_backend import DEFAULT_IN_FLIGHT, TritonBackend  # tritonclient loads only here

    return TritonBackend(source, server=server, model=triton_model, in_flight=in_flight or DEFAULT_IN_FLIGHT)


BACKENDS = {"auto": _open_auto, "onnxruntime": _open_onnxruntime, "tensorrt": _open_tensorrt, "triton": _open_triton}


def open_backend(source: ModelSource, name: str = "auto", providers: tuple[str, ...] | None = None, threads: int | None = None,
                 *, server: str | None = None, triton_model: str | None = None, in_flight: int | None = None) -> Backend:
    """providers: ONNX Runtime's execution providers (None: CPU when named, auto's choice under auto).
    server/triton_model: the triton backend's server (HOST:PORT, gRPC) and model name; in_flight:
    its requests at once (None: its default). The local backends run one batch at a time."""
    if providers is not None:
        provider_names(providers)  # a typo fails now, whichever backend ends up running
    chosen = _choose(name, BACKENDS, "backend")
    if chosen == "triton":
        return _open_triton(source, providers, threads, server=server, triton_model=triton_model, in_flight=in_flight)
    if server or triton_model:
        raise ValueError(f"server and triton_model apply to the triton backend, not {chosen}")
    if in_flight not in (None, 1):
        raise ValueError(f"in_flight applies to the triton backend; {chosen} runs one batch at a time on this machine")
    return BACKENDS[chosen](source, providers, threads)


def provider_names(providers: tuple[str, ...]) -> list[str]:
    if not providers:
        raise ValueError("name at least one ONNX Runtime execution provider")
    table = OnnxRuntimeBackend.PROVIDERS
    return [table[_choose(p, table, "execution provider")] for p in providers]


def _choose(name: str, table: dict, what: str) -> str:
    if name in table:
        return name
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {what} {name!r}{hint}; known: {', '.join(table)}")
