"""The runtime's parts one at a time, and its behaviour on pushed frames through a tiny model.

The tiny model is a real ONNX graph (mean over time and pixels → linear layer) with dfer
metadata, so these tests run the real backend in milliseconds; the reduced S4D runs in
test_runtime_streams.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from runtime.api import Runtime, RuntimeOptions
from runtime.backends import BackendClosed, open_backend
from runtime.batcher import Batcher, QueuePolicy
from runtime.clips import ClipBuffer, clip_count
from runtime.faces import IouTracker, Resizer, check_boxes, square_crop
from runtime.ledger import ClipLedger
from runtime.metadata import read_onnx_metadata
from runtime.model import load_model_source
from runtime.records import Clip, EventKind, IllegalTransition, RejectedFrame, StreamState
from runtime.sources import FrameClock, PushSource, SourceOptions
from runtime.streams import StreamOptions

LABELS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
TINY = {"frames": 4, "size": 8, "stride": 2}


def write_tiny_model(path, frames: int = 4, size: int = 8, stride: int = 2, only_batch: int | None = None):
    """logits = mean_{t,h,w}(clip) @ W + b; with only_batch, a Reshape that fails for other batches."""
    spec = {
        "family": "tiny", "labels": list(LABELS), "frames": frames, "height": size, "width": size,
        "frame_stride": stride, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize": "bilinear",
        "clip_merge": "softmax", "scale": 1 / 255, "layout": "NCTHW", "color": "RGB",
    }
    weight, bias = tiny_weights()
    nodes = [
        helper.make_node("ReduceMean", ["clip", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["logits" if only_batch is None else "unshaped"]),
    ]
    inits = [numpy_helper.from_array(np.array([2, 3, 4], np.int64), "axes"),
             numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    if only_batch is not None:
        nodes.append(helper.make_node("Reshape", ["unshaped", "shape"], ["logits"]))
        inits.append(numpy_helper.from_array(np.array([only_batch, len(LABELS)], np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("clip", onnx.TensorProto.FLOAT, ["batch", 3, frames, size, size])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in {"dfer.spec": json.dumps(spec), "dfer.family": "tiny", "dfer.untrained": "true"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_weights():
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, len(LABELS))).astype(np.float32), rng.standard_normal(len(LABELS)).astype(np.float32)


def tiny_probabilities(frames: np.ndarray, spec) -> np.ndarray:
    """What the tiny model must answer for a clip of uint8 frames, computed in numpy."""
    weight, bias = tiny_weights()
    logits = spec.normalize(frames).mean(axis=(1, 2, 3)) @ weight + bias
    e = np.exp(logits - logits.max())
    return e / e.sum()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", **TINY)


def collect(model, options=RuntimeOptions(max_delay_ms=1)):
    results, events = [], []
    runtime = Runtime(model, options, on_result=results.append, on_event=events.append)
    return runtime, results, events


# --- clip buffers --------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames,frames,stride,hop", [(61, 16, 4, 16), (64, 16, 4, 16), (200, 16, 4, 8), (9, 4, 2, 1), (7, 4, 2, 4), (100, 16, 1, 5)])
def test_clip_buffer_emits_clip_count(num_frames, frames, stride, hop):
    buffer = ClipBuffer(frames, stride, hop)
    emitted = []
    for index in range(num_frames):
        if buffer.wants(index):
            out = buffer.add(index, index / 25, np.full((2, 2, 3), index, np.uint8), max_gap_s=1.0)
            if out is not None:
                emitted.append(out)
    assert len(emitted) == clip_count(num_frames, frames, stride, hop)
    for k, (clip, start_s, end_s) in enumerate(emitted):
        first = k * hop * stride
        assert clip[:, 0, 0, 0].tolist() == list(range(first, first + frames * stride, stride))
        assert (start_s, end_s) == (first / 25, (first + (frames - 1) * stride) / 25)


def test_clip_buffer_gap_discards_partial_clip():
    buffer = ClipBuffer(frames=4, stride=1, hop=4)
    image = np.zeros((2, 2, 3), np.uint8)
    for index in range(3):
        assert buffer.add(index, index * 0.1, image, max_gap_s=0.25) is None
    assert buffer.add(3, 0.6, image, max_gap_s=0.25) is None  # 0.4 s gap: three samples lost
    assert (buffer.clips_invalidated, buffer.gap_s) == (1, pytest.approx(0.4))
    outs = [buffer.add(i, 0.6 + 0.1 * (i - 3), image, max_gap_s=0.25) for i in range(4, 7)]
    assert outs[-1] is not None and buffer.clips_emitted == 1
    assert buffer.add(7, 1.0, image, max_gap_s=0.25) is None  # one sample towards the next clip
    assert buffer.add(8, 0.5, image, max_gap_s=0.25) is None  # backwards in time
    assert buffer.clips_invalidated == 2


def test_clip_buffer_rejects_bad_settings():
    with pytest.raises(ValueError, match="hop"):
        ClipBuffer(frames=4, stride=1, hop=5)


# --- frame clock ---------------------------------------------------------------------------


def test_frame_clock_counts_lost_late_and_resets():
    clock = FrameClock(fps=10)
    assert [clock.stamp(t) for t in (5.0, 5.1, 5.2, 5.5, 5.6)] == [0, 1, 2, 5, 6]
    assert clock.lost == 2
    assert clock.stamp(5.4) is None and clock.out_of_order == 1
    assert clock.stamp(1.0) == 0 and clock.segment == 1  # clock reset: a new segment
    measured = FrameClock(fps=None)
    assert [measured.stamp(t) for t in (0.0, 0.5, 1.5)] == [0, 1, 3] and measured.fps == 2.0


# --- batcher -------------------------------------------------------------------------------


def clip(stream: str, index: int, ready: float | None = None) -> Clip:
    return Clip(stream, 0, index, 0.0, 0.0, np.zeros(1, np.float32), 0.0, time.perf_counter() if ready is None else ready)


def test_batcher_full_batch_leaves_without_waiting_and_oldest_first():
    batcher = Batcher(max_batch=3, max_delay_s=30.0, queue_per_stream=4)
    for stream, index, ready in (("b", 0, 2.0), ("a", 0, 1.0), ("a", 1, 3.0), ("b", 1, 4.0)):
        batcher.put(clip(stream, index, ready))
    started = time.perf_counter()
    batch = batcher.next_batch()
    assert time.perf_counter() - started < 15  # it did not sit out max_delay_s
    assert [(c.stream_id, c.index) for c in batch] == [("a", 0), ("b", 0), ("a", 1)]
    batcher.close()
    assert [(c.stream_id, c.index) for c in batcher.next_batch()] == [("b", 1)]
    assert batcher.next_batch() is None


def test_batcher_lone_clip_waits_max_delay():
    batcher = Batcher(max_batch=8, max_delay_s=0.05, queue_per_stream=4)
    put_at = time.perf_counter()
    batcher.put(clip("a", 0, ready=put_at))
    assert len(batcher.next_batch()) == 1
    assert time.perf_counter() - put_at >= 0.05


def test_batcher_drops_oldest_of_the_full_stream_only():
    batcher = Batcher(max_batch=16, max_delay_s=30.0, queue_per_stream=2)
    dropped = [batcher.put(clip("a", i)) for i in range(5)] + [batcher.put(clip("b", 0))]
    assert [d.index if d else None for d in dropped] == [None, None, 0, 1, 2, None]
    assert dict(batcher.dropped) == {"a": 3}
    batcher.close()
    late = clip("b", 1)
    assert batcher.put(late) is late and dict(batcher.dropped) == {"a": 3, "b": 1}
    assert sorted((c.stream_id, c.index) for c in batcher.next_batch()) == [("a", 3), ("a", 4), ("b", 0)]


def put_in_thread(batcher: Batcher, item: Clip) -> threading.Thread:
    thread = threading.Thread(target=batcher.put, args=(item,), daemon=True)
    thread.start()
    return thread


def test_batcher_block_waits_for_room_and_never_drops():
    batcher = Batcher(max_batch=1, max_delay_s=0.0, queue_per_stream=2)
    batcher.open_stream("file", QueuePolicy.BLOCK)
    assert batcher.put(clip("file", 0)) is None and batcher.put(clip("file", 1)) is None
    third = put_in_thread(batcher, clip("file", 2))
    third.join(0.2)
    assert third.is_alive() and batcher.waiting == 2  # waiting for room, nothing dropped
    assert [c.index for c in batcher.next_batch()] == [0]
    third.join(5)
    assert not third.is_alive() and batcher.waiting == 2 and not batcher.dropped
    assert [c.index for c in batcher.next_batch() + batcher.next_batch()] == [1, 2]


def test_batcher_a_stalled_file_does_not_wait_out_the_delay():
    """A full BLOCK lane's decoder cannot add a clip: its batch leaves at once, not after 30 s.
    A live lane at the same fill still waits, hoping for a fuller batch."""
    batcher = Batcher(max_batch=8, max_delay_s=30.0, queue_per_stream=2)
    batcher.open_stream("file", QueuePolicy.BLOCK)
    batcher.put(clip("live", 0))
    batcher.put(clip("file", 0))
    batcher.put(clip("file", 1))
    started = time.perf_counter()
    assert [(c.stream_id, c.index) for c in batcher.next_batch()] == [("live", 0), ("file", 0), ("file", 1)]
    assert time.perf_counter() - started < 5
    batcher.put(clip("live", 1))
    batcher.put(clip("live", 2))
    assert not batcher._stalls(batcher._lane("live"))  # a full live lane drops, it never stalls


@pytest.mark.parametrize("unblock", ["release", "close"])
def test_batcher_block_is_undone_by_release_and_close(unblock):
    batcher = Batcher(max_batch=8, max_delay_s=30.0, queue_per_stream=1)
    batcher.open_stream("file", QueuePolicy.BLOCK)
    batcher.put(clip("file", 0))
    blocked = put_in_thread(batcher, clip("file", 1))
    blocked.join(0.2)
    assert blocked.is_alive()
    getattr(batcher, unblock)("file") if unblock == "release" else batcher.close()
    blocked.join(5)
    assert not blocked.is_alive()
    if unblock == "release":  # queued beyond the limit: the stopping source's last clips are kept
        assert batcher.put(clip("file", 2)) is None and batcher.waiting == 3 and not batcher.dropped
    else:  # closing: the late clip is dropped (and handed back to be counted)
        assert dict(batcher.dropped) == {"file": 1}


# --- stream states and the clip ledger ------------------------------------------------------


def test_stream_states_move_only_from_running():
    finals = [s for s in StreamState if s is not StreamState.RUNNING]
    assert [StreamState.RUNNING.to(s) for s in finals] == finals
    for final in finals:
        for other in StreamState:
            with pytest.raises(IllegalTransition, match=f"a {final} stream cannot become {other}"):
                final.to(other)
    with pytest.raises(IllegalTransition):
        StreamState.RUNNING.to(StreamState.RUNNING)
    assert StreamState.FAILED == "failed" and f"{StreamState.REMOVED:<8}|" == "removed |"  # read as the old strings


def test_ledger_ends_a_track_before_its_last_clip_is_counted():
    seen = []
    ledger = ClipLedger(on_track_end=lambda stream_id, track: seen.append((stream_id, track, ledger.counts("a"))))
    ledger.open_stream("a")
    first, second = clip("a", 0), clip("a", 1)
    ledger.clip_ready(first)
    ledger.clip_ready(second)
    ledger.end_track("a", 0)
    ledger.delivered(first)
    assert seen == [] and not ledger.wait_settled(deadline=time.perf_counter())
    ledger.dropped(second)
    ((stream_id, track, counts),) = seen
    assert (stream_id, track, counts.clips_ready, counts.results, counts.clips_dropped) == ("a", 0, 2, 1, 0)
    assert ledger.wait_settled(deadline=time.perf_counter()) and ledger.counts("a").settled


# --- faces ---------------------------------------------------------------------------------


def test_iou_tracker_keeps_ids_and_evicts_idle_tracks():
    tracker = IouTracker(iou_threshold=0.3, timeout_s=0.5)
    a, b = np.array([10, 10, 50, 50.0]), np.array([100, 10, 140, 50.0])
    assert tracker.update(np.stack([a, b]), 0.0) == [0, 1]
    assert tracker.update(np.stack([b + 3, a + 3]), 0.1) == [1, 0]  # order swapped, ids follow
    assert tracker.update(np.stack([a + 6]), 0.2) == [0]
    assert tracker.evict(0.65) == [1]
    assert tracker.update(np.stack([b]), 0.7) == [2]  # a new face, a new id


def test_square_crop_margin_and_borders():
    image = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    assert square_crop(image, np.array([80, 30, 120, 70.0]), margin=0.25).shape == (60, 60, 3)
    assert square_crop(image, np.array([0, 0, 40, 40.0]), margin=0.25).shape == (50, 50, 3)  # cut at the corner
    resizer = Resizer()
    assert resizer.rgb(image, 16, 24).shape == (16, 24, 3)
    flat = np.full((40, 60, 3), 77, np.uint8)
    assert (resizer.rgb(flat, 13, 17) == 77).all() and resizer.rgb(flat) is flat
    frame = av.VideoFrame.from_ndarray(flat, format="rgb24")
    assert (resizer.rgb(frame, 20, 30) == 77).all() and (resizer.rgb(frame) == flat).all()


def test_check_boxes_names_the_bad_box():
    with pytest.raises(ValueError, match=r"x0 < x1"):
        check_boxes([[10, 10, 5, 20]], 64, 64)
    with pytest.raises(ValueError, match="outside the 64×64 frame"):
        check_boxes([[70, 10, 80, 20]], 64, 64)
    assert check_boxes([], 64, 64).shape == (0, 4)


# --- model source and backend ---------------------------------------------------------------


def test_metadata_reader_matches_onnx(tiny):
    expected = {p.key: p.value for p in onnx.load(str(tiny)).metadata_props}
    assert read_onnx_metadata(tiny) == expected
    source = load_model_source(tiny)
    assert (source.spec.frames, source.spec.height, source.family, source.untrained) == (4, 8, "tiny", True)


def test_model_source_errors(tmp_path, tiny):
    with pytest.raises(ValueError, match="does not exist"):
        load_model_source(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="not a dfer bundle"):
        load_model_source(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_model_source(tmp_path / "empty.onnx")
    (tmp_path / "noise.onnx").write_bytes(bytes(range(7, 250)))
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        load_model_source(tmp_path / "noise.onnx")
    bare = onnx.load(str(tiny))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="no dfer.spec metadata"):
        load_model_source(tmp_path / "bare.onnx")


def test_backend_names_and_providers_are_checked(tiny):
    source = load_model_source(tiny)
    with pytest.raises(ValueError, match="did you mean 'onnxruntime'"):
        open_backend(source, "onnxruntim")
    with pytest.raises(ValueError, match="did you mean 'cuda'"):
        open_backend(source, providers=("cudaa",))
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ValueError, match="lacks CUDAExecutionProvider"):
            open_backend(source, providers=("cuda",))
    backend = open_backend(source)
    assert backend.run(np.zeros((3, 3, 4, 8, 8), np.float32)).shape == (3, 7)


def test_a_closed_backend_says_so(tiny):
    backend = open_backend(load_model_source(tiny), "onnxruntime")
    backend.close()
    with pytest.raises(BackendClosed, match="^the onnxruntime backend is closed$"):
        backend.run(np.zeros((1, 3, 4, 8, 8), np.float32))


def test_options_are_validated():
    with pytest.raises(ValueError, match="face mode"):
        StreamOptions(faces="haar")
    with pytest.raises(ValueError, match="backoff_s"):
        SourceOptions(backoff_s=(2.0, 1.0))
    with pytest.raises(ValueError, match="threshold"):
        RuntimeOptions(threshold=1.5)
    with pytest.raises(ValueError, match="tau_s"):
        RuntimeOptions(tau_s=-1)


# --- the runtime on pushed frames ----------------------------------------------------------


def test_pushed_frames_give_exact_clips_with_correct_probabilities(tiny):
    runtime, results, events = collect(tiny, RuntimeOptions(max_delay_ms=1, hop=2))
    frames = np.random.default_rng(0).integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    with runtime:
        stream = runtime.add_push_stream(fps=10, stream_id="cam")
        for t, frame in enumerate(frames):
            assert runtime.push_frame(stream, frame, 100 + t / 10)
    spec = runtime.spec
    assert len(results) == clip_count(23, 4, 2, 2) == 5
    assert [e.kind for e in events] == [EventKind.TRACK_ENDED]  # at close, after its last result
    for k, result in enumerate(sorted(results, key=lambda r: r.clip_index)):
        used = frames[2 * 2 * k : 2 * 2 * k + 8 : 2]
        np.testing.assert_allclose(result.probabilities, tiny_probabilities(used, spec), atol=1e-5)  # fp32 mean of 768 values
        assert (result.start_s, result.end_s) == (pytest.approx(100 + 0.4 * k), pytest.approx(100.6 + 0.4 * k))
        assert result.ready <= result.dispatched <= result.done <= result.emitted


def test_bad_pushed_frames_are_rejected_with_causes_and_the_stream_goes_on(tiny):
    runtime, results, events = collect(tiny)
    frames = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    bad = [
        (np.zeros((6, 8, 3), np.uint8), "frame is 8×6, this stream's frames are 8×8"),
        (np.zeros((8, 8, 3), np.float32), "RGB uint8 array"),
        ("not an image", "got str"),
    ]
    with runtime:
        stream = runtime.add_push_stream(fps=10, stream_id="cam")
        other = runtime.add_push_stream(fps=10, stream_id="other")
        for t, frame in enumerate(frames):
            assert runtime.push_frame(stream, frame, t / 10)
            assert runtime.push_frame(other, frame, t / 10)
            if t < len(bad):
                assert not runtime.push_frame(stream, bad[t][0], (t + 0.5) / 10)
        assert not runtime.push_frame(stream, frames[0], 0.3)  # time going backwards
        assert not runtime.push_frame(stream, frames[0], 2.0, boxes=[[0, 0, 4, 4]])  # boxes on a 'full' stream
        with pytest.raises(ValueError, match="not an open push stream"):
            runtime.push_frame("nope", frames[0], 0.0)
    rejected = [e.cause for e in events if e.kind is EventKind.REJECTED_FRAME]
    assert len(rejected) == 5 and all(e.stream_id == "cam" for e in events if e.kind is not EventKind.TRACK_ENDED)
    for (_, cause), text in zip(bad, rejected):
        assert cause in text
    assert "does not follow" in rejected[3] and "takes no boxes" in rejected[4]
    expected = clip_count(16, 4, 2, 4)
    assert sum(r.stream_id == "cam" for r in results) == sum(r.stream_id == "other" for r in results) == expected


def test_a_rejected_frame_leaves_the_clock_and_size_as_they_were(tiny):
    """Refused by the face stage (boxes that do not fit), then pushed again, corrected, at the
    same time: taken, with no frame counted lost, and every clip there."""
    runtime, results, events = collect(tiny)
    frames = np.random.default_rng(3).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    with runtime:
        full = runtime.add_push_stream(fps=10, stream_id="full")
        boxed = runtime.add_push_stream(fps=10, stream_id="boxed", options=StreamOptions(faces="boxes"))
        assert not runtime.push_frame(full, frames[0][:6], 0.0, boxes=[[0, 0, 4, 4]])  # first frame: size not fixed
        for t, frame in enumerate(frames):
            if t in (0, 5, 9):
                assert not runtime.push_frame(full, frame, t / 10, boxes=[[0, 0, 4, 4]])
                assert not runtime.push_frame(boxed, frame, t / 10, boxes=[[20, 20, 30, 30]])  # outside 8×8
            assert runtime.push_frame(full, frame, t / 10)
            assert runtime.push_frame(boxed, frame, t / 10, boxes=[[0, 0, 8, 8]])
    stats = runtime.stats()
    assert sum(e.kind is EventKind.REJECTED_FRAME for e in events) == 7
    for name in ("full", "boxed"):
        assert (stats[name].frames, stats[name].frames_lost) == (16, 0), name
        assert sum(r.stream_id == name for r in results) == clip_count(16, 4, 2, 4), name


def test_only_a_rejection_is_a_rejected_frame():
    """A pipeline error that is not a RejectedFrame is a bug: raised to the host, no event."""
    events, errors = [], iter([RejectedFrame("boxes do not fit"), ValueError("a bug in the pipeline")])

    def on_frame(frame, boxes):
        error = next(errors, None)
        if error is not None:
            raise error

    source = PushSource(10, None, on_frame, lambda kind, cause: events.append((kind, cause)))
    frame = np.zeros((8, 8, 3), np.uint8)
    assert not source.push(frame, 0.0)
    with pytest.raises(ValueError, match="a bug in the pipeline"):
        source.push(frame, 0.0)
    assert events == [(EventKind.REJECTED_FRAME, "frame at 0.0 s rejected: boxes do not fit")]
    assert source.push(frame, 0.0) and source.push(frame, 0.1) and source.clock.lost == 0


def test_time_gap_discards_the_partial_clip(tiny):
    runtime, results, events = collect(tiny)
    frames = np.zeros((20, 8, 8, 3), np.uint8)
    times = [t / 10 for t in range(10)] + [3 + t / 10 for t in range(10)]  # 2.2 s from the last sample (frame 8)
    with runtime:
        stream = runtime.add_push_stream(fps=10)
        for frame, t in zip(frames, times):
            runtime.push_frame(stream, frame, t)
    # 10 frames → 5 samples: one clip, then one sample of a partial clip that the gap discards.
    assert len(results) == 2 * clip_count(10, 4, 2, 4)
    (gap,) = [e for e in events if e.kind is EventKind.GAP]
    assert "2.200 s between samples" in gap.cause and "limit 0.400 s" in gap.cause
    assert runtime.stats()[stream].clips_invalidated == 1


def test_host_boxes_are_tracked_cropped_and_evicted(tiny):
    runtime, results, events = collect(tiny)
    rng = np.random.default_rng(2)
    with runtime:
        stream = runtime.add_push_stream(fps=10, size=(48, 96), options=StreamOptions(faces="boxes", track_timeout_s=0.5))
        for t in range(30):
            frame = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
            boxes = [[4 + t // 10, 8, 36 + t // 10, 40]] + ([[60, 8, 92, 40]] if t < 16 else [])
            runtime.push_frame(stream, frame, t / 10, boxes=boxes)
        assert not runtime.push_frame(stream, frame, 3.5)  # a 'boxes' stream needs boxes
    per_track = {track: sum(r.track_id == track for r in results) for track in (0, 1)}
    assert per_track == {0: clip_count(30, 4, 2, 4), 1: clip_count(16, 4, 2, 4)}
    stats = runtime.stats()[stream]
    assert stats.tracks_evicted == 1 and stats.frames == 30
    assert [e.kind for e in events if e.kind is not EventKind.TRACK_ENDED] == [EventKind.REJECTED_FRAME]
    ended = sorted(e.cause.split(";")[0] for e in events if e.kind is EventKind.TRACK_ENDED)
    assert ended == ["track 0 ended", "track 1 ended"]  # 1 evicted while streaming, 0 at close


def test_inference_failure_is_reported_per_stream_and_others_go_on(tmp_path):
    model = write_tiny_model(tmp_path / "only2.onnx", frames=2, stride=1, only_batch=2)
    runtime, results, events = collect(model, RuntimeOptions(max_batch=2, max_delay_ms=60_000))
    frame = np.zeros((8, 8, 3), np.uint8)
    with runtime:
        a, b = runtime.add_push_stream(fps=10, stream_id="a"), runtime.add_push_stream(fps=10, stream_id="b")
        for t in range(4):  # a and b each complete clips at frames 1 and 3: batches of two
            runtime.push_frame(a, frame, t / 10)
            runtime.push_frame(b, frame, t / 10)
        for t in range(4, 6):  # one more clip on a alone: flushed at close as a batch of one
            runtime.push_frame(a, frame, t / 10)
    assert sorted(r.stream_id for r in results) == ["a", "a", "b", "b"]
    (failure,) = [e for e in events if e.kind is EventKind.INFERENCE_FAILED]
    assert failure.stream_id == "a" and "batch of 1 failed" in failure.cause
    stats = runtime.stats()
    assert (stats["a"].clips_ready, stats["a"].results, stats["a"].clips_failed) == (3, 2, 1)


def test_full_queue_drops_oldest_and_close_runs_the_rest(tiny):
    runtime, results, events = collect(tiny, RuntimeOptions(max_batch=64, max_delay_ms=60_000, queue_per_stream=2, hop=4))
    frame = np.zeros((8, 8, 3), np.uint8)
    with runtime:
        busy, calm = runtime.add_push_stream(fps=10, stream_id="busy"), runtime.add_push_stream(fps=10, stream_id="calm")
        for t in range(40):  # 5 clips on busy, which keeps only its newest 2
            runtime.push_frame(busy, frame, t / 10)
        for t in range(8):
            runtime.push_frame(calm, frame, t / 10)
    stats = runtime.stats()
    assert (stats["busy"].clips_ready, stats["busy"].clips_dropped, stats["busy"].results) == (5, 3, 2)
    assert (stats["calm"].clips_ready, stats["calm"].clips_dropped, stats["calm"].results) == (1, 0, 1)
    assert sorted(r.clip_index for r in results if r.stream_id == "busy") == [3, 4]
    drops = [e for e in events if e.kind is EventKind.CLIP_DROPPED]
    assert [e.stream_id for e in drops] == ["busy"] * 3 and "clip 0 of track 0" in drops[0].cause


def test_push_frames_example_runs(tiny):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, str(root / "examples" / "push_frames.py"), str(tiny), "--seconds", "2"]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    faces = {line.split(" face ")[1].split()[0] for line in proc.stdout.splitlines() if " face " in line}
    assert faces == {"0", "1"} and "untrained" in proc.stdout and "ready→emitted" in proc.stdout
