"""Checkpoint → ONNX with dfer custom ops, checked and verified in ONNX Runtime.

    python -m export.onnx model.pth -o model.onnx [--no-custom-ops] [--precision fp16]

The graph has a dynamic batch axis and fixed T/H/W. The hot spots (IFDD's lifting split,
S4D's gated expert MLP) become single ``dfer::`` nodes, each backed by a model-local ONNX
function holding its decomposition in standard ops, so the same file runs in ONNX Runtime as
is and TensorRT can swap in a plugin. ``--no-custom-ops`` exports the plain decomposed graph.
The model's ModelSpec and provenance travel in the ONNX metadata (``dfer.*`` properties).

Precision lives in the graph, for strongly typed TensorRT builds (DESIGN §5). ``fp16`` exports
an fp16 copy of the model: fp16 input (the runtime casts the normalised clip, halving the
host-to-device copy), fp16 weights and activations, LayerNorms computed in fp32 (TensorRT keeps
a strongly typed fp16 normalisation in fp16, where the variance can overflow), fp32 logits.
Softmax stays fp16 so TensorRT can fuse attention; its kernels subtract the max first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION

OPSET = 18
INPUT_NAME = "clip"
OUTPUT_NAME = "logits"
MAX_BATCH = 1024
# ONNX precision → the dtype of the graph's input (the logits are always fp32).
PRECISIONS = {"fp32": "float32", "fp16": "float16"}
# Ops TensorRT handles poorly or that imply data-dependent shapes; the export must avoid them.
FORBIDDEN_OPS = ("GridSample", "ScatterND", "ScatterElements", "NonZero", "Loop", "If")


# dfer op → the kernel module holding its reference, ONNX function and (later) TensorRT plugin.
CUSTOM_OP_MODULES = {"LiftingSplit": "kernels.lifting_split", "GatedExpertMLP": "kernels.gated_expert_mlp"}


def _custom_op_functions():
    import importlib

    return {op: importlib.import_module(module).onnx_function for op, module in CUSTOM_OP_MODULES.items()}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    seconds: float
    size_bytes: int
    op_counts: Counter
    custom_ops: tuple[str, ...]


def export_onnx(
    loaded, path: str | Path, *, custom_ops: bool = True, opset: int = OPSET, precision: str = "fp32"
) -> ExportResult:
    """Export a LoadedModel to ONNX (dynamic batch), attach dfer functions and metadata, check."""
    import onnx
    import torch

    from kernels import onnx_custom_ops

    if precision not in PRECISIONS:
        raise ValueError(f"unknown ONNX precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    start = time.perf_counter()
    path = Path(path)
    model = loaded.model if precision == "fp32" else half_precision_copy(loaded.model)
    example = torch.randn(loaded.spec.input_shape(2), dtype=getattr(torch, PRECISIONS[precision]))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with onnx_custom_ops(custom_ops), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    used = attach_custom_op_functions(proto)
    _set_metadata(proto, loaded, used, precision)
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    census = op_census(proto)
    return ExportResult(path, time.perf_counter() - start, path.stat().st_size, census, used)


def half_precision_copy(model):
    """An fp16 copy of an eval model for the fp16 export: fp32 LayerNorms, fp32 logits.

    Hooks rather than new module classes, so the state_dict keys and the model code stay as they
    are; torch.export traces the hooks' casts into the graph.
    """
    import copy

    import torch

    half = copy.deepcopy(model).half()
    for module in half.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
            module.register_forward_pre_hook(lambda _, args: tuple(a.float() for a in args))
            module.register_forward_hook(lambda _, args, out: out.half())
    half.register_forward_hook(lambda _, args, out: out.float())
    return half


def onnx_precision(path: str | Path) -> str:
    """'fp32' or 'fp16': the precision of an exported file, read from its input's dtype."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    elem = proto.graph.input[0].type.tensor_type.elem_type
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}
    if elem not in names:
        raise ValueError(f"{path}: input {proto.graph.input[0].name!r} has dtype {onnx.TensorProto.DataType.Name(elem)}, expected FLOAT or FLOAT16")
    return names[elem]


def attach_custom_op_functions(proto) -> tuple[str, ...]:
    """Append the ONNX function of every dfer node in the graph and import the dfer opset."""
    import onnx

    used = sorted({n.op_type for n in proto.graph.node if n.domain == ONNX_DOMAIN})
    if not used:
        return ()
    factories = _custom_op_functions()
    unknown = [op for op in used if op not in factories]
    if unknown:
        raise RuntimeError(f"exported graph has dfer ops without an ONNX function: {', '.join(unknown)}")
    present = {f.name for f in proto.functions if f.domain == ONNX_DOMAIN}
    for op_type in used:
        if op_type not in present:
            proto.functions.append(factories[op_type]().to_function_proto())
    if not any(o.domain == ONNX_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(ONNX_DOMAIN, ONNX_DOMAIN_VERSION))
    return tuple(used)


