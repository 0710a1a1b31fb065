"""Face stage: which faces a frame holds, as tracks with stable ids, and their model-sized crops.

Three crop providers:

* ``full``: the video already is a face crop (as DFEW, FERV39k and MAFW clips are): one track,
  id 0, the whole frame.
* ``boxes``: the host pipeline hands in face boxes with each pushed frame; a greedy IoU
  tracker gives them track ids, and idle tracks are evicted after ``timeout_s`` of stream time.
* ``detect``: the built-in detector (runtime.detector, BlazeFace) finds the boxes every
  ``detect_every`` frames; they are tracked and cropped as host boxes are.

Resizing goes through PyAV's swscale (bilinear), a core dependency already decoding the
video, so the core needs no OpenCV.

On the stage clock (runtime.stage_clock) the boxed modes put a frame's conversion to RGB under
DECODE and detection with track assignment under DETECT; the crops are timed by their caller
(runtime.streams) as CROP, and in ``full`` mode the crop is the frame's one swscale call that
converts and resizes at once, so there it holds the RGB conversion too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from runtime.records import RejectedFrame
from runtime.resize import RESIZE_METHODS, resize_frames
from runtime.stage_clock import Stage, StageClock

if TYPE_CHECKING:  # runtime.detector builds on this module's Resizer and iou
    from runtime.detector import FaceDetector

FACE_MODES = ("full", "boxes", "detect")
RESIZE_MODES = ("official", "fast")  # StreamOptions.resize


class Resizer:
    """RGB conversion and resizing. method None: swscale's bilinear through one reused context
    per stream (building one costs ~7 ms, reusing it ~0.3 ms for 64×64 frames on the 2-core dev
    box; a context serves one thread at a time). method "bilinear"/"bicubic": Pillow's filters
    to the bit (runtime.resize), as the official test pipelines resize: 1.2 ms for 224² → 160²
    bilinear and 7.6 ms for 512² → 224² bicubic per frame, against 0.2 and 1.0 ms for swscale,
    whose filters differ by up to 8 grey levels (mean 0.12-0.18 on real face frames)."""

    def __init__(self, method: str | None = None):
        if method is not None and method not in RESIZE_METHODS:
            raise ValueError(f"unknown resize method {method!r}; known: {', '.join(RESIZE_METHODS)}")
        self.method = method
        self._reformatter = VideoReformatter()

    def rgb(self, image: av.VideoFrame | np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
        """uint8 (height, width, 3) from a decoded frame or an RGB array; native size when None."""
        if isinstance(image, np.ndarray):
            if height is None or image.shape[:2] == (height, width):
                return image
            if self.method is not None:
                return resize_frames(np.ascontiguousarray(image), height, width, self.method)
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        if height is None or (image.height, image.width) == (height, width):
            return image.to_ndarray(format="rgb24")
        if self.method is not None:
            return resize_frames(image.to_ndarray(format="rgb24"), height, width, self.method)
        return self._reformatter.reformat(image, width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()


def square_crop(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The square around box, its side grown by ``margin`` of the box's longer side on each
    side (the face models were trained on loose crops), cut to the image's borders."""
    left, top, right, bottom = crop_box(box, margin, image.shape[1], image.shape[0])
    return image[top:bottom, left:right]


def crop_box(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels [left, top, right, bottom) that square_crop cuts from a width × height frame
    (runtime.landmarks renders into them, so rendering and crop line up)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    right, bottom = int(round(cx + side / 2)), int(round(cy + side / 2))
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, width), min(bottom, height)
    if right - left < 2 or bottom - top < 2:
        raise ValueError(f"face box {[x0, y0, x1, y1]} lies outside the {width}×{height} frame")
    return left, top, right, bottom


