"""Multi-Head Probability Fusion (MHPF) of several models' basic-emotion probabilities.

Team RAS's MHPF (ProbabilityFusion_v6 in the official code) keeps raw weights of shape
(heads, models, classes). Each head takes a softmax over the models, separately per class, and
mixes the models' probability vectors with it; the heads are then mixed by a softmax over a raw
(heads,) vector. Both stages are linear in the probabilities, so the whole fusion is one
(models, classes) weight matrix, computed once at load.

Weight file (JSON, the raw trained parameters before any softmax):

    {"models": ["dynamic", "static"],            # names, matched to the inputs by name
     "head_weights": [[[...7 floats...], ...]],  # (heads, models, 7) in ABAW basic order
     "head_combine": [...]}                      # (heads,)

A fusion trained with an 8th "Other" class converts by dropping that column: the softmax runs
over models per class, so the other seven columns are unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.numeric import softmax

from .labels import ABAW_BASIC

_KEYS = ("models", "head_weights", "head_combine")


@dataclass(frozen=True, eq=False)
class MHPF:
    """MHPF weights for named models; fuse() maps {model: (..., 7)} to fused (..., 7)."""

    models: tuple[str, ...]
    head_weights: np.ndarray
    head_combine: np.ndarray

    def __post_init__(self) -> None:
        models = tuple(str(m) for m in self.models)
        if not models:
            raise ValueError("MHPF weights: models is empty; name at least one model")
        repeated = sorted({m for m in models if models.count(m) > 1})
        if repeated:
            raise ValueError(f"MHPF weights: model name(s) {', '.join(repeated)} appear more than once")
        heads = _array("head_weights", self.head_weights)
        combine = _array("head_combine", self.head_combine)
        if heads.ndim != 3 or heads.shape[1:] != (len(models), len(ABAW_BASIC)):
            raise ValueError(
                f"MHPF weights: head_weights has shape {heads.shape}, expected (heads, {len(models)}, "
                f"{len(ABAW_BASIC)}) for models {models} and the 7 ABAW basic emotions"
            )
        if combine.shape != (heads.shape[0],):
            raise ValueError(f"MHPF weights: head_combine has shape {combine.shape}, expected ({heads.shape[0]},) (one per head of head_weights {heads.shape})")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "head_weights", heads)
        object.__setattr__(self, "head_combine", combine)

    @classmethod
    def uniform(cls, models: Sequence[str]) -> "MHPF":
        """Equal weights: the fused probabilities are the plain mean of the models'."""
        return cls(tuple(models), np.zeros((1, len(models), len(ABAW_BASIC))), np.zeros(1))

    @classmethod
    def from_dict(cls, data: Mapping) -> "MHPF":
        missing = [k for k in _KEYS if k not in data]
        unknown = sorted(set(data) - set(_KEYS))
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            raise ValueError(f"MHPF weights: {'; '.join(problems)} (expected keys {', '.join(_KEYS)})")
        if isinstance(data["models"], str) or not isinstance(data["models"], Sequence):
            raise ValueError(f"MHPF weights: models must be a list of names, got {data['models']!r}")
        return cls(tuple(data["models"]), data["head_weights"], data["head_combine"])

    @classmethod
    def load(cls, path: str | Path) -> "MHPF":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read MHPF weights {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"MHPF weights {path}: expected a JSON object with keys {', '.join(_KEYS)}")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {"models": list(self.models), "head_weights": self.head_weights.tolist(), "head_combine": self.head_combine.tolist()}

    def model_weights(self) -> np.ndarray:
        """(models, 7): sum over heads of head mix × per-head softmax over models."""
        per_head = softmax(self.head_weights, axis=1)
        mix = softmax(self.head_combine, axis=0)
        return np.einsum("h,hmc->mc", mix, per_head)

    def fuse(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """{model name: (..., 7) ABAW-order probabilities} → fused (..., 7)."""
        if set(probs) != set(self.models):
            raise ValueError(f"MHPF weights are for models {self.models}, got probabilities for {tuple(probs)}")
        stacked = [np.asarray(probs[m], dtype=np.float64) for m in self.models]
        shapes = {p.shape for p in stacked}
        if len(shapes) != 1 or stacked[0].ndim < 1 or stacked[0].shape[-1] != len(ABAW_BASIC):
            raise ValueError(f"MHPF inputs need one shape (..., 7), got {dict(zip(self.models, (p.shape for p in stacked)))}")
        weights = self.model_weights()
        return sum(w * p for w, p in zip(weights, stacked))


def _array(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"MHPF weights: {name} is not a rectangular array of numbers") from err
    if not np.all(np.isfinite(array)):
        raise ValueError(f"MHPF weights: {name} holds non-finite values")
    return array
