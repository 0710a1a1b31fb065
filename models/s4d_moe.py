"""S4D's mixture of adapter experts: the official ``SparseMoEWithCapacity`` of each
``BlockMoEAdapters`` (noisy top-k router, per-expert capacity, Mlp experts), and the weight
packing that runs a block's MLP + MoE as one ``gated_expert_mlp`` call in deploy mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import emit_custom_op
from kernels.gated_expert_mlp import gated_expert_mlp, pack_gated_expert_weights


class Mlp(nn.Module):
    """Linear → GELU → Linear (the block MLP and each expert)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NoisyTopKRouter(nn.Module):
    """Top-k gate: softmax over the k best (optionally noisy) logits, exact zeros elsewhere."""

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.topkroute_linear = nn.Linear(dim, num_experts)
        self.noise_linear = nn.Linear(dim, num_experts)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (gate probabilities (..., E), chosen expert indices (..., k)).

        noise is the standard-normal ε; it is scaled by softplus(noise_linear(x)). None skips the
        noise branch entirely (the deploy router).
        """
        logits = self.topkroute_linear(x)
        if noise is not None:
            logits = logits + noise * F.softplus(self.noise_linear(x))
        top_logits, indices = logits.topk(self.top_k, dim=-1)
        sparse = torch.full_like(logits, float("-inf")).scatter(-1, indices, top_logits)
        return sparse.softmax(dim=-1), indices


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Tokens one expert may take per forward, computed as the official code does."""
    return int((num_tokens * top_k / num_experts) * capacity_factor)


def within_capacity(indices: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """(B·N, E) mask of the (token, expert) assignments the official MoE keeps.

    Each expert takes the tokens that chose it in flattened (b, n) order and silently drops every
    one after the first ``capacity``.
    """
    chosen = F.one_hot(indices.reshape(-1, indices.shape[-1]), num_experts).amax(dim=1).bool()
    return chosen & (chosen.cumsum(dim=0) <= capacity)


class SparseMoE(nn.Module):
    """SparseMoEWithCapacity: a noisy top-k router over Mlp experts, in one of two modes.

    ``router_mode`` selects "official" (noise + capacity) or "deploy" (neither).
    ``router_noise``: None samples ε ~ N(0, 1) on every official forward, like the paper's
    ``torch.randn_like``; a tensor (broadcastable to (B, N, E)) is used as ε instead.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, capacity_factor: float):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router = NoisyTopKRouter(dim, num_experts, top_k)
        self.experts = nn.ModuleList(Mlp(dim, hidden) for _ in range(num_experts))
        self.router_mode = "deploy"
        self.router_noise: torch.Tensor | None = None
        self._packed: tuple | None = None  # (weights' identity, packed weights), see packed_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.router_mode == "official":
            return self.forward_official(x)
        return self.forward_deploy(x)

    def forward_deploy(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_e gate_e · expert_e(x) over every token: no noise, no capacity."""
        gates, _ = self.router(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + gates[..., e : e + 1] * expert(x)
        return out

    def forward_official(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's forward: noisy routing, then each expert runs on its kept tokens only."""
        batch, tokens, dim = x.shape
        noise = self.router_noise
        if noise is None:  # the same draw as the official randn_like(logits), so seeded runs agree
            noise = torch.randn(batch, tokens, self.num_experts, dtype=x.dtype, device=x.device)
        gates, indices = self.router(x, noise.to(x))
        capacity = expert_capacity(batch * tokens, self.num_experts, self.top_k, self.capacity_factor)
        kept = within_capacity(indices, self.num_experts, capacity)
        flat_x, flat_gates = x.reshape(-1, dim), gates.reshape(-1, self.num_experts)
        out = torch.zeros_like(flat_x)
        for e, expert in enumerate(self.experts):
            rows = kept[:, e].nonzero().squeeze(1)
            out.index_add_(0, rows, expert(flat_x[rows]) * flat_gates[rows, e : e + 1])
        return out.view(batch, tokens, dim)

    def forward_fused(self, x: torch.Tensor, h: torch.Tensor, mlp: Mlp, use_kernel: bool = False) -> torch.Tensor:
        """Deploy path of a BlockMoEAdapters: x + mlp(h) + Σ_topk gate · expert(h) as one gated_expert_mlp call."""
        expert_dim = self.experts[0].fc1.out_features
        return gated_expert_mlp(
            x, h, *self.packed_weights(mlp), num_experts=self.num_experts, top_k=self.top_k, expert_dim=expert_dim,
            use_kernel=use_kernel,
        )  # fmt: skip

    def packed_weights(self, mlp: Mlp) -> tuple[torch.Tensor, ...]:
        """The block's FFN ``mlp``, the experts and the router concatenated into the op's four weights.

        Packing copies ~14 MB per full-size block (fp32), so inference keeps the packed copy
        and packs again only when a weight changed (load_state_dict, .to(), .half(): a new
        storage or a bumped version counter). Training (grad needed), ONNX export and
        torch.compile tracing pack on every call, inside the graph."""
        experts = [(e.fc1, e.fc2) for e in self.experts]
        router = self.router.topkroute_linear
        if (torch.is_grad_enabled() and mlp.fc1.weight.requires_grad) or emit_custom_op() or torch.compiler.is_compiling():
            self._packed = None
            return pack_gated_expert_weights(mlp.fc1, mlp.fc2, experts, router)
        linears = [mlp.fc1, mlp.fc2, *(layer for pair in experts for layer in pair), router]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for layer in linears for p in (layer.weight, layer.bias))
        if self._packed is None or self._packed[0] != key:
            packed = pack_gated_expert_weights(mlp.fc1, mlp.fc2, experts, router)
            self._packed = (key, tuple(t.detach() for t in packed))
        return self._packed[1]
