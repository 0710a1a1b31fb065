"""The dfer bundle, as a camera box reads it: the manifest schema, its typed form and the reader.

    name.dfer/
      manifest.json                                   what everything below is, validated on open
      model.onnx                                      the exported graph (runs in ONNX Runtime)
      model.<builder>.<gpu sm>.<precision>.engine     TensorRT engines, one per builder/GPU/precision
      model.<builder>.<gpu sm>.<precision>.layers.json    its layer report (network and engine)
      model.<builder>.<gpu sm>.<precision>.build.log      the builder's log (INFO and above)

export/ writes bundles (export.manifest); this module only reads and checks them, so it needs
nothing beyond the standard library and the spec. A manifest carries ``format_version``; a
reader refuses versions it does not know and names the first missing or mistyped field, so a
half-written or foreign bundle fails loudly at open time. Every file the runtime opens is
checked against the sha256 the manifest records (``Bundle.verified_path``/``read_verified``):
a 100 MiB model.onnx hashed in 52 ms on one core of the 2-core dev box (2.0 GB/s, page cache
warm; 60-96 ms under load), once, at open.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.spec import ModelSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
BUILDERS = ("tensorrt", "tensorrt-rtx")
# The precisions a bundle's ONNX and engines come in, lowest-cost last (the runtime prefers the
# lowest). How each one is produced lives with the writer (export.precision).
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
INPUT_DTYPES = ("float32", "float16", "uint8")  # numpy names; fp16 exports take fp16 clips, uint8-input ones frames
_SM = re.compile(r"^sm_\d{2,3}$")

_NUMBER = (int, float)
# Required fields and their JSON types, checked in one place. A dict is a nested object, a
# one-element list a list whose items all follow that schema. Extra fields are allowed, so a
# newer writer can add information without breaking older readers of the same format version.
_ENGINE_SCHEMA = {
    "file": str,
    "sha256": str,
    "size_bytes": int,
    "builder": str,
    "builder_version": str,
    "gpu_sm": [str],
    "precision": str,
    "batch_profile": {"min": int, "opt": int, "max": int},
    "plugins": dict,
    "layer_report": str,
    "build": {"seconds": _NUMBER, "peak_rss_mib": _NUMBER},
}
_TENSOR_SCHEMA = {"name": str, "dtype": str, "shape": list}
_SCHEMA = {
    "format_version": int,
    "model": {"family": str, "checkpoint_sha256": str, "untrained": bool, "spec": dict},
    "input": _TENSOR_SCHEMA,
    "outputs": [_TENSOR_SCHEMA],
    "onnx": {"file": str, "sha256": str, "size_bytes": int, "opset": int, "precision": str, "custom_ops": [str]},
    "engines": [_ENGINE_SCHEMA],
}


class BundleError(ValueError):
    """A bundle that cannot be used, with one line naming the file and the field at fault."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple  # ints, and names ("batch") for dynamic axes


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class EngineEntry:
    """One engine of a bundle. build holds the builder's statistics (seconds, peak RSS, layer
    counts, log file): a report for people, read by no code path."""

    file: str
    sha256: str
    size_bytes: int
    builder: str
    builder_version: str
    gpu_sm: tuple[str, ...]
    precision: str
    batch_profile: BatchProfile
    plugins: dict
    layer_report: str
    build: dict

    def runs_on(self, sm: str) -> bool:
        return sm in self.gpu_sm

    def files(self) -> tuple[str, ...]:
        """Every file of this engine in the bundle: engine, layer report, build log."""
        return tuple(name for name in (self.file, self.layer_report, self.build.get("log")) if name)


@dataclass(frozen=True)
class OnnxEntry:
    file: str
    sha256: str
    size_bytes: int
    opset: int
    precision: str
    custom_ops: tuple[str, ...]


