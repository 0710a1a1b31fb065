"""Write generated face videos (H.264, PyAV) for demos, tests and benchmarks: nothing downloaded.

    python -m runtime.demo_videos -o out/videos --count 3 --seconds 6

Each video is a different cartoon face (runtime.synthetic), already a face crop, as DFEW,
FERV39k and MAFW clips are, so ``python -m runtime MODEL --stream out/videos/*.mp4`` runs on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av

from runtime.synthetic import synthetic_face_frames


def write_face_video(path: str | Path, num_frames: int, seed: int = 0, size: int = 64, fps: int = 25) -> Path:
    """An H.264 video of a generated face; the container follows the suffix (.mp4, .mkv, .ts).
    Keyframes every 12 frames, so damage to the file stays local."""
    if size % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even frame size, got {size}")
    path = Path(path)
    frames = synthetic_face_frames(num_frames, size, size, seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "12"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.demo_videos", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True, help="folder to write face0.mp4, face1.mp4, ... into")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--size", type=int, default=160, help="frame width and height in pixels (even)")
    args = parser.parse_args(argv)
    try:
        if args.count < 1 or args.seconds <= 0:
            raise ValueError(f"need --count ≥ 1 and --seconds > 0, got {args.count} and {args.seconds}")
        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.count):
            path = write_face_video(folder / f"face{i}.mp4", round(args.seconds * 25), seed=i, size=args.size)
            print(f"wrote {path} ({args.seconds:g} s, {args.size}×{args.size}, generated face {i})")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
