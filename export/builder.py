"""The TensorRT builders: import, targets, one strongly typed engine build, its layer report.

Two real NVIDIA builders share this code through their common API: ``tensorrt`` builds for the
GPU it runs on (data centre, Jetson); ``tensorrt_rtx`` (pip tensorrt-rtx-cu13) builds ahead of
time without any GPU, for RTX GPUs (sm_75 on request; sm_80, 86, 89, 120 by default). Nothing
here uses an API that TensorRT 11 removed (weak typing, precision flags, INT8 calibrators):
precision, int8/fp8 included, lives in the ONNX (export.onnx, calibration/).

export.trt turns a checkpoint or ONNX file into a bundle around ``build_engine``.
"""

from __future__ import annotations

import importlib
import json
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from runtime.gpu import local_gpu_sm, tensorrt_logger

BUILDER_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
INSTALL_HINT = (
    "no TensorRT builder is installed: pip install tensorrt-cu12 or tensorrt-cu13 (data-centre GPUs), "
    "JetPack 6's apt packages nvidia-tensorrt and python3-libnvinfer (Jetson), or tensorrt-rtx-cu13 (RTX GPUs)"
)
# TensorRT-RTX's default portable set (its docs): Ampere, Ada and Blackwell RTX GPUs.
RTX_DEFAULT_TARGETS = ("sm_80", "sm_86", "sm_89", "sm_120")
DEVICE_NAMES = {"sm_72": "Jetson Xavier", "sm_87": "Jetson Orin", "sm_90": "H100/H200", "sm_100": "B200"}

class NoBuilderError(RuntimeError):
    """No TensorRT builder could be imported; the message says what to install."""


class BuildError(RuntimeError):
    """The builder refused the network; the message carries its first errors."""



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


def build_engine(trt, builder_name: str, onnx_path: Path, request, targets, custom_ops, progress) -> BuiltEngine:
    """Parse strongly typed, one batch profile (1, opt, max), build; measure time and memory."""
    logger = tensorrt_logger(trt)
    with logger.capture() as log:
        return _build(trt, builder_name, logger, log, onnx_path, request, targets, custom_ops, progress)


def _build(trt, builder_name: str, logger, log, onnx_path: Path, request, targets, custom_ops, progress) -> BuiltEngine:
    plugin_notes = register_plugins(trt, custom_ops, request.plugins)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [f"{e.desc()} (node {e.node_name() or e.node()}, {e.node_operator()})" for e in map(parser.get_error, range(parser.num_errors))]
        raise BuildError(f"{builder_name} could not parse {onnx_path.name}: {'; '.join(errors[:3]) or log.first_error()}")
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
        raise BuildError(f"{builder_name} failed to build {onnx_path.name}: {log.first_error()}")
    if request.timing_cache is not None:
        request.timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    report = {"builder": f"{builder_name} {trt.__version__}", "network": network_report, "plugin_notes": plugin_notes}
    report["engine"] = engine_layers(trt, data, logger, log)
    return BuiltEngine(data, targets, parse_seconds, build_seconds, memory.peak_mib, memory.increase_mib, memory.scope, report, plugins, list(log.records))


def _builder_config(trt, builder_name: str, builder, network, request, targets):
    """DETAILED profiling (for the layer report), the batch profile, RTX targets, timing cache."""
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for k in range(network.num_inputs):  # the clip, and a landmarks model's renderings: one batch axis
        tensor = network.get_input(k)
        rest = tuple(tensor.shape)[1:]
        if tuple(tensor.shape)[0] != -1 or -1 in rest:
            raise BuildError(f"input {tensor.name} has shape {tuple(tensor.shape)}; expected a dynamic batch and fixed T/H/W")
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


def engine_layers(trt, data, logger, log) -> dict:
    """The built engine's layers: from the engine inspector where the engine deserialises here,
    else from the builder's DETAILED layer log (TensorRT-RTX on a machine without its GPU)."""
    if local_gpu_sm() is not None:
        engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if engine is not None:
            info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
            layers = [_inspector_layer(layer) for layer in info.get("Layers", [])]
            return _layer_table("engine inspector (LayerInformationFormat.JSON)", layers)
    blocks = [msg for _, msg in log.records if msg.startswith("Layers:")]
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
