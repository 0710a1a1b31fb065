"""Shared test helpers: where the reference fixtures live and how to compare tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# shared/ sits beside the repository (CI lays a copy there); DFER_SHARED overrides it.
SHARED = Path(os.environ.get("DFER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures not found at {FIXTURES} (set DFER_SHARED to the shared/ folder)")
    return FIXTURES


def load_fixture(name: str) -> dict:
    """A fixture file under shared/fixtures, e.g. load_fixture('ifdd/issm.pt')."""
    import torch

    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"reference fixture {path} is missing (set DFER_SHARED to the shared/ folder)")
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_close(actual, expected, atol: float, rtol: float = 0.0, name: str = "tensor") -> None:
    """allclose that reports the worst error and the first mismatching positions."""
    import torch

    actual = torch.as_tensor(actual).double()
    expected = torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    bad = diff > atol + rtol * expected.abs()
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ beyond atol={atol}, rtol={rtol}; "
            f"max abs diff {diff.max().item():.3g}; first at {where}: "
            f"{[actual[tuple(i)].item() for i in where]} vs {[expected[tuple(i)].item() for i in where]}"
        )


# Triton fixes interpret-or-compile from TRITON_INTERPRET when a @triton.jit decorator runs: for
# triton.language's own functions at `import triton`, for ours when kernels/ is imported, and
# for modules Triton imports lazily at the first launch (triton.experimental.gluon asserts the
# mode is unchanged). So the choice is made here, before any test module imports triton, and
# holds for the whole session: CPU runs interpret the kernels; a GPU run sets TRITON_INTERPRET=0
# to test the compiled kernels on CUDA. Besides Triton only torch's Triton code paths read it
# (Inductor's GPU kernels, user-kernel wrapping), which no CPU test uses; subprocesses inherit
# it, and the one that compiles (kernels.aot) gets an environment without it.
os.environ.setdefault("TRITON_INTERPRET", "1")


def assert_within_rounding(actual, ref32, ref_lowp, atol: float, rtol: float = 0.0, name: str = "kernel") -> None:
    """STYLE 2: max|kernel − ref32| ≤ 2·max|ref_lowp − ref32| + atol (+ rtol·|ref32|).

    ref_lowp is the reference run at the kernel's dtype, so the bound is the rounding the
    reference itself suffers; in fp32 it is 0 and only atol/rtol remain.
    """
    import torch

    own_error = (torch.as_tensor(ref_lowp).double() - torch.as_tensor(ref32).double()).abs().max().item()
    assert_close(actual, ref32, atol=2.0 * own_error + atol, rtol=rtol, name=f"{name} (reference's own error {own_error:.3g})")
