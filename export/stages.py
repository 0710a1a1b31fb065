"""The build pipeline of python -m export.trt, one stage after another:

    load → export [→ clips → quant → cost, for int8/fp8] → parse → build → verify

The ONNX part of the bundle (model.onnx and a valid manifest) is written first, so it stands
when no builder is installed or the build fails; each later stage rewrites the manifest. Every
stage prints one line as it finishes and the command ends with a table of them (Progress).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from export.builder import NoBuilderError, build_engine, import_builder, resolve_targets
from export.calibrate import calibrate
from export.manifest import (
    OnnxFacts,
    onnx_facts,
    onnx_manifest,
    read_manifest,
    stale_files,
    with_engine,
    write_engine,
    write_manifest,
)
from export.precision import PRECISIONS
from export.request import (
    BuildRequest,
    check_onnx_input,
    check_request,
    targets_for_precision,
)
from export.verify import Verification, VerificationFailed, verify_engine, verify_onnx
from runtime.bundle import MANIFEST_NAME, ONNX_NAME, EngineEntry, Manifest
from runtime.metadata import read_metadata

# Files a build writes inside the bundle before model.onnx; deleted when the build fails.
PARTIAL_ONNX, PARTIAL_FP32 = "model.partial.onnx", "model.fp32.partial.onnx"


@dataclass
class Progress:
    """Prints each stage as it finishes and keeps it for the summary table."""

    out: object = print
    rows: list = field(default_factory=list)

    def done(self, stage: str, started: float, result: str, seconds: float | None = None) -> None:
        seconds = time.perf_counter() - started if seconds is None else seconds
        self.rows.append((stage, seconds, result))
        self.out(f"{stage:<7} {seconds:6.1f} s  {result}")

    def table(self) -> str:
        lines = ["", f"{'stage':<7} {'seconds':>8}  result", f"{'-' * 7} {'-' * 8}  {'-' * 50}"]
        lines += [f"{stage:<7} {seconds:8.1f}  {result}" for stage, seconds, result in self.rows]
        total = sum(seconds for _, seconds, _ in self.rows)
        return "\n".join(lines + [f"{'total':<7} {total:8.1f}"])


@dataclass
class OnnxPart:
    """A bundle directory holding its model.onnx and a valid manifest (engines kept or none)."""

    output: Path
    loaded: object  # the LoadedModel, or None for an ONNX input
    facts: OnnxFacts
    manifest: Manifest

    def update(self, manifest: Manifest) -> None:
        self.manifest = manifest
        write_manifest(self.output, manifest)


@dataclass(frozen=True)
class Builder:
    module: object  # tensorrt or tensorrt_rtx
    name: str
    targets: tuple[str, ...]


def build_bundle(request: BuildRequest, out=print) -> Manifest:
    """Run the whole command; returns the written manifest. Raises VerificationFailed when the
    export or engine disagrees with its reference, NoBuilderError when no builder is installed
    (both after writing what was built)."""
    request = check_request(request)
    try:
        builder, missing = _builder(request), None
    except NoBuilderError as err:
        builder, missing = None, err
    progress = Progress(out)
    part = write_onnx_part(request, progress)
    engine = None
    if builder is None:
        progress.done("build", time.perf_counter(), f"not built: {missing}", 0.0)
    else:
        engine = add_engine(builder, part, request, progress)
    verification = _verify(part, engine, progress) if request.verify else None
    out(progress.table())
    if verification is not None and verification.failure:
        raise VerificationFailed(f"verification failed: {verification.failure} (recorded in {part.output / MANIFEST_NAME})")
    if missing is not None:
        raise missing
    return part.manifest


def _builder(request: BuildRequest) -> Builder:
    module, name = import_builder(request.builder)
    return Builder(module, name, resolve_targets(module, name, request.targets))


def write_onnx_part(request: BuildRequest, progress: Progress) -> OnnxPart:
    """Load, put model.onnx into the bundle and write a manifest without a new engine."""
    output = Path(request.output or request.source.with_suffix(".dfer"))
    loaded = _load_source(request, progress)
    created = not output.exists()
    previous = _prepare_output(output)
    try:
        calibrated = _export_into(request, loaded, output, progress)
    except BaseException:  # leave no half-written file behind, and no empty directory we made
        for name in (PARTIAL_ONNX, PARTIAL_FP32):
            (output / name).unlink(missing_ok=True)
        if created and not any(output.iterdir()):
            output.rmdir()
        raise
    facts = onnx_facts(output / ONNX_NAME)
    for name in stale_files(previous, facts):
        (output / name).unlink(missing_ok=True)
    manifest = onnx_manifest(facts, previous)
    if calibrated is not None:
        record, cost = calibrated
        manifest = replace(manifest, calibration=record.to_dict(), accuracy=cost)
    write_manifest(output, manifest)
    return OnnxPart(output, loaded, facts, manifest)


def add_engine(builder: Builder, part: OnnxPart, request: BuildRequest, progress: Progress) -> EngineEntry:
    """Build the engine of the bundle's ONNX, write it with its layer report, list it in the manifest."""
    if builder.name == "tensorrt":  # kept beside the bundle: it belongs to the build machine, not the device
        request = replace(request, timing_cache=part.output.parent / f"{part.output.name}.timing.cache")
    precision = part.facts.precision
    targets = targets_for_precision(builder.targets, request.targets, precision)
    built = build_engine(builder.module, builder.name, onnx_path=part.output / ONNX_NAME, request=request, targets=targets,
                         custom_ops=part.facts.onnx.custom_ops, progress=progress)
    entry = write_engine(part.output, built, trt=builder.module, builder=builder.name, precision=precision, request=request)
    progress.done(
        "build", 0.0,
        f"{entry.file} ({entry.size_bytes / 2**20:.1f} MiB, {entry.build['engine_layers']} engine layers, "
        f"peak RSS {built.peak_rss_mib:.0f} MiB)", built.build_seconds,
    )
    part.update(with_engine(part.manifest, entry))
    return entry


