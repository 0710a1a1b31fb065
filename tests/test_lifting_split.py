"""LiftingSplit (IFDD ISSM): reference vs the official module's fixture, ONNX function vs reference."""

from __future__ import annotations

import pytest
import torch

from kernels.lifting_split import lifting_split, lifting_split_ref, sampling_positions
from tests.conftest import assert_close, load_fixture
from tests.onnx_helpers import run_custom_node

T, H, W = 8, 7, 7
# fp32 on O(1) inputs: the reference reorders no sums that matter, so it matches the official
# grid_sample path to rounding (observed 0.0 at scale 1, 1.5e-5 at scale 8 where |x| ~ 20).
ATOL = 1e-5


def _issm_args(case: dict, state: dict):
    x = case["inputs"][0].float()  # official layout B, C, T, H·W
    b, c, t, hw = x.shape
    tokens = x.permute(0, 2, 3, 1).reshape(b, t * hw, c)
    weights = (
        state["dim_project.0.weight"].float().flatten(1),
        state["dim_project.0.bias"].float(),
        state["offset_project_approx.0.weight"].float(),
        state["offset_project_detail.0.weight"].float(),
    )
    return tokens, weights


def _official_layout(tokens: torch.Tensor, channels: int) -> torch.Tensor:
    b = tokens.shape[0]
    return tokens.reshape(b, T // 2, H * W, channels).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def issm():
    return load_fixture("ifdd/issm.pt")


def test_reference_matches_official_issm(issm):
    """The fixture stores a sample of channels; all of them share one set of interpolation
    weights per sample, so the sample checks those weights as every channel would."""
    channels = issm["channels"]
    for case in [issm] + list(issm["extra_cases"]):
        tokens, weights = _issm_args(case, issm["state_dict"])
        x_a, x_d = lifting_split_ref(tokens, *weights, frames=T, height=H, width=W)
        scale = float(case.get("input_scale", 1.0))
        assert_close(_official_layout(x_a, 768)[:, channels], case["outputs"][0], atol=ATOL * scale, name="x_a")
        assert_close(_official_layout(x_d, 768)[:, channels], case["outputs"][1], atol=ATOL * scale, name="x_d")
        pos_a, pos_d = sampling_positions(tokens, *weights, frames=T)
        assert_close(pos_a, case["intermediates"]["index_approx_frames"], atol=1e-5, name="approx positions")
        assert_close(pos_d, case["intermediates"]["index_detail_frames"], atol=1e-5, name="detail positions")


def test_extra_case_exercises_border_clamp(issm):
    """The x8 case must actually reach the clamped border, or the test above proves less."""
    tokens, weights = _issm_args(issm["extra_cases"][0], issm["state_dict"])
    pos_a, pos_d = sampling_positions(tokens, *weights, frames=T)
    source = lambda p: p * T / (T - 1) - 0.5  # noqa: E731
    assert (source(pos_a) < 0).any() and (source(pos_d) > T - 1).any()


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_function_matches_reference(issm, batch):
    tokens, weights = _issm_args(issm, issm["state_dict"])
    tokens = torch.cat([tokens, tokens * 4, -tokens])[:batch]
    expected = lifting_split_ref(tokens, *weights, frames=T, height=H, width=W)
    names = ["x", "w_dim", "b_dim", "w_off_a", "w_off_d"]
    feeds = {n: t.numpy() for n, t in zip(names, (tokens,) + weights)}
    shapes = {"x_a": tuple(expected[0].shape), "x_d": tuple(expected[1].shape)}
    actual = run_custom_node("LiftingSplit", feeds, shapes, frames=T, height=H, width=W)
    # ORT fuses and reorders the small matmuls: rounding-level differences at |x| up to ~16.
    for got, want, name in zip(actual, expected, ("x_a", "x_d")):
        assert_close(torch.from_numpy(got), want, atol=2e-5, name=name)


def test_shape_errors_name_the_problem():
    x = torch.zeros(1, T * H * W, 16)
    good = (torch.zeros(7, 16), torch.zeros(7), torch.zeros(4, 64), torch.zeros(4, 64))
    with pytest.raises(ValueError, match="tokens"):
        lifting_split(x[:, :-1], *good, frames=T, height=H, width=W)
    with pytest.raises(ValueError, match="W_dim"):
        lifting_split(x, torch.zeros(7, 15), *good[1:], frames=T, height=H, width=W)
    with pytest.raises(ValueError, match="W_offD"):
        lifting_split(x, *good[:3], torch.zeros(4, 63), frames=T, height=H, width=W)
    with pytest.raises(ValueError, match="even"):
        lifting_split(torch.zeros(1, 7 * H * W, 16), *good, frames=7, height=H, width=W)
