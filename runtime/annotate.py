"""Annotated videos: each stream's frames as an H.264 MP4 (PyAV) with every face box, its track
id and the track's smoothed label and confidence drawn on, so a person checks a run by watching it.

Frames are written as they are decoded, on the stream's own thread, so the video has every
frame the stream took. A box carries the label known at that moment: the latest smoothed
decision of its track (``TrackLabels``, written by the dispatcher as results come out). A
frame's own result comes from a later batch, so the drawn label trails the picture by the
batching and inference delay (about max_delay_ms plus one batch); a track shows ``…`` until its
first result. In face mode ``full`` the whole frame is track 0's box.

The file is finished (its MP4 index written) when the stream ends, fails, is removed or the
runtime closes: a stream that failed leaves a playable video up to its last frame (a process
killed outright leaves an unplayable one). Its size is the stream's first frame's, cut to even
sides for H.264 4:2:0; later frames of another size are scaled to it. Frame times follow the
stream's, so frames lost on the way show as held frames, not as a faster video.

Text is drawn with Pillow, which nothing else in the runtime needs: ``require_pillow`` fails
at start, in one line, where it is missing (``pip install pillow``, the extra ``annotate``).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from runtime.faces import Resizer
from runtime.records import Result

log = logging.getLogger("runtime")
DEFAULT_FPS = 25.0  # a stream that states no frame rate
PALETTE = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 96, 255), (255, 160, 64))


def require_pillow() -> None:
    """Fail now, in one line, rather than at a stream's first frame."""
    try:
        import PIL.ImageDraw  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            f"annotated videos draw their labels with Pillow, which is not installed ({err}): pip install pillow") from err


def video_path(folder: Path, stream_id: str) -> Path:
    """FOLDER/<stream id>.mp4, the id's runs of characters outside [A-Za-z0-9._-] made '_'
    (so "0:/videos/a.mp4" writes FOLDER/0_videos_a.mp4)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stream_id).strip("_") or "stream"
    return folder / (name if name.endswith(".mp4") else name + ".mp4")


@dataclass(frozen=True)
class Verdict:
    label: str
    confidence: float


class TrackLabels:
    """The latest smoothed decision of each (stream, track): written by the dispatcher's
    thread, read by the streams' threads as they draw."""

    def __init__(self):
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, int], Verdict] = {}

    def record(self, result: Result) -> None:
        with self._lock:
            self._latest[result.stream_id, result.track_id] = Verdict(result.smoothed_label, result.confidence)

    def latest(self, stream_id: str, track_id: int) -> Verdict | None:
        with self._lock:
            return self._latest.get((stream_id, track_id))

    def forget(self, stream_id: str, track_id: int) -> None:
        """The track ended: no box of it is drawn again."""
        with self._lock:
            self._latest.pop((stream_id, track_id), None)


class Annotator:
    """One stream's annotated MP4, opened at its first frame. Not thread-safe: the stream's
    pipeline calls it under its own lock."""

    def __init__(self, path: Path, stream_id: str, labels: TrackLabels):
        self.path, self.stream_id, self.labels = path, stream_id, labels
        self._resizer = Resizer()
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (height, width)
        self._closed = False
        self._start_s: float | None = None
        self._rate = Fraction(DEFAULT_FPS)
        self._last_pts = -1
        self._font = None

    def write(self, frame, boxes: dict[int, np.ndarray] | None, fps: float | None) -> None:
        """Draw and encode one decoded frame; boxes by track id in frame pixels (None: the
        whole frame is track 0's face). Nothing after close()."""
        if self._closed:
            return
        image = self._resizer.rgb(frame.image)
        if self._container is None:
            self._open(image.shape[0] - image.shape[0] % 2, image.shape[1] - image.shape[1] % 2, fps)
        image, scale = self._fit(image)
        if boxes is None:
            boxes = {0: np.array([0, 0, image.shape[1], image.shape[0]])}
        picture = av.VideoFrame.from_ndarray(self._draw(image, {t: b * scale for t, b in boxes.items()}), format="rgb24")
        picture.pts = self._pts(frame.time_s)
        picture.time_base = self._stream.codec_context.time_base
        self._container.mux(self._stream.encode(picture))

    def close(self) -> None:
        """Flush the encoder and write the MP4 index; the file is then playable."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                self._container.mux(self._stream.encode())
            finally:
                self._container.close()

    def abandon(self) -> None:
        """After a write failed: close what can be closed, quietly (the failure is reported)."""
        try:
            self.close()
        except (OSError, av.error.FFmpegError) as err:
            log.warning("closing the annotated video %s failed too: %s", self.path, err)

    def _open(self, height: int, width: int, fps: float | None) -> None:
        self._size = (height, width)
        self._container = av.open(str(self.path), "w")
        self._rate = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=self._rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.options = {"preset": "veryfast", "crf": "20"}
        self._stream.codec_context.time_base = 1 / self._rate

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | float]:
        """The frame at the video's size, and the factor its boxes scale by."""
        height, width = self._size
        if image.shape[0] - height in (0, 1) and image.shape[1] - width in (0, 1):
            return image[:height, :width], 1.0  # at most an odd row or column cut: boxes stay
        scale = np.array([width / image.shape[1], height / image.shape[0]] * 2)
        return self._resizer.rgb(np.ascontiguousarray(image), height, width), scale

    def _pts(self, time_s: float) -> int:
        """The frame's place at the stream's rate; always after the last (a clock that restarts
        continues the video)."""
        if self._start_s is None:
            self._start_s = time_s
        pts = max(round((time_s - self._start_s) * self._rate), self._last_pts + 1)
        self._last_pts = pts
        return pts

    def _draw(self, image: np.ndarray, boxes: dict[int, np.ndarray]) -> np.ndarray:
        """The frame with each box outlined and captioned inside its top edge (so a box at the
        frame's top keeps its caption). Pillow draws on its own copy, never on a pushed frame."""
        from PIL import Image, ImageDraw

        picture = Image.fromarray(image.copy())
        draw = ImageDraw.Draw(picture)
        font = self._caption_font(image.shape[0])
        line = max(1, image.shape[0] // 180)
        for track, box in boxes.items():
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # a sliver of a box still draws
            colour, caption = PALETTE[track % len(PALETTE)], self._caption(track)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=line)
            _, _, right, bottom = draw.textbbox((x0 + 2 * line, y0 + line), caption, font=font)
            draw.rectangle((x0, y0, right + line, bottom + line), fill=colour)
            draw.text((x0 + 2 * line, y0 + line), caption, fill=(0, 0, 0), font=font)
        return np.asarray(picture)

    def _caption(self, track: int) -> str:
        verdict = self.labels.latest(self.stream_id, track)
        return f"#{track} …" if verdict is None else f"#{track} {verdict.label} {verdict.confidence:.2f}"

    def _caption_font(self, height: int):
        if self._font is None:
            from PIL import ImageFont

            size = max(10, height // 24)
            try:
                self._font = ImageFont.load_default(size=size)  # scalable, Pillow ≥ 10.1
            except TypeError:
                self._font = ImageFont.load_default()
        return self._font
