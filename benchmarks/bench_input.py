"""The runtime's input path per clip, float graph vs uint8 graph (export --input uint8), one thread:

* ``float``: ModelSpec.model_input of a float spec (normalize: cast, scale, mean/std, transpose
  to (3, T, H, W) float32) for each clip, then the batch assembly the dispatcher does (np.stack
  into its reused input buffer): today's path, the baseline;
* ``float-fp16``: the same into an fp16 buffer (an fp16 export: the stack casts);
* ``uint8``: model_input of a uint8 spec (the frames as they are) and the same stack into a
  uint8 buffer: the graph normalises on the device.

    python -m pytest benchmarks/bench_input.py [--bench-short]
    taskset -c 0 python benchmarks/bench_input.py     # the table only

Every case records, beside the wall-clock percentiles of pytest-benchmark, the thread's CPU time
per clip (``cpu_ms_per_clip``, time.thread_time over the same rounds: on a shared box the wall
clock also counts time the thread was not running) and its ratio to float's
(``cpu_ratio_to_baseline``), the bytes per clip handed to the backend, and
``clips_per_s_per_core`` = 1 / CPU seconds per clip. numpy runs these elementwise loops on
one thread, so each case uses one core whatever the machine. Target (issue 15): uint8 ≥ 20×
less CPU than float per IFDD clip, 4× fewer bytes.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import suite  # noqa: E402
from models.ifdd import SPEC as IFDD_SPEC  # noqa: E402
from runtime.spec import DFEW_LABELS, IMAGENET_MEAN, IMAGENET_STD, ModelSpec  # noqa: E402
from runtime.synthetic import synthetic_face_frames  # noqa: E402

BATCH = 2 if suite.short() else 8
ROUNDS = suite.rounds(10, 3)
PATHS = ("float", "float-fp16", "uint8")
BASELINE = PATHS[0]  # runs first in each family (parametrize order), so its CPU time is known to the others
CPU_SECONDS: dict[tuple[str, str], float] = {}  # (family, path) → thread CPU seconds per clip, this session
# The full-size input contracts: IFDD's constant spec; S4D's as models/s4d.py makes it for its
# default config (only shapes and constants matter here, so the 90 M-parameter model is not built).
SPECS = {
    "ifdd": IFDD_SPEC,
    "s4d": ModelSpec(family="s4d", labels=DFEW_LABELS, frames=16, height=160, width=160, frame_stride=4,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="bilinear", clip_merge="softmax"),
}


@dataclasses.dataclass(frozen=True)
class InputPath:
    """One way from decoded frames to a filled batch buffer."""

    spec: ModelSpec
    buffer: np.ndarray  # the dispatcher's reused input buffer, (BATCH, ...)

    @classmethod
    def of(cls, spec: ModelSpec, path: str) -> "InputPath":
        spec = dataclasses.replace(spec, input_format="uint8" if path == "uint8" else "float")
        dtype = {"float": np.float32, "float-fp16": np.float16, "uint8": np.uint8}[path]
        return cls(spec, np.empty(spec.input_shape(BATCH), dtype))

    def fill(self, clips: list[np.ndarray]) -> np.ndarray:
        """Each clip through model_input on its stream's thread, then the dispatcher's stack."""
        np.stack([self.spec.model_input(frames) for frames in clips], out=self.buffer)
        return self.buffer

    @property
    def bytes_per_clip(self) -> int:
        return self.buffer[0].nbytes


def decoded_clips(spec: ModelSpec) -> list[np.ndarray]:
    """BATCH generated clips of uint8 frames (T, H, W, 3), as the crop stage leaves them."""
    return [synthetic_face_frames(spec.frames, spec.height, spec.width, seed=i) for i in range(BATCH)]


def cpu_seconds_per_clip(path: InputPath, clips: list[np.ndarray], rounds: int) -> float:
    started = time.thread_time()
    for _ in range(rounds):
        path.fill(clips)
    return (time.thread_time() - started) / (rounds * len(clips))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", SPECS)
def test_input_path(benchmark, family, path):
    chosen = InputPath.of(SPECS[family], path)
    clips = decoded_clips(chosen.spec)
    benchmark.group = f"input {family}"
    filled = benchmark.pedantic(chosen.fill, args=(clips,), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if path == "uint8":
        assert filled.dtype == np.uint8 and np.array_equal(filled[0], clips[0])
    else:
        reference = SPECS[family].normalize(clips[0])
        np.testing.assert_allclose(filled[0].astype(np.float32), reference, atol=2e-3 if path == "float-fp16" else 0)
    cpu = CPU_SECONDS[family, path] = cpu_seconds_per_clip(chosen, clips, ROUNDS)
    base = CPU_SECONDS.get((family, BASELINE))
    suite.record(benchmark, kind="input", case=f"{family}/input/{path}", baseline=f"{family}/input/{BASELINE}", batch=BATCH,
                 calls_per_round=BATCH, cpu_ms_per_clip=1e3 * cpu, bytes_per_clip=chosen.bytes_per_clip,
                 clips_per_s_per_core=1.0 / cpu, cpu_ratio_to_baseline=None if base is None else cpu / base,
                 config="full-size input shape")


def main() -> None:
    """The table: CPU ms per clip, bytes per clip, clips/s one core feeds, ratio to float."""
    print(f"batch {BATCH}, {ROUNDS} rounds, thread CPU time; {suite.cpu_device()}")
    print(f"{'family':<6} {'path':<11} {'CPU ms/clip':>11} {'MB/clip':>8} {'clips/s/core':>13} {'× less CPU':>11}")
    for family, spec in SPECS.items():
        base = None
        for path in PATHS:
            chosen = InputPath.of(spec, path)
            clips = decoded_clips(chosen.spec)
            chosen.fill(clips)  # warm: first touch of the buffer's pages
            cpu = cpu_seconds_per_clip(chosen, clips, ROUNDS)
            base = base or cpu
            print(f"{family:<6} {path:<11} {1e3 * cpu:11.3f} {chosen.bytes_per_clip / 1e6:8.2f} {1 / cpu:13.0f} {base / cpu:11.1f}")


if __name__ == "__main__":
    main()
