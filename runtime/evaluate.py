"""Video-level predictions and WAR/UAR of an exported model, as the papers' test scripts compute them.

    python -m runtime.evaluate MODEL DATA --labels labels.csv [--json] [-o report/] [--streaming]

MODEL is a bundle folder or an ONNX file from ``python -m export.onnx``; DATA a folder of
videos, frame folders or still images (runtime.videoset says how videos and labels match).
Each video is cut by its family's official test rule (runtime.protocol), resized as Pillow
does (runtime.resize), normalised per the ModelSpec, and the clip outputs are merged per
spec.clip_merge; clips of several videos share the backend's batches. stdout gets one line per
video (JSON with --json), then a summary line with WAR, UAR, per-class recall and the confusion
matrix; -o also writes report.md and confusion.png. --streaming also runs every video through
the live runtime (runtime.api) and reports how often its final labels agree with the
evaluator's (runtime.streaming). Progress and problems go to stderr, one line each; a video
that cannot be read is listed and the rest is scored. Exit status: 0, 1 when no video could
be scored, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.model import ModelSource, load_model_source
from runtime.numeric import softmax
from runtime.protocol import ClipPlan, Protocol, protocol_for
from runtime.resize import resize_for
from runtime.scoring import Scores, score, write_report
from runtime.videoset import (
    Frames,
    UnreadableVideo,
    VideoEntry,
    find_videos,
    read_labels,
)

DEFAULT_BATCH = 8  # clips per backend call; see benchmarks/bench_evaluate.py


@dataclass(frozen=True)
class VideoResult:
    """One video's merged verdict. label: the true class index (None when unknown);
    logits: the mean logits, for families that merge logits; clips: the cuts, in order."""

    video: str
    label: int | None
    prediction: int
    probabilities: np.ndarray
    logits: np.ndarray | None
    clips: tuple[ClipPlan, ...]
    frames: int

    def to_json_dict(self, labels: tuple[str, ...]) -> dict:
        line = {
            "video": self.video,
            "label": None if self.label is None else labels[self.label],
            "prediction": labels[self.prediction],
            "probabilities": {name: round(float(p), 6) for name, p in zip(labels, self.probabilities)},
        }
        if self.logits is not None:
            line["logits"] = {name: round(float(v), 6) for name, v in zip(labels, self.logits)}
        line["frames"] = self.frames
        line["clips"] = [clip.to_json_dict() for clip in self.clips]
        return line


@dataclass(frozen=True)
class Unreadable:
    video: str
    error: str


def merge(logits: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(clips, classes) outputs → (probabilities, mean logits or None), in float64: "logits"
    averages the logits (IFDD's tools/test.py), "softmax" the per-clip softmax (S4D's merge)."""
    logits = np.asarray(logits, np.float64)
    if how == "logits":
        mean = logits.mean(axis=0)
        return softmax(mean), mean
    return softmax(logits, axis=-1).mean(axis=0), None


@dataclass
class _Video:
    """A video between cutting and merging: its resized frames and the outputs so far."""

    entry: VideoEntry
    label: int | None
    frames: int
    plans: tuple[ClipPlan, ...]
    images: dict[int, np.ndarray]  # source index → model-sized uint8 frame
    outputs: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict)

    @property
    def keys(self) -> list[tuple[int, ...]]:
        """Distinct clips (S4D's two segments coincide in videos under 64 frames)."""
        return list(dict.fromkeys(plan.indices for plan in self.plans))

    @property
    def done(self) -> bool:
        return len(self.outputs) == len(self.keys)


