"""What a model expects as input and what its outputs mean.

A ModelSpec travels with every exported artefact (ONNX metadata, bundle manifest), so the
runtime can scale, normalise and lay out clips in numpy without torch or the model (or, for a
graph exported with ``--input uint8``, hand over the frames as they are: ``model_input``). Not yet
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
# What the graph takes: "float", the normalised (N, 3, T, H, W) / (N, 3, H, W) float clip the
# runtime makes with normalize(); or "uint8", the decoded frames as they are, (N, T, H, W, 3) /
# (N, H, W, 3), cast, scaled, normalised and laid out inside the graph (export --input uint8).
INPUT_FORMATS = ("float", "uint8")


@dataclass(frozen=True)
class ModelSpec:
    """Input contract of one model, as the official test pipeline feeds it.

    layout is NCTHW for clip models and NCHW for per-frame (static) image models, whose
    frames and frame_stride are 1; frames are RGB; pixel = (uint8 * scale - mean) / std per
    channel. frame_stride is the temporal sampling step over the source video; clip_merge says
    how the official test merges several clips of one video ("logits": mean of logits,
    "softmax": mean of per-clip softmax). input_format says what the exported graph takes
    (INPUT_FORMATS); layout stays the model's own layout either way. landmarks: the graph takes
    a second input, ``landmarks``, the face-mesh renderings of the clip's frames
    (runtime.landmarks; FineCLIPER's landmarks variant): images of the clip's shape, square,
    made and normalised like the clip by ``model_input`` (input_format applies to both).
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
    input_format: str = "float"
    landmarks: bool = False

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"model spec input_format {self.input_format!r} is not one of {', '.join(INPUT_FORMATS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"model spec layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.layout == "NCHW" and (self.frames, self.frame_stride) != (1, 1):
            raise ValueError(f"an NCHW (per-frame) model spec has frames = frame_stride = 1, got {self.frames} and {self.frame_stride}")
        if self.landmarks and (self.layout != "NCTHW" or self.height != self.width):
            raise ValueError(f"landmark renderings are square clips (runtime.landmarks): a landmarks model spec needs layout NCTHW "
                             f"and height = width, got {self.layout} {self.height}×{self.width}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        """The graph input's shape for a batch: channels first for float, as decoded for uint8."""
        if self.input_format == "uint8":
            frames = () if self.layout == "NCHW" else (self.frames,)
            return (batch, *frames, self.height, self.width, 3)
        if self.layout == "NCHW":
            return (batch, 3, self.height, self.width)
        return (batch, 3, self.frames, self.height, self.width)

    def model_input(self, frames: np.ndarray) -> np.ndarray:
        """Decoded uint8 frames, already resized, → what the backend takes: one sample from
        (T, H, W, 3), or a batch of them from (N, T, H, W, 3); T is the spec's frames (1 for a
        per-frame model). uint8 graphs get the frames as they are, contiguous; float graphs
        normalize()'s output. With the batch copy, per IFDD clip on one core: 0.1 ms and 2.4 MB
        for uint8, 11.4 ms and 9.6 MB for float (benchmarks/bench_input.py)."""
        expected = (self.frames, self.height, self.width, 3)
        if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-4:] != expected:
            raise ValueError(f"frames are {frames.dtype} {frames.shape}, the model takes uint8 ([N,] T, H, W, C) = "
                             f"([N,] {', '.join(map(str, expected))})")
        if self.layout == "NCHW":
            frames = frames[..., 0, :, :, :]  # one frame per sample: (H, W, 3) or (N, H, W, 3)
        if self.input_format == "uint8":
            return np.ascontiguousarray(frames)
        channels_first = (2, 0, 1) if self.layout == "NCHW" else (3, 0, 1, 2)
        if frames.ndim == len(channels_first) + 1:  # a batch
            channels_first = (0, *(a + 1 for a in channels_first))
        return np.ascontiguousarray(self._scaled(frames).transpose(channels_first))

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