def _set_metadata(proto, loaded, custom_ops: tuple[str, ...], precision: str) -> None:
    values = {
        "dfer.family": loaded.family,
        "dfer.spec": loaded.spec.to_json(),
        "dfer.config": json.dumps(loaded.config, sort_keys=True),
        "dfer.checkpoint_sha256": loaded.checkpoint_sha256,
        "dfer.untrained": json.dumps(loaded.untrained),
        "dfer.custom_ops": json.dumps(list(custom_ops)),
        "dfer.precision": precision,
    }
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """The dfer.* metadata of an exported file, without parsing its graph or weights."""
    from runtime.model import read_onnx_metadata

    return {key: value for key, value in read_onnx_metadata(path).items() if key.startswith("dfer.")}


def op_census(proto) -> Counter:
    """Node count per op type in the main graph ("dfer::Op" for custom nodes)."""
    return Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in proto.graph.node)


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16 graphs make ORT warn about constant folding
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def generated_clips(spec, batch: int, seed: int = 0) -> np.ndarray:
    """A batch of normalised model inputs made from generated face-like videos."""
    from runtime.synthetic import synthetic_face_frames

    clips = [spec.normalize(synthetic_face_frames(spec.frames, spec.height, spec.width, seed + i)) for i in range(batch)]
    return np.stack(clips)


def verify(loaded, path: str | Path, batch: int = 2) -> dict:
    """Run fp32 PyTorch and ONNX Runtime (at the file's precision) on the same generated clips."""
    import torch

    clips = generated_clips(loaded.spec, batch)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(clips)).numpy()
    session = onnx_session(path)
    fp16_input = session.get_inputs()[0].type == "tensor(float16)"
    feed = clips.astype(np.float16 if fp16_input else np.float32)
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0].astype(np.float32)
    probabilities = softmax(actual)
    return {
        "max_abs_diff": float(np.abs(actual - expected).max()),
        "max_prob_diff": float(np.abs(probabilities - softmax(expected)).max()),
        "top1_agree": float((actual.argmax(1) == expected.argmax(1)).mean()),
        "probabilities": probabilities,
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, classes) logits, max subtracted first."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description="Export a DFER checkpoint to ONNX.")
    parser.add_argument("checkpoint", help="official or demo checkpoint (.pth/.ckpt)")
    parser.add_argument("-o", "--output", help="ONNX file to write (default: beside the checkpoint)")
    parser.add_argument("--no-custom-ops", action="store_true", help="export the plain graph, no dfer nodes")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--precision", default="fp32", help="graph precision: fp32 (default) or fp16")
    args = parser.parse_args(argv)
    quiet_exporter()
    from models import load
    from models.checkpoint import CheckpointError

    output = Path(args.output or Path(args.checkpoint).with_suffix(".onnx"))
    try:
        started = time.perf_counter()
        loaded = load(args.checkpoint)
        print(f"load     {time.perf_counter() - started:6.1f} s  {loaded.family} from {args.checkpoint}")
        result = export_onnx(loaded, output, custom_ops=not args.no_custom_ops, precision=args.precision)
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    custom = ", ".join(f"{ONNX_DOMAIN}::{op}" for op in result.custom_ops) or "none"
    print(
        f"export   {result.seconds:6.1f} s  {output} ({args.precision}, {result.size_bytes / 2**20:.1f} MiB, "
        f"{sum(result.op_counts.values())} nodes, custom ops: {custom})"
    )
    if not args.no_verify:
        _print_verification(loaded, output)
    return 0


def quiet_exporter() -> None:
    """Hide the exporter's chatter that says nothing about this model (torchvision ops absent)."""
    import logging
    import warnings

    import torch.onnx  # noqa: F401  (torch configures its loggers on import; override after)

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")


def _print_verification(loaded, output: Path) -> None:
    started = time.perf_counter()
    report = verify(loaded, output)
    print(
        f"verify   {time.perf_counter() - started:6.1f} s  ONNX Runtime vs PyTorch fp32 on generated clips: "
        f"max |Δlogit| {report['max_abs_diff']:.2e}, max |Δprob| {report['max_prob_diff']:.2e}, "
        f"top-1 agreement {report['top1_agree']:.0%}"
    )
    marker = "  (UNTRAINED demo weights: predictions are meaningless)" if loaded.untrained else ""
    for i, probs in enumerate(report["probabilities"]):
        best = int(probs.argmax())
        print(f"clip {i}: {loaded.spec.labels[best]} ({probs[best]:.2f}){marker}")


if __name__ == "__main__":
    sys.exit(main())
