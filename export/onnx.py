"""Checkpoint → ONNX with dfer custom ops, checked and verified in ONNX Runtime.

    python -m export.onnx model.pth -o model.onnx [--no-custom-ops] [--precision fp16] [--input uint8]
    python -m export.onnx model.pth --check model.onnx     # verify an existing export, write nothing

The graph has a dynamic batch axis and fixed T/H/W. The hot spots (IFDD's lifting split,
S4D's gated expert MLP) become single ``dfer::`` nodes, each backed by a model-local ONNX
function holding its decomposition in standard ops, so the same file runs in ONNX Runtime as
is and TensorRT can swap in a plugin. ``--no-custom-ops`` exports the plain decomposed graph.
The model's ModelSpec and provenance travel in the ONNX metadata (``dfer.*`` properties).
A model whose spec has ``landmarks`` (FineCLIPER's landmarks variant) gets a second input,
``landmarks``: the renderings (runtime.landmarks), shaped like the clip, its batch dynamic too.

Precision lives in the graph, for strongly typed TensorRT builds (DESIGN §5). ``fp16`` exports
an fp16 copy of the model: fp16 input (the runtime casts the normalised clip, halving the
host-to-device copy), fp16 weights and activations, LayerNorms computed in fp32 (TensorRT keeps
a strongly typed fp16 normalisation in fp16, where the variance can overflow), fp32 logits.
Softmax stays fp16 so TensorRT can fuse attention; its kernels subtract the max first.

``--input uint8`` moves the preprocessing into the graph: it takes the decoded frames as they
are, uint8 (N, T, H, W, 3) for clip models and (N, H, W, 3) for per-frame models, and casts,
scales, normalises (in fp32, for fp16 exports too) and transposes them itself, so an engine
does it on the GPU and the runtime hands over 2.4 MB per IFDD clip instead of 9.6 MB of
float32 it spent 11 ms of CPU making (benchmarks/bench_input.py). The spec in the metadata
says ``input_format: uint8``; the bundle manifest's input dtype ``uint8``.

After the export the file runs in ONNX Runtime against fp32 PyTorch on generated clips
(export.verify). Exit status: 0 exported (and verified); 2 bad input, one line says which;
4 verification failed: ONNX Runtime's logits or probabilities are further from PyTorch's than
the precision's tolerance (export.precision), by the amounts the error line gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from export.precision import EXPORTS, PRECISIONS
from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION
from runtime.backends import GRAPH_INPUTS
from runtime.metadata import DferMetadata, read_metadata, write_props
from runtime.spec import INPUT_FORMATS, ModelSpec

OPSET = 18
INPUT_NAME, LANDMARKS_NAME = GRAPH_INPUTS  # "clip", "landmarks" (the runtime feeds them by name)
OUTPUT_NAME = "logits"
MAX_BATCH = 1024
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
    loaded, path: str | Path, *, custom_ops: bool = True, opset: int = OPSET, precision: str = "fp32",
    input_format: str = "float",
) -> ExportResult:
    """Export a LoadedModel to ONNX (dynamic batch), attach dfer functions and metadata, check.
    input_format "uint8": the graph takes decoded frames and normalises them itself (the
    renderings of a landmarks model too)."""
    import onnx
    import torch

    from kernels import onnx_custom_ops

    if precision not in EXPORTS:
        raise ValueError(f"unknown ONNX precision {precision!r}; choose one of {', '.join(EXPORTS)}")
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown ONNX input {input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")
    start = time.perf_counter()
    path = Path(path)
    model = loaded.model if precision == "fp32" else half_precision_copy(loaded.model)
    dtype = getattr(torch, PRECISIONS[precision].input_dtype)
    spec = dataclasses.replace(loaded.spec, input_format=input_format)
    names = [INPUT_NAME, LANDMARKS_NAME] if spec.landmarks else [INPUT_NAME]
    if input_format == "uint8":
        model = frames_input(model, spec, dtype)
        examples = tuple(torch.randint(0, 256, spec.input_shape(2), dtype=torch.uint8) for _ in names)
    else:
        examples = tuple(torch.randn(spec.input_shape(2), dtype=dtype) for _ in names)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with onnx_custom_ops(custom_ops), torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            model,
            examples,
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=tuple({0: batch} for _ in names),
            verbose=False,
        )
    proto = program.model_proto
    used = attach_custom_op_functions(proto)
    _set_metadata(proto, loaded, spec, used, precision)
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    census = op_census(proto)
    return ExportResult(path, time.perf_counter() - start, path.stat().st_size, census, used)


def frames_input(model, spec: ModelSpec, dtype):
    """model behind the preprocessing, so the graph takes uint8 frames (N, T, H, W, 3) (per-frame
    models: (N, H, W, 3)): cast to fp32, scale, mean/std per channel, in ModelSpec.normalize's
    order and precision (so the fp32 graph's logits equal the float graph's bitwise), channels
    first, then cast to the model's dtype. fp16 exports normalise in fp32 too, as the runtime's
    float path does before its cast, so the fp16 model gets the same input either way (in fp16
    each of the three ops would add up to half an ulp, 2.4e-4 relative). A landmarks model's
    renderings go through the same steps."""
    import torch

    class FramesInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("scale", torch.tensor(spec.scale, dtype=torch.float32), persistent=False)
            self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32), persistent=False)
            self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32), persistent=False)

        def forward(self, frames, landmarks=None):
            if landmarks is None:
                return self.model(self.normalised(frames))
            return self.model(self.normalised(frames), self.normalised(landmarks))

        def normalised(self, frames):
            x = (frames.to(torch.float32) * self.scale - self.mean) / self.std
            x = x.permute(0, 3, 1, 2) if spec.layout == "NCHW" else x.permute(0, 4, 1, 2, 3)
            return x.to(dtype)

    return FramesInput().eval()


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
            proto.functions.append(_function_for(op_type, proto, factories[op_type]).to_function_proto())
    if not any(o.domain == ONNX_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(ONNX_DOMAIN, ONNX_DOMAIN_VERSION))
    return tuple(used)


def _function_for(op_type: str, proto, default):
    """The op's function for this graph: a kernel module with several (GatedExpertMLP: routed,
    fixed gates) picks by the nodes' attributes through ``onnx_function_for(nodes)``."""
    import importlib

    pick = getattr(importlib.import_module(CUSTOM_OP_MODULES[op_type]), "onnx_function_for", None)
    if pick is None:
        return default()
    return pick([n for n in proto.graph.node if n.domain == ONNX_DOMAIN and n.op_type == op_type])


