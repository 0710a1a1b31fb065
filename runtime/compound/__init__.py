"""Compound expressions (Team RAS, ABAW 9): label mapping, PPA, MHPF, segment fusion, scoring.

numpy only. The live post-process is pipeline.CompoundStage; the offline scorer is
`python -m runtime.compound score` (score.py).
"""

from .fusion import MHPF
from .labels import ABAW_BASIC, COMPOUND_CLASSES, COMPOUND_PAIRS, abaw_index, ppa, to_abaw
from .pipeline import CompoundFusion, CompoundStage
from .segments import frames_from_windows, segment_windows, window_frames

__all__ = [
    "ABAW_BASIC", "COMPOUND_CLASSES", "COMPOUND_PAIRS", "MHPF", "CompoundFusion", "CompoundStage",
    "abaw_index", "frames_from_windows", "ppa", "segment_windows", "to_abaw", "window_frames",
]
