"""runtime.evaluate: the official clip cuts per family, per-video outputs equal to a hand
computation, WAR/UAR equal to scikit-learn's, and a real labelled set with a corrupt file.

IFDD cannot be shrunk, so an IFDD-like spec sits on a tiny hand-made ONNX graph (per-frame
means weighted by time, so the frame order counts); S4D is the reduced model exported to ONNX
as test_runtime_streams.py makes it. The hand computations decode with PyAV, resize with
Pillow (the official pipelines' resize), run ONNX Runtime directly and merge in numpy.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings

import av
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from runtime.backends import open_backend
from runtime.demo_videos import write_face_video
from runtime.evaluate import Evaluator, main
from runtime.model import load_model_source
from runtime.protocol import protocol_for
from runtime.scoring import score
from runtime.spec import DFEW_LABELS, IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from runtime.videoset import Frames, VideoEntry, find_videos, read_labels
from tests import test_runtime_streams
from tests.test_resize import feat_data

IFDD_LIKE = ModelSpec(family="ifdd", labels=DFEW_LABELS, frames=16, height=32, width=32, frame_stride=1,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="bicubic", clip_merge="logits")
PER_FRAME = ModelSpec(family="static", labels=DFEW_LABELS, frames=1, height=24, width=24, frame_stride=1,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="bilinear", clip_merge="softmax", layout="NCHW")
COUNTS = (1, 15, 16, 17, 31, 32, 47)
# The reduced S4D exported to ONNX: test_runtime_streams.py's module fixtures, used here as they are.
s4d_checkpoint, s4d_onnx = test_runtime_streams.s4d_checkpoint, test_runtime_streams.s4d_onnx


def write_graph_model(path, spec: ModelSpec):
    """logits = mean over (H, W) of each channel and frame, flattened, @ W + b; real ONNX with dfer metadata."""
    steps = 1 if spec.layout == "NCHW" else spec.frames
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((3 * steps, spec.num_classes)).astype(np.float32) * 4
    bias = rng.standard_normal(spec.num_classes).astype(np.float32)
    axes = [2, 3] if spec.layout == "NCHW" else [3, 4]
    nodes = [helper.make_node("ReduceMean", ["clip", "axes"], ["pooled"], keepdims=0),
             helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weight"], ["scores"]),
             helper.make_node("Add", ["scores", "bias"], ["logits"])]
    inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes"),
             numpy_helper.from_array(np.array([-1, 3 * steps], np.int64), "flat_shape"),
             numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")]
    shape = ["batch", *spec.input_shape(1)[1:]]
    graph = helper.make_graph(nodes, "graph_model", [helper.make_tensor_value_info("clip", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", spec.num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in {"dfer.spec": spec.to_json(), "dfer.family": spec.family, "dfer.untrained": "true"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def ifdd_like(tmp_path_factory):
    return write_graph_model(tmp_path_factory.mktemp("ifdd") / "ifdd_like.onnx", IFDD_LIKE)


@pytest.fixture(scope="module")
def per_frame(tmp_path_factory):
    return write_graph_model(tmp_path_factory.mktemp("static") / "per_frame.onnx", PER_FRAME)


@pytest.fixture(scope="module")
def counted_videos(tmp_path_factory):
    """Generated H.264 face videos of the protocol test's frame counts, plus longer ones."""
    folder = tmp_path_factory.mktemp("videos")
    return {n: write_face_video(folder / f"n{n:03d}.mp4", n, seed=n, size=48) for n in (*COUNTS, 64, 65, 130)}


def evaluate(model_path, videos, batch: int = 8):
    source = load_model_source(model_path)
    evaluator = Evaluator(source, open_backend(source, "onnxruntime"), batch=batch)
    return list(evaluator.run([(VideoEntry(name=p.stem, path=p, kind="video"), None) for p in videos]))


# --- the clips each family's official rule cuts, computed by hand --------------------------


