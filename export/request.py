"""What python -m export.trt is asked to build, and every check that needs no model or builder.

``check_request`` runs before anything is loaded, so a bad option fails in a second with one
line; ``check_onnx_input`` checks an ONNX input's own metadata (precision, custom ops) once it
has been read, before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from export.builder import BUILDER_MODULES, DEVICE_NAMES
from export.onnx import MAX_BATCH
from export.precision import PRECISIONS, Precision, precision
from runtime.metadata import DferMetadata
from runtime.spec import INPUT_FORMATS

DEFAULT_CALIB_CLIPS = 32


@dataclass(frozen=True)
class BuildRequest:
    source: Path
    output: Path | None = None
    precision: str | None = None  # None: fp16 for a checkpoint, the file's own for an ONNX
    max_batch: int = 16
    opt_batch: int = 4
    builder: str = "auto"
    targets: tuple[str, ...] = ()
    custom_ops: bool = True
    plugins: bool = True
    verify: bool = True
    timing_cache: Path | None = None  # set by the pipeline for the tensorrt builder
    calib: Path | None = None  # folder of videos for int8/fp8
    calib_clips: int = DEFAULT_CALIB_CLIPS
    input_format: str | None = None  # None: float for a checkpoint, the file's own for an ONNX (runtime.spec.INPUT_FORMATS)


def check_request(request: BuildRequest) -> BuildRequest:
    """Validate everything that needs no model or builder; the request with paths as Paths."""
    source = Path(request.source)
    if not source.is_file():
        raise ValueError(f"{source}: no such checkpoint or ONNX file")
    wanted = precision(request.precision or "fp16")
    if request.input_format is not None and request.input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown --input {request.input_format!r}; choose {' or '.join(INPUT_FORMATS)}")
    if request.builder not in (*BUILDER_MODULES, "auto"):
        raise ValueError(f"unknown builder {request.builder!r}; choose tensorrt, tensorrt-rtx or auto")
    if not 1 <= request.max_batch <= MAX_BATCH:
        raise ValueError(f"--max-batch must be between 1 and {MAX_BATCH}, got {request.max_batch}")
    if not 1 <= request.opt_batch <= request.max_batch:
        raise ValueError(f"--opt-batch must be between 1 and --max-batch ({request.max_batch}), got {request.opt_batch}")
    for target in request.targets:
        if not re.fullmatch(r"sm_\d{2,3}", target):
            raise ValueError(f"bad --target {target!r}: expected a compute capability like sm_87 or sm_120")
        if int(target[3:]) < wanted.min_sm:
            device = f" ({DEVICE_NAMES[target]})" if target in DEVICE_NAMES else ""
            raise ValueError(
                f"{wanted.name} needs compute capability ≥ {wanted.min_capability()}; "
                f"{target}{device} has no {wanted.hardware}: use fp16 or int8"
            )
    _check_calibration(request, wanted, source)
    return replace(request, source=source, calib=Path(request.calib) if request.calib else None)


def _check_calibration(request: BuildRequest, wanted: Precision, source: Path) -> None:
    """int8/fp8 from a checkpoint need --calib; --calib is for int8/fp8 only. (A QDQ ONNX input
    is already calibrated: check_onnx_input checks it.)"""
    if request.calib is None:
        if wanted.quantized and source.suffix.lower() != ".onnx":
            raise ValueError(
                f"--precision {wanted.name} needs calibration clips: --calib VIDEO_DIR, a folder of videos "
                f"like those the model will see (the runtime cuts them into clips; a quarter is held out for the accuracy report)"
            )
        return
    if not wanted.quantized:
        raise ValueError(f"--calib applies to --precision int8 or fp8, not {wanted.name}")
    if not Path(request.calib).is_dir():
        raise ValueError(f"--calib {request.calib}: no such directory of videos")
    if request.calib_clips < 1:
        raise ValueError(f"--calib-clips must be ≥ 1, got {request.calib_clips}")


def check_onnx_input(request: BuildRequest, meta: DferMetadata) -> None:
    """An ONNX input builds at its own precision; an fp32 one may be calibrated to int8/fp8."""
    if not request.custom_ops and meta.custom_ops:
        raise ValueError(f"{request.source} contains dfer ops; --no-custom-ops applies to checkpoints only")
    if request.input_format not in (None, meta.spec.input_format):
        raise ValueError(f"{request.source} takes {meta.spec.input_format} input; for --input {request.input_format} "
                         f"export the checkpoint again")
    own, wanted = meta.precision, request.precision or meta.precision
    if wanted == own:
        if request.calib is not None:
            raise ValueError(f"{request.source} is already a calibrated {own} QDQ export; drop --calib")
        return
    if own == "fp32" and PRECISIONS[wanted].quantized:
        if request.calib is None:
            raise ValueError(f"--precision {wanted} of the fp32 ONNX {request.source} needs calibration clips: --calib VIDEO_DIR")
        return
    raise ValueError(f"{request.source} is an {own} export; for {wanted} export the checkpoint again")


def targets_for_precision(targets: tuple[str, ...], requested: tuple[str, ...], name: str) -> tuple[str, ...]:
    """fp8 drops the default RTX targets without FP8 (sm_80, sm_86); a GPU without it is an error."""
    need = PRECISIONS[name].min_sm
    if requested or not need:
        return targets
    kept = tuple(t for t in targets if int(t[3:]) >= need)
    if not kept:
        raise ValueError(f"{name} needs compute capability ≥ {PRECISIONS[name].min_capability()}; this build targets {', '.join(targets)}")
    return kept
