"""Shared test helpers: where the reference fixtures live and how to compare tensors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

# The reference tensors recorded from the official code, shrunk to what the tests compare
# (tests/fixtures/README.md says what each file holds; shrink.py there rebuilds them).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def fixture_path(name: str) -> Path:
    """A file under tests/fixtures, e.g. fixture_path('ifdd/state_dict_keys.json')."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"reference fixture {path} is missing (tests/fixtures/ is part of the repository)")
    return path


def load_fixture(name: str) -> dict:
    """A fixture file under tests/fixtures, e.g. load_fixture('ifdd/issm.pt'), its inputs rebuilt."""
    import torch

    return _rebuild_inputs(torch.load(fixture_path(name), map_location="cpu", weights_only=True))


def _rebuild_inputs(value):
    """Replace every input recipe in a loaded fixture by the tensor it describes.

    The seeded inputs are stored as the recipe that made them, randn(shape) · scale cast to the
    recorded dtype, plus the SHA-256 of the recorded values, so a change in torch's generator
    fails here by name instead of as a parity error.
    """
    import torch

    if isinstance(value, list | tuple):
        return type(value)(_rebuild_inputs(v) for v in value)
    if not isinstance(value, dict):
        return value
    if value.get("rebuild") != "randn":
        return {k: _rebuild_inputs(v) for k, v in value.items()}
    generator = torch.Generator().manual_seed(value["seed"])
    tensor = (torch.randn(value["shape"], generator=generator) * value["scale"]).to(getattr(torch, value["dtype"]))
    if hashlib.sha256(tensor.numpy().tobytes()).hexdigest() != value["sha256"]:
        pytest.fail(f"torch.randn(seed={value['seed']}) no longer reproduces a recorded input {value['shape']}")
    return tensor


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
# holds for the whole session: without a CUDA GPU the kernels are interpreted on CPU tensors;
# with one they compile and the kernel tests run on CUDA. A TRITON_INTERPRET already in the
# environment always wins (TRITON_INTERPRET=1 interprets on a GPU machine too).
# torch.cuda.device_count() asks NVML when it can, so this creates no CUDA context (and does not
# poison fork); `import torch` does not import triton. Besides Triton only torch's Triton code
# paths read the variable (Inductor's GPU kernels, user-kernel wrapping), which no CPU test
# uses; subprocesses inherit it, and the one that compiles (kernels.aot) gets an environment
# without it.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if torch.cuda.device_count() == 0:
        os.environ["TRITON_INTERPRET"] = "1"


def assert_within_rounding(actual, ref32, ref_lowp, atol: float, rtol: float = 0.0, name: str = "kernel") -> None:
    """STYLE 2, element by element: |kernel − ref32| ≤ 2·|ref_lowp − ref32| + atol + rtol·|ref32|.

    ref_lowp is the reference run at the kernel's dtype, so each element may be off by twice the
    rounding the reference itself suffers there; in fp32 that is 0 and only atol/rtol remain.
    Per element, not the tensor's worst: one large reference error (a near-tie the low-precision
    reference decides differently) must not become every element's allowance.

    Pass `actual` in the kernel's own dtype. Under Triton's interpreter a bf16 result was cast
    from fp32 by truncation (its cast passes no rounding mode; Triton 3.9), where the compiled
    kernel rounds to nearest: the kernel's value may then lie one bf16 ulp nearer zero than its
    fp32 result, so the error is measured from the interval that truncation maps to it. That
    step, toward zero only, is the only allowance beyond the bound.
    """
    import torch

    actual = torch.as_tensor(actual)
    truncated = actual.dtype == torch.bfloat16 and _interpreting()
    actual, ref32 = actual.double(), torch.as_tensor(ref32).double()
    own_error = (torch.as_tensor(ref_lowp).double() - ref32).abs()
    assert actual.shape == ref32.shape == own_error.shape, f"{name}: shapes differ"
    bound = 2.0 * own_error + atol + rtol * ref32.abs()
    if truncated:  # every fp32 value in [actual, actual + one ulp away from zero) truncates to actual
        ulp = torch.ldexp(torch.ones_like(actual), torch.frexp(actual).exponent - 8)  # bf16: 8 significant bits
        away = actual + actual.sign() * ulp
        diff = (ref32 - ref32.clamp(torch.minimum(actual, away), torch.maximum(actual, away))).abs()
    else:
        diff = (actual - ref32).abs()
    bad = diff > bound
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        values = lambda t: [f"{t[tuple(i)].item():.7g}" for i in where]  # noqa: E731
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements beyond 2·|ref_lowp − ref32| + atol={atol} + "
            f"rtol={rtol}·|ref32|{' (interpreter: bf16 truncation allowed)' if truncated else ''}; first at "
            f"{where}: kernel {values(actual)}, ref32 {values(ref32)}, bound {values(bound)}"
        )


def _interpreting() -> bool:
    from kernels._triton import interpreting

    return interpreting()
