"""GatedExpertMLP: S4D's block FFN plus its Mixture of Adapter Experts as one wide MLP.

Contract (shared DESIGN §4.2): ``GatedExpertMLP(x, h, W1cat, b1cat, W2cat, b2cat)`` with
attributes num_experts E, top_k, expert_dim F, computing

    x + MLP(h) + Σ_top-k g_e · Expert_e(h),   g = softmax over the top-k router logits

With the deterministic router (no noise, no capacity) this is a single wide MLP:
GEMM 1 computes h · [W_fc1 | W_down_0..E−1 | W_router] + b1cat with GELU on all but the router
columns; each expert's F hidden columns are scaled by its gate (0 for experts outside the top-k);
GEMM 2 multiplies by [W_fc2 ; W_up_0..E−1]. The experts' output biases are gated too, so b2cat
is (1+E, D): row 0 the fc2 bias (always on), rows 1..E the expert biases, mixed by the gates.
Dense-masked experts cost +25 % FFN FLOPs for S4D and remove every gather and scatter.

Layouts: W1cat (D, H + E·F + E), b1cat (H + E·F + E,), W2cat (H + E·F, D), b2cat (1 + E, D),
where H is the FFN hidden width; x and h are (..., D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ONNX_DOMAIN, ONNX_DOMAIN_VERSION, emit_custom_op

OP_NAME = "GatedExpertMLP"


def pack_gated_expert_weights(
    fc1: nn.Linear, fc2: nn.Linear, experts: list[tuple[nn.Linear, nn.Linear]], router: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate an FFN, its experts (down, up) and the router into the op's four weights."""
    downs = [down for down, _ in experts]
    ups = [up for _, up in experts]
    w1cat = torch.cat([fc1.weight] + [d.weight for d in downs] + [router.weight], 0).t()
    b1cat = torch.cat([fc1.bias] + [d.bias for d in downs] + [router.bias], 0)
    w2cat = torch.cat([fc2.weight] + [u.weight for u in ups], 1).t()
    b2cat = torch.stack([fc2.bias] + [u.bias for u in ups], 0)
    return w1cat, b1cat, w2cat, b2cat


def gated_expert_mlp(x, h, w1cat, b1cat, w2cat, b2cat, *, num_experts: int, top_k: int, expert_dim: int):
    """x + MLP(h) + top-k gated experts(h); a single dfer custom node during ONNX export."""
    _check_shapes(x, h, w1cat, b1cat, w2cat, b2cat, num_experts, top_k, expert_dim)
    if emit_custom_op():
        return torch.onnx.ops.symbolic(
            f"{ONNX_DOMAIN}::{OP_NAME}",
            [x, h, w1cat, b1cat, w2cat, b2cat],
            attrs={"num_experts": num_experts, "top_k": top_k, "expert_dim": expert_dim},
            dtype=x.dtype,
            shape=x.shape,
            version=ONNX_DOMAIN_VERSION,
        )
    return gated_expert_mlp_ref(
        x, h, w1cat, b1cat, w2cat, b2cat, num_experts=num_experts, top_k=top_k, expert_dim=expert_dim
    )


def gated_expert_mlp_ref(x, h, w1cat, b1cat, w2cat, b2cat, *, num_experts: int, top_k: int, expert_dim: int):
    """Pure-PyTorch reference of the op (dense-masked, deterministic top-k)."""
    hidden_width = w2cat.shape[0]
    ffn_width = hidden_width - num_experts * expert_dim
    pre = torch.matmul(h, w1cat) + b1cat
    hidden = F.gelu(pre[..., :hidden_width])
    gates = top_k_gates(pre[..., hidden_width:], top_k)
    expert_hidden = hidden[..., ffn_width:].unflatten(-1, (num_experts, expert_dim)) * gates.unsqueeze(-1)
    hidden = torch.cat([hidden[..., :ffn_width], expert_hidden.flatten(-2)], -1)
    return x + torch.matmul(hidden, w2cat) + b2cat[0] + torch.matmul(gates, b2cat[1:])


