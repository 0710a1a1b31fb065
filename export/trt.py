"""Checkpoint (or ONNX) → TensorRT engine → self-describing bundle (DESIGN §5–6).

    python -m export.trt model.pth [-o name.dfer] [--precision fp16|fp32|int8|fp8]
        [--calib VIDEO_DIR [--calib-clips N]] [--max-batch N] [--opt-batch N]
        [--builder tensorrt|tensorrt-rtx|auto] [--target sm_86,...]
        [--no-custom-ops] [--no-plugins] [--no-verify]

Precision lives in the ONNX and every network is built STRONGLY_TYPED (export.builder): fp16
and fp32 are exports at that precision; int8 and fp8 are the fp32 export calibrated on clips
cut from the videos under --calib and quantised to a QDQ graph (calibration/), whose accuracy
cost against fp32 on held-out clips goes into the manifest. A QDQ ONNX (from an earlier bundle)
builds again without --calib. Without any TensorRT builder the ONNX part of the bundle is still
written and the command exits with 3.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from export import bundle as bundle_format
from export.builder import (  # noqa: F401  (re-exported: the builder API as export.trt had it)
    BUILDER_MODULES,
    DEVICE_NAMES,
    FP8_MIN_SM,
    RTX_DEFAULT_TARGETS,
    BuildError,
    BuiltEngine,
    NoBuilderError,
    build_engine,
    import_builder,
    local_gpu_sm,
    resolve_targets,
)

EXIT_BUILD_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_BUILDER = 3
DEFAULT_CALIB_CLIPS = 32
# Files a build writes inside the bundle before model.onnx; deleted when the build fails.
PARTIAL_ONNX, PARTIAL_FP32 = "model.partial.onnx", "model.fp32.partial.onnx"


@dataclass(frozen=True)
class Precision:
    """How a precision reaches the engine: the ONNX export that carries it, the GPUs that have it."""

    onnx: str  # the export precision; a quantised one is the fp32 export, calibrated to QDQ
    quantized: bool = False
    min_sm: int = 0
    hardware: str = ""  # what GPUs below min_sm lack


PRECISIONS = {
    "fp32": Precision("fp32"),
    "fp16": Precision("fp16"),
    "int8": Precision("fp32", quantized=True),
    "fp8": Precision("fp32", quantized=True, min_sm=FP8_MIN_SM, hardware="FP8 tensor cores"),
}


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


def check_request(request: BuildRequest) -> BuildRequest:
    """Validate everything that needs no model or builder, so bad options fail in a second."""
    source = Path(request.source)
    if not source.is_file():
        raise ValueError(f"{source}: no such checkpoint or ONNX file")
    if request.precision is not None and request.precision not in PRECISIONS:
        near = difflib.get_close_matches(request.precision, PRECISIONS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ValueError(f"unknown precision {request.precision!r}; choose one of {', '.join(PRECISIONS)}{hint}")
    if request.builder not in (*BUILDER_MODULES, "auto"):
        raise ValueError(f"unknown builder {request.builder!r}; choose tensorrt, tensorrt-rtx or auto")
    from export.onnx import MAX_BATCH

    if not 1 <= request.max_batch <= MAX_BATCH:
        raise ValueError(f"--max-batch must be between 1 and {MAX_BATCH}, got {request.max_batch}")
    if not 1 <= request.opt_batch <= request.max_batch:
        raise ValueError(f"--opt-batch must be between 1 and --max-batch ({request.max_batch}), got {request.opt_batch}")
    for target in request.targets:
        if not re.fullmatch(r"sm_\d{2,3}", target):
            raise ValueError(f"bad --target {target!r}: expected a compute capability like sm_87 or sm_120")
    precision = PRECISIONS.get(request.precision or "fp16")
    for target in request.targets:
        if int(target[3:]) < precision.min_sm:
            device = f" ({DEVICE_NAMES[target]})" if target in DEVICE_NAMES else ""
            raise ValueError(
                f"{request.precision} needs compute capability ≥ {precision.min_sm // 10}.{precision.min_sm % 10}; "
                f"{target}{device} has no {precision.hardware}: use fp16 or int8"
            )
    _check_calibration(request, precision, source)
    return replace(request, source=source, calib=Path(request.calib) if request.calib else None)


def _check_calibration(request: BuildRequest, precision: Precision, source: Path) -> None:
    """int8/fp8 from a checkpoint need --calib; --calib is for int8/fp8 only. (A QDQ ONNX input
    is already calibrated: _load_source checks it.)"""
    if request.calib is None:
        if precision.quantized and source.suffix.lower() != ".onnx":
            raise ValueError(
                f"--precision {request.precision} needs calibration clips: --calib VIDEO_DIR, a folder of videos "
                f"like those the model will see (the runtime cuts them into clips; a quarter is held out for the accuracy report)"
            )
        return
    if not precision.quantized:
        raise ValueError(f"--calib applies to --precision int8 or fp8, not {request.precision or 'fp16'}")
    if not Path(request.calib).is_dir():
        raise ValueError(f"--calib {request.calib}: no such directory of videos")
    if request.calib_clips < 1:
        raise ValueError(f"--calib-clips must be ≥ 1, got {request.calib_clips}")


def _targets_for_precision(targets: tuple[str, ...], requested: tuple[str, ...], precision: str) -> tuple[str, ...]:
    """fp8 drops the default RTX targets without FP8 (sm_80, sm_86); a GPU without it is an error."""
    need = PRECISIONS[precision].min_sm
    if requested or not need:
        return targets
    kept = tuple(t for t in targets if int(t[3:]) >= need)
    if not kept:
        raise ValueError(f"{precision} needs compute capability ≥ {need // 10}.{need % 10}; this build targets {', '.join(targets)}")
    return kept


# ----------------------------------------------------------------------------------------------
# The pipeline: load → export [→ clips → quant → cost for int8/fp8] → parse → build → verify


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
    facts: dict
    manifest: dict


def build_bundle(request: BuildRequest, out=print) -> dict:
    """Run the whole command; returns the written manifest. Raises NoBuilderError after writing
    the ONNX part of the bundle when no builder is installed."""
    request = check_request(request)
    try:
        trt, builder_name = import_builder(request.builder)
        targets = resolve_targets(trt, builder_name, request.targets)
    except NoBuilderError as err:
        trt, missing = None, err
    progress = Progress(out)
    part = write_onnx_part(request, progress)
    entry = None
    if trt is None:
        progress.done("build", time.perf_counter(), f"not built: {missing}", 0.0)
    else:
        entry = add_engine(trt, builder_name, targets, part, request, progress)
    if request.verify:
        part.manifest["verification"] = _verify(part, progress, entry)
        bundle_format.write_manifest(part.output, part.manifest)
    out(progress.table())
    if trt is None:
        raise missing
    return part.manifest


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
    facts = onnx_facts(output / bundle_format.ONNX_NAME)
    manifest = bundle_format.onnx_manifest(facts, previous, output)
    if calibrated is None and previous is not None and previous["onnx"]["sha256"] == facts["sha256"]:
        calibrated = {key: previous.get(key) for key in ("calibration", "accuracy")}  # same QDQ file, same cost
    manifest.update(calibrated or {})
    bundle_format.write_manifest(output, manifest)
    return OnnxPart(output, loaded, facts, manifest)


def add_engine(trt, builder_name: str, targets, part: OnnxPart, request: BuildRequest, progress: Progress) -> dict:
    """Build the engine of the bundle's ONNX, write it with its layer report, list it in the manifest."""
    if builder_name == "tensorrt":  # kept beside the bundle: it belongs to the build machine, not the device
        request = replace(request, timing_cache=part.output.parent / f"{part.output.name}.timing.cache")
    onnx_path = part.output / bundle_format.ONNX_NAME
    targets = _targets_for_precision(targets, request.targets, part.facts["precision"])
    built = build_engine(trt, builder_name, onnx_path, request, targets, tuple(part.facts["custom_ops"]), progress)
    entry = _write_engine(trt, builder_name, built, part.facts, request, part.output)
    progress.done(
        "build", 0.0,
        f"{entry['file']} ({entry['size_bytes'] / 2**20:.1f} MiB, {entry['build']['engine_layers']} engine layers, "
        f"peak RSS {built.peak_rss_mib:.0f} MiB)", built.build_seconds,
    )
    part.manifest["engines"] = [e for e in part.manifest["engines"] if e["file"] != entry["file"]] + [entry]
    bundle_format.write_manifest(part.output, part.manifest)
    return entry