class Evaluator:
    """Scores videos one by one in order, while their clips go to the backend in shared batches."""

    def __init__(self, model: ModelSource, backend: Backend, batch: int = DEFAULT_BATCH, protocol: Protocol | None = None):
        if batch < 1:
            raise ValueError(f"batch must be ≥ 1, got {batch}")
        if model.spec.landmarks:
            raise ValueError(f"{model.path} also takes landmark renderings (spec landmarks); the evaluator feeds clips only: "
                             f"run it through the runtime (python -m runtime … --faces detect) or evaluate the base variant")
        self.model, self.spec, self.backend = model, model.spec, backend
        self.protocol = protocol or protocol_for(model.spec)
        self.batch = min(batch, backend.max_batch or batch)
        self.clips_run = 0
        self.backend_seconds = 0.0

    def run(self, videos: Iterable[tuple[VideoEntry, int | None]]) -> Iterator[VideoResult | Unreadable]:
        """(video, true class index or None) pairs → a result or an Unreadable for each, in order."""
        pending: deque[_Video | Unreadable] = deque()
        queue: list[tuple[_Video, tuple[int, ...]]] = []
        for entry, label in videos:
            try:
                video = self.cut(entry, label)
            except UnreadableVideo as err:
                pending.append(Unreadable(video=entry.name, error=str(err)))
            else:
                pending.append(video)
                queue += [(video, key) for key in video.keys]
            while len(queue) >= self.batch:
                self._infer(queue[: self.batch])
                del queue[: self.batch]
            yield from self._finished(pending)
        if queue:
            self._infer(queue)
        yield from self._finished(pending)

    def cut(self, entry: VideoEntry, label: int | None) -> _Video:
        """Decode the frames the protocol's clips use and resize them to the model's input."""
        frames = Frames(entry)
        plans = tuple(self.protocol.clips(len(frames)))
        needed = sorted({i for plan in plans for i in plan.indices})
        images = {i: resize_for(frames.rgb(i), self.spec) for i in needed}
        return _Video(entry=entry, label=label, frames=len(frames), plans=plans, images=images)

    def _input(self, video: _Video, key: tuple[int, ...]) -> np.ndarray:
        return self.spec.model_input(np.stack([video.images[i] for i in key]))  # a per-frame model's key is one frame

    def _infer(self, items: list[tuple[_Video, tuple[int, ...]]]) -> None:
        batch = np.stack([self._input(video, key) for video, key in items]).astype(self.backend.input_dtype, copy=False)
        start = time.perf_counter()
        logits = np.asarray(self.backend.run(batch))
        self.backend_seconds += time.perf_counter() - start
        self.clips_run += len(items)
        for (video, key), row in zip(items, logits):
            video.outputs[key] = row

    def _finished(self, pending: deque) -> Iterator[VideoResult | Unreadable]:
        while pending and (isinstance(pending[0], Unreadable) or pending[0].done):
            item = pending.popleft()
            yield item if isinstance(item, Unreadable) else self._merged(item)

    def _merged(self, video: _Video) -> VideoResult:
        outputs = np.stack([video.outputs[plan.indices] for plan in video.plans])
        probabilities, logits = merge(outputs, self.protocol.merge)
        return VideoResult(video=video.entry.name, label=video.label, prediction=int(np.argmax(probabilities)),
                           probabilities=probabilities, logits=logits, clips=video.plans, frames=video.frames)


@dataclass
class Selection:
    """The labelled videos of DATA, and a line for each one that cannot be scored."""

    videos: list[tuple[VideoEntry, int]]
    problems: list[str]
    unlabelled: int = 0


def select(data: str, labels_csv: str, classes: tuple[str, ...]) -> Selection:
    """DATA's videos that labels.csv names; the others are counted, missing ones listed."""
    entries = find_videos(data)
    if not entries:
        raise ValueError(f"DATA {data} holds no videos (.mp4, .avi, ...), frame folders or images")
    table = read_labels(labels_csv, classes)
    found = {entry.key for entry in entries}
    problems = table.problems + [f"{labels_csv}: {key!r} is not in {data}" for key in table.labels if key not in found]
    videos = [(entry, table.labels[entry.key]) for entry in entries if entry.key in table.labels]
    return Selection(videos=videos, problems=problems, unlabelled=len(entries) - len(videos))


class Progress:
    """A progress bar on stderr (on a terminal; elsewhere a line per tenth), and problem lines."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream, self.start = total, stream or sys.stderr, time.perf_counter()
        self.tty = self.stream.isatty()
        self._shown = -1

    def update(self, done: int) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * (30 * done // max(self.total, 1))
        text = f"[{bar:<30}] {done}/{self.total} videos, {rate:.2f} videos/s"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done == self.total else ""))
        elif 10 * done // max(self.total, 1) > self._shown:
            self._shown = 10 * done // max(self.total, 1)
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, line: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()


def summary(scores: Scores, unreadable: list[Unreadable], evaluator: Evaluator, seconds: float) -> dict:
    """The summary line: scores, what could not be read, and throughput."""
    line = {"type": "summary", **scores.to_json_dict()}
    line["unreadable"] = [{"video": u.video, "error": u.error} for u in unreadable]
    line["clips"] = evaluator.clips_run
    line["seconds"] = round(seconds, 3)
    line["videos_per_s"] = round(scores.videos / seconds, 3) if seconds > 0 else None
    return _finite(line)


def _finite(value):
    """NaN (no video scored) as null, so every line is valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _text_line(result: VideoResult, labels: tuple[str, ...]) -> str:
    truth = "?" if result.label is None else labels[result.label]
    mark = "" if result.label is None else (" ok" if result.label == result.prediction else " WRONG")
    starts = ",".join(str(c.start) for c in result.clips)
    return (f"{result.video}: {labels[result.prediction]} ({result.probabilities[result.prediction]:.3f}), "
            f"truth {truth}{mark}; {result.frames} frames, clips at {starts}")


