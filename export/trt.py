"""Checkpoint (or ONNX) → TensorRT engine → self-describing bundle (DESIGN §5–6).

    python -m export.trt model.pth [-o name.dfer] [--precision fp16|fp32|int8|fp8]
        [--max-batch N] [--opt-batch N] [--builder tensorrt|tensorrt-rtx|auto]
        [--target sm_86,...] [--no-custom-ops] [--no-plugins] [--no-verify]

Precision lives in the ONNX and every network is built STRONGLY_TYPED, the one form that
TensorRT 10 (JetPack 6 ships 10.3), TensorRT 11 and TensorRT for RTX all build; nothing here
uses an API that TensorRT 11 removed (weak typing, precision flags, INT8 calibrators).

Two real NVIDIA builders share this code through their common API: ``tensorrt`` builds for the
GPU it runs on (data centre, Jetson); ``tensorrt_rtx`` (pip tensorrt-rtx-cu13) builds ahead of
time without any GPU, for RTX GPUs (sm_75 on request; sm_80, 86, 89, 120 by default).
Without either, the ONNX part of the bundle is still written and the command exits with 3.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import hashlib
import importlib
import json
import re
import resource
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from export import bundle as bundle_format

BUILDER_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
INSTALL_HINT = (
    "no TensorRT builder is installed: pip install tensorrt-cu12 or tensorrt-cu13 (data-centre GPUs), "
    "JetPack 6's apt packages nvidia-tensorrt and python3-libnvinfer (Jetson), or tensorrt-rtx-cu13 (RTX GPUs)"
)
# TensorRT-RTX's default portable set (its docs): Ampere, Ada and Blackwell RTX GPUs.
RTX_DEFAULT_TARGETS = ("sm_80", "sm_86", "sm_89", "sm_120")
DEVICE_NAMES = {"sm_72": "Jetson Xavier", "sm_87": "Jetson Orin", "sm_90": "H100/H200", "sm_100": "B200"}
FP8_MIN_SM = 89  # Ada, Hopper, Blackwell
EXIT_BUILD_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_BUILDER = 3


@dataclass(frozen=True)
class Precision:
    """How a precision reaches the engine: the ONNX export that carries it, the GPUs that have it."""

    onnx: str | None  # the export precision; None = a calibrated QDQ export (calibration/)
    min_sm: int = 0
    hardware: str = ""  # what GPUs below min_sm lack


PRECISIONS = {
    "fp32": Precision("fp32"),
    "fp16": Precision("fp16"),
    "int8": Precision(None),
    "fp8": Precision(None, min_sm=FP8_MIN_SM, hardware="FP8 tensor cores"),
}


class NoBuilderError(RuntimeError):
    """No TensorRT builder could be imported; the message says what to install."""


class BuildError(RuntimeError):
    """The builder refused the network; the message carries its first errors."""


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
    if precision.onnx is None:
        raise ValueError(
            f"{request.precision} needs a calibrated QDQ export from real clips (calibration/), which is not "
            f"available yet: use --precision fp16"
        )
    return replace(request, source=source)


# ----------------------------------------------------------------------------------------------
# Builders and targets


def import_builder(name: str):
    """(module, builder name) for 'tensorrt', 'tensorrt-rtx' or 'auto'; NoBuilderError if absent.

    auto takes TensorRT when a GPU is present (it builds for that GPU), else TensorRT-RTX.
    """
    order = [name] if name != "auto" else (["tensorrt", "tensorrt-rtx"] if local_gpu_sm() else ["tensorrt-rtx", "tensorrt"])
    reasons = []
    for candidate in order:
        try:
            trt = importlib.import_module(BUILDER_MODULES[candidate])
        except (ImportError, OSError) as err:
            reasons.append(f"{candidate}: {err}")
            continue
        if candidate == "tensorrt" and int(trt.__version__.split(".")[0]) < 10:
            raise NoBuilderError(f"TensorRT {trt.__version__} is too old: strongly typed builds need TensorRT ≥ 10 (JetPack 6)")
        return trt, candidate
    raise NoBuilderError(INSTALL_HINT if name == "auto" else f"{name} is not importable ({reasons[0]}); {INSTALL_HINT}")


def local_gpu_sm() -> str | None:
    """Compute capability of CUDA device 0 as 'sm_XY', from the driver; None without a GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    return f"sm_{major.value}{minor.value}"


