"""Compound expressions: label mapping, PPA, MHPF, segment fusion, the live stage and the scorer CLI.

Expectations are worked out by hand from the definitions (Team RAS, ABAW 9 official code);
exact arithmetic on small arrays is compared with atol 1e-12 (float64 rounding only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.spec import DFEW_LABELS
from runtime.compound import (
    ABAW_BASIC,
    COMPOUND_CLASSES,
    MHPF,
    CompoundFusion,
    CompoundStage,
    abaw_index,
    frames_from_windows,
    ppa,
    segment_windows,
    to_abaw,
    window_frames,
)
from runtime.compound.score import f1_per_class, macro_f1
from runtime.temporal import TemporalOptions

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-12
# The Team RAS static face model's own order (the official dataset code renames its columns).
STATIC_LABELS = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")


# --- label mapping -------------------------------------------------------------------------

def test_dfew_order_maps_to_abaw_by_name():
    # DFEW: happy, sad, neutral, angry, surprise, disgust, fear → ABAW N, A, D, F, H, Sa, Su
    assert abaw_index(DFEW_LABELS).tolist() == [2, 3, 5, 6, 0, 1, 4]
    probs = np.array([0.30, 0.20, 0.10, 0.05, 0.15, 0.08, 0.12])  # happy=0.30, ..., fear=0.12
    np.testing.assert_allclose(to_abaw(probs, DFEW_LABELS), [0.10, 0.05, 0.08, 0.12, 0.30, 0.20, 0.15], atol=ATOL)


def test_synonyms_case_and_ignored_classes():
    labels = ("Surprised", "JOY", "fearful", "disgusted", "Other", "angry", "sadness", "neutral")
    assert abaw_index(labels, ignore=("other",)).tolist() == [7, 5, 3, 2, 1, 6, 0]
    batch = np.arange(16.0).reshape(2, 8)
    np.testing.assert_array_equal(to_abaw(batch, labels, ignore=("OTHER",)), batch[:, [7, 5, 3, 2, 1, 6, 0]])


@pytest.mark.parametrize(
    "labels, needles",
    [
        (("happy", "sad", "neutral", "angry", "surprise", "disgust", "contempt"), ["'contempt'", "unknown"]),
        (("happy", "sad", "neutral", "angry", "surprise", "disgust"), ["lacks Fear"]),
        (("happy", "happiness", "sad", "neutral", "angry", "surprise", "disgust", "fear"), ["'happy' and 'happiness'"]),
        (("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear", "other"), ["'other'"]),
    ],
)
def test_bad_label_orders_are_errors_naming_the_labels(labels, needles):
    with pytest.raises(ValueError) as err:
        abaw_index(labels)
    for needle in needles:
        assert needle in str(err.value)


def test_probability_width_must_match_labels():
    with pytest.raises(ValueError, match=r"shape \(6,\).*last axis 7"):
        to_abaw(np.ones(6), DFEW_LABELS)


# --- PPA -----------------------------------------------------------------------------------

def test_ppa_sums_each_pair():
    #                  N     A     D     F     H     Sa    Su
    basic = np.array([0.05, 0.10, 0.05, 0.20, 0.10, 0.10, 0.40])
    # FS=F+Su, HS=H+Su, SS=Sa+Su, DS=D+Su, AS=A+Su, SF=Sa+F, SA=Sa+A
    np.testing.assert_allclose(ppa(basic), [0.60, 0.50, 0.50, 0.45, 0.50, 0.30, 0.20], atol=ATOL)
    assert COMPOUND_CLASSES[int(np.argmax(ppa(basic)))] == "Fearfully_Surprised"
    np.testing.assert_allclose(ppa(np.stack([basic, basic])), np.stack([ppa(basic)] * 2), atol=ATOL)
    with pytest.raises(ValueError, match="ABAW order"):
        ppa(np.ones(8))


# --- MHPF ----------------------------------------------------------------------------------

def test_mhpf_per_class_softmax_over_models_and_head_mix():
    log3 = np.log(3.0)
    # head 0: model a weighs 3:1 over b for every class except class 0, where it is 1:3;
    # head 1: equal weights. Heads mixed 1:3 (softmax of [0, ln 3]).
    head0 = np.zeros((2, 7))
    head0[0, :] = log3
    head0[0, 0] = -log3
    weights = MHPF(("a", "b"), np.stack([head0, np.zeros((2, 7))]), np.array([0.0, log3]))
    # class 0: a = 0.25·0.25 + 0.75·0.5 = 0.4375; other classes: a = 0.25·0.75 + 0.75·0.5 = 0.5625
    expected_a = np.full(7, 0.5625)
    expected_a[0] = 0.4375
    np.testing.assert_allclose(weights.model_weights(), np.stack([expected_a, 1 - expected_a]), atol=ATOL)
    pa = np.array([0.4, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0])
    pb = np.array([0.0, 0.0, 0.0, 0.0, 0.2, 0.0, 0.8])
    fused = weights.fuse({"b": pb, "a": pa})  # matched by name, not by position
    np.testing.assert_allclose(fused, [0.4 * 0.4375, 0, 0, 0, 0.6 * 0.5625 + 0.2 * 0.4375, 0, 0.8 * 0.4375], atol=ATOL)


def test_mhpf_uniform_is_the_mean_and_json_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    probs = {name: rng.dirichlet(np.ones(7), size=5) for name in ("x", "y", "z")}
    np.testing.assert_allclose(MHPF.uniform(["x", "y", "z"]).fuse(probs), sum(probs.values()) / 3, atol=ATOL)
    trained = MHPF(("x", "y", "z"), rng.normal(size=(3, 3, 7)), rng.normal(size=3))
    path = tmp_path / "mhpf.json"
    path.write_text(json.dumps(trained.to_dict()))
    loaded = MHPF.load(path)
    assert loaded.models == ("x", "y", "z")
    np.testing.assert_allclose(loaded.fuse(probs), trained.fuse(probs), atol=ATOL)
    np.testing.assert_allclose(loaded.model_weights().sum(axis=0), np.ones(7), atol=ATOL)


@pytest.mark.parametrize(
    "data, needles",
    [
        ({"models": ["a", "b"], "head_weights": np.zeros((3, 3, 7)).tolist(), "head_combine": [0, 0, 0]}, ["head_weights", "(3, 3, 7)", "(heads, 2, 7)"]),
        ({"models": ["a", "b"], "head_weights": np.zeros((3, 2, 8)).tolist(), "head_combine": [0, 0, 0]}, ["head_weights", "(3, 2, 8)", "(heads, 2, 7)"]),
        ({"models": ["a", "b"], "head_weights": np.zeros((2, 7)).tolist(), "head_combine": [0]}, ["head_weights", "(2, 7)"]),
        ({"models": ["a", "b"], "head_weights": np.zeros((3, 2, 7)).tolist(), "head_combine": [0, 0]}, ["head_combine", "(2,)", "(3,)"]),
        ({"models": ["a"], "head_weights": [[[0] * 7]], "head_combine": [[0]]}, ["head_combine", "(1, 1)", "(1,)"]),
        ({"models": ["a"], "head_weights": [[[0] * 7]]}, ["missing head_combine"]),
        ({"models": ["a"], "head_weights": [[[0] * 7]], "head_combine": [0], "bias": 1}, ["unknown bias"]),
        ({"models": ["a"], "head_weights": [[[0] * 6, [0] * 7]], "head_combine": [0]}, ["head_weights", "rectangular"]),
        ({"models": ["a"], "head_weights": [[[float("nan")] * 7]], "head_combine": [0]}, ["head_weights", "non-finite"]),
        ({"models": ["a", "a"], "head_weights": np.zeros((1, 2, 7)).tolist(), "head_combine": [0]}, ["a", "more than once"]),
        ({"models": "ab", "head_weights": np.zeros((1, 2, 7)).tolist(), "head_combine": [0]}, ["list of names"]),
    ],
)
def test_mhpf_weight_file_validation(tmp_path, data, needles):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        MHPF.load(path)
    for needle in needles:
        assert needle in str(err.value)


def test_mhpf_unreadable_file_and_wrong_inputs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read MHPF weights"):
        MHPF.load(bad)
    weights = MHPF.uniform(["a", "b"])
    with pytest.raises(ValueError, match="models"):
        weights.fuse({"a": np.ones(7), "c": np.ones(7)})
    with pytest.raises(ValueError, match="one shape"):
        weights.fuse({"a": np.ones(7), "b": np.ones((2, 7))})


# --- segment fusion ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "duration, windows",
    [
        (0.0, [(0.0, 0.0)]),
        (3.0, [(0.0, 3.0)]),  # at most 4 s: one window over the whole clip
        (4.0, [(0.0, 4.0)]),
        (4.5, [(0.0, 4.0), (2.0, 4.5)]),  # the tail window is cut at the end
        (6.0, [(0.0, 4.0), (2.0, 6.0)]),  # exact fit stops there
        (9.0, [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 9.0)]),
    ],
)
def test_segment_windows(duration, windows):
    assert segment_windows(duration) == windows


def test_short_tail_below_minimum_is_dropped():
    # Only reachable with a hop close to the window: 0-4, 3.5-7.5, then a 0.2 s tail < 1 s.
    assert segment_windows(7.7, window_s=4.0, hop_s=3.5) == [(0.0, 4.0), (3.5, 7.5)]
    with pytest.raises(ValueError, match="duration"):
        segment_windows(-1.0)


def test_window_frames_truncate_and_include_both_ends():
    assert window_frames(0.0, 4.0, 25.0) == (0, 100)
    assert window_frames(2.0, 6.0, 29.97) == (59, 179)  # 59.94 and 179.82 truncated
    with pytest.raises(ValueError, match="fps"):
        window_frames(0.0, 4.0, 0.0)
    with pytest.raises(ValueError, match="start ≤ end"):
        window_frames(3.0, 2.0, 25.0)


def test_frames_from_windows_mean_and_forward_fill():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # fps 2: windows cover frames 0-2, 1-3 and 4-6; frame 7 has none.
    frames = frames_from_windows(scores, [(0.0, 1.0), (0.5, 1.5), (2.0, 3.0)], fps=2.0, num_frames=8)
    expected = [[1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1], [1, 1], [1, 1], [1, 1], [1, 1]]
    np.testing.assert_allclose(frames, expected, atol=ATOL)
    # a gap between windows repeats the last covered frame
    gap = frames_from_windows(scores[[0, 2]], [(0.0, 1.0), (2.0, 3.0)], fps=2.0)
    np.testing.assert_allclose(gap, [[1, 0]] * 4 + [[1, 1]] * 3, atol=ATOL)


def test_video_edges_at_25_fps():
    # A 10 s video of 250 frames: windows 0-4, 2-6, 4-8, 6-10 cover frames 0-100, 50-150,
    # 100-200, 150-250; frames 100 and 150 sit in three windows; frame 250 does not exist and is dropped.
    windows = segment_windows(10.0)
    scores = np.eye(4)
    frames = frames_from_windows(scores, windows, fps=25.0, num_frames=250)
    assert frames.shape == (250, 4)
    np.testing.assert_allclose(frames[0], [1, 0, 0, 0], atol=ATOL)
    np.testing.assert_allclose(frames[50], [0.5, 0.5, 0, 0], atol=ATOL)
    np.testing.assert_allclose(frames[100], [1 / 3, 1 / 3, 1 / 3, 0], atol=ATOL)
    np.testing.assert_allclose(frames[101], [0, 0.5, 0.5, 0], atol=ATOL)
    np.testing.assert_allclose(frames[150], [0, 1 / 3, 1 / 3, 1 / 3], atol=ATOL)
    np.testing.assert_allclose(frames[200], [0, 0, 0.5, 0.5], atol=ATOL)
    np.testing.assert_allclose(frames[249], [0, 0, 0, 1], atol=ATOL)
    # a video longer than its stated duration: the frames past the last window are forward-filled
    longer = frames_from_windows(scores, windows, fps=25.0, num_frames=260)
    np.testing.assert_allclose(longer[250:], np.tile(longer[250], (10, 1)), atol=ATOL)
    np.testing.assert_allclose(longer[250], [0, 0, 0, 1], atol=ATOL)


def test_frames_before_the_first_window_are_an_error():
    with pytest.raises(ValueError, match="frames 0..49 come before the first window"):
        frames_from_windows(np.ones((1, 2)), [(2.0, 6.0)], fps=25.0)
    with pytest.raises(ValueError, match=r"expected \(2, classes\)"):
        frames_from_windows(np.ones((1, 2)), [(0.0, 4.0), (2.0, 6.0)], fps=25.0)


# --- fusion pipeline and live stage --------------------------------------------------------

def test_compound_fusion_maps_each_model_then_fuses():
    dfew = np.array([0.6, 0.0, 0.0, 0.0, 0.4, 0.0, 0.0])  # happy 0.6, surprise 0.4
    static = np.array([0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0])  # Sadness 0.5, Fear 0.5
    fusion = CompoundFusion({"dyn": DFEW_LABELS, "stat": STATIC_LABELS}, MHPF.uniform(["dyn", "stat"]))
    basic = fusion.basic({"dyn": dfew, "stat": static})
    np.testing.assert_allclose(basic, [0, 0, 0, 0.25, 0.3, 0.25, 0.2], atol=ATOL)
    np.testing.assert_allclose(fusion.compound({"dyn": dfew, "stat": static}), ppa(basic), atol=ATOL)
    assert dict(zip(ABAW_BASIC, basic))["Happiness"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="need MHPF weights"):
        CompoundFusion({"dyn": DFEW_LABELS, "stat": STATIC_LABELS})
    with pytest.raises(ValueError, match="MHPF weights are for models"):
        CompoundFusion({"dyn": DFEW_LABELS, "stat": STATIC_LABELS}, MHPF.uniform(["dyn", "other"]))
    with pytest.raises(ValueError, match="model 'stat'.*last axis 7"):
        fusion.basic({"dyn": dfew, "stat": np.ones(6)})


def test_mhpf_per_class_weights_change_the_decision():
    # The dynamic model sees surprise, the static model sees sadness; MHPF trusts each for its
    # own emotion (raw ±2 → softmax weights w = 0.982 and 1 - w) and weighs happiness equally.
    dyn = np.array([0.05, 0.05, 0.05, 0.05, 0.30, 0.05, 0.45])      # ABAW order: H 0.30, Sa 0.05, Su 0.45
    stat = np.array([0.0375, 0.0375, 0.0375, 0.0375, 0.40, 0.40, 0.05])  # H 0.40, Sa 0.40, Su 0.05
    raw = np.zeros((1, 2, 7))
    su, sa = ABAW_BASIC.index("Surprise"), ABAW_BASIC.index("Sadness")
    raw[0, :, su] = [2.0, -2.0]
    raw[0, :, sa] = [-2.0, 2.0]
    mhpf = MHPF(("dyn", "stat"), raw, np.zeros(1))
    mean = ppa(MHPF.uniform(["dyn", "stat"]).fuse({"dyn": dyn, "stat": stat}))
    fused = ppa(mhpf.fuse({"dyn": dyn, "stat": stat}))
    # mean: H 0.35, Sa 0.225, Su 0.25 → HS 0.6 beats SS 0.475
    np.testing.assert_allclose(mean[[1, 2]], [0.6, 0.475], atol=ATOL)
    assert COMPOUND_CLASSES[int(np.argmax(mean))] == "Happily_Surprised"
    # MHPF: Su = 0.45 w + 0.05 (1 - w), Sa = 0.05 (1 - w) + 0.40 w, H 0.35 → SS 0.836 beats HS 0.793
    w = 1 / (1 + np.exp(-4.0))  # softmax([2, -2])[0]
    fused_su, fused_sa = 0.45 * w + 0.05 * (1 - w), 0.05 * (1 - w) + 0.40 * w
    np.testing.assert_allclose(fused[[1, 2]], [0.35 + fused_su, fused_sa + fused_su], atol=ATOL)
    assert COMPOUND_CLASSES[int(np.argmax(fused))] == "Sadly_Surprised"


def test_compound_stage_normalises_and_decides_per_track():
    fusion = CompoundFusion({"dyn": DFEW_LABELS})
    stage = CompoundStage(fusion, TemporalOptions(labels=COMPOUND_CLASSES, tau_s=0.0, threshold=0.2, margin=0.02))
    happy_surprise = np.array([0.45, 0.0, 0.0, 0.0, 0.45, 0.05, 0.05])  # DFEW order
    sad = np.array([0.0, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0])
    first = stage.update("t1", 0.0, {"dyn": happy_surprise})
    scores = ppa(to_abaw(happy_surprise, DFEW_LABELS))
    np.testing.assert_allclose(first.scores, scores / scores.sum(), atol=ATOL)
    assert first.label == "Happily_Surprised" and [e.kind for e in first.events] == ["onset"]
    other = stage.update("t2", 0.0, {"dyn": sad})
    assert other.label in {"Sadly_Surprised", "Sadly_Fearful", "Sadly_Angry"}
    # sad 0.9 → SS = SF = SA = 0.9 (sum 2.7): a three-way tie at 1/3 each; argmax takes the first
    assert other.label == "Sadly_Surprised" and other.confidence == pytest.approx(1 / 3, abs=ATOL)
    ended = stage.end_track("t1")
    assert [(e.kind, e.label) for e in ended] == [("offset", "Happily_Surprised")]
    with pytest.raises(ValueError, match="compound classes"):
        CompoundStage(fusion, TemporalOptions(labels=("a", "b")))
    with pytest.raises(ValueError, match="sum to 0"):
        stage.update("t3", 0.0, {"dyn": np.zeros(7)})


# --- metrics -------------------------------------------------------------------------------

def test_f1_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 3])
    # class 0: TP 1, FP 1, FN 1 → 0.5; class 1: TP 2, FP 1 → 0.8; class 2: FN 2 → 0; class 3: FP 1 → 0
    per_class = f1_per_class(y_true, y_pred)
    np.testing.assert_allclose(per_class, [0.5, 0.8, 0, 0, 0, 0, 0], atol=ATOL)
    # macro over the classes seen in labels or predictions (0-3), as sklearn's default does
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8) / 4, abs=ATOL)
    assert macro_f1(y_true, y_true) == pytest.approx(1.0, abs=ATOL)
    with pytest.raises(ValueError, match="1-D"):
        f1_per_class(y_true, y_pred[:5])


def test_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 7, 200), rng.integers(0, 5, 200)
        assert macro_f1(y_true, y_pred) == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)


# --- CLI -----------------------------------------------------------------------------------

def run_score(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.compound", "score", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


def one_hot_compound(index: int) -> list[float]:
    row = [0.1] * 7
    row[index] = 0.9
    return row


def test_cli_per_frame_compound_scores_with_labels(tmp_path):
    # video a: frames 1-4 predicted 0,0,1,1; frame 6 has no prediction (forward-filled from 4)
    # video b: frames 1-2 predicted 2, 3; columns in a shuffled order to check name matching
    order = [6, 0, 5, 1, 4, 2, 3]
    header = ["image_location"] + [COMPOUND_CLASSES[i] for i in order]
    preds = {"a/00001.jpg": 0, "a/00002.jpg": 0, "a/00003.jpg": 1, "a/00004.jpg": 1, "b/00001.jpg": 2, "b/00002.jpg": 3}
    rows = [[loc] + [one_hot_compound(c)[i] for i in order] for loc, c in preds.items()]
    pred = write_csv(tmp_path / "per_frame.csv", header, rows)
    labels = write_csv(tmp_path / "labels.csv", ["image_location", "label"],
                       [["a/00001.jpg", 0], ["a/00002.jpg", 1], ["a/00003.jpg", 1], ["a/00004.jpg", -1],
                        ["a/00006.jpg", 1], ["b/00001.jpg", 2], ["b/00002.jpg", 2]])
    out = tmp_path / "sub.txt"
    proc = run_score("--pred", str(pred), "--labels", str(labels), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    lines = out.read_text().splitlines()
    assert lines[0] == "image_location," + ",".join(COMPOUND_CLASSES)
    assert lines[1:] == ["a/00001.jpg,0", "a/00002.jpg,0", "a/00003.jpg,1", "a/00004.jpg,1", "a/00006.jpg,1",
                         "b/00001.jpg,2", "b/00002.jpg,3"]
    # scored (label -1 skipped): true 0,1,1,1,2,2 vs pred 0,0,1,1,2,3
    # F1: c0 2/3, c1 0.8, c2 2/3, c3 0 → macro over {0,1,2,3}
    assert summary["scored_frames"] == 6 and summary["frames"] == 7
    assert summary["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 0) / 4, abs=ATOL)
    assert summary["per_class_f1"]["Happily_Surprised"] == pytest.approx(0.8, abs=ATOL)
    assert summary["fusion"] == "none" and summary["input"] == "frames"


def test_cli_two_models_in_their_own_orders(tmp_path):
    header = ["image_location"] + [f"dyn:{label}" for label in DFEW_LABELS] + [f"stat:{label}" for label in STATIC_LABELS]
    dfew = [0.6, 0.0, 0.0, 0.0, 0.4, 0.0, 0.0]      # happy + surprise
    static = [0.0, 0.2, 0.4, 0.0, 0.4, 0.0, 0.0]    # Happiness 0.2, Sadness 0.4, Fear 0.4
    pred = write_csv(tmp_path / "p.csv", header, [["v/00001.jpg", *dfew, *static]])
    # uniform: H 0.4, Su 0.2, Sa 0.2, F 0.2 → HS 0.6 beats FS, SS, SF (0.4)
    proc = run_score("--pred", str(pred), "--uniform")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.abaw.txt").read_text().splitlines()[1] == "v/00001.jpg,1"
    assert json.loads(proc.stdout)["fusion"] == "uniform"
    # MHPF trusting the static model for every class: H 0.2, Sa 0.4, F 0.4 → Sadly_Fearful (0.8)
    raw = np.zeros((1, 2, 7))
    raw[0, 1] = 20.0
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps(MHPF(("dyn", "stat"), raw, np.zeros(1)).to_dict()))
    proc = run_score("--pred", str(pred), "--weights", str(weights), "-o", str(tmp_path / "m.txt"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.txt").read_text().splitlines()[1] == "v/00001.jpg,5"
    assert_one_line_error(run_score("--pred", str(pred)), "2 models", "need MHPF weights")


def test_cli_per_window_predictions_follow_the_official_segment_fusion(tmp_path):
    # a 5 s video at 10 fps (50 frames): windows 0-4 (frames 0-40) and 2-5 (20-50)
    header = ["video", "start_s", "end_s", "m:neutral", "m:anger", "m:disgust", "m:fear", "m:happiness", "m:sadness", "m:surprise"]
    rows = [["clip", 0.0, 4.0, 0, 0, 0, 0.6, 0, 0, 0.4],   # Fearfully_Surprised 1.0
            ["clip", 2.0, 5.0, 0, 0, 0, 0, 0, 0.7, 0.3]]   # Sadly_Surprised 1.0
    pred = write_csv(tmp_path / "w.csv", header, rows)
    out = tmp_path / "w.txt"
    proc = run_score("--pred", str(pred), "--fps", "10", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()[1:]
    # frames 1-20 (0-based 0-19): window 1 only → FS; 21-41: both → FS (1.0 + 0.3) / 2 = 0.65,
    # SS (0.4 + 1.0) / 2 = 0.7 → SS (2); 42-51: window 2 only → SS. Frame 51 (0-based 50) is the
    # window's inclusive end, kept because no frame list says the video has 50 frames.
    assert len(lines) == 51
    assert lines[0] == "clip/00001.jpg,0" and lines[19] == "clip/00020.jpg,0"
    assert lines[20] == "clip/00021.jpg,2" and lines[50] == "clip/00051.jpg,2"
    assert_one_line_error(run_score("--pred", str(pred)), "--fps")


@pytest.mark.parametrize(
    "content, extra, needles",
    [
        ("frame,a,b\n1,0,1\n", [], ["header must start with image_location"]),
        ("image_location,x:happy\nv/00001.jpg,1\n", [], ["lacks"]),
        ("image_location,x:happy,x:sad,x:neutral,x:angry,x:surprise,x:disgust,x:fear\nv/00001.jpg,1,0,0,0,0,0,zero\n", [], ["line 2", "'zero'"]),
        ("image_location,Fearfully_Surprised\nv/00001.jpg,1\n", [], ["compound columns"]),
        ("image_location,Fearfully_Surprised\n\nv/00001.jpg,1\n", [], ["line 2 is empty"]),
        ("video,start_s,end_s,m:neutral,m:anger,m:disgust,m:fear,m:happiness,m:sadness,m:surprise\nv,2,6,1,0,0,0,0,0,0\n",
         ["--fps", "25"], ["video v", "frames 0..49 come before the first window"]),
        ("image_location,x:happy,x:sad,x:neutral,x:angry,x:surprise,x:disgust,x:fear\nv1.jpg,1,0,0,0,0,0,0\n", [], ["not <video>/<frame number>.jpg"]),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, content, extra, needles):
    pred = tmp_path / "bad.csv"
    pred.write_text(content)
    assert_one_line_error(run_score("--pred", str(pred), *extra), *needles)


def test_cli_bad_labels_and_missing_files(tmp_path):
    header = ["image_location"] + list(COMPOUND_CLASSES)
    pred = write_csv(tmp_path / "p.csv", header, [["v/00003.jpg", *one_hot_compound(0)]])
    assert_one_line_error(run_score("--pred", str(tmp_path / "none.csv")), "cannot read")
    bad = write_csv(tmp_path / "l1.csv", ["image_location", "label"], [["v/00003.jpg", 7]])
    assert_one_line_error(run_score("--pred", str(pred), "--labels", str(bad)), "label '7'")
    early = write_csv(tmp_path / "l2.csv", ["image_location", "label"], [["v/00001.jpg", 0]])
    assert_one_line_error(run_score("--pred", str(pred), "--labels", str(early)), "before the first prediction")
    missing = write_csv(tmp_path / "l3.csv", ["image_location", "label"], [["w/00003.jpg", 0]])
    assert_one_line_error(run_score("--pred", str(pred), "--labels", str(missing)), "'w' has no predictions")
    assert_one_line_error(run_score("--pred", str(pred), "--uniform"), "already holds compound scores")
    usage = run_score()
    assert usage.returncode == 2 and "--pred" in usage.stderr and "Traceback" not in usage.stderr
