"""The dfer bundle: the one directory a camera box needs to run a model (DESIGN §6).

    name.dfer/
      manifest.json                                   what everything below is, validated on open
      model.onnx                                      the exported graph (runs in ONNX Runtime)
      model.<builder>.<gpu sm>.<precision>.engine     TensorRT engines, one per builder/GPU/precision
      model.<builder>.<gpu sm>.<precision>.layers.json    its layer report (network and engine)
      model.<builder>.<gpu sm>.<precision>.build.log      the builder's log (INFO and above)

The runtime imports this module, so it must never import torch: numpy, json and runtime.spec only.
A manifest carries ``format_version``; a reader refuses versions it does not know and names the
first missing or mistyped field, so a half-written or foreign bundle fails loudly at open time.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from runtime.spec import ModelSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
BUILDERS = ("tensorrt", "tensorrt-rtx")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
INPUT_DTYPES = ("float32", "float16")  # numpy names; fp16 exports take fp16 clips
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
_SCHEMA = {
    "format_version": int,
    "model": {"family": str, "checkpoint_sha256": str, "untrained": bool, "spec": dict},
    "input": {"name": str, "dtype": str, "shape": list},
    "outputs": [{"name": str, "dtype": str, "shape": list}],
    "onnx": {"file": str, "sha256": str, "opset": int, "precision": str, "custom_ops": [str]},
    "engines": [_ENGINE_SCHEMA],
}


class BundleError(ValueError):
    """A bundle that cannot be used, with one line naming the file and the field at fault."""


@dataclass(frozen=True)
class EngineInfo:
    """One engine of a bundle, as the runtime needs to choose and load it."""

    path: Path
    builder: str
    builder_version: str
    gpu_sm: tuple[str, ...]
    precision: str
    batch_profile: tuple[int, int, int]  # (min, opt, max)
    plugins: dict
    layer_report: Path
    sha256: str
    size_bytes: int

    def runs_on(self, sm: str) -> bool:
        return sm in self.gpu_sm


class Bundle:
    """A validated bundle directory. ``Bundle.open(path)`` is the runtime's entry point."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{path}: not a dfer bundle (no {MANIFEST_NAME})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{manifest_path}: not valid JSON ({err})") from None
        validate_manifest(manifest, where=str(manifest_path))
        bundle = cls(path, manifest)
        bundle._check_files()
        return bundle

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.manifest["model"]["spec"])

    @property
    def family(self) -> str:
        return self.manifest["model"]["family"]

    @property
    def untrained(self) -> bool:
        return self.manifest["model"]["untrained"]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["onnx"]["file"]

    @property
    def input_name(self) -> str:
        return self.manifest["input"]["name"]

    @property
    def input_dtype(self) -> str:
        """numpy dtype name of the model input ('float16' for fp16 exports)."""
        return self.manifest["input"]["dtype"]

    @property
    def output_name(self) -> str:
        return self.manifest["outputs"][0]["name"]

    @property
    def engines(self) -> tuple[EngineInfo, ...]:
        return tuple(_engine_info(self.path, e) for e in self.manifest["engines"])

    def engines_for(self, sm: str, builder: str | None = None) -> list[EngineInfo]:
        """Engines that run on a GPU of this compute capability (e.g. 'sm_87'), lowest precision first."""
        found = [e for e in self.engines if e.runs_on(sm) and builder in (None, e.builder)]
        return sorted(found, key=lambda e: PRECISIONS.index(e.precision), reverse=True)

    def _check_files(self) -> None:
        listed = [("onnx.file", self.manifest["onnx"]["file"])]
        for i, engine in enumerate(self.manifest["engines"]):
            listed += [(f"engines[{i}].file", engine["file"]), (f"engines[{i}].layer_report", engine["layer_report"])]
        for field, name in listed:
            if Path(name).name != name:
                raise BundleError(f"{self.path}: {field} must be a file name inside the bundle, got {name!r}")
            if not (self.path / name).is_file():
                raise BundleError(f"{self.path}: {field} names {name}, which is missing from the bundle")


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
        ModelSpec.from_dict(manifest["model"]["spec"])
    except (TypeError, ValueError) as err:
        raise BundleError(f"{where}: model.spec: {err}") from None
    for field, value, allowed in _enumerated_fields(manifest):
        if value not in allowed:
            raise BundleError(f"{where}: {field} is {value!r}; expected one of {', '.join(allowed)}")
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