def resolve_targets(trt, builder: str, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The GPUs the engine is built for, or ValueError saying which builder can build them."""
    if builder == "tensorrt":
        here = local_gpu_sm()
        if here is None:
            raise ValueError(
                "the tensorrt builder builds for the GPU it runs on and this machine has none: build on the "
                "target device, or use --builder tensorrt-rtx for RTX GPUs"
            )
        if requested and requested != (here,):
            raise ValueError(f"the tensorrt builder builds for this machine's GPU ({here}), not {','.join(requested)}: run it on the target")
        return (here,)
    supported = sorted((f"sm_{n[2:]}" for n in trt.ComputeCapability.__members__ if re.fullmatch(r"SM\d+", n)), key=lambda s: int(s[3:]))
    for target in requested:
        if target not in supported:
            device = f" ({DEVICE_NAMES[target]})" if target in DEVICE_NAMES else ""
            raise ValueError(
                f"TensorRT-RTX cannot build for {target}{device}; it targets {', '.join(supported)}. "
                f"Build with --builder tensorrt on that GPU"
            )
    return requested or tuple(t for t in RTX_DEFAULT_TARGETS if t in supported)


# ----------------------------------------------------------------------------------------------
# One engine build

_LOGGERS: dict = {}
_LAYER_LINE = re.compile(
    r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[.*\], Constants: \[.*\], "
    r"Outputs: \[(?P<outputs>.*)\], TacticName: (?P<tactic>[^,]*), StreamId: \d+, Metadata: (?P<meta>.*)$"
)


@dataclass
class BuiltEngine:
    data: object  # the serialized engine (IHostMemory, buffer protocol)
    targets: tuple[str, ...]
    parse_seconds: float
    build_seconds: float
    peak_rss_mib: float
    rss_increase_mib: float
    peak_rss_scope: str
    layer_report: dict
    plugins: dict
    log: list = field(repr=False)


def _logger(trt):
    """One capturing logger per builder module: TensorRT keeps the first logger it is given."""
    if trt.__name__ not in _LOGGERS:

        class CapturingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.records = []

            def log(self, severity, msg):
                self.records.append((severity, msg))

        _LOGGERS[trt.__name__] = CapturingLogger()
    logger = _LOGGERS[trt.__name__]
    logger.records = []
    return logger


def build_engine(trt, builder_name: str, onnx_path: Path, request: BuildRequest, targets, custom_ops, progress) -> BuiltEngine:
    """Parse strongly typed, one batch profile (1, opt, max), build; measure time and memory."""
    logger = _logger(trt)
    plugin_notes = register_plugins(trt, custom_ops, request.plugins)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [f"{e.desc()} (node {e.node_name() or e.node()}, {e.node_operator()})" for e in map(parser.get_error, range(parser.num_errors))]
        raise BuildError(f"{builder_name} could not parse {onnx_path.name}: {'; '.join(errors[:3]) or _first_error(trt, logger)}")
    parse_seconds = time.perf_counter() - started
    network_report = network_summary(trt, network)
    plugins = {op: "plugin" if note == "registered" and network_report["plugin_layers"] else "inlined" for op, note in plugin_notes.items()}
    listed = ", ".join(f"{op} {mode}" for op, mode in plugins.items()) or "no dfer ops"
    progress.done("parse", 0.0, f"{network_report['layers']} network layers, {listed}", parse_seconds)
    config = _builder_config(trt, builder_name, builder, network, request, targets)
    with PeakRss() as memory:
        started = time.perf_counter()
        data = builder.build_serialized_network(network, config)
        build_seconds = time.perf_counter() - started
    if data is None:
        raise BuildError(f"{builder_name} failed to build {onnx_path.name}: {_first_error(trt, logger)}")
    if request.timing_cache is not None:
        request.timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    report = {"builder": f"{builder_name} {trt.__version__}", "network": network_report, "plugin_notes": plugin_notes}
    report["engine"] = engine_layers(trt, data, logger)
    return BuiltEngine(data, targets, parse_seconds, build_seconds, memory.peak_mib, memory.increase_mib, memory.scope, report, plugins, logger.records)


def _builder_config(trt, builder_name: str, builder, network, request: BuildRequest, targets):
    """DETAILED profiling (for the layer report), the batch profile, RTX targets, timing cache."""
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    tensor = network.get_input(0)
    rest = tuple(tensor.shape)[1:]
    if tuple(tensor.shape)[0] != -1 or -1 in rest:
        raise BuildError(f"input {tensor.name} has shape {tuple(tensor.shape)}; expected a dynamic batch and fixed T/H/W")
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, (1, *rest), (request.opt_batch, *rest), (request.max_batch, *rest))
    config.add_optimization_profile(profile)
    if builder_name == "tensorrt-rtx":
        config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            if not config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{target[3:]}"), i):
                raise BuildError(f"tensorrt-rtx refused target {target}")
    if request.timing_cache is not None:  # TensorRT only: TensorRT-RTX made timing caches no-ops in 1.2
        cache_bytes = request.timing_cache.read_bytes() if request.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    return config


def register_plugins(trt, custom_ops: tuple[str, ...], enabled: bool) -> dict[str, str]:
    """Hook point for kernels/' TensorRT plugins (DESIGN §5): one note per dfer op.

    A kernel module that defines ``register_tensorrt_plugin(trt_module)`` is called here before
    parsing, and the parser then turns the op's nodes into plugin layers. Every op without one
    is inlined by the parser from its model-local ONNX function; the manifest says which.
    """
    from export.onnx import CUSTOM_OP_MODULES

    notes = {}
    for name in custom_ops:
        op, module_name = f"dfer::{name}", CUSTOM_OP_MODULES.get(name, "?")
        if not enabled:
            notes[op] = "plugins disabled (--no-plugins)"
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            notes[op] = f"{module_name} not importable ({err})"
            continue
        if not hasattr(module, "register_tensorrt_plugin"):
            notes[op] = f"{module_name} has no TensorRT plugin yet"
            continue
        module.register_tensorrt_plugin(trt)
        notes[op] = "registered"
    return notes


def _first_error(trt, logger) -> str:
    serious = (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)
    errors = [msg for severity, msg in logger.records if severity in serious]
    return errors[0] if errors else "no error message from the builder"


def network_summary(trt, network) -> dict:
    """The parsed network before optimisation: layer types, output dtypes, plugin layers."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_types = {getattr(trt.LayerType, n) for n in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3") if hasattr(trt.LayerType, n)}
    return {
        "layers": len(layers),
        "by_type": dict(Counter(layer.type.name for layer in layers).most_common()),
        "output_dtypes": dict(Counter(layer.get_output(0).dtype.name for layer in layers if layer.num_outputs).most_common()),
        "plugin_layers": [layer.name for layer in layers if layer.type in plugin_types],
    }


