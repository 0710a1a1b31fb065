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
