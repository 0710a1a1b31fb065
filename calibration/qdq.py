"""fp32 ONNX + calibration clips → QDQ ONNX that TensorRT builds strongly typed (DESIGN §5).

onnxruntime.quantization (quantize_static, QuantFormat.QDQ) does the work; this module picks
what TensorRT's explicit quantization wants and checks the result:

* Q/DQ pairs on the inputs of the linear layers (MatMul with a 2-D weight), Conv and Gemm only:
  activations per tensor, weights per output channel (MatMul axis 1, Conv axis 0), symmetric
  with zero point 0, biases left in float (TensorRT has no int32 bias DQ). TensorRT fuses each
  DQ → layer into a low-precision kernel and keeps everything else at the graph's precision.
* No Q/DQ on layer outputs: the next quantized layer quantizes its own input, and float
  layers (LayerNorm, Softmax, residual adds, the dfer ops) read the float tensor.
* Attention's activation × activation MatMuls stay float: a per-tensor int8 scale for softmax
  probabilities (max 1, typical 1/N over N tokens) rounds most of them to zero.
* The dfer custom nodes stay as they are, with their model-local functions: the quantiser
  works around them (ONNX Runtime inlines them to calibrate), so a TensorRT plugin can still
  replace them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections import Counter
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.bundle import PRECISIONS
from runtime.metadata import DferMetadata, write_props

QUANTIZED_OPS = ("MatMul", "Conv", "Gemm")
FLOAT_OPS = ("LayerNormalization", "Softmax")  # and every dfer node: never fed a DQ output


@dataclass(frozen=True)
class Scheme:
    """One quantised precision: ONNX Runtime's type and calibration method for it."""

    quant_type: str  # onnxruntime.quantization.QuantType member
    method: str  # onnxruntime.quantization.CalibrationMethod member
    min_opset: int  # Q/DQ of this type exist from this opset on
    description: str
    amax_to: float | None = None  # rewrite every scale to amax / this after quantize_static (amax_scales)


E4M3_MAX = 448.0  # the largest finite FLOAT8E4M3FN value

SCHEMES = {
    "int8": Scheme("QInt8", "MinMax", 13, "int8 symmetric (zero point 0), per-channel weights, per-tensor activations, min/max ranges"),
    # ONNX Runtime calibrates float8 only with its Distribution method, and refuses MinMax for
    # it. That scale is σ / 100 (the std of E4M3's finite values), so whatever lies beyond 4.5 σ
    # of a tensor saturates at ±448 (the reduced S4D's GELU outputs reach 640 × their scale on
    # the calibration clips themselves). So its Q/DQ placement is kept and every scale rewritten
    # as NVIDIA's FP8 recipes (TensorRT, ModelOpt) set it: amax / 448, activations per tensor
    # from the calibration clips' max |x|, weights per output channel from the fp32 weights,
    # which are then rounded to E4M3 again. On the distilled demos the two rules cost about the
    # same: E4M3's rounding of the weights dominates (calibration.accuracy has the numbers).
    "fp8": Scheme("QFLOAT8E4M3FN", "Distribution", 19,
                  "fp8 E4M3, per-channel weights, per-tensor activations, scales amax / 448 (max calibration; placement by Distribution)",
                  amax_to=E4M3_MAX),
}
if not set(SCHEMES) <= set(PRECISIONS):  # keyed by the bundle's precision names (export.precision says which are quantised)
    raise RuntimeError(f"calibration SCHEMES {sorted(SCHEMES)} are not all bundle precisions {PRECISIONS}")


class ClipReader:
    """The calibration data reader: one clip per get_next(), as {input name: (1, 3, T, H, W)}.

    __len__ and set_range let ONNX Runtime collect ranges one clip at a time
    (CalibStridedMinMax), so calibration memory does not grow with the number of clips."""

    def __init__(self, clips: np.ndarray, input_name: str):
        self.clips, self.input_name = clips, input_name
        self.set_range(0, len(clips))

    def __len__(self) -> int:
        return len(self.clips)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, end_index

    def get_next(self) -> dict | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return {self.input_name: self.clips[self._next - 1 : self._next]}

    def __iter__(self):
        return iter(self.get_next, None)


@dataclass(frozen=True)
class QdqResult:
    path: Path
    precision: str
    seconds: float
    quantized_nodes: int
    weights: int  # weight DQs (per channel)
    activations: int  # activation Q/DQ pairs (one per tensor, shared by its quantized consumers)
    rewired: int  # float consumers given back their float input
    op_counts: Counter


