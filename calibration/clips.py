"""Calibration clips from a folder of videos, cut exactly as the runtime cuts them.

Each video goes through the runtime's own torch-free pieces: a VideoSource decodes it (PyAV,
stream timestamps), a StreamPipeline in face mode ``full`` samples every ``frame_stride``-th
frame into a ClipBuffer and emits a clip every ``hop`` samples (the runtime's default hop is
the clip length), and ModelSpec.model_input makes the model input (normalised clips, or the
uint8 frames themselves for a graph that normalises inside). So the ranges the quantiser sees
are those of the inputs the deployed engine will get.

The folder is split by video, not by clip: the last quarter of the videos (sorted by path, at
least one) is held out for the accuracy report, so no held-out clip shares a video with a
calibration clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.spec import ModelSpec
from runtime.records import EventKind
from runtime.sources import SourceOptions, VideoSource
from runtime.streams import StreamOptions, StreamPipeline

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg")
# A calibration set should be clean: a stream that failed, lost packets or ended early is refused.
BROKEN = (EventKind.FAILED, EventKind.DECODE_ERROR, EventKind.TRUNCATED)


@dataclass(frozen=True)
class ClipSet:
    """Model inputs (N, 3, T, H, W) float32, or (N, T, H, W, 3) uint8 for a uint8-input graph,
    and the videos they came from."""

    clips: np.ndarray
    videos: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.clips)


@dataclass(frozen=True)
class CalibrationClips:
    """The two disjoint sets: for the quantiser's ranges, and held out for the accuracy cost."""

    calibration: ClipSet
    held_out: ClipSet
    videos_without_clips: tuple[Path, ...]  # shorter than one clip (frames · frame_stride)


def video_files(folder: str | Path) -> list[Path]:
    """Video files under folder (recursively, sorted); ValueError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"calibration folder {folder} does not exist or is not a directory")
    videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"calibration folder {folder} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    return videos


def cut_clips(video: str | Path, spec: ModelSpec, hop: int | None = None, limit: int | None = None) -> list[np.ndarray]:
    """The first ``limit`` (default all) model inputs (ModelSpec.model_input) the runtime makes
    of one video file, in order. ValueError naming the file when it cannot be opened or decoded cleanly."""
    if spec.layout != "NCTHW":
        raise ValueError(f"calibration cuts clips for NCTHW clip models; this model's layout is {spec.layout}")
    clips, broken = [], []

    def keep(clip) -> None:
        if limit is None or len(clips) < limit:
            clips.append(clip.data)

    def on_source_event(kind: EventKind, cause: str) -> None:
        if kind in BROKEN:
            broken.append(cause)

    # Pipeline events (a GAP dropping a partial clip) are the runtime's normal behaviour.
    pipeline = StreamPipeline(str(video), spec, hop or spec.frames, StreamOptions(faces="full"), keep,
                              lambda *_: None, lambda *_: None)
    source = VideoSource(str(video), SourceOptions(), pipeline.feed, on_source_event)
    pipeline.clock = source.clock
    source.start()
    source.join()
    pipeline.end()
    if broken:
        raise ValueError(f"calibration video {video} is not decodable: {broken[0]}")
    return clips


def calibration_clips(folder: str | Path, spec: ModelSpec, limit: int, held_out_limit: int | None = None) -> CalibrationClips:
    """Up to ``limit`` calibration clips and up to ``held_out_limit`` (default: limit) held-out
    clips from the videos under folder, taken round-robin across videos so every video counts."""
    if limit < 1:
        raise ValueError(f"--calib-clips must be ≥ 1, got {limit}")
    videos = video_files(folder)
    if len(videos) < 2:
        raise ValueError(
            f"calibration folder {folder} holds one video ({videos[0].name}); it needs at least two: "
            f"calibration clips and held-out clips for the accuracy report come from different videos"
        )
    held = max(1, len(videos) // 4)
    held_out_limit = held_out_limit or limit
    for_calibration, for_held_out = _spread(videos[:-held], limit), _spread(videos[-held:], held_out_limit)
    cut = {video: cut_clips(video, spec, limit=limit) for video in for_calibration + for_held_out}
    empty = tuple(video for video, clips in cut.items() if not clips)
    calibration = _take(cut, for_calibration, limit)
    held_out = _take(cut, for_held_out, held_out_limit)
    for name, part in (("calibration", calibration), ("held-out", held_out)):
        if not len(part):
            needed = spec.frames * spec.frame_stride
            raise ValueError(f"the {name} videos under {folder} are all shorter than one clip ({needed} frames at stride {spec.frame_stride})")
    return CalibrationClips(calibration, held_out, empty)


def _spread(videos: Sequence[Path], count: int) -> list[Path]:
    """At most count videos, evenly spaced over the sorted list: a big dataset is sampled
    across its whole range, and no more videos are decoded than clips are wanted."""
    if len(videos) <= count:
        return list(videos)
    return [videos[i] for i in np.linspace(0, len(videos) - 1, count).round().astype(int)]


def _take(cut: dict[Path, list[np.ndarray]], videos: Sequence[Path], limit: int) -> ClipSet:
    """Round-robin over the videos' clips: the first clip of each, then the second, ..."""
    taken, sources = [], []
    for round_ in range(max((len(cut[v]) for v in videos), default=0)):
        for video in videos:
            if round_ < len(cut[video]) and len(taken) < limit:
                taken.append(cut[video][round_])
                sources.append(video)
    clips = np.stack(taken) if taken else np.zeros((0,), np.float32)
    return ClipSet(clips, tuple(dict.fromkeys(sources)))
