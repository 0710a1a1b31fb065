"""The runtime's post-processing: per-track temporal decisions and compound expressions, with
a static per-frame model fused beside the clip model (issue 7, item 3).

Real ONNX models throughout: the tiny clip model of test_runtime_units.py and a tiny per-frame
model (mean RGB → linear, AffectNet-8 label order) whose spec is attached by
export.image_model, run in ONNX Runtime. Expectations are recomputed independently in numpy
from the definitions (PPA pair sums, the plain mean of two models, runtime.temporal's offline
decide_sequence), never read back from the runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from export.image_model import attach_spec, image_spec
from runtime.api import Runtime, RuntimeOptions
from runtime.clips import clip_count
from runtime.compound import COMPOUND_CLASSES
from runtime.compound.labels import to_abaw
from runtime.demo_videos import write_face_video
from runtime.post import CompoundOptions, PostProcessor, StaticFrames
from runtime.records import EventKind
from runtime.temporal import OFFSET, ONSET, TemporalOptions, decide_sequence
from tests.test_runtime_units import LABELS, TINY, tiny_probabilities, write_tiny_model

AFFECTNET8 = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
STATIC_FRAMES = 3
FPS = 10
# Pushed frames: TINY clips are 4 samples at stride 2 of 8×8 frames, so 23 frames make 5 clips with hop 2.
NUM_FRAMES, HOP = 23, 2


def static_weights():
    rng = np.random.default_rng(11)
    return 3 * rng.standard_normal((3, len(AFFECTNET8))).astype(np.float32), rng.standard_normal(len(AFFECTNET8)).astype(np.float32)


def write_static_model(path, size: int = 8):
    """logits = mean_{h,w}(image) @ W + b, saved without a spec, then given one by export.image_model."""
    weight, bias = static_weights()
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weight"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ],
        "tiny_static",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", len(AFFECTNET8)])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    plain = path.with_suffix(".plain.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(plain))
    spec = image_spec(AFFECTNET8, size, size, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    return attach_spec(plain, path, spec, untrained=True), spec


def static_probabilities(frames: np.ndarray, spec) -> np.ndarray:
    """The tiny static model's mean probabilities over the clip frames the runtime should pick."""
    weight, bias = static_weights()
    picks = frames[np.linspace(0, len(frames) - 1, STATIC_FRAMES).round().astype(int)]
    x = (picks.astype(np.float32) / 255 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    logits = x.mean(axis=(1, 2)) @ weight + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).mean(axis=0)


def hand_ppa(basic: np.ndarray) -> np.ndarray:
    """PPA written out from its definition: each compound class (COMPOUND_CLASSES order) is the
    sum of its two basic probabilities, basic in ABAW order."""
    order = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
    pairs = [("Fear", "Surprise"), ("Happiness", "Surprise"), ("Sadness", "Surprise"), ("Disgust", "Surprise"),
             ("Anger", "Surprise"), ("Sadness", "Fear"), ("Sadness", "Anger")]
    return np.array([basic[order.index(a)] + basic[order.index(b)] for a, b in pairs])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("post")
    clip_model = write_tiny_model(folder / "tiny.onnx", **TINY)
    static_model, static_spec = write_static_model(folder / "static.onnx")
    return clip_model, static_model, static_spec


def run_pushed(model, options: RuntimeOptions, seed: int = 0, colours=None):
    """Push NUM_FRAMES 8×8 frames of flat colours (random unless given); results in clip order,
    events, each clip's frames."""
    if colours is None:
        colours = np.random.default_rng(seed).integers(0, 256, (NUM_FRAMES, 3), dtype=np.uint8)
    frames = np.broadcast_to(np.asarray(colours, np.uint8)[:, None, None, :], (NUM_FRAMES, 8, 8, 3)).copy()
    results, events = [], []
    with Runtime(model, options, on_result=results.append, on_event=events.append) as runtime:
        stream = runtime.add_push_stream(fps=FPS, stream_id="cam")
        for t, frame in enumerate(frames):
            assert runtime.push_frame(stream, frame, t / FPS)
        spec = runtime.spec
    assert len(results) == clip_count(NUM_FRAMES, 4, 2, HOP) == 5
    results.sort(key=lambda r: r.clip_index)
    clips = [frames[2 * HOP * k : 2 * HOP * k + 8 : 2] for k in range(len(results))]
    return results, events, clips, spec


