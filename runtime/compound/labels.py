"""Emotion label orders and the pair-wise probability aggregation (PPA) into compound classes.

Every model names its classes in its own order (DFEW: happy, sad, neutral, ...; the Team RAS
static face model: Neutral, Happiness, Sadness, ...). Mixing them up silently swaps emotions,
so each model's order is mapped to the ABAW basic order by name, and a mapping that is not an
exact cover of the seven basic emotions is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ABAW basic-expression order (Team RAS config_multimodal.toml emotion_columns, without "Other").
ABAW_BASIC = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")

# The seven ABAW compound classes, in the challenge's column order (submission header).
COMPOUND_CLASSES = (
    "Fearfully_Surprised",
    "Happily_Surprised",
    "Sadly_Surprised",
    "Disgustedly_Surprised",
    "Angrily_Surprised",
    "Sadly_Fearful",
    "Sadly_Angry",
)

# The two basic emotions each compound class is made of, in COMPOUND_CLASSES order.
COMPOUND_PAIRS = (
    ("Fear", "Surprise"),
    ("Happiness", "Surprise"),
    ("Sadness", "Surprise"),
    ("Disgust", "Surprise"),
    ("Anger", "Surprise"),
    ("Sadness", "Fear"),
    ("Sadness", "Anger"),
)
PAIR_INDEX = np.array([[ABAW_BASIC.index(a), ABAW_BASIC.index(b)] for a, b in COMPOUND_PAIRS])

# Names accepted for each basic emotion (lower case). Nothing else is guessed.
SYNONYMS = {
    "neutral": "Neutral",
    "anger": "Anger",
    "angry": "Anger",
    "disgust": "Disgust",
    "disgusted": "Disgust",
    "fear": "Fear",
    "fearful": "Fear",
    "happiness": "Happiness",
    "happy": "Happiness",
    "joy": "Happiness",
    "sadness": "Sadness",
    "sad": "Sadness",
    "surprise": "Surprise",
    "surprised": "Surprise",
}


def abaw_index(labels: Sequence[str], ignore: Sequence[str] = ()) -> np.ndarray:
    """Positions in a model's output that give the ABAW basic order: probs[..., idx].

    ignore names classes the model has beyond the seven (e.g. "other", "contempt"); they are
    dropped, as the official PPA drops "Other", without renormalising.
    """
    ignored = {name.strip().lower() for name in ignore}
    position: dict[str, int] = {}
    unknown, duplicate = [], []
    for i, label in enumerate(labels):
        key = str(label).strip().lower()
        if key in ignored:
            continue
        basic = SYNONYMS.get(key)
        if basic is None:
            unknown.append(label)
        elif basic in position:
            duplicate.append(f"{labels[position[basic]]!r} and {label!r} are both {basic}")
        else:
            position[basic] = i
    if unknown:
        raise ValueError(
            f"unknown emotion label(s) {', '.join(map(repr, unknown))} in {tuple(labels)}; "
            f"known names: {', '.join(sorted(SYNONYMS))} (pass extra classes as ignored labels)"
        )
    if duplicate:
        raise ValueError(f"label order {tuple(labels)} names an emotion twice: {'; '.join(duplicate)}")
    missing = [name for name in ABAW_BASIC if name not in position]
    if missing:
        raise ValueError(f"label order {tuple(labels)} lacks {', '.join(missing)}; all seven ABAW basic emotions are needed")
    return np.array([position[name] for name in ABAW_BASIC])


def to_abaw(probs: np.ndarray, labels: Sequence[str], ignore: Sequence[str] = ()) -> np.ndarray:
    """A model's probabilities (..., len(labels)) reordered to ABAW basic order (..., 7)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim < 1 or probs.shape[-1] != len(labels):
        raise ValueError(f"probabilities have shape {probs.shape}, expected last axis {len(labels)} for labels {tuple(labels)}")
    return probs[..., abaw_index(labels, ignore)]


def ppa(basic: np.ndarray) -> np.ndarray:
    """Pair-wise probability aggregation: each compound score is the sum of its pair's probabilities.

    basic is (..., 7) in ABAW basic order; the result is (..., 7) in COMPOUND_CLASSES order.
    Scores lie in [0, 2] and do not sum to 1; the decision is their argmax.
    """
    basic = np.asarray(basic, dtype=np.float64)
    if basic.ndim < 1 or basic.shape[-1] != len(ABAW_BASIC):
        raise ValueError(f"basic-emotion probabilities have shape {basic.shape}, expected (..., {len(ABAW_BASIC)}) in ABAW order")
    return basic[..., PAIR_INDEX[:, 0]] + basic[..., PAIR_INDEX[:, 1]]
