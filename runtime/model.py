"""Where the runtime gets its model from: one seam, ``load_model_source(path)``.

It takes a bundle directory (manifest.json + model.onnx + engines, DESIGN.md §6, opened and
validated by export.bundle, which is torch-free) or a plain ONNX file written by
``python -m export.onnx``, whose ``dfer.*`` metadata carries the ModelSpec. Either way the
preprocessing is rebuilt from the spec in numpy.

The metadata is read straight from the protobuf wire format: the ``onnx`` package is not a
core dependency, and asking ONNX Runtime for it would load (and optimise) the whole model only
to read a few strings. The ModelProto's large fields (the graph with its weights) are skipped
by their length, through a memory map, so reading the metadata of a 300 MB model costs
microseconds.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

from export.bundle import Bundle
from runtime.spec import ModelSpec

# ModelProto.metadata_props and StringStringEntryProto's fields (onnx/onnx.proto).
_METADATA_PROPS = 14
_KEY, _VALUE = 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class ModelSource:
    """Everything the runtime needs to know about a model artefact, and where its files are.

    engines lists TensorRT engine files a bundle holds (none for a plain ONNX file).
    """

    path: Path
    onnx_path: Path
    spec: ModelSpec
    family: str
    untrained: bool
    engines: tuple[Path, ...] = ()


def load_model_source(path: str | Path) -> ModelSource:
    """Open an exported model: a bundle directory, or a ``.onnx`` file with dfer metadata."""
    path = Path(path)
    if path.is_dir():
        return _from_bundle(path)  # BundleError is a ValueError naming the file and field at fault
    if not path.is_file():
        raise ValueError(f"model {path} does not exist")
    return _from_onnx(path)


def _from_bundle(path: Path) -> ModelSource:
    bundle = Bundle.open(path)
    return ModelSource(
        path=path, onnx_path=bundle.onnx_path, spec=bundle.spec, family=bundle.family,
        untrained=bundle.untrained, engines=tuple(engine.path for engine in bundle.engines),
    )


def _from_onnx(path: Path) -> ModelSource:
    metadata = read_onnx_metadata(path)
    if "dfer.spec" not in metadata:
        raise ValueError(f"{path} has no dfer.spec metadata: export it with `python -m export.onnx`")
    try:
        spec = ModelSpec.from_dict(json.loads(metadata["dfer.spec"]))
        untrained = bool(json.loads(metadata.get("dfer.untrained", "false")))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: dfer metadata is not valid JSON ({err})") from None
    family = metadata.get("dfer.family", spec.family)
    return ModelSource(path=path, onnx_path=path, spec=spec, family=family, untrained=untrained)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict, without parsing its graph or weights."""
    path = Path(path)
    with open(path, "rb") as file:
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty, not an ONNX model")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                props = {}
                for number, start, end in _fields(data, 0, len(data)):
                    if number == _METADATA_PROPS and end is not None:
                        entry = {n: bytes(data[s:e]).decode("utf-8") for n, s, e in _fields(data, start, end) if e is not None}
                        props[entry.get(_KEY, "")] = entry.get(_VALUE, "")
                return props
            except (IndexError, UnicodeDecodeError, _WireError) as err:
                raise ValueError(f"{path} is not a readable ONNX model ({err or type(err).__name__})") from None


class _WireError(Exception):
    pass


def _fields(data, pos: int, end: int):
    """(field number, start, end) of each field in data[pos:end]; start/end None unless length-delimited."""
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(data, pos)
            yield number, None, None
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise _WireError(f"field {number} runs past the end of its message")
            yield number, pos, pos + length
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            yield number, None, None
        else:
            raise _WireError(f"unknown protobuf wire type {wire} at byte {pos}")
    if pos != end:
        raise _WireError("truncated message")


def _varint(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _WireError(f"varint longer than 10 bytes at byte {pos}")
