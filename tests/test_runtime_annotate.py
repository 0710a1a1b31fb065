"""Annotated videos (--annotate): per stream an H.264 MP4 of every frame with the face boxes,
track ids and labels drawn on, finished whenever the stream stops, whatever stopped it.

The videos are read back with PyAV and compared with the frames that went in. H.264 is lossy
(4:2:0 chroma, crf 20) and the generated frames' textured background is its worst case, so
"unchanged" means within a tolerance: far from any box the mean absolute difference stays
under FAR_TOLERANCE = 8 grey levels (measured 3.7-4.1 on pushed 96×128 frames), while on
the box's outline and caption it exceeds DRAWN = 25 (measured 53-84).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from runtime.annotate import video_path
from runtime.api import Runtime, RuntimeOptions
from runtime.demo_videos import write_face_video
from runtime.records import EventKind, StreamState
from runtime.sources import SourceOptions
from runtime.streams import StreamOptions
from runtime.synthetic import synthetic_face_frames
from tests.hiding import run_hiding
from tests.test_runtime_frame_model import decoded_rgb, write_frame_model
from tests.test_runtime_live import wait_for
from tests.test_runtime_udp import free_udp_port, send_mpegts, udp_port_bound

ROOT = Path(__file__).resolve().parents[1]
FAR_TOLERANCE, DRAWN = 8.0, 25.0
FPS = 25
BOX = (8, 8, 48, 48)  # in 96×128 pushed frames; "far" is x ≥ 80 and y ≥ 64


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_frame_model(tmp_path_factory.mktemp("annotate") / "frame.onnx")


def test_boxes_and_labels_are_drawn_and_the_rest_of_the_frame_is_kept(model, tmp_path):
    frames = synthetic_face_frames(30, 96, 128, seed=2)
    pushed = frames.copy()
    results = []
    options = RuntimeOptions(max_delay_ms=1, queue_per_stream=64, annotate=tmp_path)
    with Runtime(model, options, on_result=results.append) as runtime:
        camera = runtime.add_push_stream(fps=FPS, stream_id="cam 1", options=StreamOptions(faces="boxes"))
        for t, frame in enumerate(frames):
            assert runtime.push_frame(camera, frame, t / FPS, [BOX])
    np.testing.assert_array_equal(frames, pushed)  # the host's frames are not drawn on
    assert len(results) == 30
    annotated, times = decoded_rgb(tmp_path / "cam_1.mp4")
    assert annotated.shape == frames.shape and times == pytest.approx([t / FPS for t in range(30)])
    x0, y0, x1, y1 = BOX
    caption = (slice(y0, y0 + 12), slice(x0, x1))  # the caption bar inside the box's top edge
    outline = (slice(y0, y1), slice(x0, x0 + 1))  # the box's left edge
    for got, sent in zip(annotated, frames):
        assert mean_abs(got[caption], sent[caption]) > DRAWN
        assert mean_abs(got[outline], sent[outline]) > DRAWN
        assert mean_abs(got[64:, 80:], sent[64:, 80:]) < FAR_TOLERANCE


def test_cli_annotates_a_file_frame_for_frame(model, tmp_path):
    """Face mode 'full': the whole frame is track 0's box; the video keeps every frame and time."""
    video = write_face_video(tmp_path / "face.mp4", 40, seed=1, size=64)
    folder = tmp_path / "annotated"
    command = [sys.executable, "-m", "runtime", str(model), "--stream", str(video), "--annotate", str(folder), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    (written,) = folder.iterdir()
    assert written == video_path(folder, f"0:{video}")
    source, source_times = decoded_rgb(video)
    annotated, times = decoded_rgb(written)
    assert annotated.shape == source.shape == (40, 64, 64, 3) and times == pytest.approx(source_times)
    centre = (slice(24, 56), slice(16, 48))  # below the caption, inside the frame-sized box
    assert mean_abs(annotated[:, centre[0], centre[1]], source[:, centre[0], centre[1]]) < FAR_TOLERANCE
    assert mean_abs(annotated[:, :10, :30], source[:, :10, :30]) > DRAWN  # the caption at the top left


def test_a_failed_stream_leaves_a_playable_video_of_every_frame_it_took(model, tmp_path):
    """A UDP camera that goes silent for good (no retries): the stream fails, and its video is
    finished then, not only at close()."""
    if not Path("/proc/net/udp").is_file():
        pytest.skip("needs Linux's /proc/net/udp to see when the runtime listens")
    port = free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    live = StreamOptions(source=SourceOptions(timeout_s=1.0, backoff_s=(0.1, 0.1), max_retries=0))
    runtime = Runtime(model, RuntimeOptions(max_delay_ms=1, annotate=tmp_path))
    try:
        runtime.add_stream(url, stream_id="camera", options=live)
        wait_for(lambda: udp_port_bound(port), timeout=5)
        send_mpegts(url + "?pkt_size=1316", synthetic_face_frames(25, 64, 64, seed=3))
        wait_for(lambda: runtime.stats()["camera"].state is StreamState.FAILED, timeout=15)
        annotated, _ = decoded_rgb(tmp_path / "camera.mp4")  # before close()
        assert len(annotated) == runtime.stats()["camera"].frames > 0
    finally:
        runtime.close()


def test_closing_finishes_the_video_of_a_running_stream(model, tmp_path):
    runtime = Runtime(model, RuntimeOptions(annotate=tmp_path))
    camera = runtime.add_push_stream(fps=FPS, stream_id="camera")
    for t, frame in enumerate(synthetic_face_frames(10, 32, 32, seed=4)):
        runtime.push_frame(camera, frame, t / FPS)
    runtime.close()
    annotated, _ = decoded_rgb(tmp_path / "camera.mp4")
    assert len(annotated) == 10


def test_a_video_that_cannot_be_written_stops_annotating_not_the_stream(model, tmp_path):
    (tmp_path / "camera.mp4").mkdir()  # the video's path is taken by a folder
    results, events = [], []
    with Runtime(model, RuntimeOptions(max_delay_ms=1, annotate=tmp_path), on_result=results.append,
                 on_event=events.append) as runtime:
        camera = runtime.add_push_stream(fps=FPS, stream_id="camera")
        for t, frame in enumerate(synthetic_face_frames(5, 8, 8, seed=5)):
            assert runtime.push_frame(camera, frame, t / FPS)
    (failed,) = [e for e in events if e.kind is EventKind.ANNOTATION_FAILED]
    assert failed.is_fault and failed.cause.startswith(f"annotated video {tmp_path / 'camera.mp4'} stopped: IsADirectoryError")
    assert len(results) == 5 and runtime.stats()["camera"].faults == 1


def test_two_streams_may_not_write_one_video(model, tmp_path):
    with Runtime(model, RuntimeOptions(annotate=tmp_path)) as runtime:
        runtime.add_push_stream(fps=FPS, stream_id="cam 1")
        with pytest.raises(ValueError, match="would overwrite the annotated video"):
            runtime.add_push_stream(fps=FPS, stream_id="cam_1")


def test_without_pillow_annotating_fails_at_start_in_one_line(model, tmp_path):
    code = "import sys\nfrom runtime.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    video = write_face_video(tmp_path / "face.mp4", 4, size=16)
    done = run_hiding(("PIL",), code, str(model), "--stream", str(video), "--annotate", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "pip install pillow" in line
    plain = run_hiding(("PIL",), code, str(model), "--stream", str(video))  # Pillow is needed for --annotate only
    assert plain.returncode == 0, plain.stderr