def _verify(part: OnnxPart, engine: EngineEntry | None, progress: Progress) -> Verification:
    """Check the ONNX (and the engine where it runs here); the result goes into the manifest."""
    started = time.perf_counter()
    precision = part.facts.precision
    verification = verify_onnx(part.output / ONNX_NAME, precision, spec=part.facts.metadata.spec, loaded=part.loaded)
    verification = verify_engine(part.output, engine, verification, precision=precision)
    part.update(replace(part.manifest, verification=verification.record()))
    progress.done("verify", started, verification.summary(precision))
    return verification


def _prepare_output(output: Path) -> Manifest | None:
    """The manifest of an existing bundle at output (engines may be kept), or None for a new one."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a bundle directory")
    if (output / MANIFEST_NAME).is_file():
        return read_manifest(output)
    if output.is_dir() and any(output.iterdir()):
        raise ValueError(f"refusing to write into {output}: it is not empty and not a dfer bundle")
    output.mkdir(parents=True, exist_ok=True)
    return None


def _load_source(request: BuildRequest, progress: Progress):
    """The LoadedModel of a checkpoint, or None for an ONNX input (checked, not yet copied)."""
    started = time.perf_counter()
    if request.source.suffix.lower() == ".onnx":
        meta = read_metadata(request.source)  # the metadata alone: onnx_facts parses the file once, later
        check_onnx_input(request, meta)
        progress.done("load", started, f"{meta.family} {meta.precision} ONNX from {request.source}")
        return None
    from models import load

    loaded = load(request.source)
    marker = f" ({loaded.weights_note})" if loaded.weights_note else ""
    progress.done("load", started, f"{loaded.family} from {request.source}{marker}")
    return loaded


def _export_into(request: BuildRequest, loaded, output: Path, progress: Progress):
    """Write the bundle's model.onnx: export the checkpoint (calibrated to QDQ for int8/fp8),
    or copy the ONNX input (calibrating an fp32 one when asked). Returns the calibration record
    and accuracy cost of a new calibration, else None."""
    target = output / ONNX_NAME
    if loaded is None and request.calib is None:
        started = time.perf_counter()
        if request.source.resolve() != target.resolve():
            shutil.copyfile(request.source, target)
        progress.done("export", started, f"{target} (copied; ONNX input, no PyTorch reference)")
        return None
    precision = request.precision or "fp16"
    if not PRECISIONS[precision].quantized:
        _export(request, loaded, output / PARTIAL_ONNX, precision, progress)
        (output / PARTIAL_ONNX).replace(target)
        return None
    fp32 = _fp32_onnx(request, loaded, output, progress)
    try:
        spec = read_metadata(fp32).spec  # the export's own: a uint8-input graph is calibrated on uint8 clips
        calibrated = calibrate(videos=request.calib, clips=request.calib_clips, fp32=fp32, output=output / PARTIAL_ONNX,
                               spec=spec, precision=precision, progress=progress)
    finally:
        if fp32 != request.source:
            fp32.unlink(missing_ok=True)
    (output / PARTIAL_ONNX).replace(target)
    return calibrated


def _export(request: BuildRequest, loaded, path: Path, precision: str, progress: Progress) -> None:
    from export.onnx import export_onnx

    export = PRECISIONS[precision].export
    input_format = request.input_format or "float"
    result = export_onnx(loaded, path, custom_ops=request.custom_ops, precision=export, input_format=input_format)
    custom = ", ".join(f"dfer::{op}" for op in result.custom_ops) or "none"
    progress.done(
        "export", 0.0,
        f"{path.parent / ONNX_NAME} ({export}, {input_format} input, {result.size_bytes / 2**20:.1f} MiB, "
        f"{sum(result.op_counts.values())} nodes, custom ops: {custom})",
        result.seconds,
    )


def _fp32_onnx(request: BuildRequest, loaded, output: Path, progress: Progress) -> Path:
    """The fp32 ONNX to calibrate: the ONNX input itself, or a fresh export of the checkpoint."""
    if loaded is None:
        return request.source
    _export(request, loaded, output / PARTIAL_FP32, "fp32", progress)
    return output / PARTIAL_FP32
