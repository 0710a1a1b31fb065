"""An exported model → one model of an NVIDIA Triton Inference Server repository.

    python -m export.triton MODEL -o model_repository/ [--name N] [--backend onnxruntime|tensorrt|python]
        [--max-batch N] [--max-queue-delay-us N] [--instances N] [--gpu sm_XX] [--threads N]
    python -m export.triton install-server [--server-dir DIR]        (export.triton_server)
    python -m export.triton serve model_repository/ [--grpc-port N] [--http-port N] [--metrics-port N]

MODEL is a bundle (python -m export.trt) or an ONNX file (python -m export.onnx). It writes
<name>/config.pbtxt and <name>/1/ with the model file:

* onnxruntime: platform onnxruntime_onnx and the (verified) model.onnx, on the server's GPU.
* tensorrt: platform tensorrt_plan and model.plan, the bundle's TensorRT engine for the
  server's GPU (--gpu, default this machine's), chosen as the runtime's tensorrt backend does
  (Bundle.engines_for, lowest precision first). Only engines of the tensorrt builder: TensorRT-RTX
  engines do not run in Triton, and the server's TensorRT must be the engine's builder_version.
  max_batch_size is the engine's batch profile's max.
* python: model.onnx and model.py (export.triton_model), ONNX Runtime on the server's CPU: the
  form a CPU-only server runs, CI's included.

The ONNX Runtime and TensorRT backends exist only in NVIDIA's server containers: their configs
are checked field by field here (tests/test_triton.py) but run only on a GPU server.

The config carries the dynamic batcher (preferred sizes and max_queue_delay_microseconds), the
instance group, the tensors without their batch axis, and the ModelSpec, family and untrained
flag as parameters (runtime.triton_backend reads them back). It is parsed with the ModelConfig
schema that tritonclient ships, where it is installed, before anything is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.bundle import BundleError, EngineEntry, TensorEntry
from runtime.gpu import local_gpu_sm
from runtime.model import ModelSource, load_model_source
from runtime.triton_backend import FAMILY_PARAMETER, SPEC_PARAMETER, UNTRAINED_PARAMETER, served_name

BACKENDS = ("onnxruntime", "tensorrt", "python")
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")
THREADS_PARAMETER = "intra_op_threads"  # read by export.triton_model
DEFAULT_MAX_BATCH = 32  # an ONNX file has no batch profile: the runtime's default batch
VERSION = "1"


@dataclass(frozen=True)
class TritonOptions:
    """name: the model's name in the repository (None: served_name of the file); max_batch:
    max_batch_size for ONNX (an engine's comes from its profile); max_queue_delay_us: how long
    the dynamic batcher holds a request for a fuller batch; instances: model copies; gpu: the
    server's GPU (sm_XX) for the tensorrt backend; threads: ONNX Runtime threads per instance
    (python backend)."""

    backend: str = "python"
    name: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    max_queue_delay_us: int = 2000
    instances: int = 1
    gpu: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown Triton backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        for field, value, least in (("max_batch", self.max_batch, 1), ("instances", self.instances, 1),
                                    ("max_queue_delay_us", self.max_queue_delay_us, 0), ("threads", self.threads, 1)):
            if (value is not None or field != "threads") and (type(value) is not int or value < least):
                raise ValueError(f"{field} must be an integer ≥ {least}, got {value!r}")


@dataclass(frozen=True)
class ServedTensors:
    """The model's tensors as Triton sees them: (name, TYPE_*, dims without the batch axis)."""

    input: tuple[str, str, tuple[int, ...]]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]


def export_triton(model: str | Path, repository: str | Path, options: TritonOptions = TritonOptions()) -> Path:
    """Write <repository>/<name>/ (config.pbtxt, 1/<model file>); returns that folder. The config
    is built and validated before the folder is touched; an existing one is replaced."""
    source = load_model_source(model)
    name = options.name or served_name(source.path)
    engine = _engine(source, options.gpu) if options.backend == "tensorrt" else None
    text = config_text(source, name, options, _tensors(source), engine)
    check_config(text, source)
    folder = Path(repository) / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / VERSION).mkdir(parents=True)
    _write_model_files(source, folder / VERSION, options.backend, engine)
    (folder / "config.pbtxt").write_text(text)
    return folder


def config_text(source: ModelSource, name: str, options: TritonOptions, tensors: ServedTensors,
                engine: EngineEntry | None) -> str:
    """config.pbtxt in protobuf text format (model_config.proto)."""
    if engine is not None:
        profile = engine.batch_profile
        max_batch, preferred = profile.max, sorted({profile.opt, profile.max})
    else:
        max_batch, preferred = options.max_batch, [options.max_batch]
    kind = "KIND_CPU" if options.backend == "python" else "KIND_GPU"
    lines = [f"name: {_quote(name)}", _runtime_line(options.backend), f"max_batch_size: {max_batch}",
             "input [", _tensor_block(*tensors.input), "]", "output ["]
    lines += [",\n".join(_tensor_block(*output) for output in tensors.outputs), "]"]
    lines += ["dynamic_batching {", f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
              f"  max_queue_delay_microseconds: {options.max_queue_delay_us}", "}",
              "instance_group [", f"  {{ count: {options.instances} kind: {kind} }}", "]"]
    parameters = {SPEC_PARAMETER: source.spec.to_json(), FAMILY_PARAMETER: source.family,
                  UNTRAINED_PARAMETER: "true" if source.untrained else "false"}
    if options.threads and options.backend == "python":
        parameters[THREADS_PARAMETER] = str(options.threads)
    lines += [f"parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v)} }} }}" for k, v in parameters.items()]
    return "\n".join(lines) + "\n"


