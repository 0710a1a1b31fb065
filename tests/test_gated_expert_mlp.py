"""GatedExpertMLP (S4D MoAE + FFN): reference vs the official MoE fixture and an unfused
formulation; ONNX function vs reference through ONNX Runtime."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels.gated_expert_mlp import gated_expert_mlp, gated_expert_mlp_ref, pack_gated_expert_weights
from models.s4d import within_capacity
from tests.conftest import assert_close, load_fixture
from tests.onnx_helpers import run_custom_node


def _layers(dim, ffn, num_experts, expert_dim, seed=0):
    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
    experts = [(nn.Linear(dim, expert_dim), nn.Linear(expert_dim, dim)) for _ in range(num_experts)]
    router = nn.Linear(dim, num_experts)
    return fc1, fc2, experts, router


def _unfused(x, h, fc1, fc2, experts, router, top_k):
    """The block as S4D writes it: x + Mlp(h) + Σ_top-k gate · Expert(h), one expert at a time."""
    probs = torch.softmax(router(h).topk(top_k, -1).values, -1)
    chosen = router(h).topk(top_k, -1).indices
    out = x + fc2(F.gelu(fc1(h)))
    for e, (down, up) in enumerate(experts):
        gate = (probs * (chosen == e)).sum(-1, keepdim=True)
        out = out + gate * up(F.gelu(down(h)))
    return out


SHAPES = [  # (tokens, dim, ffn, experts, expert_dim, top_k)
    (1, 64, 256, 1, 16, 1),
    (7, 96, 128, 3, 24, 2),
    (800, 128, 512, 8, 32, 2),
    (1600, 64, 256, 8, 16, 1),
]


@pytest.mark.parametrize("tokens,dim,ffn,num_experts,expert_dim,top_k", SHAPES)
def test_reference_matches_unfused_block(tokens, dim, ffn, num_experts, expert_dim, top_k):
    fc1, fc2, experts, router = _layers(dim, ffn, num_experts, expert_dim)
    x, h = torch.randn(2, tokens, dim), torch.randn(2, tokens, dim)
    weights = pack_gated_expert_weights(fc1, fc2, experts, router)
    with torch.no_grad():
        fused = gated_expert_mlp_ref(x, h, *weights, num_experts=num_experts, top_k=top_k, expert_dim=expert_dim)
        expected = _unfused(x, h, fc1, fc2, experts, router, top_k)
    assert_close(fused, expected, atol=1e-5, name="fused vs unfused")  # fp32, sums of ≤ 640 terms


def test_reference_matches_official_moe_where_no_capacity_binds():
    """Official SparseMoEWithCapacity, ε = 0: equal on every token that capacity did not drop."""
    fixture = load_fixture("s4d/moae_block.pt")
    state = {k: v.float() for k, v in fixture["state_dict"].items()}
    h = fixture["inputs"][0].float()
    dim, num_experts, top_k = 768, 8, 2

    def linear(prefix):
        layer = nn.Linear(*reversed(state[f"{prefix}.weight"].shape))
        layer.load_state_dict({"weight": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]})
        return layer

    experts = [(linear(f"experts.{e}.fc1"), linear(f"experts.{e}.fc2")) for e in range(num_experts)]
    zero_fc1, zero_fc2 = nn.Linear(dim, 4), nn.Linear(4, dim)  # an FFN that adds nothing
    for p in list(zero_fc1.parameters()) + list(zero_fc2.parameters()):
        nn.init.zeros_(p)
    weights = pack_gated_expert_weights(zero_fc1, zero_fc2, experts, linear("router.topkroute_linear"))
    with torch.no_grad():
        out = gated_expert_mlp_ref(torch.zeros_like(h), h, *weights, num_experts=8, top_k=top_k, expert_dim=192)
    indices = fixture["intermediates_zero_noise"]["topk_indices"]
    kept = within_capacity(indices, num_experts, capacity=400).sum(-1).eq(top_k)
    # The fixture's output rows: every token capacity drops and a sample of kept ones (flat b·N + n).
    rows = fixture["rows"]
    kept, out = kept[rows], out.flatten(0, 1)[rows]
    assert 0 < (~kept).sum() < kept.numel()  # the fixture drops some tokens: both sets are tested
    expected = fixture["outputs_zero_noise"][0]
    assert_close(out[kept], expected[kept], atol=1e-5, name="kept tokens")  # fp32, O(0.1) outputs
    assert (out[~kept] - expected[~kept]).abs().amax(-1).min() > 1e-3  # dropped tokens differ


@pytest.mark.parametrize("tokens,dim,ffn,num_experts,expert_dim,top_k", SHAPES)
def test_onnx_function_matches_reference(tokens, dim, ffn, num_experts, expert_dim, top_k):
    fc1, fc2, experts, router = _layers(dim, ffn, num_experts, expert_dim, seed=1)
    x, h = torch.randn(3, tokens, dim), torch.randn(3, tokens, dim)
    with torch.no_grad():
        weights = pack_gated_expert_weights(fc1, fc2, experts, router)
        expected = gated_expert_mlp_ref(x, h, *weights, num_experts=num_experts, top_k=top_k, expert_dim=expert_dim)
    names = ["x", "h", "w1cat", "b1cat", "w2cat", "b2cat"]
    feeds = {n: t.detach().numpy() for n, t in zip(names, (x, h) + weights)}
    (actual,) = run_custom_node(
        "GatedExpertMLP", feeds, {"y": tuple(x.shape)}, num_experts=num_experts, top_k=top_k, expert_dim=expert_dim
    )
    assert_close(torch.from_numpy(actual), expected, atol=2e-5, name="ORT vs reference")  # GEMM reassociation


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
@pytest.mark.parametrize("tokens,dim,ffn,num_experts,expert_dim,gates", [
    (1, 64, 256, 1, 16, (0.5,)), (7, 96, 128, 3, 24, (1.0, -0.5, 2.0)), (197, 128, 512, 1, 32, (0.5,))])
def test_fixed_gates_onnx_function_matches_reference(tokens, dim, ffn, num_experts, expert_dim, gates, activation):
    """The fixed-gates node through its function in ONNX Runtime; another gate attribute fails."""
    fc1, fc2, experts, router = _layers(dim, ffn, num_experts, expert_dim, seed=2)
    x, h = torch.randn(2, tokens, dim), torch.randn(2, tokens, dim)
    options = dict(num_experts=num_experts, expert_dim=expert_dim, ffn_activation=activation)
    with torch.no_grad():
        w1cat, b1cat, w2cat, b2cat = pack_gated_expert_weights(fc1, fc2, experts, router)
        weights = (w1cat[:, :-num_experts], b1cat[:-num_experts], w2cat, b2cat)  # no router columns
        expected = gated_expert_mlp_ref(x, h, *weights, fixed_gates=gates, **options)
    feeds = {n: t.numpy() for n, t in zip(["x", "h", "w1cat", "b1cat", "w2cat", "b2cat"], (x, h) + weights)}
    for node_gates, matches in ((gates, True), (tuple(g + 0.25 for g in gates), False)):
        (actual,) = run_custom_node("GatedExpertMLP", feeds, {"y": tuple(x.shape)}, fixed_gates=list(node_gates), **options)
        gap = (torch.from_numpy(actual) - expected).abs().max()
        assert (gap <= 2e-5) == matches, f"gates {node_gates}: max gap {gap}"  # 2e-5: GEMM reassociation, as above


def test_shape_errors_name_the_problem():
    fc1, fc2, experts, router = _layers(32, 64, 4, 8)
    weights = pack_gated_expert_weights(fc1, fc2, experts, router)
    x = torch.zeros(1, 5, 32)
    kwargs = dict(num_experts=4, top_k=2, expert_dim=8)
    with pytest.raises(ValueError, match="shape of x"):
        gated_expert_mlp(x, x[:, :4], *weights, **kwargs)
    with pytest.raises(ValueError, match="top_k"):
        gated_expert_mlp(x, x, *weights, num_experts=4, top_k=5, expert_dim=8)
    with pytest.raises(ValueError, match="W2cat"):
        gated_expert_mlp(x, x, *weights, num_experts=4, top_k=2, expert_dim=32)
    with pytest.raises(ValueError, match="b2cat"):
        gated_expert_mlp(x, x, *weights[:3], weights[3][:2], **kwargs)
