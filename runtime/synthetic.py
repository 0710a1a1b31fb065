"""Generated face-like video frames, so demos and tests never download data.

The frames are a cartoon face (skin ellipse, eyes, a mouth that opens and closes, a slow head
sway) on a textured background: crude, but it moves like a face crop and exercises the whole
pipeline. numpy only, usable on a camera box.
"""

from __future__ import annotations

import numpy as np


def synthetic_face_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) of a moving cartoon face; deterministic for a seed."""
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need ≥ 1 frame of at least 8×8 pixels, got {num_frames}×{height}×{width}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    background = (90 + 60 * rng.random((height, width, 1)) * np.array([0.9, 1.0, 1.1])).astype(np.float32)
    skin = np.array([224, 172, 140], np.float32) * (0.85 + 0.3 * rng.random())
    phase = rng.uniform(0, 2 * np.pi)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        sway = 0.04 * np.sin(phase + 0.4 * t)
        mouth_open = 0.02 + 0.05 * (0.5 + 0.5 * np.sin(phase + 0.7 * t))
        image = background.copy()
        face = ((xx - 0.5 - sway) / 0.32) ** 2 + ((yy - 0.5) / 0.42) ** 2 < 1.0
        image[face] = skin
        for eye_x in (0.38, 0.62):
            eye = ((xx - eye_x - sway) / 0.05) ** 2 + ((yy - 0.4) / 0.03) ** 2 < 1.0
            image[eye] = (40, 30, 30)
        mouth = ((xx - 0.5 - sway) / 0.12) ** 2 + ((yy - 0.68) / mouth_open) ** 2 < 1.0
        image[mouth] = (150, 40, 50)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames
