"""Make any per-frame (static) FER ONNX model usable beside a clip model: attach its spec.

    python -m export.image_model fer.onnx -o fer_dfer.onnx --labels anger,contempt,disgust,fear,happiness,neutral,sadness,surprise --size 224

The runtime's compound stage runs such a model on frames of each clip and fuses its
probabilities with the clip model's (runtime.post). What it needs to know travels in the ONNX
metadata as for our own exports: a ``dfer.spec`` with layout NCHW (labels in the model's output
order, input size, RGB normalisation pixel = (uint8 · scale − mean) / std). The graph itself
is not changed; its input must be (N, 3, H, W) and its first output (N, classes) logits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec


def image_spec(labels, height: int, width: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale: float = 1 / 255,
               family: str = "image") -> ModelSpec:
    return ModelSpec(
        family=family, labels=tuple(labels), frames=1, height=height, width=width, frame_stride=1,
        mean=tuple(mean), std=tuple(std), resize="bilinear", clip_merge="softmax", scale=scale, layout="NCHW",
    )


def attach_spec(source: str | Path, output: str | Path, spec: ModelSpec, untrained: bool = False) -> Path:
    """Copy the ONNX model at source to output with the spec in its metadata; ValueError when
    its input or output does not fit the spec."""
    import onnx

    try:
        model = onnx.load(str(source))
    except Exception as err:  # protobuf's DecodeError and friends name nothing useful
        raise ValueError(f"{source} is not a readable ONNX model ({type(err).__name__}: {err})") from None
    _check_io(model, spec, source)
    metadata = {"dfer.spec": spec.to_json(), "dfer.family": spec.family, "dfer.untrained": json.dumps(untrained)}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    output = Path(output)
    onnx.save(model, str(output))
    return output


def _check_io(model, spec: ModelSpec, source) -> None:
    inputs = [i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer}]
    if len(inputs) != 1:
        raise ValueError(f"{source}: a per-frame model has one input, this one has {len(inputs)}")
    dims = _dims(inputs[0])
    wanted = [None, 3, spec.height, spec.width]
    if len(dims) != 4 or any(d is not None and w is not None and d != w for d, w in zip(dims, wanted)):
        raise ValueError(f"{source}: input {inputs[0].name!r} has shape {dims}, expected (N, 3, {spec.height}, {spec.width})")
    out = _dims(model.graph.output[0])
    if len(out) != 2 or (out[1] is not None and out[1] != spec.num_classes):
        raise ValueError(f"{source}: output {model.graph.output[0].name!r} has shape {out}, expected (N, {spec.num_classes}) for labels {spec.labels}")


def _dims(value) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.image_model", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a per-frame FER model: ONNX, input (N, 3, H, W), output (N, classes)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--labels", required=True, help="class names in the model's output order, comma-separated")
    parser.add_argument("--size", type=int, nargs="+", required=True, metavar="PIXELS", help="input height [width]")
    parser.add_argument("--mean", default=",".join(map(str, IMAGENET_MEAN)), help="per-channel RGB mean after scaling (default ImageNet)")
    parser.add_argument("--std", default=",".join(map(str, IMAGENET_STD)), help="per-channel RGB std after scaling (default ImageNet)")
    parser.add_argument("--scale", type=float, default=1 / 255, help="uint8 pixel scale before mean/std (default 1/255)")
    parser.add_argument("--family", default="image", help="a name for the model (default: image)")
    args = parser.parse_args(argv)
    try:
        if len(args.size) > 2 or min(args.size) < 1:
            raise ValueError(f"--size takes a height and optionally a width in pixels, got {args.size}")
        height, width = args.size[0], args.size[-1]
        spec = image_spec(_names(args.labels), height, width, _floats(args.mean, "--mean"), _floats(args.std, "--std"),
                          args.scale, args.family)
        attach_spec(args.model, args.output, spec)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {spec.family}, {spec.num_classes} classes, {height}×{width} input")
    return 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"--labels takes distinct comma-separated names, got {text!r}")
    return names


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} takes three comma-separated numbers (R, G, B), got {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
