"""The tensorrt backend: a bundle's TensorRT engine on this machine's GPU.

Opening it checks, in order, and raises BackendUnavailable with one line at the first gap: the
model takes one input (not a landmarks model's two); it holds engines at all; cuda-python's bindings import; a CUDA driver and GPU are present
(their compute capability picks the engine from the manifest); the engine's runtime module
(tensorrt or tensorrt_rtx, the one its builder needs) imports; the runtime deserialises it.

Memory: pinned host buffers and device buffers sized for the engine's largest batch, one
non-blocking stream, tensor addresses bound once. Clips are stacked straight into the pinned
input (``input_buffer``), so a batch is one async copy each way.

CUDA graphs, one per batch size, on first use:

* TensorRT engines: an execution context per batch size, all sharing one scratch allocation
  (runs are serial on one stream). The first batch of a size runs normally (TensorRT needs one
  run after a shape change), then that run is captured and later batches replay the graph. A
  context per size keeps each graph's shapes and state fixed for good.
* TensorRT-RTX engines: its runtime captures one graph per shape itself (cuda_graph_strategy
  WHOLE_GRAPH_CAPTURE), after its shape-specialised kernels are compiled; manual capture would
  need engines built with REQUIRE_USER_ALLOCATION and would freeze the fallback kernels.

Batches are not padded up to a captured size: with graphs per exact size, padding would only
add compute on every batch to save one capture (a few milliseconds) per size, once.
"""

from __future__ import annotations

import ctypes
import importlib

import numpy as np

from runtime.backends import Backend, BackendClosed, BackendUnavailable, refuse_landmarks
from runtime.bundle import Bundle, BundleError, EngineEntry
from runtime.gpu import NoGpu, gpu_sm, tensorrt_logger
from runtime.model import ModelSource

RUNTIME_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
INSTALL = {
    "tensorrt": "pip install tensorrt-cu12 or tensorrt-cu13 (Jetson: JetPack's python3-libnvinfer)",
    "tensorrt-rtx": "pip install tensorrt-rtx-cu13",
}
CUDA_INSTALL = "pip install cuda-bindings (cuda-python's torch-free bindings; cuda-bindings<13 for CUDA 12 drivers such as JetPack 6)"


def import_cuda():
    """cuda-python's runtime-API module; it imports without a GPU (the driver loads on first call)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as err:
        raise BackendUnavailable(f"the tensorrt backend needs cuda-python ({err}): {CUDA_INSTALL}") from err
    return cudart


def usable_gpu_sm(cudart, device: int = 0) -> str:
    """The GPU's compute capability (runtime.gpu), once cuda-python can also reach it; else
    BackendUnavailable saying why (no driver, no GPU, or bindings newer than the driver)."""
    try:
        sm = gpu_sm(device)
    except NoGpu as err:
        raise BackendUnavailable(f"{err}: the tensorrt backend needs an NVIDIA GPU") from err
    err, _ = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        _, driver = cudart.cudaDriverGetVersion()
        _, runtime = cudart.cudaRuntimeGetVersion()
        older = f": pip install 'cuda-bindings<{runtime // 1000}'" if driver // 1000 < runtime // 1000 else ""
        raise BackendUnavailable(
            f"cuda-python cannot use the {sm} GPU: {_error_text(cudart, err)} (the driver supports CUDA {_version(driver)}, "
            f"cuda-bindings is built for CUDA {_version(runtime)}{older})"
        )
    return sm


def choose_engine(bundle: Bundle, sm: str) -> tuple[EngineEntry, object]:
    """The bundle's engine for this GPU whose runtime imports (lowest precision first), and that module."""
    fitting = bundle.engines_for(sm)
    if not fitting:
        held = ", ".join(f"{e.file} ({', '.join(e.gpu_sm)})" for e in bundle.engines)
        raise BackendUnavailable(
            f"{bundle.path.name} has no engine for this GPU ({sm}); it holds {held}. "
            f"Build one on this GPU: python -m export.trt {bundle.onnx_path} -o {bundle.path} --builder tensorrt"
        )
    missing = []
    for engine in fitting:
        try:
            return engine, importlib.import_module(RUNTIME_MODULES[engine.builder])
        except (ImportError, OSError) as err:
            missing.append(f"{engine.file} needs {RUNTIME_MODULES[engine.builder]} ({err}): {INSTALL[engine.builder]}")
    raise BackendUnavailable("no TensorRT runtime for this GPU's engines: " + "; ".join(missing))


