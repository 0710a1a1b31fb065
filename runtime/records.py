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

from runtime.compound.labels import COMPOUND_CLASSES
from runtime.temporal import Event


@dataclass(frozen=True)
class Clip:
    """A model input cut from one track, normalised per the ModelSpec: (3, T, H, W) float32
    for a clip model, (3, H, W) for a per-frame (NCHW) model, whose clips are one frame.

    start_s/end_s: stream times of its first and last frame (equal for one frame); captured:
    when its last frame reached the runtime; ready: when the clip was complete and normalised.
    landmark_data: for a model whose spec has ``landmarks``, the face-mesh renderings of its
    frames (runtime.landmarks), shaped and normalised as ``data``.
    """

    stream_id: str
    track_id: int
    index: int
    start_s: float
    end_s: float
    data: np.ndarray
    captured: float
    ready: float
    static_data: np.ndarray | None = None  # a static model's (k, 3, h, w) frames, when one runs
    landmark_data: np.ndarray | None = None


@dataclass(frozen=True)
class CompoundResult:
    """The compound verdict on one clip: label (or 'uncertain') and confidence after smoothing
    and hysteresis, this clip's own top class and normalised PPA scores (COMPOUND_CLASSES
    order), the static model's clip-mean probabilities (its own label order), and events."""

    label: str
    confidence: float
    top: str
    scores: tuple[float, ...]
    static_probabilities: tuple[float, ...] | None
    events: tuple[Event, ...]

    def to_json_dict(self) -> dict:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "top": self.top,
            "scores": {name: round(s, 4) for name, s in zip(COMPOUND_CLASSES, self.scores)},
            "events": [event_json(e) for e in self.events],
        }


def event_json(event: Event) -> dict:
    return {"kind": event.kind, "label": event.label, "time_s": round(event.time_s, 4), "confidence": round(event.confidence, 4)}


@dataclass(frozen=True, kw_only=True)
class Result:
    """The model's verdict on one clip of one track, with the time it spent in every stage.

    probabilities follow ``labels`` of the model; label is their arg-max. smoothed_label is the
    track's decision (runtime.temporal: an EMA in stream time with hysteresis, or 'uncertain'
    while no label is confident enough), confidence its smoothed score, and events the onsets
    and offsets this result caused. compound: the compound-expression verdict, when enabled.
    A per-frame model gives one result per sampled frame of a track: clip_index counts the
    track's samples (0, 1, ...) and start_s = end_s is the frame's stream time.
    emitted is stamped by the delivery thread as it hands the result over: every result a host
    receives has it (None only inside the runtime, between inference and delivery).
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
    batch_size: int
    untrained: bool
    confidence: float
    events: tuple[Event, ...]
    compound: CompoundResult | None = None
    emitted: float | None = None

    def latencies(self) -> dict[str, float]:
        """Seconds spent in each stage (names as in runtime.latency.STAGES) of a delivered result."""
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
            "confidence": round(self.confidence, 4),
            "events": [event_json(e) for e in self.events],
            "probabilities": {name: round(p, 4) for name, p in zip(labels, self.probabilities)},
            "latency_ms": {stage: round(1e3 * s, 3) for stage, s in self.latencies().items()},
            "batch_size": self.batch_size,
            "untrained": self.untrained,
            **({"compound": self.compound.to_json_dict()} if self.compound is not None else {}),
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
    TRACK_ENDED = "track_ended"
    ANNOTATION_FAILED = "annotation_failed"  # the stream's annotated video could not be written; inference goes on


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
        EventKind.ANNOTATION_FAILED,
    }
)


class StreamState(enum.StrEnum):
    """Where a stream is in its life: RUNNING until its source ends (ENDED: a file's end) or
    gives up (FAILED), or the host stops it (REMOVED: remove_stream, CLOSED: close). Those four
    are final. A str, so ``stats.state == "failed"`` reads as before the enum."""

    RUNNING = "running"
    ENDED = "ended"
    FAILED = "failed"
    REMOVED = "removed"
    CLOSED = "closed"

    def to(self, new: StreamState) -> StreamState:
        """new, where the move is allowed; IllegalTransition otherwise (a bug in the runtime)."""
        if new not in TRANSITIONS[self]:
            raise IllegalTransition(f"a {self.value} stream cannot become {new.value}")
        return new


TRANSITIONS: dict[StreamState, frozenset[StreamState]] = {
    StreamState.RUNNING: frozenset(StreamState) - {StreamState.RUNNING},
    **{final: frozenset() for final in StreamState if final is not StreamState.RUNNING},
}


class IllegalTransition(RuntimeError):
    """A stream was moved out of a final state, or into one it cannot reach: a runtime bug."""


class RejectedFrame(ValueError):
    """A frame the host pushed cannot be taken (wrong type or size, time not moving forward,
    boxes that do not fit the stream's face mode): the push is refused, the stream goes on."""


@dataclass(frozen=True)
class StreamEvent:
    """Something that happened to one stream; cause says what, in one line. A TRACK_ENDED
    event carries the offsets of the labels the track held (label_events)."""

    stream_id: str
    kind: EventKind
    cause: str
    time: float
    label_events: tuple[Event, ...] = ()

    @property
    def is_fault(self) -> bool:
        return self.kind in FAULTS

    def to_json_dict(self) -> dict:
        record = {"type": "event", "stream": self.stream_id, "kind": self.kind.value, "cause": self.cause}
        if self.label_events:
            record["label_events"] = [event_json(e) for e in self.label_events]
        return record
