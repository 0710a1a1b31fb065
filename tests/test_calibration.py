"""calibration/: clips cut as the runtime cuts them, QDQ placement, the accuracy cost, int8/fp8
TensorRT-RTX builds through python -m export.trt --calib, and bad input.

A reduced S4D (64×64, 4 blocks, MoE in blocks 2–3) and generated H.264 face videos keep this
fast; full-size IFDD/S4D int8/fp8 numbers are in the README, not measured here.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import av
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import models
from calibration import SCHEMES, accuracy_cost, calibration_clips, cut_clips, quantize
from calibration.qdq import quantizable_nodes
from export.onnx import export_onnx
from export.precision import PRECISIONS
from runtime.backends import onnx_session
from runtime.bundle import Bundle
from models.demo_checkpoint import write_demo_checkpoint
from runtime.clips import clip_count
from runtime.demo_videos import write_face_video
from tests.test_loader import SMALL_S4D, assert_one_line_error, run_cli
from tests.test_runtime_streams import corrupt_middle

try:
    import tensorrt_rtx  # noqa: F401

    RTX_MISSING = None
except ImportError as err:
    RTX_MISSING = str(err)
needs_rtx = pytest.mark.skipif(RTX_MISSING is not None, reason=f"TensorRT-RTX builder not importable ({RTX_MISSING})")

VIDEO_FRAMES = 130  # the reduced S4D samples every 4th frame into 16: two clips per video
# int8 QDQ vs fp32 on held-out clips. Per-channel int8 weights and per-tensor activations round
# each layer's inputs to 1/254 of their range; through the reduced S4D's 14 quantised layers the
# untrained model's probabilities (≈ 1/7 each, logits within ±0.4) moved ≤ 4.7e-4 and the mean
# KL was 1.2e-6 nats. The bounds leave a factor ≥ 10 (KL: 80); the arg-max must not change.
INT8_PROB_ATOL, INT8_MEAN_KL = 5e-3, 1e-4


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The reduced S4D: checkpoint, loaded model, fp32 ONNX."""
    folder = tmp_path_factory.mktemp("calib_model")
    checkpoint = write_demo_checkpoint("s4d", folder / "small.pth", seed=2, config=SMALL_S4D)
    loaded = models.load(checkpoint)
    fp32 = export_onnx(loaded, folder / "small.onnx").path
    return checkpoint, loaded, fp32


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Four generated face videos: three for calibration, one held out."""
    folder = tmp_path_factory.mktemp("calib_videos")
    for i in range(4):
        write_face_video(folder / f"face{i}.mp4", VIDEO_FRAMES, seed=10 + i, size=64)
    return folder


@pytest.fixture(scope="module")
def int8(small, videos, tmp_path_factory):
    _, loaded, fp32 = small
    sets = calibration_clips(videos, loaded.spec, limit=8)
    result = quantize(fp32, tmp_path_factory.mktemp("qdq") / "small.int8.onnx", sets.calibration.clips, "int8")
    return sets, result, onnx.load(str(result.path))


def test_clips_are_cut_as_the_runtime_cuts_them(small, videos):
    spec = small[1].spec
    clips = cut_clips(videos / "face1.mp4", spec)
    assert len(clips) == clip_count(VIDEO_FRAMES, spec.frames, spec.frame_stride, spec.frames) == 2
    with av.open(str(videos / "face1.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    samples = frames[:: spec.frame_stride]  # every 4th frame, 16 a clip, no overlap (the runtime's default hop)
    for i, clip in enumerate(clips):
        by_hand = spec.normalize(np.stack(samples[i * spec.frames : (i + 1) * spec.frames]))
        assert clip.dtype == np.float32 and np.array_equal(clip, by_hand)


def test_calibration_and_held_out_clips_come_from_different_videos(small, videos):
    sets = calibration_clips(videos, small[1].spec, limit=5)
    assert [v.name for v in sets.calibration.videos] == ["face0.mp4", "face1.mp4", "face2.mp4"]
    assert [v.name for v in sets.held_out.videos] == ["face3.mp4"]
    assert len(sets.calibration) == 5 and len(sets.held_out) == 2  # round-robin: 3 first clips, then 2 second ones
    assert np.array_equal(sets.calibration.clips[3], cut_clips(videos / "face0.mp4", small[1].spec)[1])


def test_qdq_on_every_linear_layer_and_conv_and_none_on_float_layers(small, int8):
    _, loaded, fp32 = small
    _, result, proto = int8
    original = onnx.load(str(fp32))
    wanted = set(quantizable_nodes(original))
    assert result.quantized_nodes == len(wanted) == result.weights and result.rewired >= 0
    assert Counter(n.op_type for n in original.graph.node if n.name in wanted) == {"MatMul": 12, "Conv": 1, "Gemm": 1}
    producer = {out: node for node in proto.graph.node for out in node.output}
    weights = {t.name: t for t in proto.graph.initializer}

    def dq_of(name):
        node = producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    for node in proto.graph.node:
        if node.name in wanted:
            activation, weight = dq_of(node.input[0]), dq_of(node.input[1])
            assert activation is not None and producer[activation.input[0]].op_type == "QuantizeLinear", node.name
            assert weight is not None and weight.input[0] in weights, node.name
            stored = numpy_helper.to_array(weights[weight.input[0]])
            scale, zero = (numpy_helper.to_array(weights[name]) for name in weight.input[1:3])
            axis = 0 if node.op_type in ("Conv", "Gemm") else 1  # output channels (Gemm: transB weights)
            assert stored.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
            assert scale.shape == (stored.shape[axis],) and (scale > 0).all()  # per channel
            act_scale, act_zero = (numpy_helper.to_array(weights[name]) for name in activation.input[1:3])
            assert act_scale.shape == () and act_scale > 0 and act_zero == 0  # per tensor, symmetric
        elif node.op_type in ("LayerNormalization", "Softmax", "MatMul") or node.domain == "dfer":
            assert not any(dq_of(name) for name in node.input), f"{node.op_type} {node.name} reads a dequantized tensor"
    census = Counter(n.op_type for n in proto.graph.node)
    assert census["QuantizeLinear"] == result.activations and census["DequantizeLinear"] == result.activations + result.weights
    assert census["LayerNormalization"] == 9 and census["Softmax"] == 4  # still there, in float
    assert [f.name for f in proto.functions] == ["GatedExpertMLP"] and census["GatedExpertMLP"] == 2
    assert {p.key: p.value for p in proto.metadata_props}["dfer.precision"] == "int8"


def test_schemes_are_keyed_by_the_quantised_precisions():
    assert set(SCHEMES) == {name for name, precision in PRECISIONS.items() if precision.quantized}


def test_quantize_restores_the_logging_state_it_found(small, int8, tmp_path):
    """The quiet scope of one quantize() call: the disable level and root handlers set before it
    (none: onnxruntime's logging.warning() would add one through basicConfig) are kept."""
    _, _, fp32 = small
    root, disabled, handlers = logging.getLogger(), logging.root.manager.disable, list(logging.root.handlers)
    try:
        logging.disable(logging.DEBUG)
        root.handlers[:] = []
        quantize(fp32, tmp_path / "again.onnx", int8[0].calibration.clips[:2], "int8")
        assert logging.root.manager.disable == logging.DEBUG and root.handlers == []
    finally:
        logging.disable(disabled)
        root.handlers[:] = handlers


def test_int8_accuracy_cost_is_computed_and_small(small, int8):
    _, loaded, fp32 = small
    sets, result, _ = int8
    cost = accuracy_cost(fp32, result.path, sets.held_out.clips, loaded.spec.labels)
    # the same numbers, computed here from the two sessions
    ref = onnx_session(fp32).run(None, {"clip": sets.held_out.clips})[0].astype(np.float64)
    qdq = onnx_session(result.path).run(None, {"clip": sets.held_out.clips})[0].astype(np.float64)
    p, q = (np.exp(x - x.max(1, keepdims=True)) for x in (ref, qdq))
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    assert cost["clips"] == len(sets.held_out) == 2
    assert cost["top1_agree"] == float((p.argmax(1) == q.argmax(1)).mean()) == 1.0
    assert cost["max_prob_diff"] == pytest.approx(np.abs(p - q).max(), rel=1e-6)
    assert cost["mean_kl"] == pytest.approx((p * np.log(p / q)).sum(1).mean(), rel=1e-4, abs=1e-12)
    assert 0 < cost["max_prob_diff"] <= INT8_PROB_ATOL and 0 <= cost["mean_kl"] <= INT8_MEAN_KL  # > 0: it really quantised
    assert sum(c["clips"] for c in cost["per_class"].values()) == 2


@needs_rtx
def test_int8_bundle_is_calibrated_built_and_rebuilt_from_its_qdq_onnx(small, videos, tmp_path):
    checkpoint = small[0]
    output = tmp_path / "int8.dfer"
    proc = run_cli("export.trt", str(checkpoint), "-o", str(output), "--precision", "int8", "--calib", str(videos), "--max-batch", "2")
    assert proc.returncode == 0, proc.stderr
    stages = [line.split()[0] for line in proc.stdout.split("\n\n")[0].splitlines()]
    assert stages == ["load", "export", "clips", "quant", "cost", "parse", "build", "verify"]
    bundle = Bundle.open(output)
    (engine,) = bundle.engines
    assert engine.file == "model.tensorrt-rtx.sm_80-86-89-120.int8.engine" and engine.precision == "int8"
    manifest = bundle.manifest.to_dict()
    assert manifest["onnx"]["precision"] == "int8" and bundle.input_dtype == "float32"
    assert manifest["calibration"]["clips"] == 6 and manifest["calibration"]["held_out_clips"] == 2
    assert manifest["accuracy"]["top1_agree"] == 1.0 and manifest["accuracy"]["max_prob_diff"] <= INT8_PROB_ATOL
    assert manifest["verification"]["passed"] and manifest["verification"]["reference"] == "PyTorch fp32"
    report = json.loads(bundle.file(engine.layer_report).read_text())
    assert report["network"]["by_type"]["QUANTIZE"] == manifest["calibration"]["activation_qdq"]
    assert report["engine"]["output_dtypes"].get("Int8", 0) > 0  # int8 kernels in the engine
    assert not list(output.glob("*.partial.onnx"))
    # The bundle's QDQ ONNX builds again without --calib, and keeps its calibration record.
    proc = run_cli("export.trt", str(output / "model.onnx"), "-o", str(output), "--target", "sm_86", "--max-batch", "2", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    again = Bundle.open(output)
    assert [e.file for e in again.engines][-1] == "model.tensorrt-rtx.sm_86.int8.engine"
    assert again.manifest.calibration == manifest["calibration"] and again.manifest.accuracy == manifest["accuracy"]


@needs_rtx
def test_fp8_qdq_builds_for_fp8_gpus_only(small, videos, tmp_path):
    output = tmp_path / "fp8.dfer"
    args = ["--precision", "fp8", "--calib", str(videos), "--calib-clips", "2", "--max-batch", "2", "--no-verify"]
    proc = run_cli("export.trt", str(small[0]), "-o", str(output), *args)
    assert proc.returncode == 0, proc.stderr
    bundle = Bundle.open(output)
    (engine,) = bundle.engines
    assert engine.gpu_sm == ("sm_89", "sm_120") and engine.precision == "fp8"  # sm_80/86 have no FP8
    proto = onnx.load(str(bundle.onnx_path), load_external_data=False)
    assert {t.data_type for t in proto.graph.initializer if t.name.endswith("_quantized")} == {onnx.TensorProto.FLOAT8E4M3FN}
    assert {o.version for o in proto.opset_import if o.domain == ""} == {19} == {o.version for o in proto.functions[0].opset_import if o.domain == ""}
    assert bundle.manifest.accuracy["clips"] == 2


def _empty(tmp_path, videos):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no videos here")
    return tmp_path / "empty"


def _corrupt(tmp_path, videos):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        write_face_video(folder / f"ok{i}.mp4", VIDEO_FRAMES, seed=i, size=64)
    corrupt_middle(write_face_video(tmp_path / "long.mp4", 200, seed=4, size=64), folder / "broken.mp4")
    return folder


def _one_video(tmp_path, videos):
    (tmp_path / "one").mkdir()
    write_face_video(tmp_path / "one" / "only.mp4", VIDEO_FRAMES, seed=0, size=64)
    return tmp_path / "one"


BAD_CALIBRATION = {
    "int8 without --calib": (None, ["--precision", "int8"], ["--precision int8 needs calibration clips: --calib VIDEO_DIR"]),
    "fp8 without --calib": (None, ["--precision", "fp8"], ["--precision fp8 needs calibration clips"]),
    "--calib for fp16": (lambda tmp, videos: videos, ["--precision", "fp16"], ["--calib applies to --precision int8 or fp8, not fp16"]),
    "missing folder": (lambda tmp, videos: tmp / "nowhere", ["--precision", "int8"], ["nowhere: no such directory of videos"]),
    "no clips": (lambda tmp, videos: videos, ["--precision", "int8", "--calib-clips", "0"], ["--calib-clips must be ≥ 1, got 0"]),
    "empty folder": (_empty, ["--precision", "int8"], ["holds no videos (.mp4, .mkv"]),
    "corrupt video": (_corrupt, ["--precision", "int8"], ["calibration video", "broken.mp4 is not decodable"]),
    "one video": (_one_video, ["--precision", "int8"], ["holds one video (only.mp4)", "needs at least two"]),
}


@pytest.mark.parametrize("case", BAD_CALIBRATION, ids=list(BAD_CALIBRATION))
def test_bad_calibration_input_is_one_clear_line(case, small, videos, tmp_path):
    make_folder, options, needles = BAD_CALIBRATION[case]
    calib = ["--calib", str(make_folder(tmp_path, videos))] if make_folder else []
    output = tmp_path / "out.dfer"
    assert_one_line_error(run_cli("export.trt", str(small[0]), "-o", str(output), *options, *calib, "--no-verify"), *needles)
    assert not output.exists()


def test_onnx_inputs_and_calibration(small, int8, videos, tmp_path):
    """An fp32 ONNX needs --calib for int8; a QDQ ONNX is already calibrated."""
    fp32, qdq = small[2], int8[1].path
    assert_one_line_error(run_cli("export.trt", str(fp32), "-o", str(tmp_path / "a.dfer"), "--precision", "int8"), "needs calibration clips")
    proc = run_cli("export.trt", str(qdq), "-o", str(tmp_path / "b.dfer"), "--precision", "int8", "--calib", str(videos))
    assert_one_line_error(proc, "already a calibrated int8 QDQ export; drop --calib")
    assert_one_line_error(run_cli("export.trt", str(qdq), "-o", str(tmp_path / "c.dfer"), "--precision", "fp16"), "is an int8 export")
