"""ONNX Runtime comes as the extra `cpu` (onnxruntime) or `gpu` (onnxruntime-gpu): the two
wheels install the same `onnxruntime` module, so an install must end with exactly one of them.

Resolution is checked with pip's own resolver (`--dry-run --report`, metadata only, ~2 s). The
GPU build is then installed for real into a fresh virtual environment layered over this one
(the venv's onnxruntime shadows the CPU build; numpy and av come from below), and the runtime's
`auto` backend must name the CUDA provider and why it cannot run on a machine without CUDA.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import onnx
import pytest

from runtime.gpu import local_gpu_sm

ROOT = Path(__file__).resolve().parents[1]
ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}


def resolved(requirement: str, tmp_path: Path) -> set[str]:
    """The distributions pip would install for requirement into an empty environment."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), requirement],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize("extra,build", [("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")])
def test_each_extra_resolves_to_one_onnxruntime_build(extra, build, tmp_path):
    names = resolved(f".[{extra}]", tmp_path)
    assert names & ORT_BUILDS == {build}, sorted(names)


def test_the_core_install_brings_no_onnxruntime(tmp_path):
    assert not resolved(".", tmp_path) & ORT_BUILDS


@pytest.mark.slow
def test_auto_names_the_cuda_provider_and_why_it_cannot_run(tmp_path):
    if local_gpu_sm() is not None:
        pytest.skip("this machine has an NVIDIA GPU: the CUDA provider may well run here")
    model = write_pooling_model(tmp_path / "pool.onnx")
    env_dir = tmp_path / "gpu-env"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "onnxruntime-gpu"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import onnxruntime, sys\n"
        "assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers(), onnxruntime.__file__\n"
        "from runtime.backends import open_backend\n"
        "from runtime.model import load_model_source\n"
        f"print(open_backend(load_model_source({str(model)!r})).describe())\n"
    )
    proc = subprocess.run([str(python), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    described = proc.stdout.strip()
    assert described.startswith("onnxruntime (CPUExecutionProvider)"), described
    assert "onnxruntime cuda,cpu: ONNX Runtime could not start CUDAExecutionProvider" in described, described
    assert "no NVIDIA driver or GPU on this machine" in described, described


def write_pooling_model(path: Path) -> Path:
    """A minimal clip model with a spec (logits = mean of the clip @ W), at IR version 10 so the
    oldest ONNX Runtime the extras allow can load it, as our exports are."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from runtime.metadata import DferMetadata, write_props
    from runtime.spec import DFEW_LABELS, ModelSpec

    spec = ModelSpec(family="pool", labels=DFEW_LABELS, frames=2, height=8, width=8, frame_stride=1,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="bilinear", clip_merge="softmax")
    weight = np.random.default_rng(0).standard_normal((3, len(DFEW_LABELS))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["clip", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "weight"], ["logits"])],
        "pool",
        [helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["batch", 3, 2, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(DFEW_LABELS)])],
        [numpy_helper.from_array(np.array([2, 3, 4], np.int64), "axes"), numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    write_props(model, DferMetadata(spec=spec, family="pool"))
    onnx.save(model, str(path))
    return path
