"""Temporal decisions for live use: per-track smoothing, hysteresis, uncertainty and events.

Per-clip probabilities flicker from one result to the next; a label shown to a person (or
logged as an event) should not. For each track this keeps an exponential moving average (EMA)
whose weight follows the real time between results, so dropped or late results do not change
the smoothing, and turns it into a decision with hysteresis:

* from `uncertain`, the top label is taken once its smoothed score reaches `threshold`;
* a held label gives way to another only when that one reaches `threshold` and leads the held
  label by `margin`;
* a held label falls back to `uncertain` when its score drops below `threshold - margin`.

A change of label emits an offset for the old label and an onset for the new one; `uncertain`
is the absence of a label and has no events of its own. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

UNCERTAIN = "uncertain"
ONSET = "onset"
OFFSET = "offset"


@dataclass(frozen=True)
class TemporalOptions:
    """labels: class names of the scores; tau_s: EMA time constant in seconds (0: no smoothing);
    threshold: smoothed score a label needs; margin: hysteresis on switches and on uncertainty."""

    labels: tuple[str, ...]
    tau_s: float = 1.0
    threshold: float = 0.4
    margin: float = 0.05

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"temporal labels must be non-empty and distinct, got {labels}")
        if UNCERTAIN in labels:
            raise ValueError(f"{UNCERTAIN!r} is the decider's own state and cannot be a class label")
        if not (math.isfinite(self.tau_s) and self.tau_s >= 0):
            raise ValueError(f"tau_s must be a finite number of seconds ≥ 0, got {self.tau_s}")
        if not (0 <= self.threshold <= 1):
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if not (0 <= self.margin <= self.threshold):
            raise ValueError(f"margin must lie in [0, threshold={self.threshold}], got {self.margin}")


@dataclass(frozen=True)
class Event:
    """A label started (onset) or ended (offset) on a track; confidence is its smoothed score."""

    track_id: Hashable
    kind: str
    label: str
    time_s: float
    confidence: float


@dataclass(frozen=True)
class Decision:
    """The state of one track after one result: label (or `uncertain`), its smoothed score (the
    top score when uncertain), all smoothed scores in TemporalOptions.labels order, and the
    events this result caused."""

    track_id: Hashable
    time_s: float
    label: str
    confidence: float
    scores: tuple[float, ...]
    events: tuple[Event, ...] = ()


@dataclass
class _Track:
    time_s: float
    smoothed: np.ndarray
    label: str


class TemporalDecider:
    """Smoothing and decisions for many tracks; feed each track's results in time order."""

    def __init__(self, options: TemporalOptions):
        self.options = options
        self._index = {label: i for i, label in enumerate(options.labels)}
        self._tracks: dict[Hashable, _Track] = {}

    @property
    def tracks(self) -> tuple[Hashable, ...]:
        return tuple(self._tracks)

    def last_time(self, track_id: Hashable) -> float | None:
        """Stream time of the track's latest result; None for a track that is not active."""
        track = self._tracks.get(track_id)
        return None if track is None else track.time_s

    def update(self, track_id: Hashable, time_s: float, scores: Sequence[float] | np.ndarray) -> Decision:
        scores = self._check_scores(track_id, scores)
        if not math.isfinite(time_s):
            raise ValueError(f"track {track_id!r}: time {time_s} is not finite")
        track = self._tracks.get(track_id)
        if track is None:
            track = _Track(time_s, scores, UNCERTAIN)
            self._tracks[track_id] = track
        else:
            if time_s <= track.time_s:
                raise ValueError(f"track {track_id!r}: time {time_s} s does not follow the previous result at {track.time_s} s")
            tau = self.options.tau_s
            alpha = 1.0 if tau == 0 else 1.0 - math.exp(-(time_s - track.time_s) / tau)
            track.smoothed = (1.0 - alpha) * track.smoothed + alpha * scores
            track.time_s = time_s
        new = self._next_label(track.label, track.smoothed)
        events = self._switch(track_id, track, new, time_s)
        confidence = float(track.smoothed.max() if new == UNCERTAIN else track.smoothed[self._index[new]])
        return Decision(track_id, time_s, new, confidence, tuple(float(s) for s in track.smoothed), events)

    def end_track(self, track_id: Hashable, time_s: float | None = None) -> tuple[Event, ...]:
        """Forget a track (end of stream, track lost); an offset closes its label, if any."""
        track = self._tracks.pop(track_id, None)
        if track is None:
            raise ValueError(f"track {track_id!r} is not active (active: {self.tracks})")
        end = track.time_s if time_s is None else time_s
        if end < track.time_s:
            raise ValueError(f"track {track_id!r}: end time {end} s precedes its last result at {track.time_s} s")
        return self._switch(track_id, track, UNCERTAIN, end)

    def _check_scores(self, track_id, scores) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(self.options.labels),):
            raise ValueError(f"track {track_id!r}: scores have shape {scores.shape}, expected ({len(self.options.labels)},) for labels {self.options.labels}")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"track {track_id!r}: scores hold non-finite values {scores.tolist()}")
        return scores

    def _next_label(self, label: str, smoothed: np.ndarray) -> str:
        top = int(np.argmax(smoothed))
        top_score = smoothed[top]
        threshold, margin = self.options.threshold, self.options.margin
        if label == UNCERTAIN:
            return self.options.labels[top] if top_score >= threshold else UNCERTAIN
        held = smoothed[self._index[label]]
        if self.options.labels[top] != label and top_score >= threshold and top_score >= held + margin:
            return self.options.labels[top]
        if held < threshold - margin:
            return UNCERTAIN
        return label

    def _switch(self, track_id, track: _Track, new: str, time_s: float) -> tuple[Event, ...]:
        old = track.label
        if new == old:
            return ()
        events = []
        if old != UNCERTAIN:
            events.append(Event(track_id, OFFSET, old, time_s, float(track.smoothed[self._index[old]])))
        if new != UNCERTAIN:
            events.append(Event(track_id, ONSET, new, time_s, float(track.smoothed[self._index[new]])))
        track.label = new
        return tuple(events)


def decide_sequence(times: Sequence[float], scores: np.ndarray, options: TemporalOptions,
                    track_id: Hashable = 0) -> tuple[list[Decision], list[Event]]:
    """Offline helper: run one track's (T,) times and (T, K) scores; events include the final offset."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(times):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(times)}, {len(options.labels)})")
    decider = TemporalDecider(options)
    decisions = [decider.update(track_id, float(t), row) for t, row in zip(times, scores)]
    events = [e for d in decisions for e in d.events]
    if decisions:
        events.extend(decider.end_track(track_id))
    return decisions, events