@dataclass(frozen=True)
class ModelEntry:
    family: str
    checkpoint_sha256: str
    untrained: bool
    spec: ModelSpec
    config: dict = field(default_factory=dict)
    demo: str = ""  # runtime.metadata.DferMetadata.demo


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. calibration / accuracy / verification are reports (free-form
    objects written by export); ``extra`` keeps fields a newer writer added, so they survive a
    read-modify-write by this version."""

    model: ModelEntry
    input: TensorEntry
    outputs: tuple[TensorEntry, ...]
    onnx: OnnxEntry
    engines: tuple[EngineEntry, ...] = ()
    calibration: dict | None = None
    accuracy: dict | None = None
    verification: dict | None = None
    created_by: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST_NAME) -> "Manifest":
        validate_manifest(data, where)
        known = {f.name for f in dataclasses.fields(cls)}
        model = data["model"]
        return cls(
            model=ModelEntry(
                family=model["family"], checkpoint_sha256=model["checkpoint_sha256"], untrained=model["untrained"],
                spec=ModelSpec.from_dict(model["spec"]), config=dict(model.get("config", {})), demo=model.get("demo", ""),
            ),
            input=_tensor(data["input"]),
            outputs=tuple(_tensor(t) for t in data["outputs"]),
            onnx=OnnxEntry(**{**data["onnx"], "custom_ops": tuple(data["onnx"]["custom_ops"])}),
            engines=tuple(_engine(e) for e in data["engines"]),
            calibration=data.get("calibration"),
            accuracy=data.get("accuracy"),
            verification=data.get("verification"),
            created_by=data.get("created_by", ""),
            format_version=data["format_version"],
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict:
        data = {
            "format_version": self.format_version,
            "model": {**dataclasses.asdict(self.model), "spec": self.model.spec.to_dict()},
            "input": _plain(self.input),
            "outputs": [_plain(t) for t in self.outputs],
            "onnx": _plain(self.onnx),
            "engines": [_plain(e) for e in self.engines],
            "calibration": self.calibration,
            "accuracy": self.accuracy,
            "verification": self.verification,
            "created_by": self.created_by,
        }
        return {**self.extra, **data}

    def engines_for(self, sm: str, builder: str | None = None) -> list[EngineEntry]:
        """Engines that run on a GPU of this compute capability (e.g. 'sm_87'), lowest precision first."""
        found = [e for e in self.engines if e.runs_on(sm) and builder in (None, e.builder)]
        return sorted(found, key=lambda e: PRECISIONS.index(e.precision), reverse=True)


class Bundle:
    """A validated bundle directory. ``Bundle.open(path)`` is the runtime's entry point."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{path}: not a dfer bundle (no {MANIFEST_NAME})")
        try:
            data = json.loads(manifest_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
        bundle = cls(path, Manifest.from_dict(data, where=str(manifest_path)))
        bundle._check_files()
        return bundle

    @property
    def spec(self) -> ModelSpec:
        return self.manifest.model.spec

    @property
    def family(self) -> str:
        return self.manifest.model.family

    @property
    def untrained(self) -> bool:
        return self.manifest.model.untrained

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.onnx.file

    @property
    def input_dtype(self) -> str:
        """numpy dtype name of the model input ('float16' for fp16 exports, 'uint8' for --input uint8)."""
        return self.manifest.input.dtype

    @property
    def engines(self) -> tuple[EngineEntry, ...]:
        return self.manifest.engines

    def engines_for(self, sm: str, builder: str | None = None) -> list[EngineEntry]:
        return self.manifest.engines_for(sm, builder)

    def file(self, name: str) -> Path:
        return self.path / name

    def verified_path(self, name: str) -> Path:
        """model.onnx or an engine, refused unless it matches the manifest's size and sha256
        (a file changed after export, even at the same size, never runs). Hashed in 1 MiB
        chunks, so a large ONNX file is never held in memory twice."""
        digest = hashlib.sha256()
        with open(self.path / name, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        self._check_digest(name, (self.path / name).stat().st_size, digest.hexdigest())
        return self.path / name

    def read_verified(self, name: str) -> bytes:
        """The bytes of an engine (or model.onnx), checked like verified_path."""
        data = (self.path / name).read_bytes()
        self._check_digest(name, len(data), hashlib.sha256(data).hexdigest())
        return data

    def _check_digest(self, name: str, size: int, sha256: str) -> None:
        entry = self._entries().get(name)
        if entry is None:
            raise BundleError(f"{self.path}: {name} is not listed in {MANIFEST_NAME}")
        if size != entry.size_bytes:
            raise BundleError(f"{self.path / name} is {size} bytes, {MANIFEST_NAME} says {entry.size_bytes}: "
                              f"the file was changed or cut short after export")
        if sha256 != entry.sha256:
            raise BundleError(f"{self.path / name} does not match the sha256 in {MANIFEST_NAME}: "
                              f"the file was changed after export (rebuild the bundle with python -m export.trt)")

    def _entries(self) -> dict[str, OnnxEntry | EngineEntry]:
        return {self.manifest.onnx.file: self.manifest.onnx, **{e.file: e for e in self.manifest.engines}}

    def _check_files(self) -> None:
        listed = [("onnx.file", self.manifest.onnx.file)]
        for i, engine in enumerate(self.manifest.engines):
            listed += [(f"engines[{i}].file", engine.file), (f"engines[{i}].layer_report", engine.layer_report)]
        for where, name in listed:
            if Path(name).name != name:
                raise BundleError(f"{self.path}: {where} must be a file name inside the bundle, got {name!r}")
            if not (self.path / name).is_file():
                raise BundleError(f"{self.path}: {where} names {name}, which is missing from the bundle")


def validate_manifest(manifest, where: str = MANIFEST_NAME) -> None:
    """Raise BundleError naming the first field that is missing, mistyped or unknown in value."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: expected a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version is None:
        raise BundleError(f"{where}: missing field format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where}: unknown format_version {version!r}; this dfer-edge reads format {FORMAT_VERSION} "
            f"(rebuild the bundle with python -m export.trt, or upgrade dfer-edge)"
        )
    _check(manifest, _SCHEMA, "", where)
    try:
        spec = ModelSpec.from_dict(manifest["model"]["spec"])
    except (TypeError, ValueError) as err:
        raise BundleError(f"{where}: model.spec: {err}") from err
    if (manifest["input"]["dtype"] == "uint8") != (spec.input_format == "uint8"):
        raise BundleError(f"{where}: input.dtype is {manifest['input']['dtype']!r} but model.spec.input_format is "
                          f"{spec.input_format!r}: a uint8 input and a uint8 input_format go together")
    for name, value, allowed in _enumerated_fields(manifest):
        if value not in allowed:
            raise BundleError(f"{where}: {name} is {value!r}; expected one of {', '.join(allowed)}")
    for i, engine in enumerate(manifest["engines"]):
        bad = [sm for sm in engine["gpu_sm"] if not _SM.match(sm)]
        if bad or not engine["gpu_sm"]:
            raise BundleError(f"{where}: engines[{i}].gpu_sm must list targets like 'sm_87', got {engine['gpu_sm']!r}")


def _enumerated_fields(manifest: dict):
    yield "input.dtype", manifest["input"]["dtype"], INPUT_DTYPES
    yield "onnx.precision", manifest["onnx"]["precision"], PRECISIONS
    for i, engine in enumerate(manifest["engines"]):
        yield f"engines[{i}].builder", engine["builder"], BUILDERS
        yield f"engines[{i}].precision", engine["precision"], PRECISIONS


def _check(value, schema, name: str, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: {name} must be an object, found {type(value).__name__}")
        for key, sub in schema.items():
            child = f"{name}.{key}" if name else key
            if key not in value:
                raise BundleError(f"{where}: missing field {child}")
            _check(value[key], sub, child, where)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise BundleError(f"{where}: {name} must be a list, found {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{name}[{i}]", where)
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise BundleError(f"{where}: {name} must be {wanted}, found {type(value).__name__} {value!r}")


def _tensor(data: dict) -> TensorEntry:
    return TensorEntry(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


def _engine(data: dict) -> EngineEntry:
    known = {f.name for f in dataclasses.fields(EngineEntry)}
    values = {k: v for k, v in data.items() if k in known}
    return EngineEntry(**{**values, "gpu_sm": tuple(data["gpu_sm"]), "batch_profile": BatchProfile(**data["batch_profile"])})


def _plain(entry) -> dict:
    """A dataclass entry as JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(entry)))