def test_track_decisions_follow_the_temporal_rules_and_end_with_an_offset(models):
    clip_model, _, _ = models
    options = RuntimeOptions(max_delay_ms=1, hop=HOP, tau_s=0.5, threshold=0.6, margin=0.05)
    # Magenta then white: the tiny model says sad (0.94), then happy (0.92), mixed in between.
    colours = [(255, 0, 255)] * 12 + [(255, 255, 255)] * (NUM_FRAMES - 12)
    results, events, clips, spec = run_pushed(clip_model, options, colours=colours)
    probs = np.stack([tiny_probabilities(c, spec) for c in clips])
    np.testing.assert_allclose([r.probabilities for r in results], probs, atol=1e-5)
    decisions, expected_events = decide_sequence([r.end_s for r in results], probs, TemporalOptions(LABELS, 0.5, 0.6, 0.05))
    assert [r.smoothed_label for r in results] == [d.label for d in decisions]
    np.testing.assert_allclose([r.confidence for r in results], [d.confidence for d in decisions], atol=1e-5)
    got = [(e.kind, e.label) for r in results for e in r.events]
    (ended,) = [e for e in events if e.kind is EventKind.TRACK_ENDED]
    got += [(e.kind, e.label) for e in ended.label_events]
    assert got == [(e.kind, e.label) for e in expected_events]
    assert got == [(ONSET, "sad"), (OFFSET, "sad"), (ONSET, "happy"), (OFFSET, "happy")]
    assert ended.time >= max(r.emitted for r in results)  # the track ends after its last result


def test_compound_from_the_clip_model_alone_is_ppa_of_its_probabilities(models):
    clip_model, _, _ = models
    options = RuntimeOptions(max_delay_ms=1, hop=HOP, compound=CompoundOptions())
    results, _, clips, spec = run_pushed(clip_model, options, seed=1)
    for result, clip in zip(results, clips):
        basic = to_abaw(tiny_probabilities(clip, spec), LABELS)
        scores = hand_ppa(basic)
        np.testing.assert_allclose(result.compound.scores, scores / scores.sum(), atol=1e-5)
        assert result.compound.top == COMPOUND_CLASSES[int(scores.argmax())]
        assert result.compound.static_probabilities is None


def test_static_model_runs_on_each_clips_frames_and_is_fused_by_the_plain_mean(models):
    clip_model, static_model, static_spec = models
    compound = CompoundOptions(static_model=static_model, static_frames=STATIC_FRAMES, ignore=("contempt",))
    options = RuntimeOptions(max_delay_ms=1, hop=HOP, compound=compound)
    results, events, clips, spec = run_pushed(clip_model, options, seed=2)
    fused_scores = []
    for result, clip in zip(results, clips):
        static = static_probabilities(clip, static_spec)
        np.testing.assert_allclose(result.compound.static_probabilities, static, atol=1e-5)
        basic = (to_abaw(tiny_probabilities(clip, spec), LABELS) + to_abaw(static, AFFECTNET8, ignore=("contempt",))) / 2
        scores = hand_ppa(basic)
        np.testing.assert_allclose(result.compound.scores, scores / scores.sum(), atol=1e-5)
        fused_scores.append(scores / scores.sum())
    decisions, _ = decide_sequence([r.end_s for r in results], np.array(fused_scores), TemporalOptions(COMPOUND_CLASSES))
    assert [r.compound.label for r in results] == [d.label for d in decisions]
    assert not [e for e in events if e.is_fault]


def test_mhpf_weights_from_a_file_decide_the_fusion(models, tmp_path):
    clip_model, static_model, static_spec = models
    weights = np.zeros((2, 2, 7))
    weights[:, 1, :] = 4.0  # both heads trust the static model (softmax over models per class)
    path = tmp_path / "mhpf.json"
    path.write_text(json.dumps({"models": ["dynamic", "static"], "head_weights": weights.tolist(), "head_combine": [0.0, 1.0]}))
    compound = CompoundOptions(static_model=static_model, static_frames=STATIC_FRAMES, weights=path, ignore=("contempt",))
    results, _, clips, spec = run_pushed(clip_model, RuntimeOptions(max_delay_ms=1, hop=HOP, compound=compound), seed=3)
    trust = np.exp(4.0) / (1 + np.exp(4.0))
    for result, clip in zip(results, clips):
        dynamic = to_abaw(tiny_probabilities(clip, spec), LABELS)
        static = to_abaw(static_probabilities(clip, static_spec), AFFECTNET8, ignore=("contempt",))
        basic = (1 - trust) * dynamic + trust * static
        scores = hand_ppa(basic)
        np.testing.assert_allclose(result.compound.scores, scores / scores.sum(), atol=1e-5)


