"""The bundle format: real bundles open, every broken manifest names its field, a file changed
after export is refused, no torch at load."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from export.manifest import engine_stem, write_manifest
from export.trt import BuildRequest, Progress, build_bundle, write_onnx_part
from models import load, sha256_of
from models.demo_checkpoint import write_demo_checkpoint
from runtime.backends import open_backend
from runtime.bundle import BatchProfile, Bundle, BundleError, validate_manifest
from runtime.model import load_model_source
from tests.test_export_onnx import change_weight
from tests.test_loader import ROOT, SMALL_S4D, assert_one_line_error, run_cli
from tests.test_trt import RTX_MISSING, needs_rtx


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_demo_checkpoint("s4d", tmp_path_factory.mktemp("ckpt") / "small.pth", seed=4, config=SMALL_S4D)


@pytest.fixture(scope="module")
def onnx_part(checkpoint, tmp_path_factory):
    """A bundle with its ONNX part only, as written without any TensorRT builder."""
    return write_onnx_part(BuildRequest(checkpoint, tmp_path_factory.mktemp("onnx_only") / "small.dfer"), Progress(_quiet))


@pytest.fixture(scope="module")
def onnx_bundle(onnx_part):
    return onnx_part.output


@pytest.fixture(scope="module")
def engine_bundle(onnx_bundle, tmp_path_factory):
    """The same bundle plus a real TensorRT-RTX engine, built from the bundle's own ONNX."""
    if RTX_MISSING is not None:
        pytest.skip(f"TensorRT-RTX builder not importable ({RTX_MISSING}); pip install tensorrt-rtx-cu13")
    output = tmp_path_factory.mktemp("with_engine") / "small.dfer"
    shutil.copytree(onnx_bundle, output)
    manifest = build_bundle(BuildRequest(output / "model.onnx", output, max_batch=2, opt_batch=1, builder="tensorrt-rtx", verify=False), _quiet)
    assert manifest == Bundle.open(output).manifest  # build_bundle returns what it wrote
    return output


def _copy(bundle, tmp_path):
    target = tmp_path / bundle.name
    shutil.copytree(bundle, target)
    return target


def _edit(path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_onnx_only_bundle_opens_with_its_spec(onnx_bundle, checkpoint):
    bundle = Bundle.open(onnx_bundle)
    assert bundle.manifest.format_version == 1
    assert bundle.spec == load(checkpoint).spec and bundle.family == "s4d" and bundle.untrained
    assert bundle.manifest.model.checkpoint_sha256 == sha256_of(checkpoint)
    assert bundle.manifest.onnx.sha256 == sha256_of(bundle.onnx_path)
    assert (bundle.manifest.input.name, bundle.input_dtype, bundle.manifest.outputs[0].name) == ("clip", "float16", "logits")
    assert bundle.manifest.input.shape == ("batch", 3, 16, 64, 64)
    assert bundle.engines == () and bundle.engines_for("sm_86") == []


def test_the_manifest_written_is_the_typed_one_built(onnx_part):
    bundle = Bundle.open(onnx_part.output)
    assert onnx_part.manifest == bundle.manifest and onnx_part.facts.onnx == bundle.manifest.onnx
    assert onnx_part.facts.input == bundle.manifest.input and onnx_part.facts.metadata.spec == bundle.spec


@needs_rtx
def test_engine_bundle_lists_a_real_engine(engine_bundle):
    bundle = Bundle.open(engine_bundle)
    (engine,) = bundle.engines
    assert engine.file == engine_stem("tensorrt-rtx", engine.gpu_sm, "fp16") + ".engine"
    assert bundle.file(engine.file).stat().st_size == engine.size_bytes and bundle.file(engine.layer_report).is_file()
    assert engine.batch_profile == BatchProfile(1, 1, 2) and engine.plugins == {"dfer::GatedExpertMLP": "inlined"}
    assert engine.runs_on("sm_89") and not engine.runs_on("sm_87")
    assert bundle.engines_for("sm_120") == [engine] and bundle.engines_for("sm_90") == []
    assert bundle.engines_for("sm_86", builder="tensorrt") == []


ONNX_PART_FIELDS = [
    ("format_version",),
    ("model",),
    ("model", "spec"),
    ("model", "checkpoint_sha256"),
    ("model", "untrained"),
    ("input", "dtype"),
    ("outputs", 0, "name"),
    ("onnx", "sha256"),
    ("onnx", "custom_ops"),
    ("engines",),
]
ENGINE_FIELDS = [("engines", 0, "precision"), ("engines", 0, "gpu_sm"), ("engines", 0, "batch_profile", "max"), ("engines", 0, "build", "seconds")]


def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _delete(manifest, path) -> None:
    parent = manifest
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]


@pytest.mark.parametrize("path", ONNX_PART_FIELDS, ids=_dotted)
def test_missing_field_is_named(onnx_bundle, tmp_path, path):
    broken = _copy(onnx_bundle, tmp_path)
    _edit(broken, lambda m: _delete(m, path))
    with pytest.raises(BundleError, match=re.escape(f"manifest.json: missing field {_dotted(path)}") + "$"):
        Bundle.open(broken)


@needs_rtx
@pytest.mark.parametrize("path", ENGINE_FIELDS, ids=_dotted)
def test_missing_engine_field_is_named(engine_bundle, path):
    manifest = json.loads((engine_bundle / "manifest.json").read_text())
    _delete(manifest, path)
    with pytest.raises(BundleError, match=re.escape(f"missing field {_dotted(path)}") + "$"):
        validate_manifest(manifest)


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_unknown_format_version(onnx_bundle, tmp_path, version):
    broken = _copy(onnx_bundle, tmp_path)
    _edit(broken, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match=re.escape(f"unknown format_version {version!r}; this dfer-edge reads format 1")):
        Bundle.open(broken)


