"""What a model expects as input and what its outputs mean.

A ModelSpec travels with every exported artefact (ONNX metadata, bundle manifest), so the
runtime can scale, normalise and lay out clips in numpy without torch or the model. Not yet
honoured by the runtime: ``resize`` (it always resizes bilinear) and ``clip_merge`` (it reports
per clip; no video-level merge exists yet). They record the official test protocol so that an
evaluator can follow it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

DFEW_LABELS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUTS = ("NCTHW", "NCHW")


@dataclass(frozen=True)
class ModelSpec:
    """Input contract of one model, as the official test pipeline feeds it.

    layout is NCTHW for clip models and NCHW for per-frame (static) image models, whose
    frames and frame_stride are 1; frames are RGB; pixel = (uint8 * scale - mean) / std per
    channel. frame_stride is the temporal sampling step over the source video; clip_merge says
    how the official test merges several clips of one video ("logits": mean of logits,
    "softmax": mean of per-clip softmax).
    """

    family: str
    labels: tuple[str, ...]
    frames: int
    height: int
    width: int
    frame_stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    clip_merge: str
    scale: float = 1.0 / 255.0
    layout: str = "NCTHW"
    color: str = "RGB"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"model spec layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.layout == "NCHW" and (self.frames, self.frame_stride) != (1, 1):
            raise ValueError(f"an NCHW (per-frame) model spec has frames = frame_stride = 1, got {self.frames} and {self.frame_stride}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if self.layout == "NCHW":
            return (batch, 3, self.height, self.width)
        return (batch, 3, self.frames, self.height, self.width)

    def normalize(self, clip: np.ndarray) -> np.ndarray:
        """uint8 frames (T, H, W, 3), already resized, → float32 (3, T, H, W) model input."""
        expected = (self.frames, self.height, self.width, 3)
        if clip.shape != expected:
            raise ValueError(f"clip has shape {clip.shape}, the model expects (T, H, W, C) = {expected}")
        return np.ascontiguousarray(self._scaled(clip).transpose(3, 0, 1, 2))

    def normalize_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, 3), already resized, → float32 (N, 3, H, W) for an NCHW model."""
        expected = (self.height, self.width, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images have shape {images.shape}, the model expects (N, H, W, C) with (H, W, C) = {expected}")
        return np.ascontiguousarray(self._scaled(images).transpose(0, 3, 1, 2))

    def _scaled(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) * np.float32(self.scale)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in data and _required(cls, n))
        if missing:
            raise ValueError(f"model spec is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"model spec has unknown field(s): {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def _required(cls, name: str) -> bool:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default is dataclasses.MISSING