def engine_layers(trt, data, logger) -> dict:
    """The built engine's layers: from the engine inspector where the engine deserialises here,
    else from the builder's DETAILED layer log (TensorRT-RTX on a machine without its GPU)."""
    if local_gpu_sm() is not None:
        engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if engine is not None:
            info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
            layers = [_inspector_layer(layer) for layer in info.get("Layers", [])]
            return _layer_table("engine inspector (LayerInformationFormat.JSON)", layers)
    blocks = [msg for _, msg in logger.records if msg.startswith("Layers:")]
    if not blocks:
        return _layer_table("none: the engine does not deserialise here and the builder logged no layers", [])
    layers = []
    for line in blocks[-1].splitlines():
        match = _LAYER_LINE.match(line)
        if match:
            layers.append({
                "name": match["name"],
                "type": match["type"],
                "tactic": match["tactic"],
                "output_dtypes": re.findall(r"Datatype: (\w+)", match["outputs"]),
                "onnx_nodes": re.findall(r"\[ONNX Layer: ([^\]]+)\]", match["meta"]),
            })
    return _layer_table("builder log (ProfilingVerbosity.DETAILED); the engine does not deserialise without its GPU", layers)


def _inspector_layer(layer) -> dict:
    if isinstance(layer, str):  # LAYER_NAMES_ONLY
        return {"name": layer, "type": "?", "tactic": "", "output_dtypes": [], "onnx_nodes": []}
    outputs = layer.get("Outputs", [])
    return {
        "name": layer.get("Name", ""),
        "type": layer.get("LayerType", "?"),
        "tactic": str(layer.get("TacticName", "")),
        "output_dtypes": [str(o.get("Format/Datatype", "")) for o in outputs if isinstance(o, dict)],
        "onnx_nodes": re.findall(r"\[ONNX Layer: ([^\]]+)\]", str(layer.get("Metadata", ""))),
    }


def _layer_table(source: str, layers: list[dict]) -> dict:
    dtypes = Counter(d for layer in layers for d in layer["output_dtypes"])
    return {
        "source": source,
        "count": len(layers),
        "by_type": dict(Counter(layer["type"] for layer in layers).most_common()),
        "output_dtypes": dict(dtypes.most_common()),
        "layers": layers,
    }


