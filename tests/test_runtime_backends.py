"""Backend choice and the tensorrt backend, on a real TensorRT-RTX engine of a reduced S4D.

Without a GPU (CI, the dev box) the tensorrt backend must refuse to open with one clear line,
through the real TensorRT-RTX runtime and the real cuda-python bindings (nothing stands in for
them), and auto must run ONNX Runtime and say why. The GPU tests build an engine for the GPU
they run on and compare it with ONNX Runtime; they skip, with the reason, where there is none.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from export.builder import import_builder, resolve_targets
from export.trt import BuildRequest, NoBuilderError, build_bundle
from runtime.gpu import local_gpu_sm
from models.demo_checkpoint import write_demo_checkpoint
from runtime.backends import BackendUnavailable, OnnxRuntimeBackend, open_backend
from runtime.demo_videos import write_face_video
from runtime.model import load_model_source
from runtime.synthetic import synthetic_face_frames
from runtime.trt_backend import choose_engine
from tests.hiding import run_hiding
from tests.test_loader import SMALL_S4D, assert_one_line_error, run_cli

try:
    import tensorrt_rtx  # noqa: F401

    RTX_MISSING = None
except ImportError as err:
    RTX_MISSING = str(err)
GPU_SM = local_gpu_sm()
needs_no_gpu = pytest.mark.skipif(GPU_SM is not None, reason=f"this machine has a GPU ({GPU_SM}): the GPU tests below cover it")
# The engine and ONNX Runtime both run the fp16 graph; they differ in kernels and summation
# order only. 5e-3 on logits is test_trt's fp16-vs-fp32 bound (measured ≤ 4.6e-4, ×10).
LOGIT_ATOL = 5e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_demo_checkpoint("s4d", tmp_path_factory.mktemp("ckpt") / "small.pth", seed=1, config=SMALL_S4D)


@pytest.fixture(scope="module")
def rtx_bundle(checkpoint, tmp_path_factory):
    """A reduced-S4D bundle with a real TensorRT-RTX engine (sm_80/86/89/120, batch ≤ 4)."""
    if RTX_MISSING is not None:
        pytest.skip(f"TensorRT-RTX builder not importable ({RTX_MISSING}); pip install tensorrt-rtx-cu13")
    output = tmp_path_factory.mktemp("rtx") / "small.dfer"
    build_bundle(BuildRequest(checkpoint, output, "fp16", 4, 2, "tensorrt-rtx", verify=False), out=lambda line: None)
    return output


def clips(spec, count: int, dtype) -> np.ndarray:
    """Normalised clips of generated faces, one seed each."""
    frames = [synthetic_face_frames(spec.frames, spec.height, spec.width, seed) for seed in range(count)]
    return np.stack([spec.normalize(f) for f in frames]).astype(dtype)


# --- without a GPU ----------------------------------------------------------------------------


@needs_no_gpu
def test_tensorrt_backend_says_there_is_no_gpu(rtx_bundle):
    source = load_model_source(rtx_bundle)
    with pytest.raises(BackendUnavailable, match=r"^no NVIDIA driver on this machine \(libcuda.so.1 not found\)"):
        open_backend(source, "tensorrt")
    assert "cuda.bindings.runtime" in sys.modules  # the real bindings answered


@needs_no_gpu
def test_auto_runs_onnxruntime_here_and_says_why(rtx_bundle):
    source = load_model_source(rtx_bundle)
    backend = open_backend(source)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.providers == ("CPUExecutionProvider",)
    description = backend.describe()
    assert description.startswith("onnxruntime (CPUExecutionProvider); auto passed over tensorrt: no NVIDIA driver"), description
    batch = clips(source.spec, 2, backend.input_dtype)
    assert backend.run(batch).shape == (2, source.spec.num_classes)


@needs_no_gpu
def test_cli_with_backend_tensorrt_exits_with_the_reason(rtx_bundle, tmp_path):
    video = write_face_video(tmp_path / "face.mp4", 64, size=64)
    proc = run_cli("runtime", str(rtx_bundle), "--stream", str(video), "--backend", "tensorrt")
    assert_one_line_error(proc, "no NVIDIA driver", "needs an NVIDIA GPU")
    proc = run_cli("runtime", str(rtx_bundle), "--stream", str(video), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "backend: onnxruntime (CPUExecutionProvider); auto passed over tensorrt: no NVIDIA driver" in proc.stderr
    assert proc.stdout.count('"type": "result"') == 1  # 64 frames, 16 samples 4 apart: one clip


def test_an_engine_for_another_gpu_is_named(rtx_bundle):
    source = load_model_source(rtx_bundle)
    with pytest.raises(BackendUnavailable) as caught:
        choose_engine(source.bundle, "sm_87")
    message = str(caught.value)
    assert "has no engine for this GPU (sm_87)" in message
    assert "model.tensorrt-rtx.sm_80-86-89-120.fp16.engine (sm_80, sm_86, sm_89, sm_120)" in message
    assert "--builder tensorrt" in message
    engine, module = choose_engine(source.bundle, "sm_86")
    assert engine.builder == "tensorrt-rtx" and module.__name__ == "tensorrt_rtx"


def test_a_model_without_engines_is_refused_first(rtx_bundle):
    onnx_only = load_model_source(rtx_bundle / "model.onnx")
    with pytest.raises(BackendUnavailable, match="model.onnx holds no TensorRT engine: build one with python -m export.trt"):
        open_backend(onnx_only, "tensorrt")
    assert "auto passed over tensorrt: " in open_backend(onnx_only).describe()


def test_missing_packages_are_named(rtx_bundle):
    no_cuda = run_hiding(("cuda",), (
        "from runtime.backends import open_backend\nfrom runtime.model import load_model_source\n"
        f"open_backend(load_model_source({str(rtx_bundle)!r}), 'tensorrt')\n"
    ))
    assert no_cuda.returncode == 1 and "BackendUnavailable: the tensorrt backend needs cuda-python" in no_cuda.stderr
    assert "pip install cuda-bindings" in no_cuda.stderr
    no_trt = run_hiding(("tensorrt", "tensorrt_rtx"), (
        "from runtime.trt_backend import choose_engine\nfrom runtime.model import load_model_source\n"
        f"choose_engine(load_model_source({str(rtx_bundle)!r}).bundle, 'sm_86')\n"
    ))
    assert no_trt.returncode == 1 and "no TensorRT runtime for this GPU's engines" in no_trt.stderr
    assert "needs tensorrt_rtx" in no_trt.stderr and "pip install tensorrt-rtx-cu13" in no_trt.stderr


def test_onnxruntime_options_are_not_accepted_by_tensorrt(rtx_bundle):
    source = load_model_source(rtx_bundle)
    with pytest.raises(ValueError, match="providers apply to ONNX Runtime"):
        open_backend(source, "tensorrt", providers=("cuda",))
    with pytest.raises(ValueError, match="did you mean 'tensorrt'"):
        open_backend(source, "tensorrtt")


def test_backends_load_gpu_modules_only_when_opened():
    code = (
        "import sys\nimport runtime.api, runtime.backends, runtime.trt_backend\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorrt', 'tensorrt_rtx', 'cuda', 'onnxruntime'}))\n"
    )
    proc = run_hiding((), code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# --- on a GPU ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_bundle(checkpoint, tmp_path_factory):
    """An engine built here for this GPU: TensorRT when installed, else TensorRT-RTX for this sm.

    Skips only where the engine cannot be made here: no GPU, no cuda-python, no builder, or a
    builder that cannot target this GPU (each asked on its own, before the build). Whatever the
    build itself raises (BundleError, CheckpointError, BuildError...) is a failure."""
    if GPU_SM is None:
        pytest.skip("no NVIDIA GPU here (libcuda.so.1 not found or no device): engine runs need one")
    try:
        import cuda.bindings  # noqa: F401
    except ImportError as err:
        pytest.skip(f"cuda-python not importable ({err}): pip install cuda-bindings")
    try:
        import tensorrt  # noqa: F401

        builder, targets = "tensorrt", ()
    except ImportError:
        builder, targets = "tensorrt-rtx", (GPU_SM,)
    try:
        trt, builder_name = import_builder(builder)
    except NoBuilderError as err:
        pytest.skip(f"no engine builder here: {err}")
    try:
        resolve_targets(trt, builder_name, targets)
    except ValueError as err:  # resolve_targets' one refusal: this builder cannot target this GPU
        pytest.skip(f"{builder_name} cannot build for this GPU ({GPU_SM}): {err}")
    output = tmp_path_factory.mktemp("gpu") / "small.dfer"
    build_bundle(BuildRequest(checkpoint, output, "fp16", 4, 2, builder, targets=targets, verify=False), out=lambda line: None)
    return output


def test_engine_agrees_with_onnxruntime(gpu_bundle):
    source = load_model_source(gpu_bundle)
    engine, reference = open_backend(source, "tensorrt"), open_backend(source, "onnxruntime")
    try:
        assert engine.input_dtype == reference.input_dtype == np.float16 and engine.max_batch == 4
        batch = clips(source.spec, 4, engine.input_dtype)
        for n in (1, 3, 4):
            inputs = engine.input_buffer(batch[:n].shape)
            inputs[:] = batch[:n]  # pinned memory: no host copy inside run()
            got, expected = engine.run(inputs), reference.run(batch[:n])
            np.testing.assert_allclose(got, expected, atol=LOGIT_ATOL, rtol=0)
            assert (got.argmax(1) == expected.argmax(1)).all()
    finally:
        engine.close()


def test_each_batch_size_gets_one_graph_that_replays_the_first_run(gpu_bundle):
    source = load_model_source(gpu_bundle)
    engine = open_backend(source, "tensorrt")
    try:
        batch = clips(source.spec, 4, engine.input_dtype)
        first = {n: engine.run(batch[:n]) for n in (1, 3)}  # runs, then captures
        for n in (3, 1, 3):  # replays
            np.testing.assert_array_equal(engine.run(batch[:n]), first[n])
        if engine.engine_info.builder == "tensorrt":
            assert engine.graph_batches == (1, 3)
        else:
            assert engine.graph_batches == () and "TensorRT-RTX's per-shape CUDA graphs" in engine.describe()
    finally:
        engine.close()


def test_auto_takes_the_engine_on_a_gpu(gpu_bundle):
    backend = open_backend(load_model_source(gpu_bundle))
    try:
        assert backend.name == "tensorrt" and backend.reason == "" and GPU_SM in backend.describe()
    finally:
        backend.close()


def test_a_damaged_engine_is_refused(gpu_bundle, tmp_path):
    damaged = tmp_path / "damaged.dfer"
    shutil.copytree(gpu_bundle, damaged)
    (engine_file,) = damaged.glob("*.engine")
    data = bytearray(engine_file.read_bytes())
    data[:64] = bytes(64)  # the header: same size, so the manifest check passes
    engine_file.write_bytes(bytes(data))
    with pytest.raises(BackendUnavailable, match=f"refused {engine_file.name}"):
        open_backend(load_model_source(damaged), "tensorrt")
