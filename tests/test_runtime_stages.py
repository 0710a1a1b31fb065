"""The runtime's CPU time per pipeline stage (runtime.stage_clock), on generated H.264 videos
through a real ONNX model: every stage that ran has a time, a stage that did not run has none,
and per-clip costs divide by the clips that reached the backend."""

from __future__ import annotations

import time

import numpy as np
import pytest

from runtime.api import Runtime, RuntimeOptions
from runtime.clips import clip_count
from runtime.demo_videos import write_face_video
from runtime.sources import DecodedFrame
from runtime.spec import ModelSpec
from runtime.stage_clock import Stage, StageClock, StageTimes
from runtime.streams import StreamOptions, StreamPipeline
from tests.test_runtime_detector import needs_detector
from tests.test_runtime_units import TINY, write_tiny_model

FRAMES = 60  # 64×64 generated face video, 25 fps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_face_video(tmp_path_factory.mktemp("video") / "face.mp4", FRAMES, seed=0)


def run_video(model, video, faces: str) -> tuple[StageTimes, int]:
    """The stage times after one video has run to its end, and the number of results."""
    results = []
    with Runtime(model, RuntimeOptions(max_delay_ms=1, hop=TINY["frames"]), on_result=results.append) as runtime:
        runtime.add_stream(str(video), options=StreamOptions(faces=faces))
        assert runtime.wait(timeout=120)
    return runtime.stage_times(), len(results)


def test_every_stage_that_ran_has_a_time_and_detect_did_not_run(tiny, video):
    times, results = run_video(tiny, video, "full")
    assert results == clip_count(FRAMES, TINY["frames"], TINY["stride"], TINY["frames"]) == times.clips
    ran = [stage for stage in Stage if stage not in (Stage.DETECT, Stage.LANDMARKS)]
    assert {stage.value: getattr(times, stage.value) > 0 for stage in ran} == dict.fromkeys((s.value for s in ran), True), times
    assert times.detect == 0.0  # face mode 'full': no detector, no tracker
    assert times.landmarks == 0.0  # not a landmarks model: no face mesh
    per_clip = times.per_clip()
    assert per_clip.clips == 1
    for stage in Stage:
        assert getattr(per_clip, stage.value) == pytest.approx(getattr(times, stage.value) / times.clips)
    assert times.runtime_cpu == pytest.approx(sum(getattr(times, s.value) for s in Stage if s is not Stage.BACKEND))


@needs_detector
def test_the_detector_is_timed_when_it_runs(tiny, video):
    times, _ = run_video(tiny, video, "detect")
    assert times.detect > 0 and times.decode > 0


def test_a_pipeline_without_a_runtime_keeps_its_own_clock():
    """Callers outside the runtime (calibration, benchmarks) need no clock; one given is used,
    and what it holds is CPU time the feeding thread really spent."""
    spec = ModelSpec.from_dict({"family": "t", "labels": ["a", "b"], "frames": 1, "height": 8, "width": 8,
                                "frame_stride": 1, "mean": [0.5] * 3, "std": [0.25] * 3, "resize": "bilinear",
                                "clip_merge": "softmax", "layout": "NCHW"})
    clips = []
    own = StreamPipeline("s", spec, 1, StreamOptions(), clips.append, lambda *_: None, lambda *_: None)
    shared = StageClock()
    given = StreamPipeline("s", spec, 1, StreamOptions(), clips.append, lambda *_: None, lambda *_: None, stage_clock=shared)
    assert isinstance(own.stage_clock, StageClock) and given.stage_clock is shared
    image = np.zeros((16, 16, 3), np.uint8)
    started = time.thread_time()
    for k in range(5):
        given.feed(DecodedFrame(image, k / 10, k, 0, time.perf_counter()))
    spent = time.thread_time() - started
    snapshot = shared.snapshot()
    assert len(clips) == 5 and clips[0].data.shape == (3, 8, 8)
    assert 0 < snapshot.crop_resize + snapshot.normalize <= spent and own.stage_clock.snapshot() == StageTimes()
