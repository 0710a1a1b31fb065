"""Which frames of a video make the clips an official test script scores, and how it merges them.

Pinned from the official code (facts carried over, no code):

* IFDD (CyberPegasus/IFDD, core/datasets/DFEW.py, get_clip in test mode): with stride s and
  clip length T, a video of n ≥ T·s frames is cut into non-overlapping spans of T·s frames from
  frame 0, each sampled every s-th frame; a remainder shorter than a span is dropped. Shorter
  videos: n < T repeats the last frame up to T; T ≤ n < T·s takes frames 0..T-1 (no stride).
  tools/test.py averages the model outputs (logits) over the clips. (Its DFEW class drops
  videos of under 16 frames before testing; the evaluator pads them, as get_clip would.)
* S4D (MSA-LMC/S4D, finetune/datasets/kinetics.py, VideoClsDatasetFrame test mode): samples
  are every s-th frame from frame 0 (range(0, n, s)), the last sample repeated up to T; with
  m temporal segments, segment k starts at sample int(k · max((len - T) / (m - 1), 0)) and
  takes T consecutive samples. The run script tests 2 segments × 2 crops; the crops are
  identical after its square resize, and engine_for_finetuning.merge averages the softmax of
  every view, so the evaluator averages over the segments.
* per-frame (NCHW) models: every frame is one input; their softmax is averaged.

Frames come in file order; frame folders are sorted by the number in their names (IFDD sorts
so; S4D sorts by name, the same for DFEW's zero-padded names).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.spec import ModelSpec

MERGES = ("logits", "softmax")
S4D_SEGMENTS = 2  # --test_num_segment in S4D's finetune/scripts/*/ft_moe_*.sh


@dataclass(frozen=True)
class ClipPlan:
    """One model input cut from a video: the source frame index of each of its frames."""

    indices: tuple[int, ...]

    @property
    def start(self) -> int:
        return self.indices[0]

    @property
    def padded(self) -> int:
        """Trailing entries that repeat the last frame because the video was too short."""
        return len(self.indices) - 1 - self.indices.index(self.indices[-1])

    def to_json_dict(self) -> dict:
        return {"start": self.start, "end": self.indices[-1], "padded": self.padded}


@dataclass(frozen=True)
class Protocol:
    """A family's test rule: how a video of n frames is cut (rule) and how clip outputs merge."""

    rule: str  # "ifdd", "s4d" or "frames"
    frames: int
    stride: int
    merge: str
    segments: int = S4D_SEGMENTS

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ValueError(f"unknown clip merge {self.merge!r}; known: {', '.join(MERGES)}")
        if self.frames < 1 or self.stride < 1 or self.segments < 1:
            raise ValueError(f"need frames, stride and segments ≥ 1, got {self.frames}, {self.stride}, {self.segments}")

    def clips(self, num_frames: int) -> list[ClipPlan]:
        """The clips of a video of num_frames frames (≥ 1), in the official order."""
        if num_frames < 1:
            raise ValueError("a video needs at least one frame")
        if self.rule == "frames":
            return [ClipPlan((i,)) for i in range(num_frames)]
        if self.rule == "ifdd":
            return ifdd_clips(num_frames, frames=self.frames, stride=self.stride)
        return s4d_clips(num_frames, frames=self.frames, stride=self.stride, segments=self.segments)


def ifdd_clips(num_frames: int, frames: int, stride: int) -> list[ClipPlan]:
    """IFDD's test cut: non-overlapping spans of frames·stride from frame 0, the rest dropped."""
    span = frames * stride
    if num_frames >= span:
        starts = range(0, num_frames - span + 1, span)
        return [ClipPlan(tuple(range(start, start + span, stride))) for start in starts]
    if num_frames < frames:
        return [ClipPlan(tuple(range(num_frames)) + (num_frames - 1,) * (frames - num_frames))]
    return [ClipPlan(tuple(range(frames)))]


def s4d_clips(num_frames: int, frames: int, stride: int, segments: int) -> list[ClipPlan]:
    """S4D's test cut: every stride-th frame, padded with the last, then `segments` windows."""
    samples = list(range(0, num_frames, stride))
    samples += [samples[-1]] * (frames - len(samples))
    step = max((len(samples) - frames) / (segments - 1), 0) if segments > 1 else 0
    return [ClipPlan(tuple(samples[int(k * step) : int(k * step) + frames])) for k in range(segments)]


def protocol_for(spec: ModelSpec) -> Protocol:
    """The test rule of the model's family: per-frame for NCHW models, IFDD's cut for family
    ifdd, S4D's for s4d; another clip family follows its clip_merge (logits: IFDD's cut,
    softmax: S4D's), the two official rules the spec fields describe."""
    if spec.layout == "NCHW":
        return Protocol(rule="frames", frames=1, stride=1, merge="softmax")
    rule = spec.family if spec.family in ("ifdd", "s4d") else ("ifdd" if spec.clip_merge == "logits" else "s4d")
    return Protocol(rule=rule, frames=spec.frames, stride=spec.frame_stride, merge=spec.clip_merge)