def _check(value, schema, field: str, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: {field} must be an object, found {type(value).__name__}")
        for key, sub in schema.items():
            name = f"{field}.{key}" if field else key
            if key not in value:
                raise BundleError(f"{where}: missing field {name}")
            _check(value[key], sub, name, where)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise BundleError(f"{where}: {field} must be a list, found {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, schema[0], f"{field}[{i}]", where)
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise BundleError(f"{where}: {field} must be {wanted}, found {type(value).__name__} {value!r}")


def _engine_info(root: Path, entry: dict) -> EngineInfo:
    profile = entry["batch_profile"]
    return EngineInfo(
        path=root / entry["file"],
        builder=entry["builder"],
        builder_version=entry["builder_version"],
        gpu_sm=tuple(entry["gpu_sm"]),
        precision=entry["precision"],
        batch_profile=(profile["min"], profile["opt"], profile["max"]),
        plugins=dict(entry["plugins"]),
        layer_report=root / entry["layer_report"],
        sha256=entry["sha256"],
        size_bytes=entry["size_bytes"],
    )


def engine_stem(builder: str, gpu_sm: list[str] | tuple[str, ...], precision: str) -> str:
    """'model.tensorrt.sm_87.fp16', 'model.tensorrt-rtx.sm_80-86-89-120.fp16': builder, GPUs, precision."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown builder {builder!r}; known: {', '.join(BUILDERS)}")
    numbers = [sm.removeprefix("sm_") for sm in gpu_sm]
    return f"model.{builder}.sm_{'-'.join(numbers)}.{precision}"


def onnx_manifest(facts: dict, previous: dict | None, path: Path) -> dict:
    """A manifest for a bundle whose model.onnx was just written (facts: export.trt.onnx_facts).

    Engines of an earlier identical ONNX (same sha256) are kept; those of another are stale, and
    their files are deleted so no engine of a different model can be picked up by mistake.
    """
    meta = facts["meta"]
    engines = []
    if previous is not None and previous["onnx"]["sha256"] == facts["sha256"]:
        engines = previous["engines"]
    elif previous is not None:
        for engine in previous["engines"]:
            for name in (engine["file"], engine["layer_report"], engine["build"].get("log")):
                if name:
                    (path / name).unlink(missing_ok=True)
    return {
        "format_version": FORMAT_VERSION,
        "model": {
            "family": meta["dfer.family"],
            "checkpoint_sha256": meta["dfer.checkpoint_sha256"],
            "untrained": json.loads(meta["dfer.untrained"]),
            "config": json.loads(meta.get("dfer.config", "{}")),
            "spec": json.loads(meta["dfer.spec"]),
        },
        "input": facts["input"],
        "outputs": facts["outputs"],
        "onnx": {
            "file": ONNX_NAME,
            "sha256": facts["sha256"],
            "size_bytes": facts["size_bytes"],
            "opset": facts["opset"],
            "precision": facts["precision"],
            "custom_ops": facts["custom_ops"],
        },
        "engines": engines,
        "plugins": [],  # AOT PTX of kernels/' TensorRT plugins, per op and GPU: none yet
        "calibration": None,
        "verification": None,
        "created_by": "python -m export.trt",
    }


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    """Validate, then write manifest.json atomically (a reader never sees half a manifest)."""
    path = Path(path)
    validate_manifest(manifest, where=str(path / MANIFEST_NAME))
    target = path / MANIFEST_NAME
    partial = path / (MANIFEST_NAME + ".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    partial.replace(target)
    return target


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of an existing bundle directory, validated, or None if there is none."""
    path = Path(path)
    if not (path / MANIFEST_NAME).is_file():
        return None
    return Bundle.open(path).manifest
