"""CPU latency of the full-size models: PyTorch eager fp32 vs ONNX Runtime (our export).

    python -m pytest benchmarks/bench_models_cpu.py --benchmark-columns=median,min,max

Both backends get the same threads and the same generated clips; PyTorch runs first for each
(family, batch), and the ONNX Runtime entry records the ratio to it in ``extra_info``.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest
import torch

import models
from export.onnx import export_onnx
from export.verify import generated_clips
from runtime.backends import onnx_session
from models.demo_checkpoint import write_demo_checkpoint

THREADS = int(os.environ.get("DFER_BENCH_THREADS", os.cpu_count() or 1))
CASES = [
    (family, batch, backend) for family in ("ifdd", "s4d") for batch in (1, 4) for backend in ("pytorch", "onnxruntime")
]
_medians: dict[tuple[str, int, str], float] = {}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """family → (loaded model, ORT session), built once per run."""
    torch.set_num_threads(THREADS)
    cache = {}

    def get(family: str):
        if family not in cache:
            folder = tmp_path_factory.mktemp(family)
            loaded = models.load(write_demo_checkpoint(family, folder / "demo.pth"))
            session = onnx_session(export_onnx(loaded, folder / "model.onnx").path, threads=THREADS)
            cache[family] = (loaded, session)
        return cache[family]

    return get


@pytest.mark.parametrize("family,batch,backend", CASES)
def test_forward_latency(benchmark, prepared, family, batch, backend):
    loaded, session = prepared(family)
    clips = generated_clips(loaded.spec, batch)
    if backend == "pytorch":
        tensor = torch.from_numpy(clips)

        def run():
            with torch.inference_mode():
                return loaded.model(tensor).numpy()
    else:

        def run():
            return session.run(["logits"], {"clip": clips})[0]

    benchmark.group = f"{family} batch {batch}"
    benchmark.extra_info.update(
        threads=THREADS, cpu=platform.processor() or platform.machine(), torch=torch.__version__
    )
    logits = benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    assert np.isfinite(logits).all() and logits.shape == (batch, loaded.spec.num_classes)
    median = benchmark.stats.stats.median
    _medians[(family, batch, backend)] = median
    baseline = _medians.get((family, batch, "pytorch"))
    if backend != "pytorch" and baseline:
        benchmark.extra_info["speedup_vs_pytorch_eager"] = round(baseline / median, 3)
