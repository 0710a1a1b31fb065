"""A labelled test set on disk: which videos a folder holds, their frames, their true labels.

DATA holds video files, frame folders (DFEW's ``clip_224x224_16f`` layout: one folder of JPEGs
per video) and still images (a one-frame video, as S4D's loader treats image samples). A
video's name is its file or folder name without the suffix; names that are numbers compare
as numbers, so DFEW's label ``2`` finds folder ``00002``.

labels.csv: ``video,label`` rows (a header row whose label column reads ``label`` is skipped,
so DFEW's official split files work as they are). A label is a class name of the model
(case-insensitive) or, when it is all digits, the dataset's 1-based class index (DFEW: 1 happy
… 7 fear; 0 is DFEW's "not single-labelled").
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from runtime.images import IMAGE_SUFFIXES, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".ts", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv")


class UnreadableVideo(ValueError):
    """A video that cannot be decoded (or a frame folder without frames); one line says why."""


@dataclass(frozen=True)
class VideoEntry:
    """One video of DATA: kind is "video" (a file), "frames" (a folder) or "image" (a still)."""

    name: str
    path: Path
    kind: str

    @property
    def key(self) -> str:
        return video_key(self.name)


def video_key(name: str) -> str:
    """How a video is matched with its label: numbers as numbers ("00002" is "2")."""
    name = name.strip()
    return str(int(name)) if name.isdigit() else name


def natural_key(path: Path) -> tuple:
    """Sort key putting frame 2 before frame 10 (IFDD sorts frames by their number)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def find_videos(folder: str | Path) -> list[VideoEntry]:
    """The videos, frame folders and images directly in folder, by name; other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"DATA {folder} is no folder")
    entries = []
    for path in sorted(folder.iterdir(), key=natural_key):
        suffix = path.suffix.lower()
        if path.is_dir():
            entries.append(VideoEntry(name=path.name, path=path, kind="frames"))
        elif suffix in VIDEO_SUFFIXES:
            entries.append(VideoEntry(name=path.stem, path=path, kind="video"))
        elif suffix in IMAGE_SUFFIXES:
            entries.append(VideoEntry(name=path.stem, path=path, kind="image"))
    return entries


class Frames:
    """A video's frames, converted to RGB only when asked for: a frame folder decodes just the
    files a protocol's clips use (S4D: every 4th); a video file is decoded once to count its
    frames, and they stay as decoded pictures until then."""

    def __init__(self, entry: VideoEntry):
        self.entry = entry
        self._items = self._open(entry)
        if not self._items:
            what = "no image files" if entry.kind == "frames" else "no video frames"
            raise UnreadableVideo(f"{entry.path}: {what}")

    def __len__(self) -> int:
        return len(self._items)

    def rgb(self, index: int) -> np.ndarray:
        item = self._items[index]
        try:
            return read_image(item) if isinstance(item, Path) else item.to_ndarray(format="rgb24")
        except (av.FFmpegError, OSError) as err:
            raise UnreadableVideo(f"{item if isinstance(item, Path) else self.entry.path}: {err}") from err

    @staticmethod
    def _open(entry: VideoEntry) -> list:
        if entry.kind == "image":
            return [entry.path]
        if entry.kind == "frames":
            files = [p for p in entry.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            return sorted(files, key=natural_key)
        try:
            with av.open(str(entry.path)) as container:
                return list(container.decode(video=0))
        except (av.FFmpegError, OSError, IndexError) as err:  # IndexError: no video stream
            raise UnreadableVideo(f"{entry.path}: {err}") from err


@dataclass
class LabelTable:
    """True class index per video key, and a line for each row that could not be used."""

    labels: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_labels(path: str | Path, classes: tuple[str, ...]) -> LabelTable:
    """labels.csv → class indices into ``classes`` (the model's labels)."""
    table = LabelTable()
    by_name = {name.lower(): i for i, name in enumerate(classes)}
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                table.problems.append(f"{path}:{line}: expected 'video,label', got {','.join(row)!r}")
                continue
            video, label = row[0].strip(), row[1].strip()
            if line == 1 and label.lower() == "label":
                continue
            index = _class_index(label, by_name, len(classes))
            if index is None:
                table.problems.append(f"{path}:{line}: unknown label {label!r} for {video!r} "
                                      f"(known: {', '.join(classes)}, or 1..{len(classes)})")
            else:
                table.labels[video_key(video)] = index
    return table


def _class_index(label: str, by_name: dict[str, int], count: int) -> int | None:
    if label.isdigit():
        return int(label) - 1 if 1 <= int(label) <= count else None
    return by_name.get(label.lower())
