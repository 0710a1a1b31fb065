"""The ``dfer.*`` metadata an exported ONNX file carries, and its weight-free reader.

Every writer (export.onnx, export.image_model, calibration's QDQ files) and every reader (the
runtime, export.trt) goes through ``DferMetadata`` and the key table ``Key``: no ``"dfer.…"``
string literal lives anywhere else.

The props are read straight from the protobuf wire format: the ``onnx`` package is not a
runtime dependency, and asking ONNX Runtime for them would load (and optimise) the whole model
only to read a few strings. The ModelProto's large fields (the graph with its weights) are
skipped by their length through a memory map, so the metadata of a 300 MB model costs
microseconds.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

from runtime.spec import ModelSpec

PREFIX = "dfer."


class Key:
    """The metadata_props keys, one place for all of them."""

    FAMILY = "dfer.family"
    SPEC = "dfer.spec"
    CONFIG = "dfer.config"
    CHECKPOINT_SHA256 = "dfer.checkpoint_sha256"
    UNTRAINED = "dfer.untrained"
    CUSTOM_OPS = "dfer.custom_ops"
    PRECISION = "dfer.precision"
    DEMO = "dfer.demo"


@dataclass(frozen=True)
class DferMetadata:
    """What an exported ONNX says about itself. precision: fp32, fp16, or int8/fp8 for QDQ files."""

    spec: ModelSpec
    family: str
    untrained: bool = False
    config: dict = field(default_factory=dict)
    checkpoint_sha256: str = ""
    custom_ops: tuple[str, ...] = ()
    precision: str = "fp32"
    demo: str = ""  # "distilled" or "random" for demo checkpoints (their note), "" otherwise

    def to_props(self) -> dict[str, str]:
        return {
            Key.FAMILY: self.family,
            Key.SPEC: self.spec.to_json(),
            Key.CONFIG: json.dumps(self.config, sort_keys=True),
            Key.CHECKPOINT_SHA256: self.checkpoint_sha256,
            Key.UNTRAINED: json.dumps(self.untrained),
            Key.CUSTOM_OPS: json.dumps(list(self.custom_ops)),
            Key.PRECISION: self.precision,
            Key.DEMO: self.demo,
        }

    @classmethod
    def from_props(cls, props: dict[str, str], where: str | Path) -> "DferMetadata":
        """Parse the props of one file; ValueError naming the file and what is wrong."""
        if Key.SPEC not in props:
            raise ValueError(f"{where} has no {Key.SPEC} metadata: export it with `python -m export.onnx`")
        try:
            spec = ModelSpec.from_dict(json.loads(props[Key.SPEC]))
            return cls(
                spec=spec,
                family=props.get(Key.FAMILY, spec.family),
                untrained=bool(json.loads(props.get(Key.UNTRAINED, "false"))),
                config=json.loads(props.get(Key.CONFIG, "{}")),
                checkpoint_sha256=props.get(Key.CHECKPOINT_SHA256, ""),
                custom_ops=tuple(json.loads(props.get(Key.CUSTOM_OPS, "[]"))),
                precision=props.get(Key.PRECISION, "fp32"),
                demo=props.get(Key.DEMO, ""),
            )
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: dfer metadata is not valid JSON ({err})") from err


def weights_note(untrained: bool, demo: str) -> str:
    """What the CLIs print beside predictions of demo weights ("" for real checkpoints)."""
    if demo == "distilled":
        return "DISTILLED demo weights (head fitted to a FER model on one video): a demo, not a benchmark model"
    return "UNTRAINED demo weights: predictions are meaningless" if untrained else ""


def write_props(proto, metadata: DferMetadata) -> None:
    """Replace an onnx ModelProto's dfer.* props (other props are kept)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.to_props().items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> DferMetadata:
    """The dfer metadata of an exported ONNX file, without parsing its graph or weights."""
    return DferMetadata.from_props(read_onnx_metadata(path), path)


# ModelProto.metadata_props and StringStringEntryProto's fields (onnx/onnx.proto).
_METADATA_PROPS = 14
_KEY, _VALUE = 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """All metadata_props of an ONNX file as a dict, without parsing its graph or weights."""
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
                raise ValueError(f"{path} is not a readable ONNX model ({err or type(err).__name__})") from err


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
