"""Where the runtime's own CPU goes: seconds per pipeline stage, summed over every clip.

Each stage is timed with the CPU clock of the thread doing it (``time.thread_time``), so a
stage's number is work done, not time spent waiting for a lock, the GIL or a slower neighbour;
the sum over stages is the runtime's CPU cost beside the backend. The backend is the exception:
its work runs in the inference library's own threads (or on a GPU, or a server), so it is timed
on the wall clock around the call, which is what the runtime's share is compared against.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields


class Stage(enum.StrEnum):
    DECODE = "decode"  # demux + decode + colour conversion to RGB (sources)
    DETECT = "detect"  # face detection and track assignment (faces)
    CROP = "crop_resize"  # face crop and resize to the model's input (faces, clips)
    LANDMARKS = "landmarks"  # face mesh and landmark rendering, landmarks models only (runtime.landmarks)
    NORMALIZE = "normalize"  # uint8 → model input: scale, mean/std, layout (spec)
    ASSEMBLE = "assemble"  # copying clips into the batch buffer (dispatch)
    BACKEND = "backend"  # the backend's run, wall clock (see the module docstring)
    POST = "post"  # softmax, temporal decisions, compound expressions, results (dispatch)


@dataclass(frozen=True)
class StageTimes:
    """Seconds per stage over ``clips`` clips; ``per_clip()`` divides them."""

    clips: int = 0
    decode: float = 0.0
    detect: float = 0.0
    crop_resize: float = 0.0
    landmarks: float = 0.0
    normalize: float = 0.0
    assemble: float = 0.0
    backend: float = 0.0
    post: float = 0.0

    def per_clip(self) -> "StageTimes":
        n = max(self.clips, 1)
        return StageTimes(clips=1, **{stage.value: getattr(self, stage.value) / n for stage in Stage})

    @property
    def runtime_cpu(self) -> float:
        """Every stage but the backend: the runtime's own cost."""
        return sum(getattr(self, stage.value) for stage in Stage if stage is not Stage.BACKEND)


class StageClock:
    """Thread-safe sums of seconds per Stage; every stream and the dispatcher add to one clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(Stage, 0.0)
        self._clips = 0

    @contextmanager
    def cpu(self, stage: Stage) -> Iterator[None]:
        """Time the block on this thread's CPU clock."""
        started = time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.thread_time() - started)

    def add(self, stage: Stage, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] += seconds

    def count_clips(self, n: int) -> None:
        """Clips that reached the backend: the denominator of per-clip costs."""
        with self._lock:
            self._clips += n

    def snapshot(self) -> StageTimes:
        with self._lock:
            return StageTimes(clips=self._clips, **{stage.value: s for stage, s in self._seconds.items()})


assert {f.name for f in fields(StageTimes)} == {"clips", *(s.value for s in Stage)}
