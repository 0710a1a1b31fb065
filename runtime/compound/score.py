"""Offline scoring: per-frame or per-window predictions → ABAW submission file (+ F1 with labels).

    python -m runtime.compound score --pred per_frame.csv [--labels labels.csv] [-o out.txt]

Prediction CSV, one of two layouts (the header decides):

* per frame:  image_location,<scores...>          e.g. clip01/00001.jpg,...
* per window: video,start_s,end_s,<scores...>     (needs --fps; spread onto frames by
  segments.frames_from_windows, frame numbers 1-based as in ABAW)

and one of two kinds of score columns:

* the seven compound classes (Fearfully_Surprised, ... or "fearfully surprised", any order);
* basic-emotion probabilities per model as <model>:<label> (e.g. ifdd:happy, static:Anger), in
  any label order; several models need --weights (MHPF JSON) or --uniform (plain mean).

Labels CSV: image_location,<label> with the compound index 0-6 (-1: not scored), the ABAW
submission layout. Its frame list decides the rows written, as the ABAW test list does:
frames without a prediction take the last earlier prediction of their video (forward fill).

The output is the ABAW layout: a header image_location,Fearfully_Surprised,...,Sadly_Angry
and one `image_location,index` row per frame. A JSON summary (F1 included) goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from .fusion import MHPF
from .labels import COMPOUND_CLASSES
from .pipeline import CompoundFusion
from .segments import frames_from_windows

_COMPOUND_KEYS = {name.lower(): i for i, name in enumerate(COMPOUND_CLASSES)}


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(COMPOUND_CLASSES)) -> np.ndarray:
    """F1 of each class, 2·TP / (2·TP + FP + FN), 0 where the class is never true nor predicted."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} must be two 1-D arrays of one length")
    classes = np.arange(num_classes)[:, None]
    tp = ((y_true == classes) & (y_pred == classes)).sum(axis=1)
    fp = ((y_true != classes) & (y_pred == classes)).sum(axis=1)
    fn = ((y_true == classes) & (y_pred != classes)).sum(axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = len(COMPOUND_CLASSES)) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions.

    This is what the official code computes (sklearn f1_score, average="macro",
    zero_division=0): a class absent from both does not count, one absent from the labels but
    predicted counts as 0.
    """
    per_class = f1_per_class(y_true, y_pred, num_classes)
    present = np.union1d(np.asarray(y_true), np.asarray(y_pred)).astype(int)
    return float(per_class[present].mean()) if present.size else 0.0


def _split_location(location: str, where: str) -> tuple[str, int]:
    video, _, name = location.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    if not video or not stem.isdigit():
        raise ValueError(f"{where}: image_location {location!r} is not <video>/<frame number>.jpg")
    return video, int(stem)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err
    while rows and not rows[-1]:
        rows.pop()
    blank = next((i for i, row in enumerate(rows) if not row), None)
    if blank is not None:
        raise ValueError(f"{path} line {blank + 1} is empty")
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header and at least one row")
    return [h.strip() for h in rows[0]], rows[1:]


def _float_matrix(rows: list[list[str]], columns: list[int], header: list[str], path: Path) -> np.ndarray:
    out = np.empty((len(rows), len(columns)))
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{path} line {r + 2}: {len(row)} fields, the header has {len(header)}")
        for c, col in enumerate(columns):
            try:
                out[r, c] = float(row[col])
            except ValueError as err:
                raise ValueError(f"{path} line {r + 2}: {header[col]} = {row[col]!r} is not a number") from err
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{path}: score columns hold non-finite values")
    return out


def _compound_scores(header: list[str], rows: list[list[str]], first: int, path: Path,
                     weights: Path | None, uniform: bool, ignore: list[str]) -> tuple[np.ndarray, str]:
    """Compound scores (rows, 7) from the score columns header[first:], and the fusion used."""
    names = header[first:]
    keys = [n.lower().replace(" ", "_") for n in names]
    if all(k in _COMPOUND_KEYS for k in keys):
        if sorted(_COMPOUND_KEYS[k] for k in keys) != list(range(len(COMPOUND_CLASSES))):
            raise ValueError(f"{path}: compound columns {names} must name each of {', '.join(COMPOUND_CLASSES)} once")
        if weights or uniform or ignore:
            raise ValueError(f"{path} already holds compound scores; --weights/--uniform/--ignore-label apply to <model>:<label> columns")
        matrix = _float_matrix(rows, list(range(first, len(header))), header, path)
        return matrix[:, np.argsort([_COMPOUND_KEYS[k] for k in keys])], "none"
    if not all(":" in n for n in names):
        raise ValueError(f"{path}: score columns {names} are neither the seven compound classes nor <model>:<label> columns")
    model_labels: dict[str, list[str]] = {}
    model_columns: dict[str, list[int]] = {}
    for offset, name in enumerate(names):
        model, _, label = name.partition(":")
        model_labels.setdefault(model, []).append(label)
        model_columns.setdefault(model, []).append(offset)
    if weights and uniform:
        raise ValueError("give either --weights or --uniform, not both")
    fusion = MHPF.load(weights) if weights else MHPF.uniform(list(model_labels)) if uniform else None
    pipeline = CompoundFusion(model_labels, fusion, ignore)
    matrix = _float_matrix(rows, list(range(first, len(header))), header, path)
    probs = {m: matrix[:, offsets] for m, offsets in model_columns.items()}
    return pipeline.compound(probs), "mhpf" if weights else "uniform" if uniform else "single model"


def read_predictions(path: Path, fps: float | None, weights: Path | None = None, uniform: bool = False,
                     ignore: list[str] = ()) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, list[str]]], dict]:
    """{video: (frame numbers ascending, compound scores (N, 7), image_locations)} and input facts."""
    header, rows = _read_csv(path)
    if header[0] == "image_location":
        if fps is not None:
            raise ValueError(f"{path} holds per-frame predictions; --fps applies to per-window ones")
        scores, fusion = _compound_scores(header, rows, 1, path, weights, uniform, ignore)
        grouped: dict[str, list[tuple[int, int]]] = {}
        seen = set()
        for r, row in enumerate(rows):
            if row[0] in seen:
                raise ValueError(f"{path} line {r + 2}: {row[0]} appears twice")
            seen.add(row[0])
            video, frame = _split_location(row[0], f"{path} line {r + 2}")
            grouped.setdefault(video, []).append((frame, r))
        videos = {}
        for video, items in grouped.items():
            items.sort()
            index = [r for _, r in items]
            videos[video] = (np.array([f for f, _ in items]), scores[index], [rows[r][0] for r in index])
        return videos, {"input": "frames", "fusion": fusion}
    if header[:3] == ["video", "start_s", "end_s"]:
        if fps is None:
            raise ValueError(f"{path} holds per-window predictions: give the video frame rate with --fps")
        scores, fusion = _compound_scores(header, rows, 3, path, weights, uniform, ignore)
        spans = _float_matrix(rows, [1, 2], header, path)
        videos = {}
        for video in dict.fromkeys(row[0] for row in rows):
            index = [r for r, row in enumerate(rows) if row[0] == video]
            try:
                frames = frames_from_windows(scores[index], [tuple(s) for s in spans[index]], fps)
            except ValueError as err:
                raise ValueError(f"{path}, video {video}: {err}") from err
            numbers = np.arange(1, len(frames) + 1)
            videos[video] = (numbers, frames, [f"{video}/{n:05d}.jpg" for n in numbers])
        return videos, {"input": "windows", "fusion": fusion}
    raise ValueError(f"{path}: the header must start with image_location (per frame) or video,start_s,end_s (per window), got {header[:3]}")


def read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    header, rows = _read_csv(path)
    if header[0] != "image_location" or len(header) < 2:
        raise ValueError(f"{path}: the header must be image_location,<label column>, got {header}")
    labels = np.empty(len(rows), dtype=int)
    for r, row in enumerate(rows):
        value = row[1].strip() if len(row) > 1 else ""
        if value not in {str(i) for i in range(-1, len(COMPOUND_CLASSES))}:
            raise ValueError(f"{path} line {r + 2}: label {value!r} is not a compound index 0-{len(COMPOUND_CLASSES) - 1} or -1")
        labels[r] = int(value)
    return [row[0] for row in rows], labels


def predictions_for(videos: dict, locations: list[str], where: Path) -> np.ndarray:
    """Predicted class per listed frame: the frame's own prediction, else its video's last earlier one."""
    out = np.empty(len(locations), dtype=int)
    for i, location in enumerate(locations):
        video, frame = _split_location(location, f"{where} line {i + 2}")
        if video not in videos:
            raise ValueError(f"{where}: video {video!r} has no predictions")
        frames, scores, _ = videos[video]
        k = np.searchsorted(frames, frame, side="right") - 1
        if k < 0:
            raise ValueError(f"{where}: {location} comes before the first prediction of {video!r} (frame {frames[0]}); nothing to forward-fill from")
        out[i] = int(np.argmax(scores[k]))
    return out


def write_abaw(path: Path, locations: list[str], classes: np.ndarray) -> None:
    lines = ["image_location," + ",".join(COMPOUND_CLASSES)]
    lines += [f"{loc},{int(c)}" for loc, c in zip(locations, classes)]
    path.write_text("\n".join(lines) + "\n")


def score(pred: Path, labels: Path | None, output: Path, fps: float | None = None, weights: Path | None = None,
          uniform: bool = False, ignore: list[str] = ()) -> dict:
    videos, facts = read_predictions(pred, fps, weights, uniform, ignore)
    summary = {"predictions": str(output), **facts}
    if labels is None:
        locations = [loc for _, _, locs in videos.values() for loc in locs]
        classes = np.concatenate([np.argmax(s, axis=1) for _, s, _ in videos.values()])
    else:
        locations, truth = read_labels(labels)
        classes = predictions_for(videos, locations, labels)
        scored = truth >= 0
        per_class = f1_per_class(truth[scored], classes[scored])
        summary.update(
            scored_frames=int(scored.sum()),
            macro_f1=macro_f1(truth[scored], classes[scored]),
            per_class_f1=dict(zip(COMPOUND_CLASSES, per_class.tolist())),
        )
    write_abaw(output, locations, classes)
    summary["frames"] = len(locations)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.compound", description="Compound-expression tools (Team RAS ABAW 9 fusion).")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("score", help="write ABAW predictions and, given labels, macro-F1 and per-class F1")
    cmd.add_argument("--pred", type=Path, required=True, help="per-frame or per-window prediction CSV")
    cmd.add_argument("--labels", type=Path, help="ABAW-layout labels: image_location,<compound index or -1>")
    cmd.add_argument("-o", "--output", type=Path, help="ABAW prediction file (default: <pred stem>.abaw.txt beside --pred)")
    cmd.add_argument("--fps", type=float, help="frame rate, for per-window predictions")
    cmd.add_argument("--weights", type=Path, help="MHPF weights JSON for several <model>:<label> models")
    cmd.add_argument("--uniform", action="store_true", help="fuse several models by their plain mean")
    cmd.add_argument("--ignore-label", action="append", default=[], metavar="NAME", help="a model class to drop (e.g. other); repeatable")
    args = parser.parse_args(argv)
    output = args.output or args.pred.with_suffix(".abaw.txt")
    try:
        summary = score(args.pred, args.labels, output, args.fps, args.weights, args.uniform, args.ignore_label)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