class TensorRtBackend(Backend):
    name = "tensorrt"

    def __init__(self, source: ModelSource, device: int = 0):
        refuse_landmarks(source, "tensorrt")  # one input bound; first, as no GPU would change it
        if not source.has_engines:  # before any GPU check: no machine could run this model here
            raise BackendUnavailable(f"{source.path} holds no TensorRT engine: build one with python -m export.trt")
        self._cudart = cudart = import_cuda()
        self._device = device
        self.sm = usable_gpu_sm(cudart, device)
        self.engine_info, trt = choose_engine(source.bundle, self.sm)
        self._trt, self._graphs, self._contexts, self._pointers = trt, {}, {}, []
        self._logger = tensorrt_logger(trt)
        self.graph_failures: dict[int, str] = {}  # batch size → why it runs without a graph
        self._stream = None
        self._engine = self._deserialise(trt, source.bundle, self.engine_info)
        try:
            self._bind_io(source)
            self._allocate()
        except BaseException:
            self.close()
            raise

    # --- opening ----------------------------------------------------------------------------

    def _deserialise(self, trt, bundle: Bundle, info: EngineEntry):
        try:
            data = bundle.read_verified(info.file)
        except BundleError as err:
            raise BackendUnavailable(str(err)) from err
        _check(self._cudart, self._cudart.cudaSetDevice(self._device))
        self._runtime = trt.Runtime(self._logger)
        with self._logger.capture() as log:
            engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendUnavailable(
                f"{trt.__name__} {trt.__version__} refused {info.file} (built by {info.builder} "
                f"{info.builder_version} for {', '.join(info.gpu_sm)}): {log.first_error()}"
            )
        return engine

    def _bind_io(self, source: ModelSource) -> None:
        """Find the one input and output and check them against the model's spec."""
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.engine_info.file}: expected one input and one output, found {inputs} and {outputs}")
        (self._input,), (self._output,) = inputs, outputs
        spec = source.spec
        self.clip_shape = spec.input_shape(1)[1:]  # (3, T, H, W), or (T, H, W, 3) for a uint8-input engine
        found = tuple(engine.get_tensor_shape(self._input))
        if found[1:] != self.clip_shape:
            raise ValueError(f"{self.engine_info.file}: engine input is {found}, the model's spec says (N, {', '.join(map(str, self.clip_shape))})")
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._output)))
        self.num_classes = spec.num_classes
        profile = self.engine_info.batch_profile
        smallest, self.max_batch = profile.min, profile.max
        if smallest != 1:
            raise ValueError(f"{self.engine_info.file}: its batch profile starts at {smallest}; the runtime needs batches from 1")

    def _allocate(self) -> None:
        cudart = self._cudart
        self._stream = _check(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        in_shape, out_shape = (self.max_batch, *self.clip_shape), (self.max_batch, self.num_classes)
        self._host_in, self._dev_in = self._pinned(in_shape, self.input_dtype), self._device_alloc(in_shape, self.input_dtype)
        self._host_out, self._dev_out = self._pinned(out_shape, self.output_dtype), self._device_alloc(out_shape, self.output_dtype)
        if self.engine_info.builder == "tensorrt-rtx":
            config = self._engine.create_runtime_config()
            config.cuda_graph_strategy = self._trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            with self._logger.capture() as log:
                context = self._engine.create_execution_context(config)
            self._rtx_context = self._new_context(context, log)
            self._rtx_batch = None
        else:
            self._scratch = self._device_bytes(self._engine.device_memory_size_v2)

    def _pinned(self, shape, dtype) -> np.ndarray:
        size = int(np.prod(shape)) * dtype.itemsize
        pointer = _check(self._cudart, self._cudart.cudaMallocHost(size))
        self._pointers.append((self._cudart.cudaFreeHost, pointer))
        return np.frombuffer((ctypes.c_byte * size).from_address(pointer), dtype).reshape(shape)

    def _device_alloc(self, shape, dtype) -> int:
        return self._device_bytes(int(np.prod(shape)) * dtype.itemsize)

    def _device_bytes(self, size: int) -> int:
        pointer = _check(self._cudart, self._cudart.cudaMalloc(max(size, 1)))
        self._pointers.append((self._cudart.cudaFree, pointer))
        return pointer

    def _new_context(self, context, log):
        if context is None:
            raise BackendUnavailable(f"{self.engine_info.file}: TensorRT could not create an execution context: {log.first_error()}")
        context.set_tensor_address(self._input, self._dev_in)
        context.set_tensor_address(self._output, self._dev_out)
        return context

    # --- running ----------------------------------------------------------------------------

    def input_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] <= self.max_batch and tuple(shape[1:]) == self.clip_shape:
            return self._host_in[: shape[0]]
        return super().input_buffer(shape)

    def run(self, batch: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        if landmarks is not None:
            raise ValueError("the tensorrt backend binds one input, the clips; it takes no landmark renderings")
        n = len(batch)
        if batch.shape[1:] != self.clip_shape or not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of shape {batch.shape}; this engine takes (1..{self.max_batch}, {', '.join(map(str, self.clip_shape))})")
        if batch.dtype != self.input_dtype:
            raise ValueError(f"batch is {batch.dtype}; this engine's input is {self.input_dtype}")
        if self._stream is None:
            raise BackendClosed("the tensorrt backend is closed")
        cudart, stream = self._cudart, self._stream
        _check(cudart, cudart.cudaSetDevice(self._device))  # per thread: run() is called from the dispatcher's
        if batch.ctypes.data != self._host_in.ctypes.data:  # not stacked in input_buffer()
            self._host_in[:n] = batch
        _check(cudart, cudart.cudaMemcpyAsync(self._dev_in, self._host_in.ctypes.data, batch.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        self._enqueue(n)
        out_bytes = n * self.num_classes * self.output_dtype.itemsize
        _check(cudart, cudart.cudaMemcpyAsync(self._host_out.ctypes.data, self._dev_out, out_bytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        _check(cudart, cudart.cudaStreamSynchronize(stream))
        return self._host_out[:n].copy()

    def _enqueue(self, n: int) -> None:
        if self.engine_info.builder == "tensorrt-rtx":
            if n != self._rtx_batch:
                self._set_shape(self._rtx_context, n)
                self._rtx_batch = n
            self._execute(self._rtx_context)
        elif n not in self._contexts:
            self._first_run(n)
        elif self._graphs.get(n) is not None:
            _check(self._cudart, self._cudart.cudaGraphLaunch(self._graphs[n], self._stream))
        else:
            self._execute(self._contexts[n])

    def _first_run(self, n: int) -> None:
        """A new batch size: its own context, one normal run (this batch's result), then a capture."""
        trt = self._trt
        with self._logger.capture() as log:
            context = self._engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        context = self._new_context(context, log)
        context.set_device_memory(self._scratch, self._engine.device_memory_size_v2)
        self._set_shape(context, n)
        self._contexts[n] = context
        self._execute(context)  # TensorRT needs one run after a shape change before a capture
        _check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream))
        self._graphs[n] = self._capture(context, n)

    def _capture(self, context, n: int):
        """The context's run as an instantiated CUDA graph; None (and the reason kept for
        describe()) where TensorRT cannot be captured: that size then runs without a graph."""
        cudart, stream = self._cudart, self._stream
        if hasattr(context, "is_stream_capturable") and not context.is_stream_capturable(int(stream)):
            self.graph_failures[n] = "TensorRT reports the context as not stream-capturable"
            return None
        _check(cudart, cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            with self._logger.capture() as log:
                captured = context.execute_async_v3(int(stream))
        finally:
            err, graph = cudart.cudaStreamEndCapture(stream)
        if not captured or err != cudart.cudaError_t.cudaSuccess:
            if err == cudart.cudaError_t.cudaSuccess:
                cudart.cudaGraphDestroy(graph)
            self.graph_failures[n] = _error_text(cudart, err) if captured else log.first_error()
            return None
        try:
            return _check(cudart, cudart.cudaGraphInstantiate(graph, 0))
        finally:
            cudart.cudaGraphDestroy(graph)

    def _set_shape(self, context, n: int) -> None:
        with self._logger.capture() as log:
            accepted = context.set_input_shape(self._input, (n, *self.clip_shape))
        if not accepted:
            raise ValueError(f"the engine refused batch {n}: {log.first_error()}")

    def _execute(self, context) -> None:
        with self._logger.capture() as log:
            ran = context.execute_async_v3(int(self._stream))
        if not ran:
            raise RuntimeError(f"TensorRT execution failed: {log.first_error()}")

    # --- reports and cleanup ----------------------------------------------------------------

    @property
    def graph_batches(self) -> tuple[int, ...]:
        """Batch sizes with a captured CUDA graph (TensorRT engines; TensorRT-RTX keeps its own)."""
        return tuple(sorted(n for n, graph in self._graphs.items() if graph is not None))

    def details(self) -> str:
        info = self.engine_info
        graphs = "TensorRT-RTX's per-shape CUDA graphs" if info.builder == "tensorrt-rtx" else "a CUDA graph per batch size"
        failures = "".join(f"; batch {n} without a graph: {why}" for n, why in sorted(self.graph_failures.items()))
        return (f"tensorrt ({info.file}, {self._trt.__name__} {self._trt.__version__}, {self.sm}, "
                f"{info.precision}, batch ≤ {self.max_batch}, {graphs}{failures})")

    def close(self) -> None:
        cudart = self._cudart
        if self._stream is not None:
            cudart.cudaStreamSynchronize(self._stream)
        for graph in self._graphs.values():
            if graph is not None:
                cudart.cudaGraphExecDestroy(graph)
        self._graphs, self._contexts, self._rtx_context = {}, {}, None
        self._engine = None  # contexts, then the engine, go before the memory they use
        for free, pointer in reversed(self._pointers):
            free(pointer)
        self._pointers = []
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None


def _check(cudart, result):
    """cuda-python returns (error, value...); the value, or RuntimeError naming the error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA: {_error_text(cudart, err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _error_text(cudart, err) -> str:
    return f"{cudart.cudaGetErrorString(err)[1].decode()} ({err.name})"


def _version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"
