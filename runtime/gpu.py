"""The one probe of this machine's NVIDIA GPU, and the one TensorRT logger of the process.

``gpu_sm()`` asks the CUDA driver (libcuda, through ctypes: no package needed, nothing
initialised beyond cuInit) for device 0's compute capability; the runtime's TensorRT backend
picks its engine with it and export's builders choose their targets with it.

TensorRT keeps the first logger a process hands it, for the process's lifetime, per module
(tensorrt and tensorrt_rtx each). So there is exactly one ``TensorRtLogger`` per module
(``tensorrt_logger``), and code that wants TensorRT's messages for one call opens a
``capture()`` around that call: its messages, and only its, land in that capture, so a later
failure never reports an error left over from an earlier one.
"""

from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


class NoGpu(RuntimeError):
    """No usable NVIDIA GPU here; the message says what is missing."""


def gpu_sm(device: int = 0) -> str:
    """Compute capability of a CUDA device as 'sm_XY', or NoGpu saying why there is none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        raise NoGpu("no NVIDIA driver on this machine (libcuda.so.1 not found)") from err
    status = cuda.cuInit(0)
    if status != 0:
        raise NoGpu(f"the NVIDIA driver found no usable GPU (cuInit returned CUDA error {status})")
    count = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(count))
    if device >= count.value:
        raise NoGpu(f"no CUDA device {device}: this machine has {count.value}")
    handle, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(handle), device)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, handle)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, handle)
    return f"sm_{major.value}{minor.value}"


def local_gpu_sm() -> str | None:
    """gpu_sm() of device 0, or None without a GPU."""
    try:
        return gpu_sm()
    except NoGpu:
        return None


@dataclass
class Capture:
    """TensorRT's messages during one call: (severity, message) pairs."""

    serious: tuple
    records: list = field(default_factory=list)

    def errors(self) -> list[str]:
        return [message for severity, message in self.records if severity in self.serious]

    def first_error(self, default: str = "no error message from TensorRT") -> str:
        errors = self.errors()
        return errors[0] if errors else default


_LOGGERS: dict = {}
_LOGGERS_LOCK = threading.Lock()


def tensorrt_logger(trt):
    """The process's one logger for this TensorRT module (tensorrt or tensorrt_rtx)."""
    with _LOGGERS_LOCK:
        if trt.__name__ not in _LOGGERS:
            _LOGGERS[trt.__name__] = _make_logger(trt)
        return _LOGGERS[trt.__name__]


def _make_logger(trt):
    class TensorRtLogger(trt.ILogger):
        """Routes each message to the captures open at that moment; keeps nothing otherwise."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self._captures: list[Capture] = []
            self._lock = threading.Lock()

        def log(self, severity, msg):
            with self._lock:
                for capture in self._captures:
                    capture.records.append((severity, msg))

        @contextmanager
        def capture(self):
            capture = Capture(serious=(trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR))
            with self._lock:
                self._captures.append(capture)
            try:
                yield capture
            finally:
                with self._lock:
                    self._captures.remove(capture)

    return TensorRtLogger()