BAD_VALUES = {
    "untrained not bool": (lambda m: m["model"].update(untrained="yes"), "model.untrained must be bool, found str"),
    "opset not int": (lambda m: m["onnx"].update(opset=18.0), "onnx.opset must be int, found float"),
    "input dtype": (lambda m: m["input"].update(dtype="bfloat16"), "input.dtype is 'bfloat16'; expected one of float32, float16"),
    "spec field": (lambda m: m["model"]["spec"].pop("frames"), "model.spec: model spec is missing field(s): frames"),
    "onnx precision": (lambda m: m["onnx"].update(precision="fp64"), "onnx.precision is 'fp64'"),
    "onnx outside": (lambda m: m["onnx"].update(file="../model.onnx"), "onnx.file must be a file name inside the bundle"),
    "not an object": (lambda m: m.update(model=[1]), "model must be an object, found list"),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_bad_value_is_named(onnx_bundle, tmp_path, case):
    change, message = BAD_VALUES[case]
    broken = _copy(onnx_bundle, tmp_path)
    _edit(broken, change)
    with pytest.raises(BundleError, match=re.escape(message)):
        Bundle.open(broken)


@needs_rtx
def test_bad_engine_values_are_named(engine_bundle):
    good = json.loads((engine_bundle / "manifest.json").read_text())
    cases = [
        (("gpu_sm", ["87"]), "engines[0].gpu_sm must list targets like 'sm_87'"),
        (("builder", "onnxruntime"), "engines[0].builder is 'onnxruntime'; expected one of tensorrt, tensorrt-rtx"),
        (("size_bytes", True), "engines[0].size_bytes must be int, found bool"),
    ]
    for (key, value), message in cases:
        manifest = copy.deepcopy(good)
        manifest["engines"][0][key] = value
        with pytest.raises(BundleError) as err:
            validate_manifest(manifest)
        assert message in str(err.value)


@needs_rtx
def test_missing_files_are_named(engine_bundle, tmp_path):
    broken = _copy(engine_bundle, tmp_path)
    report = broken / Bundle.open(broken).engines[0].layer_report
    report.unlink()
    with pytest.raises(BundleError, match=rf"engines\[0\]\.layer_report names {report.name}, which is missing"):
        Bundle.open(broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(BundleError, match="onnx.file names model.onnx, which is missing"):
        Bundle.open(broken)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"not a dfer bundle \(no manifest\.json\)"):
        Bundle.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{ half a manifest")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(tmp_path)


def test_write_manifest_refuses_an_invalid_manifest(onnx_bundle, tmp_path):
    bundle = _copy(onnx_bundle, tmp_path)
    before = (bundle / "manifest.json").read_text()
    manifest = Bundle.open(bundle).manifest
    with pytest.raises(BundleError, match="onnx.precision is 'fp64'"):
        write_manifest(bundle, replace(manifest, onnx=replace(manifest.onnx, precision="fp64")))
    assert (bundle / "manifest.json").read_text() == before


def test_a_bundle_changed_after_export_is_refused(onnx_bundle, tmp_path):
    """One weight of model.onnx changed, the file's size kept: the manifest still validates, but
    the runtime refuses to run the file, with one line naming it."""
    broken = _copy(onnx_bundle, tmp_path)
    onnx_path = broken / "model.onnx"
    size = onnx_path.stat().st_size
    change_weight(onnx_path, "head.video.weight", lambda w: w.__setitem__((0, 0), w[0, 0] + 1))
    assert onnx_path.stat().st_size == size and sha256_of(onnx_path) != Bundle.open(broken).manifest.onnx.sha256
    source = load_model_source(broken)
    with pytest.raises(BundleError) as refused:
        open_backend(source, "onnxruntime")
    message = str(refused.value)
    assert message == f"{onnx_path} does not match the sha256 in manifest.json: the file was changed after export " \
                      f"(rebuild the bundle with python -m export.trt)"
    proc = run_cli("runtime", str(broken), "--stream", str(tmp_path / "video.mp4"))
    assert_one_line_error(proc, f"error: {message}")


@needs_rtx
def test_new_onnx_replaces_stale_engines(engine_bundle, tmp_path):
    bundle = _copy(engine_bundle, tmp_path)
    old = Bundle.open(bundle).engines[0]
    other = write_demo_checkpoint("s4d", tmp_path / "other.pth", seed=9, config=SMALL_S4D)
    write_onnx_part(BuildRequest(other, bundle), Progress(_quiet))
    fresh = Bundle.open(bundle)
    assert fresh.engines == () and not (bundle / old.file).exists() and not (bundle / old.layer_report).exists()
    assert fresh.manifest.model.checkpoint_sha256 == sha256_of(other)


def test_engine_names_say_builder_gpu_and_precision():
    assert engine_stem("tensorrt", ["sm_87"], "fp16") == "model.tensorrt.sm_87.fp16"
    assert engine_stem("tensorrt-rtx", ("sm_80", "sm_86", "sm_120"), "fp32") == "model.tensorrt-rtx.sm_80-86-120.fp32"
    with pytest.raises(ValueError, match="unknown builder 'trt'"):
        engine_stem("trt", ["sm_87"], "fp16")


def test_opening_a_bundle_imports_neither_torch_nor_onnx(onnx_bundle):
    code = (
        "import sys\n"
        "from runtime.bundle import Bundle\n"
        f"bundle = Bundle.open({str(onnx_bundle)!r})\n"
        "print(bundle.spec.family, bundle.input_dtype, len(bundle.engines))\n"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["s4d float16 0", "[]"]