def _prepare_output(output: Path) -> dict | None:
    """The manifest of an existing bundle at output (engines may be kept), or None for a new one."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a bundle directory")
    if (output / bundle_format.MANIFEST_NAME).is_file():
        return bundle_format.Bundle.open(output).manifest
    if output.is_dir() and any(output.iterdir()):
        raise ValueError(f"refusing to write into {output}: it is not empty and not a dfer bundle")
    output.mkdir(parents=True, exist_ok=True)
    return None


def _load_source(request: BuildRequest, progress: Progress):
    """The LoadedModel of a checkpoint, or None for an ONNX input (checked, not yet copied)."""
    started = time.perf_counter()
    if request.source.suffix.lower() == ".onnx":
        from export.onnx import read_metadata

        meta = read_metadata(request.source)  # the metadata alone: onnx_facts parses the file once, later
        if "dfer.spec" not in meta:
            raise ValueError(f"{request.source}: not exported by python -m export.onnx (no dfer metadata)")
        precision = meta.get("dfer.precision", "fp32")
        _check_onnx_precision(request, precision)
        if not request.custom_ops and json.loads(meta["dfer.custom_ops"]):
            raise ValueError(f"{request.source} contains dfer ops; --no-custom-ops applies to checkpoints only")
        progress.done("load", started, f"{meta['dfer.family']} {precision} ONNX from {request.source}")
        return None
    from export.onnx import quiet_exporter
    from models import load

    quiet_exporter()
    loaded = load(request.source)
    marker = " (UNTRAINED demo weights)" if loaded.untrained else ""
    progress.done("load", started, f"{loaded.family} from {request.source}{marker}")
    return loaded


def _check_onnx_precision(request: BuildRequest, precision: str) -> None:
    """An ONNX input builds at its own precision; an fp32 one may be calibrated to int8/fp8."""
    wanted = request.precision or precision
    if wanted == precision:
        if request.calib is not None:
            raise ValueError(f"{request.source} is already a calibrated {precision} QDQ export; drop --calib")
        return
    if precision == "fp32" and PRECISIONS[wanted].quantized:
        if request.calib is None:
            raise ValueError(f"--precision {wanted} of the fp32 ONNX {request.source} needs calibration clips: --calib VIDEO_DIR")
        return
    raise ValueError(f"{request.source} is an {precision} export; for {wanted} export the checkpoint again")


def _export_into(request: BuildRequest, loaded, output: Path, progress: Progress) -> dict | None:
    """Write the bundle's model.onnx: export the checkpoint (calibrated to QDQ for int8/fp8),
    or copy the ONNX input (calibrating an fp32 one when asked). Returns the manifest's
    calibration and accuracy entries of a new calibration, else None."""
    target = output / bundle_format.ONNX_NAME
    if loaded is None and request.calib is None:
        started = time.perf_counter()
        if request.source.resolve() != target.resolve():
            shutil.copyfile(request.source, target)
        progress.done("export", started, f"{target} (copied; ONNX input, no PyTorch reference)")
        return None
    precision = request.precision or "fp16"
    fp32 = _fp32_onnx(request, loaded, output, progress) if PRECISIONS[precision].quantized else None
    if fp32 is None:
        _export(request, loaded, output / PARTIAL_ONNX, precision, progress)
        (output / PARTIAL_ONNX).replace(target)
        return None
    try:
        spec = _spec_of(loaded, fp32)
        calibrated = _calibrate(request, fp32, output / PARTIAL_ONNX, spec, precision, progress)
    finally:
        if fp32 != request.source:
            fp32.unlink(missing_ok=True)
    (output / PARTIAL_ONNX).replace(target)
    return calibrated


def _export(request: BuildRequest, loaded, path: Path, precision: str, progress: Progress) -> None:
    from export.onnx import export_onnx

    result = export_onnx(loaded, path, custom_ops=request.custom_ops, precision=PRECISIONS[precision].onnx)
    custom = ", ".join(f"dfer::{op}" for op in result.custom_ops) or "none"
    progress.done(
        "export", 0.0,
        f"{path.parent / bundle_format.ONNX_NAME} ({PRECISIONS[precision].onnx}, {result.size_bytes / 2**20:.1f} MiB, "
        f"{sum(result.op_counts.values())} nodes, custom ops: {custom})",
        result.seconds,
    )


def _fp32_onnx(request: BuildRequest, loaded, output: Path, progress: Progress) -> Path:
    """The fp32 ONNX to calibrate: the ONNX input itself, or a fresh export of the checkpoint."""
    if loaded is None:
        return request.source
    _export(request, loaded, output / PARTIAL_FP32, "fp32", progress)
    return output / PARTIAL_FP32


def _spec_of(loaded, fp32: Path):
    from export.onnx import read_metadata
    from runtime.spec import ModelSpec

    return loaded.spec if loaded is not None else ModelSpec.from_dict(json.loads(read_metadata(fp32)["dfer.spec"]))


def _calibrate(request: BuildRequest, fp32: Path, output: Path, spec, precision: str, progress: Progress) -> dict:
    """Clips from --calib → QDQ ONNX at output → accuracy cost on the held-out clips."""
    from calibration import accuracy_cost, calibration_clips, quantize

    started = time.perf_counter()
    sets = calibration_clips(request.calib, spec, request.calib_clips)
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
    cost = accuracy_cost(fp32, output, held.clips, spec.labels)
    progress.done(
        "cost", started,
        f"{precision} QDQ vs fp32 in ONNX Runtime, {cost['clips']} held-out clips: top-1 agreement {cost['top1_agree']:.0%}, "
        f"max |Δprob| {cost['max_prob_diff']:.1e}, mean KL {cost['mean_kl']:.1e}",
    )
    from calibration import SCHEMES

    calibration = {
        "precision": precision,
        "method": f"onnxruntime.quantization {SCHEMES[precision].method}: {SCHEMES[precision].description}",
        "clips": len(calib),
        "videos": [str(v) for v in calib.videos],
        "held_out_clips": len(held),
        "held_out_videos": [str(v) for v in held.videos],
        "quantized_layers": result.quantized_nodes,
        "activation_qdq": result.activations,
        "seconds": round(result.seconds, 1),
    }
    return {"calibration": calibration, "accuracy": cost}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def onnx_facts(path: Path) -> dict:
    """What the manifest says about an exported ONNX file: metadata, opset, tensors, sha256.

    The one full parse of the file in a build (the input's metadata is read without it)."""
    import onnx

    from models import sha256_of

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props if p.key.startswith("dfer.")}
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}

    def tensor(value):
        kind = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in kind.shape.dim]
        return {"name": value.name, "dtype": dtypes.get(kind.elem_type, str(kind.elem_type)), "shape": shape}

    clip = tensor(proto.graph.input[0])
    precision = meta.get("dfer.precision", "fp16" if clip["dtype"] == "float16" else "fp32")
    if clip["dtype"] != ("float16" if precision == "fp16" else "float32"):
        raise ValueError(f"{path}: input {clip['name']!r} is {clip['dtype']}, but the file says it is a {precision} export")
    return {
        "meta": meta,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input": clip,
        "outputs": [tensor(o) for o in proto.graph.output],
        "custom_ops": json.loads(meta.get("dfer.custom_ops", "[]")),
        "precision": precision,
        "sha256": sha256_of(path),
        "size_bytes": path.stat().st_size,
    }


