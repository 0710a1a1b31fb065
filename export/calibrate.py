"""The int8/fp8 stages of a build: clips cut from --calib → QDQ ONNX → its accuracy cost.

calibration/ does the work; this module runs it for python -m export.trt, prints each stage
and makes the manifest's calibration record. The cost stage's line and the manifest's accuracy
object hold the agreement per fp32 class and the precision's bound (calibration.accuracy:
ACCURACY_BOUNDS), with whether it was kept and whether a constant answer would have kept it
too; a cost beyond the bound is reported, not fatal (the verify stage decides the build).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CalibrationRecord:
    """The manifest's calibration object: how the QDQ file was made, from which videos."""

    precision: str
    method: str
    clips: int
    videos: list[str]
    held_out_clips: int
    held_out_videos: list[str]
    quantized_layers: int
    activation_qdq: int
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def calibrate(*, videos: Path, clips: int, fp32: Path, output: Path, spec, precision: str, progress) -> tuple[CalibrationRecord, dict]:
    """Clips from the videos → QDQ ONNX at output → accuracy cost on the held-out clips; the
    calibration record and the accuracy cost (calibration.accuracy_cost)."""
    from calibration import SCHEMES, accuracy_cost, calibration_clips, cost_summary, quantize

    started = time.perf_counter()
    sets = calibration_clips(videos, spec, clips)
    calib, held = sets.calibration, sets.held_out
    short = f"; {len(sets.videos_without_clips)} videos shorter than one clip" if sets.videos_without_clips else ""
    progress.done(
        "clips", started,
        f"{len(calib)} calibration clips from {_count(len(calib.videos), 'video')}, {len(held)} held-out clips from "
        f"{_count(len(held.videos), 'other video')}, cut as the runtime cuts them{short}",
    )
    result = quantize(fp32, output, calib.clips, precision)
    progress.done(
        "quant", 0.0,
        f"{precision} QDQ ({len(calib)} clips): {result.quantized_nodes} MatMul/Conv/Gemm layers with per-channel weights, "
        f"{result.activations} activation Q/DQ pairs; LayerNorm, Softmax, attention and dfer ops stay fp32",
        result.seconds,
    )
    started = time.perf_counter()
    cost = accuracy_cost(fp32, output, held.clips, spec.labels, precision=precision)
    progress.done("cost", started, f"{precision} QDQ vs fp32 in ONNX Runtime, {cost['clips']} held-out clips: {cost_summary(cost)}")
    scheme = SCHEMES[precision]
    record = CalibrationRecord(
        precision=precision,
        method=f"onnxruntime.quantization {scheme.method}: {scheme.description}",
        clips=len(calib),
        videos=[str(v) for v in calib.videos],
        held_out_clips=len(held),
        held_out_videos=[str(v) for v in held.videos],
        quantized_layers=result.quantized_nodes,
        activation_qdq=result.activations,
        seconds=round(result.seconds, 1),
    )
    return record, cost


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