def quantizable_nodes(proto) -> list[str]:
    """Names of the nodes whose inputs get Q/DQ: Conv, Gemm, and MatMuls with a 2-D weight.

    A batched weight (IFDD's (groups, in, out) MatMuls) would be quantised per channel along
    axis 1, its reduction axis, which neither TensorRT (output channels only) nor ONNX
    Runtime's CPU kernel ("b zero point is not valid") accepts; those small products stay float."""
    weights = {t.name: len(t.dims) for t in proto.graph.initializer}
    return [
        node.name
        for node in proto.graph.node
        if node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and weights.get(node.input[1]) == 2)
    ]


def quantize(fp32_path: str | Path, output: str | Path, clips: np.ndarray, precision: str) -> QdqResult:
    """Calibrate on clips (N, 3, T, H, W) and write the QDQ model of fp32_path to output."""
    import onnx
    from onnxruntime import quantization as q

    if precision not in SCHEMES:
        raise ValueError(f"no QDQ scheme for {precision!r}; choose {', '.join(SCHEMES)}")
    scheme, started, output = SCHEMES[precision], time.perf_counter(), Path(output)
    proto = onnx.load(str(fp32_path), load_external_data=False)
    input_type = proto.graph.input[0].type.tensor_type.elem_type
    if input_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8):  # uint8: --input uint8, normalised in the graph
        raise ValueError(f"{fp32_path}: calibration needs the fp32 export (python -m export.onnx without --precision)")
    nodes = quantizable_nodes(proto)
    quant_type = getattr(q.QuantType, scheme.quant_type)
    with _quiet(), tempfile.TemporaryDirectory(prefix="dfer-qdq-") as scratch:
        source, partial = Path(fp32_path), Path(scratch) / "qdq.onnx"
        if _opset(proto) < scheme.min_opset:
            source = Path(scratch) / "fp32.onnx"
            raise_opset(proto, scheme.min_opset)
            onnx.save_model(proto, str(source))
        q.quantize_static(
            str(source), str(partial), ClipReader(clips.astype(np.uint8 if input_type == onnx.TensorProto.UINT8 else np.float32), proto.graph.input[0].name),
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=quant_type,
            weight_type=quant_type,
            calibrate_method=getattr(q.CalibrationMethod, scheme.method),
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                "CalibStridedMinMax": 1,
            },
        )
        quantized = onnx.load(str(partial))
        if scheme.amax_to is not None:
            amax_scales(quantized, proto, activation_amax(proto, activation_inputs(quantized), clips, Path(scratch)), scheme.amax_to)
    rewired = keep_float_consumers_float(quantized)
    _set_precision(quantized, precision)
    onnx.checker.check_model(quantized)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(quantized, str(output))
    census = Counter(n.op_type for n in quantized.graph.node)
    stored = {t.name for t in quantized.graph.initializer}
    weights = sum(1 for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored)
    return QdqResult(output, precision, time.perf_counter() - started, len(nodes), weights,
                     census["QuantizeLinear"], rewired, census)


def activation_inputs(proto) -> list[str]:
    """The float tensors the graph's activation QuantizeLinears quantise (weights are stored)."""
    stored = {t.name for t in proto.graph.initializer}
    return list(dict.fromkeys(n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in stored))


def activation_amax(fp32, names: list[str], clips: np.ndarray, scratch: Path) -> dict[str, float]:
    """max |x| of each named tensor of the fp32 model (a ModelProto) over the clips, one clip
    a run: the fp32 graph with those tensors as extra outputs, in ONNX Runtime CPU."""
    import onnx

    from runtime.backends import onnx_session

    graph_input = fp32.graph.input[0]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(fp32)
    present = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                  for name in names if name not in present and name != graph_input.name)
    onnx.save_model(augmented, str(scratch / "amax.onnx"))
    session = onnx_session(scratch / "amax.onnx")
    outputs = [o.name for o in session.get_outputs()]
    dtype = np.uint8 if graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8 else np.float32
    amax = dict.fromkeys(names, 0.0)
    for i in range(len(clips)):
        feed = clips[i : i + 1].astype(dtype)
        values = dict(zip(outputs, session.run(outputs, {graph_input.name: feed}), strict=True)) | {graph_input.name: feed}
        for name in names:
            amax[name] = max(amax[name], float(np.abs(values[name]).max()))
    return amax


