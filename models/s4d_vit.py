"""S4D's VideoMAE ViT (official ``VisionTransformerMoE`` parts): the ``vitmoe_base_patch16_160``
config, tubelet patch embedding, the fixed sinusoid positions, attention with VideoMAE's q/v
biases, and the pre-norm ``Block`` / ``BlockMoEAdapters`` whose experts live in models/s4d_moe.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import ConfigRecord
from models.s4d_moe import Mlp, SparseMoE

LAYER_NORM_EPS = 1e-6  # the registered models use partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class S4DConfig(ConfigRecord):
    """Architecture of one S4D model; the defaults are vitmoe_base_patch16_160 for DFEW."""

    CONFIG_NAME = "S4D"

    img_size: int = 160
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_frames: int = 16
    tubelet_size: int = 2
    moe_layers: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float = 1.0
    expert_ratio: float = 0.25  # hard-coded int(dim * 0.25) in BlockMoEAdapters
    num_classes: int = 7
    multi_head: tuple[int, int] = (7, 7)  # (image head: AffectNet-7, video head: DFEW)

    def __post_init__(self):
        object.__setattr__(self, "moe_layers", tuple(int(i) for i in self.moe_layers))
        object.__setattr__(self, "multi_head", tuple(int(n) for n in self.multi_head))
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            problems.append(f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}")
        if any(not 0 <= i < self.depth for i in self.moe_layers):
            problems.append(f"moe_layers {self.moe_layers} must lie in 0..{self.depth - 1}")
        if self.moe_layers and not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must lie in 1..num_experts ({self.num_experts})")
        if len(self.multi_head) != 2 or self.multi_head[1] != self.num_classes:
            problems.append(f"multi_head {self.multi_head} must be (image classes, video classes = num_classes)")
        if problems:
            raise ValueError("invalid S4D config: " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        """Tokens of a video clip, flattened in (t, h, w) order."""
        return (self.num_frames // self.tubelet_size) * (self.img_size // self.patch_size) ** 2

    @property
    def expert_hidden(self) -> int:
        return int(self.embed_dim * self.expert_ratio)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sin/cos table (1, N, D): sin on even channels, cos on odd ones.

    Computed in float64 and rounded once to float32, as the official numpy code does.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    even = torch.arange(dim) % 2 == 0
    return torch.where(even, angles.sin(), angles.cos()).float().unsqueeze(0)


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's bias layout: q and v biases, k bias fixed at 0."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm ViT block; with ``use_moe`` it is BlockMoEAdapters: x + Mlp(h) + MoE(h), h = LN2(x).

    ``use_kernels`` (set through S4D.use_kernels) runs the deploy-mode MLP + MoE as Triton
    kernels when on CUDA.
    """

    use_kernels = False

    def __init__(self, cfg: S4DConfig, use_moe: bool):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        # Registered before mlp so state_dict order matches the official BlockMoEAdapters.
        self.moe_layer = (
            SparseMoE(dim, cfg.expert_hidden, cfg.num_experts, cfg.top_k, cfg.capacity_factor) if use_moe else None
        )
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        if self.moe_layer is None:
            return x + self.mlp(h)
        if self.moe_layer.router_mode == "official":
            return x + (self.mlp(h) + self.moe_layer(h))  # the official summation order
        return self.fused_mlp_moe(x, h)

    def fused_mlp_moe(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Deploy path: x + mlp(h) + Σ_topk gate · expert(h) as one gated_expert_mlp call."""
        return self.moe_layer.forward_fused(x, h, self.mlp, use_kernel=self.use_kernels)

    def packed_weights(self) -> tuple[torch.Tensor, ...]:
        """This block's weights as the op takes them, cached by the MoE layer (SparseMoE.packed_weights)."""
        return self.moe_layer.packed_weights(self.mlp)


class PatchEmbed(nn.Module):
    """Non-overlapping tubelet × patch × patch Conv3d, tokens flattened in (t, h, w) order."""

    def __init__(self, cfg: S4DConfig):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