def test_bad_compound_setups_fail_when_the_runtime_opens(models, tmp_path):
    clip_model, static_model, _ = models
    with pytest.raises(ValueError, match="contempt"):  # AffectNet's eighth class must be named as ignored
        Runtime(clip_model, RuntimeOptions(compound=CompoundOptions(static_model=static_model)))
    with pytest.raises(ValueError, match="layout NCHW"):  # a clip model is not a per-frame model
        Runtime(clip_model, RuntimeOptions(compound=CompoundOptions(static_model=clip_model)))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"models": ["dynamic", "face"], "head_weights": np.zeros((1, 2, 7)).tolist(), "head_combine": [0.0]}))
    with pytest.raises(ValueError, match="MHPF weights are for models"):
        Runtime(clip_model, RuntimeOptions(compound=CompoundOptions(static_model=static_model, weights=wrong, ignore=("contempt",))))
    with pytest.raises(ValueError, match="name a static model"):
        CompoundOptions(weights=wrong)
    with pytest.raises(ValueError, match="static_frames"):
        CompoundOptions(static_frames=0)


def test_a_track_whose_time_runs_backwards_starts_its_decisions_afresh():
    post = PostProcessor(LABELS, {"tau_s": 1.0, "threshold": 0.5, "margin": 0.05}, None)
    happy = np.eye(len(LABELS))[0]
    decision, _, restarted = post.decide("t", 1.0, happy, None)
    assert decision.label == "happy" and not restarted
    decision, _, restarted = post.decide("t", 0.2, np.eye(len(LABELS))[1], None)  # a looped file starts over
    assert [(e.kind, e.label, e.time_s) for e in restarted] == [(OFFSET, "happy", 1.0)]
    assert decision.label == "sad"  # no smoothing across the restart
    assert [(e.kind, e.label) for e in post.end_track("t")] == [(OFFSET, "sad")]
    assert post.end_track("t") == ()


def test_static_frames_are_evenly_spaced_and_need_a_per_frame_model(models):
    _, _, static_spec = models
    frames = np.arange(7)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    from runtime.faces import Resizer

    inputs = StaticFrames(static_spec, 3).inputs(frames.astype(np.uint8), Resizer())
    picked = inputs[:, 0, 0, 0] * static_spec.std[0] + static_spec.mean[0]  # undo the normalisation
    np.testing.assert_allclose(picked * 255, [0, 3, 6], atol=1e-4)


def test_cli_prints_compound_results_for_a_generated_video(models, tmp_path):
    """End to end: a generated H.264 face video, decoded by PyAV, through both models."""
    clip_model, static_model, _ = models
    video = write_face_video(tmp_path / "face.mp4", 40, seed=5)
    command = [sys.executable, "-m", "runtime", str(clip_model), "--stream", str(video), "--json",
               "--static-model", str(static_model), "--static-frames", "2", "--ignore-label", "contempt", "--hop", "2", "--queue", "16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    results = [line for line in lines if line["type"] == "result"]
    assert len(results) == clip_count(40, 4, 2, 2)
    for result in results:
        compound = result["compound"]
        assert list(compound["scores"]) == list(COMPOUND_CLASSES)
        assert sum(compound["scores"].values()) == pytest.approx(1, abs=1e-3)
        assert compound["label"] in (*COMPOUND_CLASSES, "uncertain")
    assert any(line["type"] == "event" and line["kind"] == "track_ended" for line in lines)


def test_image_model_cli_attaches_a_spec_and_checks_the_graph(models, tmp_path):
    _, static_model, _ = models
    plain = static_model.with_suffix(".plain.onnx")
    out = tmp_path / "fer.onnx"
    base = [sys.executable, "-m", "export.image_model", str(plain), "-o", str(out), "--size", "8"]
    done = subprocess.run([*base, "--labels", ",".join(AFFECTNET8)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    from runtime.model import load_model_source

    source = load_model_source(out)
    assert source.spec.layout == "NCHW" and source.spec.labels == AFFECTNET8
    bad = subprocess.run([*base, "--labels", "happy,sad"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected (N, 2)" in bad.stderr and "Traceback" not in bad.stderr
    wrong_size = subprocess.run([*base[:-1], "224", "--labels", ",".join(AFFECTNET8)], capture_output=True, text=True, timeout=60)
    assert wrong_size.returncode == 2 and "expected (N, 3, 224, 224)" in wrong_size.stderr
