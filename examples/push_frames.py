"""A host pipeline pushing frames into the runtime: its own capture and face detector, our
clips, batching and model.

    python examples/push_frames.py out/demo_s4d.onnx

The "camera" here is a generated 320×240 scene with two cartoon faces drifting across it, and
the "detector" knows where it drew them; a real host would hand in its camera frames and its
detector's boxes the same way. The runtime tracks the boxes (IoU), crops each face with a
margin, cuts per-face clips at the model's frame stride, batches them with any other streams,
and calls back with one result per face clip.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from runtime import Runtime, RuntimeOptions, StreamOptions
from runtime.synthetic import synthetic_face_frames

FPS = 25.0
HEIGHT, WIDTH, FACE = 240, 320, 96


def scene(num_frames: int) -> tuple[np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """Frames (T, 240, 320, 3) holding two moving faces, and each frame's face boxes."""
    faces = [synthetic_face_frames(num_frames, FACE, FACE, seed) for seed in (1, 2)]
    frames = np.full((num_frames, HEIGHT, WIDTH, 3), 60, np.uint8)
    boxes = []
    for t in range(num_frames):
        frame_boxes = []
        for i, face in enumerate(faces):
            x = 20 + 150 * i + int(20 * np.sin(0.05 * t + i))
            y = 60 + int(10 * np.cos(0.04 * t))
            frames[t, y : y + FACE, x : x + FACE] = face[t]
            frame_boxes.append((x, y, x + FACE, y + FACE))
        boxes.append(frame_boxes)
    return frames, boxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="exported model (.onnx from python -m export.onnx)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the generated scene")
    args = parser.parse_args(argv)
    try:
        runtime = Runtime(args.model, RuntimeOptions(max_batch=8), on_result=print_result, on_event=print_event)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with runtime:
        camera = runtime.add_push_stream(fps=FPS, stream_id="camera-0", options=StreamOptions(faces="boxes", margin=0.2))
        frames, boxes = scene(int(args.seconds * FPS))
        for t, (frame, frame_boxes) in enumerate(zip(frames, boxes)):
            runtime.push_frame(camera, frame, t / FPS, boxes=frame_boxes)
    print(runtime.summary())
    return 0


def print_result(result) -> None:
    note = "  (untrained weights)" if result.untrained else ""
    print(
        f"{result.stream_id} face {result.track_id} [{result.start_s:.2f}–{result.end_s:.2f} s]: "
        f"{result.label} ({max(result.probabilities):.2f}), smoothed {result.smoothed_label}{note}"
    )


def print_event(event) -> None:
    print(f"{event.stream_id} {event.kind.value}: {event.cause}")


if __name__ == "__main__":
    sys.exit(main())