def _set_metadata(proto, loaded, spec: ModelSpec, custom_ops: tuple[str, ...], precision: str) -> None:
    metadata = DferMetadata(
        spec=spec, family=loaded.family, untrained=loaded.untrained, demo=loaded.demo, config=loaded.config,
        checkpoint_sha256=loaded.checkpoint_sha256, custom_ops=custom_ops, precision=precision,
    )
    del proto.metadata_props[:]
    write_props(proto, metadata)


def op_census(proto) -> Counter:
    """Node count per op type in the main graph ("dfer::Op" for custom nodes)."""
    return Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in proto.graph.node)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description="Export a DFER checkpoint to ONNX.")
    parser.add_argument("checkpoint", help="official or demo checkpoint (.pth/.ckpt)")
    parser.add_argument("-o", "--output", help="ONNX file to write (default: beside the checkpoint)")
    parser.add_argument("--no-custom-ops", action="store_true", help="export the plain graph, no dfer nodes")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--precision", default="fp32", help="graph precision: fp32 (default) or fp16")
    parser.add_argument("--input", default="float", choices=INPUT_FORMATS,
                        help="what the graph takes: float (normalised clips, default) or uint8 (decoded frames, normalised in the graph)")
    parser.add_argument("--check", metavar="ONNX", help="verify this existing export against the checkpoint instead of exporting")
    args = parser.parse_args(argv)
    from models import load
    from models.checkpoint import CheckpointError

    output = Path(args.check or args.output or Path(args.checkpoint).with_suffix(".onnx"))
    try:
        started = time.perf_counter()
        loaded = load(args.checkpoint)
        print(f"load     {time.perf_counter() - started:6.1f} s  {loaded.family} from {args.checkpoint}")
        if args.check:
            precision = read_metadata(output).precision
        else:
            precision = args.precision
            _export_and_report(loaded, output, custom_ops=not args.no_custom_ops, precision=precision, input_format=args.input)
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.no_verify and not args.check:
        return 0
    try:
        return _verify_and_report(loaded, output, precision)
    except ImportError as err:  # a landmarks model's renderings need the face mesh (the detector extra)
        print(f"error: cannot verify {output}: {err}", file=sys.stderr)
        return 2


def _export_and_report(loaded, output: Path, custom_ops: bool, precision: str, input_format: str) -> None:
    result = export_onnx(loaded, output, custom_ops=custom_ops, precision=precision, input_format=input_format)
    custom = ", ".join(f"{ONNX_DOMAIN}::{op}" for op in result.custom_ops) or "none"
    print(
        f"export   {result.seconds:6.1f} s  {output} ({precision}, {input_format} input, {result.size_bytes / 2**20:.1f} MiB, "
        f"{sum(result.op_counts.values())} nodes, custom ops: {custom})"
    )


@contextmanager
def quiet_exporter():
    """Hide the exporter's chatter that says nothing about this model (torchvision ops absent,
    a pytree FutureWarning) for the duration of one export; the torch.onnx logger's level and
    the warning filters are as they were afterwards."""
    import torch.onnx  # noqa: F401  (torch configures its loggers on import; override after)

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
        # two inputs sharing the batch Dim (a landmarks model): the exporter says it keeps one name
        warnings.filterwarnings("ignore", category=UserWarning, message=".*shares the same shape constraints")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def _verify_and_report(loaded, output: Path, precision: str) -> int:
    """Print ONNX Runtime vs fp32 PyTorch and the predictions; 4 when they disagree."""
    from export.verify import PYTORCH, against_pytorch

    started = time.perf_counter()
    agreement, probabilities = against_pytorch(loaded, output, precision)
    print(f"verify   {time.perf_counter() - started:6.1f} s  ONNX Runtime {precision} vs {PYTORCH} on {agreement.source}: {agreement.summary()}")
    marker = f"  ({loaded.weights_note})" if loaded.weights_note else ""
    for i, probs in enumerate(probabilities):
        best = int(probs.argmax())
        print(f"clip {i}: {loaded.spec.labels[best]} ({probs[best]:.2f}){marker}")
    failure = agreement.failure(f"ONNX Runtime {precision} and {PYTORCH}")
    if failure:
        print(f"error: verification failed: {output}: {failure}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
