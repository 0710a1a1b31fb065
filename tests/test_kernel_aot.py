"""kernels.aot: PTX for sm_87 and sm_90 of every kernel, metadata that round-trips.

The compile runs ``python -m kernels.aot`` in a subprocess without TRITON_INTERPRET (this test
process interprets the kernels, see tests/conftest.py). It compiles the fp16 variants of every
kernel and every autotune tile for both targets: about 80 s on 2 cores with a cold Triton
cache, a few seconds warm.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernels._triton import triton

if triton is None:
    pytest.skip("Triton is not installed (the `kernels` extra)", allow_module_level=True)

from kernels import aot  # noqa: E402
from kernels.gated_expert_mlp import GEMM_CONFIGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"LiftingSplit": {"descriptor_kernel", "predictor_kernel", "gather_kernel"},
           "GatedExpertMLP": {"gemm1_kernel", "gemm2_kernel"}}  # fmt: skip


def _run_aot(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "kernels.aot", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    result = _run_aot("--target", "sm_87,sm_90", "--dtype", "fp16", "--jobs", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "manifest.json").read_text())


def test_every_kernel_and_tile_is_a_variant():
    names = {(v.op, v.kernel.fn.__name__.strip("_"), v.tag) for v in aot.variants(("fp16",))}
    tiles = {"x".join(str(tile[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")) for tile, _, _ in GEMM_CONFIGS}
    assert {(op, kernel) for op, kernel, _ in names} == {(op, k) for op, ks in KERNELS.items() for k in ks}
    assert {tag for _, kernel, tag in names if kernel == "gemm1_kernel"} == tiles
    gemm2_tags = {f"{gating}_{tile}" for gating in ("routed", "fixed") for tile in tiles}
    assert {tag for _, kernel, tag in names if kernel == "gemm2_kernel"} == gemm2_tags
    assert len({v.name for v in aot.variants()}) == len(aot.variants()) == 3 * len(names)  # unique, 3 dtypes


def test_ptx_for_every_kernel_and_target(compiled):
    out, manifest = compiled
    assert manifest["skipped"] == [] and manifest["triton_version"] == triton.__version__
    records = aot.load_manifest(out)
    expected = {(v.name, target) for v in aot.variants(("fp16",)) for target in ("sm_87", "sm_90")}
    assert {(r.variant, r.target) for r in records} == expected
    for r in records:
        ptx = (out / r.ptx_file).read_text()
        assert re.search(rf"^\.target {r.target}a?$", ptx, re.M) and re.search(r"^\.version 8\.2$", ptx, re.M)
        entry = re.search(rf"\.entry {r.symbol}\((.*?)\)", ptx, re.S)
        assert entry and entry.group(1).count(".param") == len(r.arguments) + len(r.scratch_params)
        assert (out / r.cubin_file).read_bytes()[:4] == b"\x7fELF"
        assert 0 <= r.shared_bytes <= aot.MAX_SHARED_BYTES[int(r.target[3:])]


def test_metadata_round_trips(compiled):
    out, _ = compiled
    by_name = {v.name: v for v in aot.variants(("fp16",))}
    for record in aot.load_manifest(out):
        assert aot.CompiledKernel(**json.loads(record.to_json())) == record
        variant = by_name[record.variant]
        assert record.arguments == [[n, t] for n, t in variant.signature.items()]
        assert record.constexprs == variant.constexprs and record.divisibility == variant.divisibility
        assert (record.num_warps, record.num_stages) == (variant.num_warps, variant.num_stages)
        assert record.threads_per_block == 32 * record.num_warps and record.ptx_version == 82
        assert record.kernel_source_sha256 == aot.kernel_source_sha256(variant.kernel)
        assert record.ptx_sha256 == aot.hashlib.sha256((out / record.ptx_file).read_bytes()).hexdigest()


def test_grid_rules_and_launch_preconditions(compiled):
    out, _ = compiled
    records = {(r.variant, r.target): r for r in aot.load_manifest(out)}
    gemm2 = records[("gemm2_kernel_fp16_routed_64x64x64_w4s4", "sm_90")]
    assert gemm2.grid_for(rows=1600, dim=768) == (25 * 12, 1, 1)
    gather = records[("gather_kernel_fp16_w4s1", "sm_87")]
    assert gather.grid_for(frame_size=49 * 768, batch=3) == (37, 3, 1)
    gemm2.check_launch(rows=1601, dim=768, stride_wk=768)  # rows carries no promise
    with pytest.raises(ValueError, match="dim=770 is not a multiple of 16"):
        gemm2.check_launch(dim=770)
    with pytest.raises(ValueError, match="cannot evaluate"):
        gather.grid_for(frame_size=10)  # batch missing


def test_cli_errors_are_one_line(tmp_path):
    bad_target = _run_aot("--target", "sm_75", "-o", str(tmp_path))
    assert bad_target.returncode == 2 and "unknown target ['sm_75']" in bad_target.stderr
    assert "Traceback" not in bad_target.stderr
    env = dict(os.environ, TRITON_INTERPRET="1")
    interpreted = subprocess.run([sys.executable, "-m", "kernels.aot", "-o", str(tmp_path)], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
    assert interpreted.returncode == 2 and "unset it" in interpreted.stderr and "Traceback" not in interpreted.stderr
