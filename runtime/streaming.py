"""The same videos through the live runtime, to see how often its final label is the evaluator's.

The live runtime (runtime.api) differs from the official protocol on purpose: it cuts clips
as frames arrive (every ``hop`` samples, from the first frame), resizes with swscale's bilinear,
scores each clip alone and smooths the decisions over time (EMA, threshold, hysteresis), so a
track may end 'uncertain'. A video file is decoded by the runtime itself; frame folders and
stills are pushed frame by frame at ``fps``. Streams run a few at a time in one Runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.api import Runtime, RuntimeOptions
from runtime.batcher import QueuePolicy
from runtime.records import Result
from runtime.streams import StreamOptions
from runtime.videoset import Frames, UnreadableVideo, VideoEntry


@dataclass(frozen=True)
class StreamOutcome:
    """A video's last live result: its smoothed decision and its own arg-max (None: no result,
    e.g. a video shorter than one clip), and how many clip results it gave."""

    smoothed_label: str | None
    label: str | None
    results: int

    def to_json_dict(self) -> dict:
        return {"smoothed_label": self.smoothed_label, "label": self.label, "results": self.results}


def run_streams(model: str | Path, videos: Sequence[VideoEntry], options: RuntimeOptions | None = None,
                fps: float = 25.0, at_once: int = 4) -> dict[str, StreamOutcome]:
    """Each video as one stream of the live runtime; its outcome by video name."""
    last: dict[str, Result] = {}
    counts = {video.name: 0 for video in videos}
    lock = threading.Lock()

    def keep(result: Result) -> None:
        with lock:
            counts[result.stream_id] += 1
            if result.stream_id not in last or result.clip_index > last[result.stream_id].clip_index:
                last[result.stream_id] = result

    with Runtime(model, options or RuntimeOptions(), on_result=keep) as runtime:
        for start in range(0, len(videos), at_once):
            for video in videos[start : start + at_once]:
                _add(runtime, video, fps)
            runtime.wait()
    return {name: _outcome(last.get(name), count) for name, count in counts.items()}


def _add(runtime: Runtime, video: VideoEntry, fps: float) -> None:
    if video.kind == "video":
        runtime.add_stream(str(video.path), stream_id=video.name)
        return
    try:
        frames = Frames(video)
        images = [frames.rgb(i) for i in range(len(frames))]
    except UnreadableVideo:
        return  # the evaluator lists it; the live runtime has nothing to run
    stream = runtime.add_push_stream(fps=fps, stream_id=video.name, options=StreamOptions(queue_policy=QueuePolicy.BLOCK))
    for index, image in enumerate(images):
        runtime.push_frame(stream, image, index / fps)
    runtime.remove_stream(stream)


def _outcome(result: Result | None, count: int) -> StreamOutcome:
    if result is None:
        return StreamOutcome(smoothed_label=None, label=None, results=0)
    return StreamOutcome(smoothed_label=result.smoothed_label, label=result.label, results=count)


def agreement(predictions: dict[str, str], outcomes: dict[str, StreamOutcome], hop: int) -> dict:
    """How often the live runtime's final labels equal the evaluator's prediction."""
    compared = [name for name in predictions if name in outcomes]
    smoothed = sum(outcomes[n].smoothed_label == predictions[n] for n in compared)
    last_clip = sum(outcomes[n].label == predictions[n] for n in compared)
    return {
        "videos": len(compared),
        "hop": hop,
        "agree_smoothed": smoothed,
        "agree_last_clip": last_clip,
        "rate_smoothed": smoothed / len(compared) if compared else None,
        "rate_last_clip": last_clip / len(compared) if compared else None,
        "no_result": [n for n in compared if outcomes[n].results == 0],
        "uncertain": [n for n in compared if outcomes[n].smoothed_label == "uncertain"],
    }
