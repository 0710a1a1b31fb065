"""python -m export.trt: fp16 export, real TensorRT-RTX engine builds, the no-builder path, bad input.

The builds use the real TensorRT for RTX builder (pip tensorrt-rtx-cu13), which builds engines
without a GPU; its engines run only on RTX-class GPUs, so nothing here executes them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import models
from export.builder import RTX_DEFAULT_TARGETS
from export.onnx import export_onnx
from export.trt import BuildRequest, build_bundle
from export.verify import against_pytorch
from runtime.backends import onnx_session
from runtime.bundle import BatchProfile, Bundle, BundleError
from runtime.gpu import local_gpu_sm
from runtime.model import load_model_source
from models.demo_checkpoint import write_demo_checkpoint
from tests.hiding import run_hiding
from tests.test_export_onnx import change_weight
from tests.test_loader import SMALL_S4D, assert_one_line_error, run_cli

try:
    import tensorrt_rtx  # noqa: F401

    RTX_MISSING = None
except ImportError as err:
    RTX_MISSING = str(err)
needs_rtx = pytest.mark.skipif(
    RTX_MISSING is not None, reason=f"TensorRT-RTX builder not importable ({RTX_MISSING}); pip install tensorrt-rtx-cu13"
)

# family → (LayerNorm modules, network layer types the parsed model must contain, engine layer types)
EXPECTED = {
    "ifdd": (55, {"MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "CONVOLUTION", "POOLING", "CAST"}, {"gemm", "maxpool"}),
    "s4d": (25, {"MATRIX_MULTIPLY", "NORMALIZATION", "SOFTMAX", "CONVOLUTION", "TOPK", "CAST"}, {"gemm"}),
}
CUSTOM_OP = {"ifdd": "dfer::LiftingSplit", "s4d": "dfer::GatedExpertMLP"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full_ckpt")
    return {family: write_demo_checkpoint(family, folder / f"{family}.pth", seed=0) for family in EXPECTED}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return write_demo_checkpoint("s4d", tmp_path_factory.mktemp("small_ckpt") / "small.pth", seed=1, config=SMALL_S4D)


@pytest.fixture(scope="module", params=[(f, c) for f in EXPECTED for c in (True, False)], ids=lambda p: f"{p[0]}-{'custom' if p[1] else 'plain'}")
def full_bundle(request, checkpoints, tmp_path_factory):
    """A full-size fp16 bundle built with the RTX builder; verified in ORT for the custom-op graphs."""
    if RTX_MISSING is not None:
        pytest.skip(f"TensorRT-RTX builder not importable ({RTX_MISSING}); pip install tensorrt-rtx-cu13")
    family, custom_ops = request.param
    output = tmp_path_factory.mktemp("bundle") / f"{family}.dfer"
    lines = []
    build = BuildRequest(checkpoints[family], output, "fp16", 8, 4, "tensorrt-rtx", custom_ops=custom_ops, verify=custom_ops)
    manifest = build_bundle(build, out=lines.append)
    yield family, custom_ops, output, manifest, "\n".join(lines)
    shutil.rmtree(output)  # 0.2–0.4 GB each


@pytest.mark.slow
def test_full_size_engine_is_built_and_listed(full_bundle):
    family, custom_ops, output, manifest, log = full_bundle
    bundle = Bundle.open(output)
    (engine,) = bundle.engines
    assert engine.file == "model.tensorrt-rtx.sm_80-86-89-120.fp16.engine"
    assert bundle.file(engine.file).stat().st_size == engine.size_bytes > 10 * 2**20
    assert hashlib.sha256(bundle.file(engine.file).read_bytes()).hexdigest() == engine.sha256
    assert (engine.builder, engine.precision, engine.gpu_sm) == ("tensorrt-rtx", "fp16", RTX_DEFAULT_TARGETS)
    assert engine.batch_profile == BatchProfile(1, 4, 8)
    assert engine.plugins == ({CUSTOM_OP[family]: "inlined"} if custom_ops else {})
    assert bundle.input_dtype == "float16" and manifest.outputs[0].dtype == "float32"
    assert bundle.family == family and bundle.untrained and manifest == bundle.manifest
    assert bundle.spec == models.family_module(family).build_model(None).spec
    build = manifest.engines[0].build
    assert build["seconds"] > 0 and build["peak_rss_mib"] >= build["rss_increase_mib"] > 0
    progress = log.split("\n\n")[0].splitlines()  # one line per stage, then the summary table
    expected = ["load", "export", "parse", "build"] + (["verify"] if custom_ops else [])
    assert [line.split()[0] for line in progress] == expected
    assert "total" in log.splitlines()[-1]


@pytest.mark.slow
def test_layer_report_lists_expected_layers(full_bundle):
    family, custom_ops, output, manifest, _ = full_bundle
    layer_norms, network_types, engine_types = EXPECTED[family]
    report = json.loads((output / manifest.engines[0].layer_report).read_text())
    network, engine = report["network"], report["engine"]
    assert network_types <= set(network["by_type"]), network["by_type"]
    assert network["by_type"]["NORMALIZATION"] == layer_norms
    assert {"HALF", "FLOAT"} <= set(network["output_dtypes"])  # fp16 graph with fp32 LayerNorm islands
    assert network["plugin_layers"] == []  # dfer functions inlined by the parser
    assert engine_types <= set(engine["by_type"]), engine["by_type"]
    assert engine["count"] == len(engine["layers"]) == manifest.engines[0].build["engine_layers"] > 50
    assert engine["output_dtypes"].get("Half", 0) > engine["output_dtypes"].get("Float", 0)
    assert all(layer["name"] and layer["type"] for layer in engine["layers"])
    mapped = {node for layer in engine["layers"] for node in layer["onnx_nodes"]}
    assert len(mapped) > 20  # engine layers name the ONNX nodes they came from
    if local_gpu_sm() is None:
        assert engine["source"].startswith("builder log")


@pytest.mark.slow
def test_fp16_graph_keeps_layernorm_in_fp32(full_bundle):
    family, custom_ops, output, _, _ = full_bundle
    proto = onnx.load(str(output / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    initializers = {t.name: t.data_type for t in proto.graph.initializer}
    norms = [n for n in proto.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == EXPECTED[family][0]
    assert all(initializers[n.input[1]] == onnx.TensorProto.FLOAT for n in norms)
    weights = Counter(initializers.values())
    assert weights[onnx.TensorProto.FLOAT16] > weights[onnx.TensorProto.FLOAT]
    custom = [n for n in proto.graph.node if n.domain == "dfer"]
    assert bool(custom) == custom_ops


@pytest.mark.slow
def test_fp16_onnx_agrees_with_fp32_pytorch(full_bundle):
    family, custom_ops, _, manifest, log = full_bundle
    result = manifest.verification
    if not custom_ops:  # verified once per family, on the graph with the dfer ops in fp16
        assert result is None and "verify" not in log
        return
    assert result["reference"] == "PyTorch fp32" and result["clips"] == 2 and result["passed"]
    assert result["top1_agree"] == 1.0
    assert result["max_abs_logit_diff"] <= result["logit_bound"] and result["max_prob_diff"] <= result["prob_bound"]
    assert result["max_abs_logit_diff"] > 0  # it really ran in fp16
    assert "engine built but not executed" in result["engine"] and "engine built but not executed" in log
    if local_gpu_sm() is None:  # the runtime's TensorRT backend says why it cannot run the engine here
        assert "no NVIDIA driver" in result["engine"] and result["engine_vs_onnxruntime"] is None


def test_fp16_export_of_a_small_model(small_checkpoint, tmp_path):
    loaded = models.load(small_checkpoint)
    result = export_onnx(loaded, tmp_path / "small16.onnx", precision="fp16")
    agreement, _ = against_pytorch(loaded, result.path, "fp16", batch=3)
    assert agreement.top1_agree == 1.0 and agreement.passed
    session = onnx_session(result.path)
    assert session.get_inputs()[0].type == "tensor(float16)" and session.get_outputs()[0].type == "tensor(float)"
    clip = np.zeros(loaded.spec.input_shape(1), np.float16)
    assert np.isfinite(session.run(None, {"clip": clip})[0]).all()
    with pytest.raises(ValueError, match="unknown ONNX precision 'bf16'"):
        export_onnx(loaded, tmp_path / "x.onnx", precision="bf16")


def run_cli_hiding(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """python -m export.trt with these packages hidden; prints which of them got loaded anyway."""
    code = (
        "from export.trt import main\n"
        "code = main(sys.argv[1:])\n"
        f"print('loaded:', sorted(m for m in {modules!r} if m in sys.modules))\n"
        "sys.exit(code)\n"
    )
    return run_hiding(modules, code, *args, timeout=600)


@pytest.fixture(scope="module")
def small_bundle(small_checkpoint, tmp_path_factory):
    """A reduced-S4D bundle built by the CLI, and what the CLI printed."""
    if RTX_MISSING is not None:
        pytest.skip(f"TensorRT-RTX builder not importable ({RTX_MISSING}); pip install tensorrt-rtx-cu13")
    output = tmp_path_factory.mktemp("small") / "small.dfer"
    proc = run_cli("export.trt", str(small_checkpoint), "-o", str(output), "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr
    return output, proc


def test_cli_reports_each_stage_and_a_summary(small_bundle):
    output, proc = small_bundle
    progress, table = proc.stdout.split("\n\n")
    assert [line.split()[0] for line in progress.splitlines()] == ["load", "export", "parse", "build", "verify"]
    assert table.splitlines()[0].split() == ["stage", "seconds", "result"] and table.splitlines()[-1].startswith("total")
    assert "UNTRAINED demo weights" in progress and "dfer::GatedExpertMLP inlined" in progress
    assert "top-1 agreement 100%" in progress and "engine built but not executed" in progress
    assert Bundle.open(output).engines[0].batch_profile == BatchProfile(1, 4, 4)


def test_an_engine_is_added_from_the_bundles_own_onnx(small_bundle, tmp_path):
    bundle_path = tmp_path / "copy.dfer"
    shutil.copytree(small_bundle[0], bundle_path)
    first = Bundle.open(bundle_path).engines[0]
    args = ["--target", "sm_86", "--max-batch", "2", "--no-plugins", "--no-verify"]
    proc = run_cli("export.trt", str(bundle_path / "model.onnx"), "-o", str(bundle_path), *args)
    assert proc.returncode == 0, proc.stderr
    bundle = Bundle.open(bundle_path)
    assert [e.file for e in bundle.engines] == [first.file, "model.tensorrt-rtx.sm_86.fp16.engine"]
    assert bundle.engines[0].sha256 == first.sha256  # the first engine is kept
    assert [e.batch_profile for e in bundle.engines_for("sm_86")] == [BatchProfile(1, 4, 4), BatchProfile(1, 2, 2)]
    assert bundle.engines_for("sm_87") == []
    report = json.loads((bundle_path / bundle.engines[1].layer_report).read_text())
    assert bundle.engines[1].plugins == {"dfer::GatedExpertMLP": "inlined"}
    assert report["plugin_notes"] == {"dfer::GatedExpertMLP": "plugins disabled (--no-plugins)"}
    assert_one_line_error(run_cli("export.trt", str(bundle_path / "model.onnx"), "--precision", "fp32"), "is an fp16 export")


def test_an_onnx_input_builds_without_torch(small_bundle, tmp_path):
    """On a Jetson the engine is built from the ONNX alone: no torch, onnxscript or triton."""
    output = tmp_path / "jetson_style.dfer"
    proc = run_cli_hiding(("torch", "onnxscript", "triton"), str(small_bundle[0] / "model.onnx"), "-o", str(output))
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout and "no PyTorch reference" in proc.stdout
    (entry,) = Bundle.open(output).manifest.to_dict()["engines"]
    notes = json.loads((output / entry["layer_report"]).read_text())["plugin_notes"]
    assert "not importable" in notes["dfer::GatedExpertMLP"] and entry["plugins"] == {"dfer::GatedExpertMLP": "inlined"}


def test_an_onnx_input_with_non_finite_logits_fails_verification(small_bundle, tmp_path):
    """No PyTorch reference for an ONNX input, but NaN logits are a failure (exit 4), reported
    before the missing builder (exit 3) and recorded in the manifest."""
    source, output = tmp_path / "nan.onnx", tmp_path / "nan.dfer"
    shutil.copyfile(small_bundle[0] / "model.onnx", source)
    change_weight(source, "head.video.weight", lambda w: w.__setitem__((0, 0), np.nan))
    proc = run_cli_hiding(("tensorrt", "tensorrt_rtx"), str(source), "-o", str(output))
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "verification failed: ONNX Runtime fp16 gave 2 non-finite logits of 14 on 2 generated clips" in error
    assert "finite: False" in proc.stdout
    verification = Bundle.open(output).manifest.verification
    assert verification["finite"] is False and verification["passed"] is False and verification["failure"] in error
    with pytest.raises(BundleError, match="its export failed verification .*non-finite logits"):
        load_model_source(output)  # the runtime refuses to run what failed its check


def test_parser_errors_are_one_line(small_bundle, tmp_path):
    # Without its ONNX function a dfer node is an unknown op: the parser looks for a plugin of that name.
    proto = onnx.load(str(small_bundle[0] / "model.onnx"))
    del proto.functions[:]
    onnx.save(proto, tmp_path / "no_functions.onnx")
    proc = run_cli("export.trt", str(tmp_path / "no_functions.onnx"), "-o", str(tmp_path / "broken.dfer"), "--no-verify")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "tensorrt-rtx could not parse model.onnx" in error and "GatedExpertMLP" in error
    assert Bundle.open(tmp_path / "broken.dfer").engines == ()  # the ONNX part stays valid


@needs_rtx
def test_rtx_builder_refuses_jetson_and_hopper_targets(small_checkpoint, tmp_path):
    for target, device in (("sm_87", "Jetson Orin"), ("sm_90", "H100")):
        proc = run_cli("export.trt", str(small_checkpoint), "-o", str(tmp_path / "x.dfer"), "--builder", "tensorrt-rtx", "--target", target)
        assert_one_line_error(proc, f"TensorRT-RTX cannot build for {target} ({device}", "--builder tensorrt")
        assert not (tmp_path / "x.dfer").exists()


def test_without_a_builder_the_onnx_part_is_written(small_checkpoint, tmp_path):
    output = tmp_path / "onnx_only.dfer"
    proc = run_cli_hiding(("tensorrt", "tensorrt_rtx"), str(small_checkpoint), "-o", str(output))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    for package in ("tensorrt-cu12", "tensorrt-cu13", "JetPack", "tensorrt-rtx-cu13"):
        assert package in error
    assert "loaded: []" in proc.stdout and "not built: no TensorRT builder" in proc.stdout
    bundle = Bundle.open(output)
    assert bundle.engines == () and bundle.onnx_path.is_file()
    assert not list(output.glob("*.engine"))
    assert bundle.manifest.verification["top1_agree"] == 1.0


def _foreign_checkpoint(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}}, path)
    return [str(path)]


def _corrupt_checkpoint(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"PK\x03\x04 not a zip archive at all" * 10)
    return [str(path)]


def _plain_onnx(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["clip"], ["logits"])], "g",
        [onnx.helper.make_tensor_value_info("clip", onnx.TensorProto.FLOAT, ["batch", 7])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 7])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    return [str(path)]


BAD_INPUT = {
    "wrong family": (_foreign_checkpoint, [], ["unknown model family", "conv1.weight"]),
    "corrupt checkpoint": (_corrupt_checkpoint, [], ["not a readable PyTorch checkpoint"]),
    "missing file": (lambda tmp: [str(tmp / "nothing.pth")], [], ["no such checkpoint or ONNX file"]),
    "max batch 0": (None, ["--max-batch", "0"], ["--max-batch must be between 1 and 1024, got 0"]),
    "opt above max": (None, ["--max-batch", "4", "--opt-batch", "8"], ["--opt-batch must be between 1 and --max-batch (4)"]),
    "unknown precision": (None, ["--precision", "f16"], ["unknown precision 'f16'", "did you mean fp16"]),
    "fp8 on Orin": (None, ["--precision", "fp8", "--target", "sm_87"], ["sm_87 (Jetson Orin) has no FP8"]),
    "int8 needs calibration": (None, ["--precision", "int8"], ["--precision int8 needs calibration clips: --calib VIDEO_DIR"]),
    "bad target": (None, ["--target", "87"], ["bad --target '87'"]),
    "unknown builder": (None, ["--builder", "tensorrt-llm"], ["unknown builder 'tensorrt-llm'"]),
    "foreign onnx": (_plain_onnx, [], ["has no dfer.spec metadata", "python -m export.onnx"]),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_clear_line(case, small_checkpoint, tmp_path):
    make_source, options, needles = BAD_INPUT[case]
    source = make_source(tmp_path) if make_source else [str(small_checkpoint)]
    output = tmp_path / "out.dfer"
    assert_one_line_error(run_cli("export.trt", *source, "-o", str(output), *options), *needles)
    assert not output.exists()


def test_refuses_to_write_into_a_foreign_directory(small_checkpoint, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8")
    proc = run_cli("export.trt", str(small_checkpoint), "-o", str(tmp_path / "photos"))
    assert_one_line_error(proc, "refusing to write into", "not a dfer bundle")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["holiday.jpg"]