def check_config(text: str, source: ModelSource):
    """Parse the config with tritonclient's ModelConfig schema and read the spec back; the
    parsed message, or None where tritonclient (or its protobuf) is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    config = text_format.Parse(text, model_config_pb2.ModelConfig())  # ParseError names line:column
    if config.parameters[SPEC_PARAMETER].string_value != source.spec.to_json():
        raise ValueError("the spec parameter did not survive the text format (an escaping bug)")
    return config


def _runtime_line(backend: str) -> str:
    return {"onnxruntime": 'platform: "onnxruntime_onnx"', "tensorrt": 'platform: "tensorrt_plan"',
            "python": 'backend: "python"'}[backend]


def _tensor_block(name: str, data_type: str, dims: tuple[int, ...]) -> str:
    return f"  {{ name: {_quote(name)} data_type: {data_type} dims: [ {', '.join(map(str, dims))} ] }}"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; UTF-8 passes as it is)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensors(source: ModelSource) -> ServedTensors:
    """Names, types and dims from the manifest (a bundle) or the ONNX graph, checked against the spec."""
    if source.bundle is not None:
        clip, outputs = source.bundle.manifest.input, source.bundle.manifest.outputs
    else:
        from export.manifest import onnx_facts

        facts = onnx_facts(source.onnx_path)
        clip, outputs = facts.input, facts.outputs
    served = ServedTensors(input=_served(clip, source), outputs=tuple(_served(o, source) for o in outputs))
    expected = tuple(source.spec.input_shape(1)[1:])
    if served.input[2] != expected:
        raise ValueError(f"{source.path}: input {clip.name!r} is {clip.shape}, the spec says (batch, {', '.join(map(str, expected))})")
    if served.outputs[0][2] != (source.spec.num_classes,):
        raise ValueError(f"{source.path}: output {outputs[0].name!r} is {outputs[0].shape}, the spec has {source.spec.num_classes} labels")
    return served


def _served(tensor: TensorEntry, source: ModelSource) -> tuple[str, str, tuple[int, ...]]:
    if tensor.dtype not in DATA_TYPES:
        raise ValueError(f"{source.path}: tensor {tensor.name!r} is {tensor.dtype}; Triton configs here take {', '.join(DATA_TYPES)}")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in tensor.shape[1:])
    return tensor.name, DATA_TYPES[tensor.dtype], dims


def _engine(source: ModelSource, gpu: str | None) -> EngineEntry:
    """The engine Triton's tensorrt backend would run on that GPU, as the runtime chooses one."""
    if source.bundle is None:
        raise ValueError(f"{source.path} is an ONNX file: --backend tensorrt needs a bundle with an engine (python -m export.trt)")
    sm = gpu or local_gpu_sm()
    if sm is None:
        raise ValueError("no GPU here: name the server's GPU with --gpu sm_XX for --backend tensorrt")
    fitting = source.bundle.engines_for(sm, builder="tensorrt")
    if not fitting:
        held = ", ".join(f"{e.file} ({e.builder}, {', '.join(e.gpu_sm)})" for e in source.bundle.engines) or "none"
        raise ValueError(f"{source.path} has no tensorrt-builder engine for {sm} (Triton runs no TensorRT-RTX engine); it holds {held}")
    engine = fitting[0]
    plugins = sorted(op for op, how in engine.plugins.items() if how == "plugin")
    if plugins:
        raise ValueError(f"{engine.file} has plugin layers ({', '.join(plugins)}) that a Triton server cannot load: "
                         f"rebuild with python -m export.trt --no-plugins")
    if engine.batch_profile.min > 1:
        raise ValueError(f"{engine.file} takes batches of {engine.batch_profile.min} or more; Triton sends any size from 1")
    return engine


def _write_model_files(source: ModelSource, version: Path, backend: str, engine: EngineEntry | None) -> None:
    if engine is not None:
        (version / "model.plan").write_bytes(source.bundle.read_verified(engine.file))
        return
    shutil.copyfile(source.verified_onnx(), version / "model.onnx")
    if backend == "python":
        shutil.copyfile(PYTHON_MODEL, version / "model.py")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("serve", "install-server"):
        from export.triton_server import main as server_main

        return server_main(argv)
    args = _parser().parse_args(argv)
    try:
        options = TritonOptions(backend=args.backend, name=args.name, max_batch=args.max_batch,
                                max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                                gpu=args.gpu, threads=args.threads)
        folder = export_triton(args.model, args.output, options)
    except (ValueError, BundleError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(f"wrote {folder} ({args.backend}); serve it with: python -m export.triton serve {args.output}")
    return 0


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__.splitlines()[0],
                                     epilog="also: python -m export.triton install-server | serve REPOSITORY (--help on each)")
    parser.add_argument("model", help="a bundle (python -m export.trt) or an ONNX file (python -m export.onnx)")
    parser.add_argument("-o", "--output", required=True, help="the model repository folder")
    parser.add_argument("--name", help="the model's name on the server (default: the file's stem)")
    parser.add_argument("--backend", choices=BACKENDS, default="python",
                        help="python: ONNX Runtime on the server's CPU (default; runs on nvidia-pytriton's server); "
                        "onnxruntime / tensorrt: NVIDIA's server containers, on their GPU")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="max_batch_size for an ONNX model (an engine's is its profile's max)")
    parser.add_argument("--max-queue-delay-us", type=int, default=TritonOptions.max_queue_delay_us,
                        help="how long the dynamic batcher holds a request for a fuller batch")
    parser.add_argument("--instances", type=int, default=1, help="model instances (copies) on the server")
    parser.add_argument("--gpu", help="the server's GPU as sm_XX, for --backend tensorrt (default: this machine's)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per instance (--backend python)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
