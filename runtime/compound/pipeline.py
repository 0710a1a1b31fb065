"""From several models' own-order probabilities to compound scores, offline and live.

CompoundFusion maps each model's labels to ABAW order, fuses the models (MHPF; a single model
needs none) and applies PPA. CompoundStage adds per-track temporal decisions, the post-process
a live runtime runs on each track's results: it takes a track id, a timestamp and
{model: probabilities} per result, and needs nothing else from the runtime.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from ..temporal import Decision, Event, TemporalDecider, TemporalOptions
from .fusion import MHPF
from .labels import COMPOUND_CLASSES, abaw_index, ppa


class CompoundFusion:
    """model_labels: {model name: its label order}; fusion: MHPF over the same names, required
    when there is more than one model (MHPF.uniform gives the plain mean); ignore: extra class
    names (e.g. "other") the models may have, dropped before fusion."""

    def __init__(self, model_labels: Mapping[str, Sequence[str]], fusion: MHPF | None = None,
                 ignore: Sequence[str] = ()):
        if not model_labels:
            raise ValueError("compound fusion needs at least one model")
        self.model_labels = {name: tuple(labels) for name, labels in model_labels.items()}
        self._index = {name: abaw_index(labels, ignore) for name, labels in self.model_labels.items()}
        if fusion is None and len(model_labels) > 1:
            raise ValueError(f"{len(model_labels)} models ({', '.join(model_labels)}) need MHPF weights (MHPF.uniform for a plain mean)")
        if fusion is not None and set(fusion.models) != set(model_labels):
            raise ValueError(f"MHPF weights are for models {fusion.models}, the inputs are {tuple(model_labels)}")
        self.fusion = fusion

    def basic(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fused basic-emotion probabilities (..., 7) in ABAW order."""
        if set(probs) != set(self.model_labels):
            raise ValueError(f"expected probabilities for models {tuple(self.model_labels)}, got {tuple(probs)}")
        ordered = {}
        for name, values in probs.items():
            values = np.asarray(values, dtype=np.float64)
            labels = self.model_labels[name]
            if values.ndim < 1 or values.shape[-1] != len(labels):
                raise ValueError(f"model {name!r}: probabilities have shape {values.shape}, expected last axis {len(labels)} for labels {labels}")
            ordered[name] = values[..., self._index[name]]
        if self.fusion is None:
            return next(iter(ordered.values()))
        return self.fusion.fuse(ordered)

    def compound(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """PPA compound scores (..., 7) in COMPOUND_CLASSES order."""
        return ppa(self.basic(probs))


class CompoundStage:
    """Live post-process: per-track compound decisions with smoothing, hysteresis and events.

    PPA scores are pair sums (range 0-2, not summing to 1); the stage divides them by their sum
    so that the `uncertain` threshold means the same for every fusion. The argmax is unchanged.
    """

    def __init__(self, fusion: CompoundFusion, temporal: TemporalOptions | None = None):
        temporal = temporal or TemporalOptions(labels=COMPOUND_CLASSES)
        if temporal.labels != COMPOUND_CLASSES:
            raise ValueError(f"temporal labels must be the compound classes {COMPOUND_CLASSES}, got {temporal.labels}")
        self.fusion = fusion
        self.decider = TemporalDecider(temporal)

    def update(self, track_id: Hashable, time_s: float, probs: Mapping[str, np.ndarray]) -> Decision:
        return self.decider.update(track_id, time_s, self.scores(probs))

    def scores(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One result's compound scores (7,), divided by their sum."""
        scores = self.fusion.compound(probs)
        if scores.ndim != 1:
            raise ValueError(f"one result at a time, got compound scores of shape {scores.shape}")
        total = scores.sum()
        if not total > 0:
            raise ValueError(f"compound scores sum to {total}; the model probabilities are not probabilities")
        return scores / total

    def end_track(self, track_id: Hashable, time_s: float | None = None) -> tuple[Event, ...]:
        return self.decider.end_track(track_id, time_s)
