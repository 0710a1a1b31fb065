"""Queue policies under load: files wait for the model and lose no clip, live streams drop
their oldest clips and count each drop; stopping a blocked stream never deadlocks; a missing
file fails its own stream only.

The load is a deliberately slow backend: the real ONNX Runtime backend on the tiny model of
test_runtime_units.py that also sleeps a fixed time per batch (registered as backends "slow",
50 ms, and "slower", 250 ms), so inference is far slower than decoding, as the IFDD demo on a
CPU box is (~1.1 s a clip); and as backend "gated", that runs a batch only once the test opens
its gate, so nothing drains the queues meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from runtime.api import Runtime, RuntimeOptions
from runtime.backends import BACKENDS, OnnxRuntimeBackend
from runtime.batcher import QueuePolicy
from runtime.clips import clip_count
from runtime.demo_videos import write_face_video
from runtime.records import EventKind, StreamState
from runtime.sources import SourceKind, SourceOptions
from runtime.streams import StreamOptions
from runtime.synthetic import synthetic_face_frames
from tests.test_loader import run_cli
from tests.test_runtime_live import wait_for
from tests.test_runtime_units import TINY, write_tiny_model

FRAMES, STRIDE, HOP = TINY["frames"], TINY["stride"], 4  # a clip every HOP · STRIDE = 8 frames
SLOW = RuntimeOptions(backend="slow", max_batch=1, max_delay_ms=1, queue_per_stream=2, hop=HOP)
FILE_FRAMES = 200  # 25 clips: 1.25 s of sleeping at 50 ms a batch, decoded in a few ms


class HeldOnnxRuntime(OnnxRuntimeBackend):
    """ONNX Runtime on the CPU, calling hold() (a sleep, a gate) before each batch."""

    def __init__(self, source, hold: Callable[[], object]):
        super().__init__(source)
        self.hold = hold

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.hold()
        return super().run(batch)


@pytest.fixture(autouse=True)
def gate(monkeypatch):
    """Registers the slow and gated backends; the gated one's gate, closed."""
    for name, seconds in (("slow", 0.05), ("slower", 0.25)):
        monkeypatch.setitem(BACKENDS, name, lambda source, providers, threads, s=seconds: HeldOnnxRuntime(source, lambda: time.sleep(s)))
    gate = threading.Event()
    monkeypatch.setitem(BACKENDS, "gated", lambda source, providers, threads: HeldOnnxRuntime(source, gate.wait))
    yield gate
    gate.set()  # never leave a dispatcher waiting


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", **TINY)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    return write_face_video(tmp_path_factory.mktemp("videos") / "long.mp4", FILE_FRAMES, seed=3, size=32)


def run_file(model, video, options: StreamOptions = StreamOptions()):
    results, events = [], []
    with Runtime(model, SLOW, on_result=results.append, on_event=events.append) as runtime:
        runtime.add_stream(str(video), stream_id="file", options=options)
        assert runtime.wait(timeout=120), runtime.summary()
    return runtime.stats()["file"], results, events


def test_a_file_through_a_slow_backend_delivers_every_clip(tiny, long_file):
    stats, results, events = run_file(tiny, long_file)
    expected = clip_count(FILE_FRAMES, FRAMES, STRIDE, HOP)
    assert sorted(r.clip_index for r in results) == list(range(expected))
    assert (stats.clips_ready, stats.results, stats.clips_dropped, stats.state) == (expected, expected, 0, StreamState.ENDED)
    assert not [e for e in events if e.kind is EventKind.CLIP_DROPPED]


def test_the_same_file_with_drop_oldest_loses_clips(tiny, long_file):
    """The control: under the same load, the live policy (here forced on the file) drops."""
    stats, results, events = run_file(tiny, long_file, StreamOptions(queue_policy=QueuePolicy.DROP_OLDEST))
    drops = [e for e in events if e.kind is EventKind.CLIP_DROPPED]
    assert stats.clips_dropped == len(drops) > 0
    assert stats.results + stats.clips_dropped == stats.clips_ready == clip_count(FILE_FRAMES, FRAMES, STRIDE, HOP)
    assert len(results) == stats.results


def test_a_live_stream_under_the_same_load_drops_and_counts_each_drop(tiny):
    """Frames pushed in real time at 100 fps: a clip every 80 ms against 250 ms a batch."""
    fps, num_frames = 100, 200
    results, events = [], []
    with Runtime(tiny, replace(SLOW, backend="slower"), on_result=results.append, on_event=events.append) as runtime:
        camera = runtime.add_push_stream(fps=fps, stream_id="camera")
        started = time.perf_counter()
        for t, frame in enumerate(synthetic_face_frames(num_frames, 8, 8, seed=4)):
            time.sleep(max(0.0, started + t / fps - time.perf_counter()))
            assert runtime.push_frame(camera, frame, t / fps)
    stats = runtime.stats()["camera"]
    drops = [e for e in events if e.kind is EventKind.CLIP_DROPPED]
    assert stats.clips_dropped == len(drops) > 0 and all("newer clips of this stream" in e.cause for e in drops)
    assert stats.results + stats.clips_dropped == stats.clips_ready == clip_count(num_frames, FRAMES, STRIDE, HOP)
    assert len(results) == stats.results and stats.clips_failed == 0


