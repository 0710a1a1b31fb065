"""ONNX export of the full-size models: checker, ONNX Runtime parity with PyTorch, op census;
verification that fails on a changed weight; the exporter's quiet scope."""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import models
from export.onnx import FORBIDDEN_OPS, export_onnx, op_census
from export.precision import PRECISIONS
from export.verify import against_pytorch
from models.demo_checkpoint import write_demo_checkpoint
from runtime.backends import onnx_session
from runtime.metadata import read_metadata
from tests.test_loader import SMALL_S4D, assert_one_line_error, run_cli

# (family, custom node, nodes of it per model)
FAMILIES = [("ifdd", "dfer::LiftingSplit", 1), ("s4d", "dfer::GatedExpertMLP", 6)]


@pytest.fixture(scope="module", params=[f for f, _, _ in FAMILIES])
def loaded(request, tmp_path_factory):
    path = write_demo_checkpoint(request.param, tmp_path_factory.mktemp("ckpt") / f"{request.param}.pth", seed=0)
    return models.load(path)


@pytest.fixture(scope="module", params=[True, False], ids=["custom-ops", "plain"])
def exported(request, loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / f"{loaded.family}.onnx"
    return loaded, export_onnx(loaded, out, custom_ops=request.param), request.param


@pytest.mark.slow
def test_onnx_runtime_matches_pytorch(exported):
    loaded, result, _ = exported
    session = onnx_session(result.path)
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        clip = rng.standard_normal(loaded.spec.input_shape(batch)).astype(np.float32)
        with torch.no_grad():
            expected = loaded.model(torch.from_numpy(clip)).numpy()
        (actual,) = session.run(["logits"], {"clip": clip})
        # fp32 end to end; ORT fuses attention/GEMMs differently: rounding-level differences on
        # logits of magnitude ~1 (observed ≤ 2e-5).
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0, err_msg=f"batch {batch}")
        assert (actual.argmax(1) == expected.argmax(1)).all()


@pytest.mark.slow
def test_op_census(exported):
    loaded, result, custom_ops = exported
    census = op_census(onnx.load(str(result.path), load_external_data=False))
    assert result.op_counts == census
    custom = {op: n for op, n in census.items() if op.startswith("dfer::")}
    _, op, count = next(f for f in FAMILIES if f[0] == loaded.family)
    assert custom == ({op: count} if custom_ops else {})
    assert not [op for op in FORBIDDEN_OPS if op in census], census
    assert census["MatMul"] + census.get("Gemm", 0) > 10


@pytest.mark.slow
def test_functions_and_metadata(exported):
    loaded, result, custom_ops = exported
    proto = onnx.load(str(result.path), load_external_data=False)
    functions = {(f.domain, f.name) for f in proto.functions}
    wanted = {("dfer", op.split("::")[1]) for fam, op, _ in FAMILIES if fam == loaded.family and custom_ops}
    assert wanted <= functions
    assert proto.opset_import[0].version >= 18
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch
    meta = read_metadata(result.path)
    assert meta.spec == loaded.spec and meta.family == loaded.family
    assert meta.untrained is True and meta.config == loaded.config
    assert meta.checkpoint_sha256 == loaded.checkpoint_sha256
    assert meta.custom_ops == result.custom_ops


def test_export_cli_prints_untrained_predictions(tmp_path):
    ckpt = write_demo_checkpoint("s4d", tmp_path / "small.pth", config={"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]})
    proc = run_cli("export.onnx", str(ckpt), "-o", str(tmp_path / "small.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "custom ops: dfer::GatedExpertMLP" in proc.stdout
    assert "top-1 agreement 100%" in proc.stdout
    predictions = [line for line in proc.stdout.splitlines() if line.startswith("clip ")]
    assert predictions and all("UNTRAINED" in line for line in predictions)
    assert_one_line_error(run_cli("export.onnx", str(tmp_path / "small.onnx")), "not a readable PyTorch checkpoint")


def change_weight(path: Path, name: str, change) -> None:
    """Edit one initializer of an ONNX file in place, byte for byte: same size, same layout,
    only that tensor's stored values differ (change(values) edits a copy of them)."""
    (tensor,) = [t for t in onnx.load(str(path)).graph.initializer if t.name == name]
    before = numpy_helper.to_array(tensor)
    after = before.copy()
    change(after)
    data = path.read_bytes()
    assert data.count(before.tobytes()) == 1, f"{name}'s bytes are not unique in {path}"
    path.write_bytes(data.replace(before.tobytes(), after.tobytes()))


HEAD = "head.video.weight"  # the reduced S4D's classifier (its zero bias is folded away)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    loaded = models.load(write_demo_checkpoint("s4d", folder / "small.pth", seed=1, config=SMALL_S4D))
    return folder / "small.pth", loaded, {p: export_onnx(loaded, folder / f"small.{p}.onnx", precision=p).path for p in ("fp32", "fp16")}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verification_fails_on_a_changed_weight(small, precision, tmp_path):
    checkpoint, loaded, exported = small
    agreement, _ = against_pytorch(loaded, exported[precision], precision)
    assert agreement.passed and agreement.max_abs_logit_diff <= agreement.logit_bound
    changed = tmp_path / "changed.onnx"
    shutil.copyfile(exported[precision], changed)
    change_weight(changed, HEAD, lambda w: w.__setitem__((0, 0), w[0, 0] + 0.1))  # one of 448 weights, by 0.1
    assert changed.stat().st_size == exported[precision].stat().st_size
    worse, _ = against_pytorch(loaded, changed, precision)
    assert not worse.passed and worse.max_abs_logit_diff > worse.logit_bound
    assert worse.logit_bound == agreement.logit_bound == PRECISIONS[precision].tolerance.logit_bound(worse.logit_scale)
    proc = run_cli("export.onnx", str(checkpoint), "--check", str(changed))
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"verification failed: {changed}: ONNX Runtime {precision} and PyTorch fp32 disagree" in error
    found, bound = map(float, re.search(r"max \|Δlogit\| (\S+) \(bound (\S+)\)", error).groups())
    assert found == pytest.approx(worse.max_abs_logit_diff, rel=0.06) and bound == pytest.approx(worse.logit_bound, rel=0.06)


def test_the_exporters_quiet_scope_restores_logging_and_warnings(small, tmp_path):
    _, loaded, _ = small
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="a filter set before the export")
        logger.setLevel(logging.DEBUG)
        filters = list(warnings.filters)
        try:
            export_onnx(loaded, tmp_path / "quiet.onnx")
            assert logger.level == logging.DEBUG and warnings.filters == filters
        finally:
            logger.setLevel(level)
