"""Writing a dfer bundle: engine file names, the facts of an exported ONNX, the typed manifest
entries (runtime.bundle's Manifest, OnnxEntry, EngineEntry) and the atomic manifest write.

The layout, schema and reader live in runtime.bundle, which a camera box installs without
export/; everything written here is checked by runtime.bundle.validate_manifest first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from export.precision import PRECISIONS
from runtime.bundle import (
    BUILDERS,
    MANIFEST_NAME,
    BatchProfile,
    Bundle,
    EngineEntry,
    Manifest,
    ModelEntry,
    OnnxEntry,
    TensorEntry,
    validate_manifest,
)
from runtime.metadata import DferMetadata

CREATED_BY = "python -m export.trt"


def engine_stem(builder: str, gpu_sm: list[str] | tuple[str, ...], precision: str) -> str:
    """'model.tensorrt.sm_87.fp16', 'model.tensorrt-rtx.sm_80-86-89-120.fp16': builder, GPUs, precision."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown builder {builder!r}; known: {', '.join(BUILDERS)}")
    numbers = [sm.removeprefix("sm_") for sm in gpu_sm]
    return f"model.{builder}.sm_{'-'.join(numbers)}.{precision}"


@dataclass(frozen=True)
class OnnxFacts:
    """What the manifest says about an exported ONNX file."""

    metadata: DferMetadata
    onnx: OnnxEntry
    input: TensorEntry
    outputs: tuple[TensorEntry, ...]

    @property
    def precision(self) -> str:
        return self.onnx.precision


def onnx_facts(path: Path) -> OnnxFacts:
    """Metadata, opset, tensors and sha256 of an exported ONNX file: the one full parse of the
    file in a build (an ONNX input's metadata is read without it)."""
    import onnx

    from models import sha256_of

    proto = onnx.load(str(path))
    meta = DferMetadata.from_props({p.key: p.value for p in proto.metadata_props}, path)
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8"}

    def tensor(value) -> TensorEntry:
        kind = value.type.tensor_type
        shape = tuple(d.dim_param or d.dim_value for d in kind.shape.dim)
        return TensorEntry(name=value.name, dtype=dtypes.get(kind.elem_type, str(kind.elem_type)), shape=shape)

    clip = tensor(proto.graph.input[0])
    if meta.precision not in PRECISIONS or clip.dtype != graph_input_dtype(meta.spec, meta.precision):
        raise ValueError(f"{path}: input {clip.name!r} is {clip.dtype}, but the file says it is a {meta.precision} export "
                         f"taking {meta.spec.input_format} input")
    entry = OnnxEntry(
        file=path.name, sha256=sha256_of(path), size_bytes=path.stat().st_size,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        precision=meta.precision, custom_ops=tuple(meta.custom_ops),
    )
    return OnnxFacts(metadata=meta, onnx=entry, input=clip, outputs=tuple(tensor(o) for o in proto.graph.output))


def graph_input_dtype(spec, precision: str) -> str:
    """The numpy dtype of an export's input: uint8 for a uint8-input graph at any precision
    (it normalises inside), else the precision's own (export.precision)."""
    return "uint8" if spec.input_format == "uint8" else PRECISIONS[precision].input_dtype


def onnx_manifest(facts: OnnxFacts, previous: Manifest | None) -> Manifest:
    """The manifest of a bundle whose model.onnx was just written. The engines and calibration
    record of an earlier identical ONNX (same sha256) are kept; see stale_files for the others."""
    same = previous is not None and previous.onnx.sha256 == facts.onnx.sha256
    meta = facts.metadata
    return Manifest(
        model=ModelEntry(family=meta.family, checkpoint_sha256=meta.checkpoint_sha256, untrained=meta.untrained, demo=meta.demo,
                         spec=meta.spec, config=meta.config),
        input=facts.input,
        outputs=facts.outputs,
        onnx=facts.onnx,
        engines=previous.engines if same else (),
        calibration=previous.calibration if same else None,
        accuracy=previous.accuracy if same else None,
        created_by=CREATED_BY,
        # plugins: AOT PTX of kernels/' TensorRT plugins, per op and GPU: none yet
        extra={"plugins": [], **(previous.extra if same else {})},
    )


def stale_files(previous: Manifest | None, facts: OnnxFacts) -> list[str]:
    """Files of the engines of a different earlier ONNX: deleted, so no engine of another
    model can be picked up by mistake."""
    if previous is None or previous.onnx.sha256 == facts.onnx.sha256:
        return []
    return [name for engine in previous.engines for name in engine.files()]


def write_engine(output: Path, built, *, trt, builder: str, precision: str, request) -> EngineEntry:
    """Write a built engine, its layer report and its build log into the bundle; their entry."""
    stem = engine_stem(builder, built.targets, precision)
    engine_file, report_file, log_file = f"{stem}.engine", f"{stem}.layers.json", f"{stem}.build.log"
    view = memoryview(built.data)
    (output / engine_file).write_bytes(view)
    (output / report_file).write_text(json.dumps(built.layer_report, indent=1) + "\n")
    info, warning = trt.ILogger.Severity.INFO, trt.ILogger.Severity.WARNING
    (output / log_file).write_text("".join(f"{s.name}: {m}\n" for s, m in built.log if int(s) <= int(info)))
    return EngineEntry(
        file=engine_file,
        sha256=hashlib.sha256(view).hexdigest(),
        size_bytes=view.nbytes,
        builder=builder,
        builder_version=trt.__version__,
        gpu_sm=tuple(built.targets),
        precision=precision,
        batch_profile=BatchProfile(min=1, opt=request.opt_batch, max=request.max_batch),
        plugins=built.plugins,
        layer_report=report_file,
        build={
            "seconds": round(built.build_seconds, 2),
            "parse_seconds": round(built.parse_seconds, 2),
            "peak_rss_mib": built.peak_rss_mib,
            "rss_increase_mib": built.rss_increase_mib,
            "peak_rss_scope": built.peak_rss_scope,
            "network_layers": built.layer_report["network"]["layers"],
            "engine_layers": built.layer_report["engine"]["count"],
            "warnings": sum(1 for severity, _ in built.log if severity == warning),
            "log": log_file,
            "timing_cache": request.timing_cache.name if request.timing_cache else None,
        },
    )


def with_engine(manifest: Manifest, entry: EngineEntry) -> Manifest:
    """The manifest listing entry, in place of an earlier engine of the same file name."""
    kept = tuple(e for e in manifest.engines if e.file != entry.file)
    return dataclasses.replace(manifest, engines=(*kept, entry))


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> Path:
    """Validate, then write manifest.json atomically (a reader never sees half a manifest)."""
    path = Path(path)
    data = manifest.to_dict()
    validate_manifest(data, where=str(path / MANIFEST_NAME))
    partial = path / (MANIFEST_NAME + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    partial.replace(path / MANIFEST_NAME)
    return path / MANIFEST_NAME


def read_manifest(path: str | os.PathLike) -> Manifest | None:
    """The manifest of an existing bundle directory, validated, or None if there is none."""
    path = Path(path)
    if not (path / MANIFEST_NAME).is_file():
        return None
    return Bundle.open(path).manifest