def test_a_realtime_file_is_live_and_a_looped_file_blocks():
    realtime, looped = SourceOptions(loop=True, realtime=True), SourceOptions(loop=True)
    assert StreamOptions(source=realtime).policy_for(SourceKind.FILE) is QueuePolicy.DROP_OLDEST
    assert StreamOptions(source=looped).policy_for(SourceKind.FILE) is QueuePolicy.BLOCK
    for kind in (SourceKind.URL, SourceKind.DEVICE, SourceKind.PUSH):
        assert StreamOptions().policy_for(kind) is QueuePolicy.DROP_OLDEST
    assert StreamOptions(queue_policy=QueuePolicy.BLOCK).policy_for(SourceKind.PUSH) is QueuePolicy.BLOCK
    with pytest.raises(ValueError, match="queue_policy must be a QueuePolicy"):
        StreamOptions(queue_policy="block")


def stop_within(action, seconds: float = 60) -> None:
    """Run action in a thread; fail (instead of hanging the suite) if it deadlocks."""
    worker = threading.Thread(target=action, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"no return within {seconds} s: deadlocked on a blocked decoder"


def test_remove_stream_unblocks_a_decoder_that_nothing_drains(tiny, long_file, gate):
    """The backend is stuck, so the file's queue stays full: remove_stream must release the
    waiting decoder itself (it would wait forever on a dispatcher that never takes a clip)."""
    runtime = Runtime(tiny, replace(SLOW, backend="gated"))
    runtime.add_stream(str(long_file), stream_id="file", options=StreamOptions(source=SourceOptions(loop=True)))
    # One clip in the dispatcher's hands, queue_per_stream (2) waiting, one in the blocked put.
    held = 1 + SLOW.queue_per_stream + 1
    wait_for(lambda: runtime.stats()["file"].clips_ready == held)  # stats() never waits on the decoder
    time.sleep(0.2)
    assert runtime.stats()["file"].clips_ready == held  # blocked, not dropping
    stop_within(lambda: runtime.remove_stream("file"), seconds=20)
    gate.set()
    stop_within(runtime.close)
    stats = runtime.stats()["file"]
    assert stats.state is StreamState.REMOVED and stats.clips_dropped == stats.clips_failed == 0
    assert stats.results == stats.clips_ready >= held  # the released put and any after it queued, not dropped


@pytest.mark.parametrize("how", ["remove_stream", "close"])
def test_stopping_a_blocked_file_stream_returns_and_loses_nothing(tiny, long_file, how):
    results, two = [], threading.Event()

    def on_result(result):
        results.append(result)
        if len(results) >= 2:
            two.set()

    runtime = Runtime(tiny, SLOW, on_result=on_result)
    looping = StreamOptions(source=SourceOptions(loop=True))  # never ends by itself: always blocked
    runtime.add_stream(str(long_file), stream_id="file", options=looping)
    other = runtime.add_push_stream(fps=10, stream_id="pushed")
    assert two.wait(timeout=60)
    if how == "remove_stream":
        stop_within(lambda: runtime.remove_stream("file"))
        for t, frame in enumerate(synthetic_face_frames(8, 8, 8, seed=5)):  # the runtime goes on
            runtime.push_frame(other, frame, t / 10)
    stop_within(runtime.close)
    stats = runtime.stats()
    assert stats["file"].state is (StreamState.REMOVED if how == "remove_stream" else StreamState.CLOSED)
    for name, s in stats.items():
        assert s.clips_ready == s.results + s.clips_dropped + s.clips_failed, (name, s)
        assert s.clips_dropped == s.clips_failed == 0, (name, s)
    assert stats["file"].results == len([r for r in results if r.stream_id == "file"]) >= 2
    assert stats["pushed"].results == (clip_count(8, FRAMES, STRIDE, HOP) if how == "remove_stream" else 0)


# --- a location that does not exist ------------------------------------------------------------


def test_add_stream_of_a_missing_file_fails_that_stream_only(tiny, long_file, tmp_path):
    missing = str(tmp_path / "not_there.mp4")
    results, events = [], []
    with Runtime(tiny, RuntimeOptions(max_delay_ms=1, hop=HOP), on_result=results.append, on_event=events.append) as runtime:
        bad = runtime.add_stream(missing)  # no exception: the location is that stream's fault
        good = runtime.add_stream(str(long_file), stream_id="good")
        assert runtime.wait(timeout=120)
    (failed,) = [e for e in events if e.stream_id == bad and e.is_fault]
    assert failed.kind is EventKind.FAILED and failed.cause == f"{missing!r} is no file, URL (rtsp://, http://, udp://, ...) or /dev/video device"
    stats = runtime.stats()
    assert (stats[bad].state, stats[bad].frames, stats[bad].faults) == (StreamState.FAILED, 0, 1)
    assert stats[good].state is StreamState.ENDED
    assert sum(r.stream_id == good for r in results) == clip_count(FILE_FRAMES, FRAMES, STRIDE, HOP)


def test_cli_runs_the_healthy_files_beside_a_missing_one_and_exits_1(tiny, tmp_path):
    lengths = {"a.mp4": 40, "b.mp4": 56, "c.mkv": 48}
    videos = [str(write_face_video(tmp_path / name, n, seed=i, size=32)) for i, (name, n) in enumerate(lengths.items())]
    missing = str(tmp_path / "f_missing.mp4")
    proc = run_cli("runtime", str(tiny), "--stream", videos[0], missing, *videos[1:], "--json", "--hop", str(HOP))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    results = [line for line in lines if line["type"] == "result"]
    for video, n in zip(videos, lengths.values()):
        assert sum(r["stream"].endswith(video) for r in results) == clip_count(n, FRAMES, STRIDE, HOP), video
    (failed,) = [line for line in lines if line["type"] == "event" and line["kind"] == "failed"]
    assert failed["stream"].endswith(missing) and f"{missing!r} is no file, URL" in failed["cause"]
    assert sum(line.startswith(f"1:{missing[:22]}") and " failed " in line for line in proc.stderr.splitlines()) == 1