def _write_engine(trt, builder_name, built: BuiltEngine, facts, request, output: Path) -> dict:
    precision = facts["precision"]
    stem = bundle_format.engine_stem(builder_name, built.targets, precision)
    engine_file, report_file, log_file = f"{stem}.engine", f"{stem}.layers.json", f"{stem}.build.log"
    view = memoryview(built.data)
    (output / engine_file).write_bytes(view)
    (output / report_file).write_text(json.dumps(built.layer_report, indent=1) + "\n")
    info = trt.ILogger.Severity.INFO
    warnings = sum(1 for severity, _ in built.log if severity == trt.ILogger.Severity.WARNING)
    (output / log_file).write_text("".join(f"{s.name}: {m}\n" for s, m in built.log if int(s) <= int(info)))
    return {
        "file": engine_file,
        "sha256": hashlib.sha256(view).hexdigest(),
        "size_bytes": view.nbytes,
        "builder": builder_name,
        "builder_version": trt.__version__,
        "gpu_sm": list(built.targets),
        "precision": precision,
        "batch_profile": {"min": 1, "opt": request.opt_batch, "max": request.max_batch},
        "plugins": built.plugins,
        "layer_report": report_file,
        "build": {
            "seconds": round(built.build_seconds, 2),
            "parse_seconds": round(built.parse_seconds, 2),
            "peak_rss_mib": built.peak_rss_mib,
            "rss_increase_mib": built.rss_increase_mib,
            "peak_rss_scope": built.peak_rss_scope,
            "network_layers": built.layer_report["network"]["layers"],
            "engine_layers": built.layer_report["engine"]["count"],
            "warnings": warnings,
            "log": log_file,
            "timing_cache": request.timing_cache.name if request.timing_cache else None,
        },
    }


