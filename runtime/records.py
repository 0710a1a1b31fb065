"""What flows between the runtime's stages: clips, results and per-stream events.

All are frozen dataclasses carrying their stream id, so a record can cross threads and be
logged or re-ordered without losing where it came from. Wall-clock stamps are
``time.perf_counter()`` seconds (one monotonic clock for every stage); stream times are the
source's own timestamps in seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clip:
    """A model input cut from one track: (3, T, H, W) float32, normalised per the ModelSpec.

    start_s/end_s: stream times of its first and last frame; captured: when its last frame
    reached the runtime; ready: when the clip was complete and normalised.
    """

    stream_id: str
    track_id: int
    index: int
    start_s: float
    end_s: float
    data: np.ndarray
    captured: float
    ready: float


@dataclass(frozen=True)
class Result:
    """The model's verdict on one clip of one track, with the time it spent in every stage.

    probabilities follow ``labels`` of the model; smoothed_label is the arg-max of a per-track
    exponential moving average of the probabilities (it flickers less than label).
    """

    stream_id: str
    track_id: int
    clip_index: int
    start_s: float
    end_s: float
    probabilities: tuple[float, ...]
    label: str
    smoothed_label: str
    captured: float
    ready: float
    dispatched: float
    done: float
    emitted: float
    batch_size: int
    untrained: bool

    def latencies(self) -> dict[str, float]:
        """Seconds spent in each stage (names as in runtime.latency.STAGES)."""
        return {
            "capture→ready": self.ready - self.captured,
            "ready→dispatch": self.dispatched - self.ready,
            "dispatch→done": self.done - self.dispatched,
            "done→emitted": self.emitted - self.done,
            "ready→emitted": self.emitted - self.ready,
        }

    def to_json_dict(self, labels: tuple[str, ...]) -> dict:
        return {
            "type": "result",
            "stream": self.stream_id,
            "track": self.track_id,
            "clip": self.clip_index,
            "start_s": round(self.start_s, 4),
            "end_s": round(self.end_s, 4),
            "label": self.label,
            "smoothed_label": self.smoothed_label,
            "probabilities": {name: round(p, 4) for name, p in zip(labels, self.probabilities)},
            "latency_ms": {stage: round(1e3 * s, 3) for stage, s in self.latencies().items()},
            "batch_size": self.batch_size,
            "untrained": self.untrained,
        }


class EventKind(str, enum.Enum):
    """What happened to a stream. FAULTS are the kinds that mean something went wrong."""

    OPENED = "opened"
    ENDED = "ended"
    DISCONNECTED = "disconnected"
    OPEN_FAILED = "open_failed"
    DECODE_ERROR = "decode_error"
    TRUNCATED = "truncated"
    GAP = "gap"
    REJECTED_FRAME = "rejected_frame"
    CLIP_DROPPED = "clip_dropped"
    INFERENCE_FAILED = "inference_failed"
    FAILED = "failed"


FAULTS = frozenset(
    {
        EventKind.OPEN_FAILED,
        EventKind.DISCONNECTED,
        EventKind.DECODE_ERROR,
        EventKind.TRUNCATED,
        EventKind.GAP,
        EventKind.REJECTED_FRAME,
        EventKind.CLIP_DROPPED,
        EventKind.INFERENCE_FAILED,
        EventKind.FAILED,
    }
)


@dataclass(frozen=True)
class StreamEvent:
    """Something that happened to one stream; cause says what, in one line."""

    stream_id: str
    kind: EventKind
    cause: str
    time: float

    @property
    def is_fault(self) -> bool:
        return self.kind in FAULTS

    def to_json_dict(self) -> dict:
        return {"type": "event", "stream": self.stream_id, "kind": self.kind.value, "cause": self.cause}