def amax_scales(quantized, fp32, amax: dict[str, float], top: float) -> None:
    """Set every Q/DQ scale of the fp8 QDQ model to amax / top: activations from amax (per
    tensor), weights per output channel (the DQ's axis) from fp32's weights, which are stored
    again as E4M3 (round to nearest even; |w| / scale ≤ top, so nothing saturates)."""
    import ml_dtypes
    from onnx import numpy_helper

    stored = {t.name: t for t in quantized.graph.initializer}
    original = {t.name: t for t in fp32.graph.initializer}

    def replace(name: str, array: np.ndarray) -> None:
        stored[name].CopyFrom(numpy_helper.from_array(array, name))

    quantizes = {n.output[0]: n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    for node in quantized.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale_dtype, source = numpy_helper.to_array(stored[node.input[1]]).dtype, quantizes.get(node.input[0], node.input[0])
        if source in amax:  # an activation's Q, or the DQ after it
            replace(node.input[1], np.asarray(_scale(np.float64(amax[source]), top), scale_dtype))
        elif node.op_type == "DequantizeLinear" and source in stored:  # a stored weight
            weight = numpy_helper.to_array(original[node.input[0].removesuffix("_quantized")]).astype(np.float64)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % weight.ndim
            others = tuple(d for d in range(weight.ndim) if d != axis)
            scale = _scale(np.abs(weight).max(axis=others), top).astype(scale_dtype)  # rounded as stored, then divided by
            values = weight / np.expand_dims(scale, others)
            replace(node.input[0], np.clip(values, -top, top).astype(np.float32).astype(ml_dtypes.float8_e4m3fn))
            replace(node.input[1], scale)
        else:
            raise RuntimeError(f"{node.op_type} {node.name} of {source!r}: neither a calibrated activation nor a stored weight")


def _scale(amax: np.ndarray, top: float) -> np.ndarray:
    """amax / top; 1 where amax is 0 (an all-zero channel quantises to 0 at any scale)."""
    return np.where(amax > 0, amax / top, 1.0)


def keep_float_consumers_float(proto) -> int:
    """Rewire nodes that ONNX Runtime fed a DQ output although they are not quantized layers
    (it shares one Q/DQ pair among all consumers of a tensor) back to the float tensor; how many.

    So LayerNorm, Softmax, adds and the dfer ops compute on exactly what the fp32 model had."""
    dequantized = {}
    producers = {n.output[0]: n for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers:
            dequantized[node.output[0]] = producers[node.input[0]].input[0]
    rewired = 0
    for node in proto.graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in dequantized:
                node.input[i] = dequantized[name]
                rewired += 1
    return rewired


def _opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def raise_opset(proto, version: int) -> None:
    """Declare the standard opset `version` in the model and in its dfer functions alike.

    ONNX Runtime's quantiser raises only the model's opset for fp8 (19), after which a function
    still importing 18 is no longer resolved ("dfer:GatedExpertMLP(-1) is not a registered
    function"). Opsets 18 → 19 change no float op our graphs use (Cast gains fp8 saturation)."""
    for imports in [proto.opset_import, *(f.opset_import for f in proto.functions)]:
        for entry in imports:
            if entry.domain in ("", "ai.onnx"):
                entry.version = max(entry.version, version)


def _set_precision(proto, precision: str) -> None:
    """The metadata's precision says int8/fp8, so export.trt and the bundle know the file is a QDQ export."""
    metadata = DferMetadata.from_props({p.key: p.value for p in proto.metadata_props}, "the fp32 ONNX")
    write_props(proto, dataclasses.replace(metadata, precision=precision))


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization warns on the root logger that the model was not 'pre-processed'
    (its optional shape-inference/optimisation pass, which would rename our nodes), and its
    Distribution calibrator prints progress to stdout; the CLI prints its own summary. Scoped to
    one call: the logging disable level and the root logger's handlers (logging.warning() adds
    one through basicConfig when there is none) are as they were afterwards."""
    disabled, handlers = logging.root.manager.disable, list(logging.root.handlers)
    logging.disable(max(disabled, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(disabled)
        for handler in [h for h in logging.root.handlers if h not in handlers]:
            logging.root.removeHandler(handler)