def _verify(part: OnnxPart, progress: Progress, engine: dict | None) -> dict:
    """ONNX Runtime on generated clips (vs fp32 PyTorch when the checkpoint is at hand); the
    engine itself runs only where its GPU is, which this command says plainly."""
    import numpy as np

    from export.onnx import INPUT_NAME, OUTPUT_NAME, generated_clips, onnx_session, verify
    from runtime.spec import ModelSpec

    started = time.perf_counter()
    path, facts = part.output / bundle_format.ONNX_NAME, part.facts
    precision = facts["precision"]
    if part.loaded is not None:
        report = verify(part.loaded, path)
        result = {
            "reference": "PyTorch fp32",
            "clips": len(report["probabilities"]),
            "top1_agree": report["top1_agree"],
            "max_prob_diff": report["max_prob_diff"],
            "max_abs_logit_diff": report["max_abs_diff"],
        }
        text = (
            f"ONNX Runtime {precision} vs PyTorch fp32, {result['clips']} generated clips: top-1 agreement "
            f"{result['top1_agree']:.0%}, max |Δprob| {result['max_prob_diff']:.1e}, max |Δlogit| {result['max_abs_logit_diff']:.1e}"
        )
    else:
        spec = ModelSpec.from_dict(json.loads(facts["meta"]["dfer.spec"]))
        clips = generated_clips(spec, 2).astype(facts["input"]["dtype"])
        logits = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: clips})[0]
        result = {"reference": None, "clips": 2, "finite": bool(np.isfinite(logits).all())}
        text = f"ONNX Runtime {precision} ran 2 generated clips (finite: {result['finite']}); no PyTorch reference for an ONNX input"
    result["engine"], result["engine_vs_onnxruntime"] = _run_engine(part, engine)
    progress.done("verify", started, f"{text}; {result['engine']}")
    return result


