"""Per-track ring buffers that turn a stream's frames into model clips.

A track samples every ``stride``-th source frame (the model's frame_stride) into a ring of the
model's clip length; once full it emits a clip, then another after every ``hop`` new samples.
So a healthy stream of N frames yields exactly ``clip_count(N, ...)`` clips per track.

Frame indices come from stream timestamps (index = round((t - t0) · fps)), so a dropped frame
shows up as a skipped index: the next frame at or after the wanted index is taken. A time gap
between two samples larger than ``max_gap_s`` (or time running backwards) discards the
partial clip: its frames would not be evenly spaced in time, which the model never saw in
training.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def clip_count(num_frames: int, frames: int, stride: int, hop: int) -> int:
    """Clips a healthy track of num_frames consecutive frames yields."""
    samples = math.ceil(num_frames / stride)
    return 0 if samples < frames else 1 + (samples - frames) // hop


class ClipBuffer:
    """The sampled frames of one (stream, track), and when they make a clip."""

    def __init__(self, frames: int, stride: int, hop: int):
        if frames < 1 or stride < 1 or not 1 <= hop <= frames:
            raise ValueError(f"need frames ≥ 1, stride ≥ 1 and 1 ≤ hop ≤ frames, got frames={frames}, stride={stride}, hop={hop}")
        self.frames, self.stride, self.hop = frames, stride, hop
        self._images: deque[np.ndarray] = deque(maxlen=frames)
        self._times: deque[float] = deque(maxlen=frames)
        self._next_index: int | None = None
        self._new_samples = 0  # since the last clip (or since the start)
        self.clips_emitted = 0
        self.clips_invalidated = 0
        self.gap_s: float | None = None  # the time gap that discarded a partial clip in the last add

    def wants(self, index: int) -> bool:
        """Whether the frame at this index is a sample (checked before converting the frame)."""
        return self._next_index is None or index >= self._next_index

    def add(self, index: int, time_s: float, image: np.ndarray, max_gap_s: float) -> tuple[np.ndarray, float, float] | None:
        """Take a sample; returns (frames (T, H, W, 3), start_s, end_s) when it completes a clip."""
        self.gap_s = None
        if self._times and not 0 < time_s - self._times[-1] <= max_gap_s:
            self.gap_s = time_s - self._times[-1]
            self.reset()
        self._images.append(image)
        self._times.append(time_s)
        self._next_index = index + self.stride
        self._new_samples += 1
        full = len(self._images) == self.frames
        if not full or (self.clips_emitted and self._new_samples < self.hop):
            return None
        self._new_samples = 0
        self.clips_emitted += 1
        return np.stack(self._images), self._times[0], self._times[-1]

    def reset(self) -> None:
        """Drop the partial clip (counted as invalidated when it held samples not yet in a clip)."""
        if self._new_samples:
            self.clips_invalidated += 1
        self._images.clear()
        self._times.clear()
        self._next_index = None
        self._new_samples = 0