def check_boxes(boxes, width: int, height: int) -> np.ndarray:
    """Host boxes as float (N, 4) pixel [x0, y0, x1, y1]; RejectedFrame naming the bad one."""
    try:
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    except (TypeError, ValueError) as err:  # not a list of four numbers each
        raise RejectedFrame(f"face boxes must be [[x0, y0, x1, y1], ...] in pixels, got {boxes!r:.80}") from err
    for box in array:
        x0, y0, x1, y1 = box
        if not np.isfinite(box).all() or x1 <= x0 or y1 <= y0:
            raise RejectedFrame(f"face box {box.tolist()} is not [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise RejectedFrame(f"face box {box.tolist()} lies outside the {width}×{height} frame")
    return array


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of (N, 4) and (M, 4) boxes → (N, M)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


class IouTracker:
    """Greedy IoU matching of each frame's boxes to the tracks' last boxes; ids never reused."""

    def __init__(self, iou_threshold: float = 0.3, timeout_s: float = 1.0):
        self.iou_threshold = iou_threshold
        self.timeout_s = timeout_s
        self._boxes: dict[int, np.ndarray] = {}
        self._seen: dict[int, float] = {}
        self._next_id = 0

    def update(self, boxes: np.ndarray, time_s: float) -> list[int]:
        """Track id of each box, in order; unmatched boxes start new tracks."""
        ids = list(self._boxes)
        assigned: list[int | None] = [None] * len(boxes)
        if ids and len(boxes):
            overlap = iou(np.stack([self._boxes[i] for i in ids]), boxes)
            for flat in np.argsort(overlap, axis=None)[::-1]:
                row, col = divmod(int(flat), len(boxes))
                if overlap[row, col] < self.iou_threshold:
                    break
                if assigned[col] is None and ids[row] not in assigned:
                    assigned[col] = ids[row]
        for col, box in enumerate(boxes):
            if assigned[col] is None:
                assigned[col] = self._next_id
                self._next_id += 1
            self._boxes[assigned[col]] = box
            self._seen[assigned[col]] = time_s
        return assigned

    def evict(self, time_s: float) -> list[int]:
        """Forget tracks unseen for longer than timeout_s; their ids."""
        gone = [i for i, seen in self._seen.items() if time_s - seen > self.timeout_s]
        for i in gone:
            del self._boxes[i], self._seen[i]
        return gone


# A face in a frame: (track id, a function making its model-sized crop when the clip wants it).
FaceCrop = tuple[int, Callable[[], np.ndarray]]
# Where a track's face was in the last frame, for the face mesh (runtime.landmarks): the RGB
# frame, the face box and the crop box the clip frame was cut with, all in frame pixels.
MeshView = tuple[np.ndarray, np.ndarray, np.ndarray]


class FullFrame:
    """The whole frame is the face: one track, id 0, never idle while the stream runs."""

    def __init__(self, height: int, width: int, resizer: Resizer):
        self.size, self.resizer = (height, width), resizer

    def faces(self, frame, time_s: float, boxes: Sequence | None) -> list[FaceCrop]:
        if boxes is not None:
            raise RejectedFrame("this stream's face mode is 'full': it takes no boxes")
        self._frame = frame
        return [(0, lambda: self.resizer.rgb(frame.image, *self.size))]

    def mesh_view(self, track: int) -> MeshView:
        """The whole last frame is the face box and the crop."""
        image = self.resizer.rgb(self._frame.image)
        whole = np.array([0.0, 0.0, image.shape[1], image.shape[0]])
        return image, whole, whole

    def evict(self, time_s: float) -> list[int]:
        return []


class HostBoxes:
    """Faces boxed by the host pipeline, tracked across frames by IoU, cropped with a margin."""

    def __init__(self, height: int, width: int, margin: float, tracker: IouTracker, resizer: Resizer, *,
                 stage_clock: StageClock | None = None):
        self.size, self.margin, self.tracker, self.resizer = (height, width), margin, tracker, resizer
        self.stage_clock = stage_clock or StageClock()
        self.boxes: dict[int, np.ndarray] = {}  # the last frame's boxes by track (runtime.annotate draws them)

    def faces(self, frame, time_s: float, boxes: Sequence | None) -> list[FaceCrop]:
        if boxes is None:
            raise RejectedFrame("this stream's face mode is 'boxes': push each frame with its face boxes (an empty list for none)")
        image = self._rgb(frame)
        boxes = check_boxes(boxes, image.shape[1], image.shape[0])
        with self.stage_clock.cpu(Stage.DETECT):
            ids = self.tracker.update(boxes, time_s)
        return self._croppers(image, ids, boxes)

    def _rgb(self, frame) -> np.ndarray:
        with self.stage_clock.cpu(Stage.DECODE):
            return self.resizer.rgb(frame.image)

    def _croppers(self, image: np.ndarray, ids: Sequence[int], boxes: Sequence[np.ndarray]) -> list[FaceCrop]:
        self.boxes, self._image = dict(zip(ids, boxes)), image
        return [(track, self._cropper(image, box)) for track, box in zip(ids, boxes)]

    def _cropper(self, image: np.ndarray, box: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: self.resizer.rgb(square_crop(image, box, self.margin), *self.size)

    def mesh_view(self, track: int) -> MeshView:
        box = self.boxes[track]
        cut = crop_box(box, self.margin, self._image.shape[1], self._image.shape[0])
        return self._image, box, np.asarray(cut, np.float64)

    def evict(self, time_s: float) -> list[int]:
        return self.tracker.evict(time_s)


class DetectedFaces(HostBoxes):
    """Faces the built-in detector finds every ``detect_every`` frames, tracked and cropped as
    host boxes; in between, the faces of the last detection keep their boxes (a face moves
    little in a few frames, and detection is the face stage's main cost). Tracks are evicted
    only after a detection, so ``timeout_s`` counts stream time unseen by the detector."""

    def __init__(self, height: int, width: int, margin: float, tracker: IouTracker, resizer: Resizer,
                 detector: FaceDetector, detect_every: int = 1, *, stage_clock: StageClock | None = None):
        super().__init__(height, width, margin, tracker, resizer, stage_clock=stage_clock)
        self.detector, self.detect_every = detector, detect_every
        self._frames, self._detected = 0, False
        self._last: tuple[list[int], np.ndarray] = ([], np.zeros((0, 4)))  # ids and boxes

    def faces(self, frame, time_s: float, boxes: Sequence | None) -> list[FaceCrop]:
        if boxes is not None:
            raise RejectedFrame("this stream's face mode is 'detect': it takes no boxes")
        self._detected = self._frames % self.detect_every == 0
        self._frames += 1
        if self._detected:
            with self.stage_clock.cpu(Stage.DETECT):
                found, _ = self.detector.detect(frame.image)
                self._last = (self.tracker.update(found, time_s), found)
        if not self._last[0]:
            self.boxes = {}
            return []
        return self._croppers(self._rgb(frame), *self._last)

    def evict(self, time_s: float) -> list[int]:
        return self.tracker.evict(time_s) if self._detected else []