def top_k_gates(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Softmax over the top-k logits, zero elsewhere, built from one-hots (no scatter)."""
    values, indices = logits.topk(top_k, dim=-1)
    probs = torch.softmax(values, dim=-1)
    experts = torch.arange(logits.shape[-1], device=logits.device)
    one_hot = (indices.unsqueeze(-1) == experts).to(logits.dtype)
    return (probs.unsqueeze(-1) * one_hot).sum(-2)


def _check_shapes(x, h, w1cat, b1cat, w2cat, b2cat, num_experts, top_k, expert_dim) -> None:
    dim = x.shape[-1]
    if h.shape != x.shape:
        raise ValueError(f"GatedExpertMLP: h {tuple(h.shape)} must have the shape of x {tuple(x.shape)}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"GatedExpertMLP: top_k must be in 1..{num_experts}, got {top_k}")
    hidden_width = w2cat.shape[0]
    if hidden_width <= num_experts * expert_dim or tuple(w2cat.shape) != (hidden_width, dim):
        raise ValueError(
            f"GatedExpertMLP: W2cat must be (H + E·F, {dim}) with E·F = {num_experts * expert_dim}, got {tuple(w2cat.shape)}"
        )
    width1 = hidden_width + num_experts
    if tuple(w1cat.shape) != (dim, width1) or tuple(b1cat.shape) != (width1,):
        raise ValueError(
            f"GatedExpertMLP: W1cat/b1cat must be ({dim}, {width1})/({width1},), got {tuple(w1cat.shape)}/{tuple(b1cat.shape)}"
        )
    if tuple(b2cat.shape) != (1 + num_experts, dim):
        raise ValueError(f"GatedExpertMLP: b2cat must be ({1 + num_experts}, {dim}), got {tuple(b2cat.shape)}")


def onnx_function():
    """The op's decomposition in standard ONNX ops, as a model-local function of domain dfer.

    Mirrors gated_expert_mlp_ref; tests compare the two through ONNX Runtime.
    """
    from onnxscript import opset18 as op
    from onnxscript import script
    from onnxscript.values import Opset

    dfer = Opset(ONNX_DOMAIN, ONNX_DOMAIN_VERSION)
    inv_sqrt2 = 1.0 / math.sqrt(2.0)

    @script(dfer, default_opset=op)
    def GatedExpertMLP(x, h, w1cat, b1cat, w2cat, b2cat, num_experts: int, top_k: int, expert_dim: int):
        one_d = op.Constant(value_ints=[1])
        experts = op.Constant(value_int=num_experts)
        k = op.Reshape(op.Constant(value_int=top_k), one_d)
        width = op.Reshape(op.Constant(value_int=expert_dim), one_d)
        zero_d = op.Constant(value_ints=[0])
        last = op.Constant(value_ints=[-1])
        big = op.Constant(value_ints=[9223372036854775807])
        hidden_width = op.Shape(w2cat, start=0, end=1)
        ffn_width = op.Sub(hidden_width, op.Mul(op.Reshape(experts, one_d), width))
        pre = op.Add(op.MatMul(h, w1cat), b1cat)
        hidden_pre = op.Slice(pre, zero_d, hidden_width, last)
        logits = op.Slice(pre, hidden_width, big, last)
        gelu = op.Mul(
            op.Mul(hidden_pre, op.CastLike(0.5, x)),
            op.Add(op.CastLike(1.0, x), op.Erf(op.Mul(hidden_pre, op.CastLike(inv_sqrt2, x)))),
        )
        values, indices = op.TopK(logits, k, axis=-1)
        probs = op.Softmax(values, axis=-1)
        expert_ids = op.Range(op.Constant(value_int=0), experts, op.Constant(value_int=1))
        one_hot = op.CastLike(op.Equal(op.Unsqueeze(indices, last), expert_ids), x)
        gates = op.ReduceSum(op.Mul(op.Unsqueeze(probs, last), one_hot), op.Constant(value_ints=[-2]), keepdims=0)
        ffn_hidden = op.Slice(gelu, zero_d, ffn_width, last)
        expert_hidden = op.Slice(gelu, ffn_width, big, last)
        lead = op.Shape(expert_hidden, start=0, end=-1)
        split = op.Reshape(expert_hidden, op.Concat(lead, op.Reshape(experts, one_d), width, axis=0))
        gated = op.Reshape(op.Mul(split, op.Unsqueeze(gates, last)), op.Concat(lead, last, axis=0))
        hidden = op.Concat(ffn_hidden, gated, axis=-1)
        base_bias = op.Squeeze(op.Slice(b2cat, zero_d, one_d, zero_d), zero_d)
        expert_bias = op.Slice(b2cat, one_d, big, zero_d)
        out = op.Add(op.MatMul(hidden, w2cat), base_bias)
        return op.Add(op.Add(x, out), op.MatMul(gates, expert_bias))

    return GatedExpertMLP