def ifdd_by_hand(n: int) -> list[tuple[int, int]]:
    """(start frame, padded) of IFDD's test clips, 16 frames at stride 1."""
    if n < 16:
        return [(0, 16 - n)]
    return [(16 * k, 0) for k in range(n // 16)]


def s4d_by_hand(n: int) -> list[tuple[int, int]]:
    """(start frame, padded) of S4D's 2 test segments: samples every 4th frame, last one repeated."""
    samples = math.ceil(n / 4)
    if samples <= 16:
        return [(0, 16 - samples)] * 2
    return [(0, 0), (4 * (samples - 16), 0)]


@pytest.mark.parametrize("n", COUNTS)
def test_protocol_rules_cut_the_official_clips(n):
    ifdd = protocol_for(IFDD_LIKE).clips(n)
    assert [(c.start, c.padded) for c in ifdd] == ifdd_by_hand(n)
    assert all(c.indices == tuple(range(c.start, c.start + 16)) for c in ifdd if not c.padded)
    s4d_spec = ModelSpec(family="s4d", labels=DFEW_LABELS, frames=16, height=160, width=160, frame_stride=4,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="bilinear", clip_merge="softmax")
    s4d = protocol_for(s4d_spec).clips(n)
    assert [(c.start, c.padded) for c in s4d] == s4d_by_hand(n)
    assert all(len(c.indices) == 16 and c.indices[-1] == 4 * ((n - 1) // 4) for c in s4d[1:])


def test_the_evaluator_cuts_the_official_clips_of_real_videos(ifdd_like, s4d_onnx, counted_videos):
    paths = [counted_videos[n] for n in sorted(counted_videos)]
    for model, by_hand in ((ifdd_like, ifdd_by_hand), (s4d_onnx, s4d_by_hand)):
        for path, result in zip(paths, evaluate(model, paths)):
            n = int(path.stem[1:])
            assert result.frames == n
            assert [(c.start, c.padded) for c in result.clips] == by_hand(n), (model.name, n)


# --- per-video outputs against a hand computation -------------------------------------------


def by_hand(model_path, spec: ModelSpec, video, clips: list[list[int]]) -> np.ndarray:
    """Logits of each clip: PyAV decode, Pillow resize, normalise, ONNX Runtime one clip at a time."""
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[spec.resize]
    resized = [np.asarray(Image.fromarray(f).resize((spec.width, spec.height), method)) for f in frames]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    outputs = []
    for indices in clips:
        pixels = (np.stack([resized[i] for i in indices]) / 255.0 - spec.mean) / spec.std  # (T, H, W, 3)
        x = pixels.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else pixels.transpose(3, 0, 1, 2)[None]
        outputs.append(session.run(None, {"clip": x.astype(np.float32)})[0])
    return np.concatenate(outputs)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_ifdd_like_logits_are_the_mean_of_its_clip_logits(ifdd_like, counted_videos):
    videos = [counted_videos[n] for n in (15, 47, 65, 130)]
    for video, result in zip(videos, evaluate(ifdd_like, videos, batch=3)):
        n = int(video.stem[1:])
        clips = [list(range(16 * k, 16 * k + 16)) for k in range(n // 16)] or [list(range(n)) + [n - 1] * (16 - n)]
        logits = by_hand(ifdd_like, IFDD_LIKE, video, clips).mean(axis=0)
        np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.probabilities, softmax(logits), rtol=1e-5, atol=1e-7)
        assert result.prediction == int(np.argmax(logits))


def test_s4d_probabilities_are_the_mean_of_its_segment_softmax(s4d_onnx, counted_videos):
    spec = load_model_source(s4d_onnx).spec
    videos = [counted_videos[n] for n in (17, 65, 130)]
    for video, result in zip(videos, evaluate(s4d_onnx, videos, batch=2)):
        samples = list(range(0, int(video.stem[1:]), 4))
        samples += [samples[-1]] * (16 - len(samples))
        segments = [samples[:16], samples[-16:]]
        probabilities = softmax(by_hand(s4d_onnx, spec, video, segments).astype(np.float64)).mean(axis=0)
        np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-5, atol=1e-7)
        assert result.logits is None and result.prediction == int(np.argmax(probabilities))


def test_per_frame_models_average_the_softmax_of_every_frame(per_frame, counted_videos):
    video = counted_videos[17]
    (result,) = evaluate(per_frame, [video], batch=5)
    probabilities = softmax(by_hand(per_frame, PER_FRAME, video, [[i] for i in range(17)]).astype(np.float64)).mean(axis=0)
    np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-5, atol=1e-7)
    assert [c.start for c in result.clips] == list(range(17))


def test_batching_across_videos_does_not_change_a_result(ifdd_like, counted_videos):
    videos = [counted_videos[n] for n in sorted(counted_videos)]
    one, many = evaluate(ifdd_like, videos, batch=1), evaluate(ifdd_like, videos, batch=7)
    assert [r.video for r in one] == [r.video for r in many] == [p.stem for p in videos]
    for a, b in zip(one, many):
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


# --- WAR / UAR -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_war_and_uar_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.choice([0, 2, 3, 5], size=40)  # classes 1, 4 and 6 never occur in the truth
    predicted = np.where(rng.random(40) < 0.5, truth, rng.integers(0, 7, 40))
    scores = score(truth, predicted, DFEW_LABELS)
    assert scores.war == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": the point of the test
        assert scores.uar == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-12)
    assert set(scores.recall) == {DFEW_LABELS[i] for i in set(truth)} and scores.confusion.sum() == 40


def test_cli_scores_equal_scikit_learn_on_its_own_predictions(ifdd_like, counted_videos, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for path in counted_videos.values():
        shutil.copy(path, data / path.name)
    truth = {p.stem: DFEW_LABELS[i % 3] for i, p in enumerate(sorted(data.iterdir()))}
    labels = tmp_path / "labels.csv"
    labels.write_text("video,label\n" + "".join(f"{v},{label}\n" for v, label in truth.items()))
    assert main([str(ifdd_like), str(data), "--labels", str(labels), "--json", "--batch", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    videos, summary = lines[:-1], lines[-1]
    assert [v["video"] for v in videos] == list(truth) and summary["type"] == "summary"
    y_true, y_pred = [v["label"] for v in videos], [v["prediction"] for v in videos]
    assert y_true == list(truth.values())
    assert summary["war"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert summary["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert all("logits" in v and v["clips"] for v in videos) and summary["unreadable"] == []


# --- labels, DATA, real media ---------------------------------------------------------------


def test_labels_take_names_or_one_based_indices_and_name_the_bad_rows(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("video_name,label\n00002,1\n5,Fear\n7,0\n8,joy\nbroken-row\n9,7\n")
    table = read_labels(csv, DFEW_LABELS)
    assert table.labels == {"2": 0, "5": 6, "9": 6}
    assert len(table.problems) == 3 and "unknown label '0'" in table.problems[0] and "'joy'" in table.problems[1]
    assert "expected 'video,label'" in table.problems[2]


def test_a_real_labelled_set_scores_and_a_corrupt_file_is_listed(ifdd_like, s4d_onnx, tmp_path, capsys):
    media = feat_data()
    data = tmp_path / "data"
    data.mkdir()
    for photo in sorted(media.glob("*-ph.jpg")):  # face photos: still videos
        shutil.copy(photo, data / photo.name)
    for half in (0, 1):
        (data / f"wolfgang_{half}").mkdir()
    with av.open(str(media / "WolfgangLanger_Pexels.mp4")) as container:  # 472 frames
        for i, frame in enumerate(container.decode(video=0)):
            if i % 3 == 0:  # DFEW's layout: one folder of JPEG frames per video, numbered from 1
                frame.to_image().save(data / f"wolfgang_{i // 236}" / f"{i // 3 + 1}.jpg", quality=90)
    shutil.copy(media / "single_face.mp4", data / "single_face.mp4")
    (data / "corrupt.mp4").write_bytes((media / "single_face.mp4").read_bytes()[:4096][::-1])
    (data / "empty").mkdir()
    labels = tmp_path / "labels.csv"
    names = [e.name for e in find_videos(data)]
    labels.write_text("".join(f"{name},{DFEW_LABELS[i % 7]}\n" for i, name in enumerate(names)))
    for model in (ifdd_like, s4d_onnx):
        assert main([str(model), str(data), "--labels", str(labels), "--json", "-o", str(tmp_path / model.stem)]) == 0
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.splitlines()]
        summary = lines[-1]
        assert summary["videos"] == len(names) - 2 == len(lines) - 1
        assert {u["video"] for u in summary["unreadable"]} == {"corrupt", "empty"}
        assert "unreadable: " in captured.err and "no image files" in captured.err
        assert (tmp_path / model.stem / "report.md").read_text().count("|") > 50
        assert (tmp_path / model.stem / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib: test extra
        halves = [line["frames"] for line in lines if line.get("video", "").startswith("wolfgang_")]
        assert halves == [79, 79]


def test_an_empty_data_folder_is_one_line_and_status_2(ifdd_like, tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("a,happy\n")
    (tmp_path / "data").mkdir()
    assert main([str(ifdd_like), str(tmp_path / "data"), "--labels", str(tmp_path / "labels.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no videos" in err[0]


def test_streaming_reports_how_often_the_live_runtime_agrees(ifdd_like, counted_videos, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for n in (16, 47, 130):
        shutil.copy(counted_videos[n], data / counted_videos[n].name)
    frames_folder = data / "frames"
    frames_folder.mkdir()
    with av.open(str(counted_videos[32])) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(frames_folder / f"{i:05d}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("n016,happy\nn047,sad\nn130,angry\nframes,fear\n")
    assert main([str(ifdd_like), str(data), "--labels", str(labels), "--json", "--streaming"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    agree = lines[-1]["streaming"]
    assert agree["videos"] == 4 and agree["hop"] == 16
    streams = {line["video"]: line["stream"] for line in lines[:-1]}
    assert streams["n047"]["results"] == 2 and streams["n130"]["results"] == 8 and streams["frames"]["results"] == 2
    same = sum(line["stream"]["label"] == line["prediction"] for line in lines[:-1])
    assert agree["agree_last_clip"] == same


def test_frame_folders_read_in_frame_number_order_and_match_labels_by_number(tmp_path):
    folder = tmp_path / "data" / "00002"
    folder.mkdir(parents=True)
    for number in (10, 2, 1):
        Image.fromarray(np.full((8, 8, 3), number * 20, np.uint8)).save(folder / f"{number}.png")
    (entry,) = find_videos(tmp_path / "data")
    frames = Frames(entry)
    assert entry.key == "2" and [int(frames.rgb(i)[0, 0, 0]) for i in range(len(frames))] == [20, 40, 200]