def _text_summary(line: dict) -> str:
    if line["war"] is None:
        return "no video was scored"
    recall = ", ".join(f"{name} {100 * r:.1f} %" for name, r in line["recall"].items())
    text = f"WAR {100 * line['war']:.2f} %, UAR {100 * line['uar']:.2f} % over {line['videos']} videos ({recall})"
    if line["unreadable"]:
        text += f"; unreadable: {', '.join(u['video'] for u in line['unreadable'])}"
    return text


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model = load_model_source(args.model)
        selection = select(args.data, args.labels, model.spec.labels)
        backend = open_backend(model, args.backend, _providers(args), args.threads)
        evaluator = Evaluator(model, backend, batch=args.batch)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress = Progress(len(selection.videos))
    _preamble(progress, model, backend, evaluator, selection)
    try:
        outcomes = _streams(args, selection, progress) if args.streaming else None
        line = _evaluate(args, evaluator, selection, progress, outcomes)
    finally:
        backend.close()
    return 0 if line["videos"] else 1


def _providers(args) -> tuple[str, ...] | None:
    return tuple(args.providers.split(",")) if args.providers else None


def _preamble(progress: Progress, model: ModelSource, backend: Backend, evaluator: Evaluator, selection: Selection) -> None:
    p = evaluator.protocol
    progress.note(f"model: {model.path} ({model.family}), backend {backend.describe()}, batch {evaluator.batch}")
    progress.note(f"protocol: {p.rule} cut, {p.frames} frames every {p.stride}, merge {p.merge}, "
                  f"resize {model.spec.resize} to {model.spec.height}×{model.spec.width}")
    if model.untrained:
        progress.note("note: UNTRAINED demo weights: the scores are meaningless")
    for problem in selection.problems:
        progress.note(problem)
    if selection.unlabelled:
        progress.note(f"{selection.unlabelled} videos of DATA have no row in the labels file and are not scored")


def _streams(args, selection: Selection, progress: Progress) -> dict:
    from runtime.api import RuntimeOptions
    from runtime.streaming import run_streams

    progress.note(f"live runtime: {len(selection.videos)} videos as streams (hop {args.hop or 'one clip'})")
    options = RuntimeOptions(backend=args.backend, providers=_providers(args), threads=args.threads,
                             max_batch=args.batch, hop=args.hop)
    return run_streams(args.model, [entry for entry, _ in selection.videos], options, fps=args.fps)


def _evaluate(args, evaluator: Evaluator, selection: Selection, progress: Progress, outcomes: dict | None) -> dict:
    labels = evaluator.spec.labels
    start, results, unreadable = time.perf_counter(), [], []
    for done, item in enumerate(evaluator.run(selection.videos), start=1):
        if isinstance(item, Unreadable):
            unreadable.append(item)
            progress.note(f"unreadable: {item.error}")
        else:
            results.append(item)
            _print_video(args.json, item, labels, outcomes)
        progress.update(done)
    scores = score([r.label for r in results], [r.prediction for r in results], labels)
    line = summary(scores, unreadable, evaluator, time.perf_counter() - start)
    extra = ""
    if outcomes is not None:
        from runtime.streaming import agreement

        line["streaming"] = agreement({r.video: labels[r.prediction] for r in results}, outcomes, args.hop or evaluator.spec.frames)
        extra = _streaming_markdown(line["streaming"])
    print(json.dumps(line) if args.json else _text_summary(line), flush=True)
    if args.output:
        title = f"{evaluator.model.path.name}: {evaluator.protocol.rule} protocol"
        for note in write_report(args.output, scores, title, extra):
            progress.note(note)
    return line


def _print_video(as_json: bool, result: VideoResult, labels: tuple[str, ...], outcomes: dict | None) -> None:
    outcome = None if outcomes is None else outcomes.get(result.video)
    if as_json:
        line = result.to_json_dict(labels)
        if outcome is not None:
            line["stream"] = outcome.to_json_dict()
        print(json.dumps(line), flush=True)
        return
    text = _text_line(result, labels)
    if outcome is not None:
        text += f"; live: {outcome.smoothed_label} (last clip {outcome.label})"
    print(text, flush=True)


def _streaming_markdown(agree: dict) -> str:
    if not agree["videos"]:
        return ""
    return (f"\nLive runtime (hop {agree['hop']}) against the evaluator over {agree['videos']} videos: final smoothed "
            f"label agrees for {agree['agree_smoothed']} ({100 * agree['rate_smoothed']:.1f} %), last clip's label "
            f"for {agree['agree_last_clip']} ({100 * agree['rate_last_clip']:.1f} %).\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="bundle folder or .onnx file with dfer metadata")
    parser.add_argument("data", help="folder of videos, frame folders or images")
    parser.add_argument("--labels", required=True, help="CSV of video,label (class names or 1-based indices)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    parser.add_argument("-o", "--output", help="folder for report.md and confusion.png")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="clips per backend call (capped by the backend)")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    parser.add_argument("--providers", help="ONNX Runtime providers, e.g. cuda,cpu")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    parser.add_argument("--streaming", action="store_true", help="also run the live runtime and report label agreement")
    parser.add_argument("--hop", type=int, help="--streaming: samples between live clips (default: one clip)")
    parser.add_argument("--fps", type=float, default=25.0, help="--streaming: frame rate of pushed frame folders")
    return parser


if __name__ == "__main__":
    sys.exit(main())