def _run_engine(part: OnnxPart, engine: dict | None, batch: int = 4) -> tuple[str, dict | None]:
    """Run the new engine through the runtime's TensorRT backend on generated clips, against
    ONNX Runtime on the same clips; where it cannot run here, say why (a note, not a failure)."""
    if engine is None:
        return "no engine built", None
    import numpy as np

    from export.onnx import INPUT_NAME, OUTPUT_NAME, generated_clips, onnx_session, softmax
    from runtime.backends import BackendUnavailable
    from runtime.model import load_model_source
    from runtime.trt_backend import TensorRtBackend

    source = load_model_source(part.output)
    try:
        backend = TensorRtBackend(source)
    except BackendUnavailable as why:
        return f"engine built but not executed: {why}", None
    try:
        if backend.engine_info.path.name != engine["file"]:
            return f"engine built but not executed: this GPU ({backend.sm}) takes {backend.engine_info.path.name} from the bundle", None
        clips = generated_clips(source.spec, batch).astype(backend.input_dtype)
        ours = backend.run(clips).astype(np.float64)
    finally:
        backend.close()
    reference = onnx_session(part.output / bundle_format.ONNX_NAME).run([OUTPUT_NAME], {INPUT_NAME: clips})[0].astype(np.float64)
    p, q = softmax(ours), softmax(reference)
    report = {"clips": batch, "top1_agree": float((p.argmax(1) == q.argmax(1)).mean()), "max_prob_diff": float(np.abs(p - q).max())}
    return (f"engine ran on {backend.sm}: top-1 agreement with ONNX Runtime {report['top1_agree']:.0%}, "
            f"max |Δprob| {report['max_prob_diff']:.1e} ({batch} generated clips)"), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.trt", description="Build a dfer bundle: ONNX + TensorRT engine + manifest.")
    parser.add_argument("source", help="checkpoint (.pth/.ckpt) or an ONNX file written by python -m export.onnx")
    parser.add_argument("-o", "--output", help="bundle directory (default: beside the source, suffix .dfer)")
    parser.add_argument("--precision", help="fp16 (default for checkpoints), fp32, int8, fp8 (int8/fp8 need --calib)")
    parser.add_argument("--calib", help="int8/fp8: folder of videos to calibrate on (a quarter held out for the accuracy cost)")
    parser.add_argument("--calib-clips", type=int, default=DEFAULT_CALIB_CLIPS,
                        help=f"int8/fp8: most clips to calibrate on, and to measure the cost on (default {DEFAULT_CALIB_CLIPS})")
    parser.add_argument("--max-batch", type=int, default=16, help="largest batch the engine accepts (default 16)")
    parser.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default min(4, max batch))")
    parser.add_argument("--builder", default="auto", help="tensorrt, tensorrt-rtx or auto (default)")
    parser.add_argument("--target", default="", help="comma-separated GPU targets, e.g. sm_86,sm_89 (TensorRT-RTX)")
    parser.add_argument("--no-custom-ops", action="store_true", help="export the plain graph, no dfer nodes")
    parser.add_argument("--no-plugins", action="store_true", help="inline the dfer ops even where plugins exist")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    args = parser.parse_args(argv)
    request = BuildRequest(
        source=Path(args.source),
        output=Path(args.output) if args.output else None,
        precision=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch if args.opt_batch is not None else min(4, max(args.max_batch, 1)),
        builder=args.builder,
        targets=tuple(t.strip() for t in args.target.split(",") if t.strip()),
        custom_ops=not args.no_custom_ops,
        plugins=not args.no_plugins,
        verify=not args.no_verify,
        calib=Path(args.calib) if args.calib else None,
        calib_clips=args.calib_clips,
    )
    try:
        build_bundle(request)
    except NoBuilderError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NO_BUILDER
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
