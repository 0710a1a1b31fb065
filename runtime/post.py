"""What happens to a clip's probabilities after inference: per-track decisions, and optionally
compound expressions fused with a static per-frame model (Team RAS, ABAW 9).

* Every result gets a temporal decision over the clip model's labels (runtime.temporal: EMA in
  stream time, hysteresis, ``uncertain`` below a threshold, onset/offset events).
* With ``CompoundOptions``, the clip model's probabilities (model name ``dynamic``) and, when a
  static model is given, the mean of its per-frame probabilities over frames of the same clip
  (model name ``static``) are mapped to ABAW order, fused (MHPF weights from a file, or a plain
  mean), turned into the seven compound classes by PPA, and decided over time the same way.

The static model is any image FER ONNX whose ``dfer.spec`` metadata has layout NCHW (attach
one with ``python -m export.image_model``). It sees ``static_frames`` evenly spaced frames of
each clip, cut from the clip model's face crops and resized to its own input size.

Tracks end through ``end_track`` once their last result is out; the decision state of a track
whose stream time runs backwards (a looped file, a restarted camera) starts afresh.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.spec import ModelSpec
from runtime.compound import MHPF, CompoundFusion, CompoundStage
from runtime.compound.labels import COMPOUND_CLASSES
from runtime.faces import Resizer
from runtime.records import CompoundResult
from runtime.stage_clock import Stage, StageClock
from runtime.temporal import Decision, Event, TemporalDecider, TemporalOptions

DYNAMIC, STATIC = "dynamic", "static"


@dataclass(frozen=True)
class CompoundOptions:
    """static_model: a per-frame FER ONNX with an NCHW dfer.spec, run beside the clip model (None:
    the clip model alone); static_frames: frames of each clip it sees; weights: MHPF JSON for
    the models "dynamic" and "static" (None: their plain mean); ignore: labels outside the ABAW
    seven that a model may have (e.g. "contempt"), dropped before fusion."""

    static_model: str | Path | None = None
    static_frames: int = 4
    weights: str | Path | None = None
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.static_frames <= 64:
            raise ValueError(f"static_frames must lie in [1, 64], got {self.static_frames}")
        if self.weights is not None and self.static_model is None:
            raise ValueError("MHPF weights fuse several models: name a static model too")


class StaticFrames:
    """Cuts a static model's inputs from a clip's uint8 face crops: k evenly spaced frames,
    resized and normalised per its spec. Runs on the stream's own thread, like the clip."""

    def __init__(self, spec: ModelSpec, count: int):
        if spec.layout != "NCHW":
            raise ValueError(f"the static model must take single frames (layout NCHW), its spec says {spec.layout}")
        self.spec, self.count = spec, count

    def inputs(self, frames: np.ndarray, resizer: Resizer, stage_clock: StageClock | None = None) -> np.ndarray:
        """(T, H, W, 3) uint8 → the static model's input for count frames (ModelSpec.model_input);
        the resize counts as CROP and the rest as NORMALIZE on stage_clock, when one is given."""
        clock = stage_clock or StageClock()
        picks = np.linspace(0, len(frames) - 1, self.count).round().astype(int)
        with clock.cpu(Stage.CROP):
            images = np.stack([resizer.rgb(frames[i], self.spec.height, self.spec.width) for i in picks])
        with clock.cpu(Stage.NORMALIZE):
            return self.spec.model_input(images[:, None])  # (count, 1, h, w, 3): count one-frame samples


class PostProcessor:
    """Per-track decisions for one runtime; thread-safe (the dispatcher decides, the thread that
    sees a track's last result ends it)."""

    def __init__(self, labels: Sequence[str], temporal: dict, compound: CompoundOptions | None,
                 static_labels: Sequence[str] | None = None):
        self.decider = TemporalDecider(TemporalOptions(labels=tuple(labels), **temporal))
        self.compound: CompoundStage | None = None
        if compound is not None:
            model_labels = {DYNAMIC: tuple(labels)}
            if static_labels is not None:
                model_labels[STATIC] = tuple(static_labels)
            fusion = None
            if len(model_labels) > 1:
                fusion = MHPF.load(compound.weights) if compound.weights is not None else MHPF.uniform(tuple(model_labels))
            stage = CompoundFusion(model_labels, fusion, ignore=compound.ignore)
            self.compound = CompoundStage(stage, TemporalOptions(labels=COMPOUND_CLASSES, **temporal))
        self._lock = threading.Lock()

    def decide(self, key: Hashable, time_s: float, probs: np.ndarray,
               static_probs: np.ndarray | None) -> tuple[Decision, CompoundResult | None, tuple[Event, ...]]:
        """The track's decision after this result, its compound verdict (if enabled), and the
        offsets of a state that restarted because stream time went backwards."""
        with self._lock:
            last = self.decider.last_time(key)
            restarted = self._end(key) if last is not None and time_s <= last else ()
            decision = self.decider.update(key, time_s, probs)
            return decision, self._compound(key, time_s, probs, static_probs), restarted

    def end_track(self, key: Hashable) -> tuple[Event, ...]:
        """Close a track whose results are all out: offsets of the labels it held."""
        with self._lock:
            return () if self.decider.last_time(key) is None else self._end(key)

    def _compound(self, key, time_s: float, probs: np.ndarray, static_probs: np.ndarray | None) -> CompoundResult | None:
        if self.compound is None:
            return None
        inputs = {DYNAMIC: probs} if static_probs is None else {DYNAMIC: probs, STATIC: static_probs}
        scores = self.compound.scores(inputs)
        decision = self.compound.decider.update(key, time_s, scores)
        return CompoundResult(
            decision.label, decision.confidence, COMPOUND_CLASSES[int(scores.argmax())], tuple(float(s) for s in scores),
            None if static_probs is None else tuple(float(p) for p in static_probs), decision.events,
        )

    def _end(self, key) -> tuple[Event, ...]:
        """Offsets at the track's latest result time (the decider's own default)."""
        events = self.decider.end_track(key)
        if self.compound is not None:
            events += self.compound.end_track(key)
        return events