class PeakRss:
    """Peak resident memory of this process inside a block.

    Linux resets the peak (VmHWM) when "5" is written to /proc/self/clear_refs, so the number
    is the build's own; elsewhere only the process-lifetime peak is known, and scope says so.
    """

    def __enter__(self):
        self.start_mib = _status_mib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.scope = "build"
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc):
        peak = _status_mib("VmHWM") if self.scope == "build" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.peak_mib = round(peak, 1)
        self.increase_mib = round(max(0.0, peak - self.start_mib), 1)
        return False


def _status_mib(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# The pipeline: load → export → parse → build → verify, one bundle


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
        _export_into(request, loaded, output, progress)
    except BaseException:  # leave no half-written file behind, and no empty directory we made
        (output / "model.partial.onnx").unlink(missing_ok=True)
        if created and not any(output.iterdir()):
            output.rmdir()
        raise
    facts = onnx_facts(output / bundle_format.ONNX_NAME)
    manifest = bundle_format.onnx_manifest(facts, previous, output)
    bundle_format.write_manifest(output, manifest)
    return OnnxPart(output, loaded, facts, manifest)


def add_engine(trt, builder_name: str, targets, part: OnnxPart, request: BuildRequest, progress: Progress) -> dict:
    """Build the engine of the bundle's ONNX, write it with its layer report, list it in the manifest."""
    if builder_name == "tensorrt":  # kept beside the bundle: it belongs to the build machine, not the device
        request = replace(request, timing_cache=part.output.parent / f"{part.output.name}.timing.cache")
    onnx_path = part.output / bundle_format.ONNX_NAME
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
        from export.onnx import onnx_precision, read_metadata

        meta = read_metadata(request.source)
        if "dfer.spec" not in meta:
            raise ValueError(f"{request.source}: not exported by python -m export.onnx (no dfer metadata)")
        precision = onnx_precision(request.source)
        if request.precision not in (None, precision):
            raise ValueError(f"{request.source} is an {precision} export; for {request.precision} export the checkpoint again")
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


def _export_into(request: BuildRequest, loaded, output: Path, progress: Progress) -> None:
    """Write the bundle's model.onnx: export the checkpoint, or copy the ONNX input."""
    target = output / bundle_format.ONNX_NAME
    if loaded is None:
        started = time.perf_counter()
        if request.source.resolve() != target.resolve():
            shutil.copyfile(request.source, target)
        progress.done("export", started, f"{target} (copied; ONNX input, no PyTorch reference)")
        return
    from export.onnx import export_onnx

    partial = output / "model.partial.onnx"
    precision = request.precision or "fp16"
    result = export_onnx(loaded, partial, custom_ops=request.custom_ops, precision=PRECISIONS[precision].onnx)
    partial.replace(target)
    custom = ", ".join(f"dfer::{op}" for op in result.custom_ops) or "none"
    progress.done(
        "export", 0.0,
        f"{target} ({precision}, {result.size_bytes / 2**20:.1f} MiB, {sum(result.op_counts.values())} nodes, custom ops: {custom})",
        result.seconds,
    )


def onnx_facts(path: Path) -> dict:
    """What the manifest says about an exported ONNX file: metadata, opset, tensors, sha256."""
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
    return {
        "meta": meta,
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input": clip,
        "outputs": [tensor(o) for o in proto.graph.output],
        "custom_ops": json.loads(meta.get("dfer.custom_ops", "[]")),
        "precision": "fp16" if clip["dtype"] == "float16" else "fp32",
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
    from models.spec import ModelSpec

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
    result["engine"] = _engine_note(engine)
    progress.done("verify", started, f"{text}; {result['engine']}")
    return result


def _engine_note(engine: dict | None) -> str:
    if engine is None:
        return "no engine built"
    here = local_gpu_sm()
    if here is None:
        return "engine built but not executed: no CUDA GPU on this machine"
    if here not in engine["gpu_sm"]:
        return f"engine built but not executed: it targets {','.join(engine['gpu_sm'])}, this GPU is {here}"
    return "engine built but not executed: engines run in the runtime's TensorRT backend, not in this command"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.trt", description="Build a dfer bundle: ONNX + TensorRT engine + manifest.")
    parser.add_argument("source", help="checkpoint (.pth/.ckpt) or an ONNX file written by python -m export.onnx")
    parser.add_argument("-o", "--output", help="bundle directory (default: beside the source, suffix .dfer)")
    parser.add_argument("--precision", help="fp16 (default for checkpoints), fp32, int8, fp8")
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
