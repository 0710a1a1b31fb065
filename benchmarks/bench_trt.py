"""TensorRT engines through the runtime's tensorrt backend against PyTorch eager fp16 on the
same GPU, batch 1 and 4, one family after another (every family in models.FAMILIES).

    python -m pytest benchmarks/bench_trt.py -m trt

Marked ``trt``: skips without a CUDA GPU, a TensorRT runtime (tensorrt or tensorrt_rtx) and
cuda-bindings (benchmarks/conftest.py says which is missing). The bundle is built by
export.trt's Python API (fp16, max batch 4); the engine's input is made once outside the clock,
as the runtime's batch buffer is. This file has not run on a GPU yet.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

import models
from benchmarks import suite

pytestmark = pytest.mark.trt
BACKENDS = ("torch-eager-fp16", "tensorrt-fp16")


@pytest.fixture(scope="module")
def bundle_for(model_set):
    """family → (bundle path, its ModelSource), built once."""
    from export.trt import BuildRequest, build_bundle
    from models.demo_checkpoint import write_demo_checkpoint
    from runtime.model import load_model_source

    @functools.cache
    def get(family: str):
        chosen = model_set(family)
        checkpoint = write_demo_checkpoint(family, chosen.folder / "trt_demo.pth")
        bundle = chosen.folder / f"{family}.dfer"
        build_bundle(BuildRequest(source=checkpoint, output=bundle, precision="fp16", max_batch=4, opt_batch=4),
                     out=lambda *_: None)
        return bundle, load_model_source(bundle)

    return get


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("family", models.FAMILIES)
def test_engine_latency(benchmark, model_set, bundle_for, family, batch, backend):
    import torch

    from export.verify import generated_clips

    chosen = model_set(family)
    clips = generated_clips(chosen.spec, batch)
    if backend == BACKENDS[0]:
        model, tensor = copy.deepcopy(chosen.loaded.model).cuda().half(), torch.from_numpy(clips).cuda().half()

        def run():
            with torch.inference_mode():
                out = model(tensor)
            torch.cuda.synchronize()
            return out.float().cpu().numpy()
    else:
        from runtime.backends import open_backend

        engine = open_backend(bundle_for(family)[1], "tensorrt")
        inputs = clips.astype(engine.input_dtype)

        def run():
            return engine.run(inputs)

    benchmark.group = f"{family} batch {batch} GPU"
    logits = benchmark.pedantic(run, rounds=suite.rounds(50, 5), warmup_rounds=3, iterations=1)
    assert np.isfinite(logits).all()
    suite.record(benchmark, kind="model", case=f"{family}/b{batch}/{backend}", baseline=f"{family}/b{batch}/{BACKENDS[0]}",
                 batch=batch, device=torch.cuda.get_device_name(), family=family, backend=backend,
                 model_config=chosen.config_label, clips_per_s=batch / float(np.median(benchmark.stats.stats.data)))
