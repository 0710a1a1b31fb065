"""ONNX export of the full-size models: checker, ONNX Runtime parity with PyTorch, op census."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import models
from export.onnx import FORBIDDEN_OPS, export_onnx, onnx_session, op_census, read_metadata
from models.demo_checkpoint import write_demo_checkpoint
from runtime.spec import ModelSpec
from tests.test_loader import assert_one_line_error, run_cli

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
    assert ModelSpec.from_dict(json.loads(meta["dfer.spec"])) == loaded.spec
    assert json.loads(meta["dfer.untrained"]) is True
    assert meta["dfer.checkpoint_sha256"] == loaded.checkpoint_sha256


def test_export_cli_prints_untrained_predictions(tmp_path):
    ckpt = write_demo_checkpoint("s4d", tmp_path / "small.pth", config={"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]})
    proc = run_cli("export.onnx", str(ckpt), "-o", str(tmp_path / "small.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "custom ops: dfer::GatedExpertMLP" in proc.stdout
    assert "top-1 agreement 100%" in proc.stdout
    predictions = [line for line in proc.stdout.splitlines() if line.startswith("clip ")]
    assert predictions and all("UNTRAINED" in line for line in predictions)
    assert_one_line_error(run_cli("export.onnx", str(tmp_path / "small.onnx")), "not a readable PyTorch checkpoint")
