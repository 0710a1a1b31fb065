"""IFDD's lifting scheme on the fused 8×7×7 tokens: the ISSM (adaptive index split, official
``adapt_split``) and the LADM around it (official ``WaveSF_trans_CLS``: update, predict,
transform, compress). The official quirks it keeps are listed in models/ifdd.py.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.lifting_split import lifting_split
from models.ifdd_backbone import merge_heads, mlp_with_dropout_slots, split_heads

LIFT_GRID = (8, 7, 7)  # (T, H, W) the lifting scheme works on
LIFT_DIM = 768
LIFT_HEADS = 8


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale·q·kᵀ)·v, spelled out as the official code does it."""
    return torch.matmul(torch.matmul(q * scale, k.transpose(-2, -1)).softmax(dim=-1), v)


class AdaptiveSplit(nn.Module):
    """ISSM: splits T=8 frames into 4 approximation and 4 detail frames at learnt positions.

    It owns the official parameters; the math is ``kernels.lifting_split`` (one op in exports).
    ``time_project`` is never used by the official forward but is part of every checkpoint.
    ``use_kernels`` (set through IFDD.use_kernels) runs the Triton kernels when on CUDA.
    """

    use_kernels = False

    def __init__(self, dim: int = LIFT_DIM, grid: tuple[int, int, int] = LIFT_GRID, descriptor_dim: int = 7):
        super().__init__()
        self.grid = grid
        frames = grid[0]
        if grid[1:] != (descriptor_dim, descriptor_dim):  # upstream adaptive-pools the frames to 7×7
            raise ValueError(f"the ISSM needs {descriptor_dim}×{descriptor_dim} frames, got {grid[1:]}")
        self.dim_project = nn.Sequential(nn.Conv2d(dim, descriptor_dim, kernel_size=1), nn.GELU())
        self.time_project = nn.Sequential(nn.Linear(frames, frames), nn.GELU(), nn.Linear(frames, 1))
        self.offset_project_approx = nn.Sequential(nn.Linear(frames**2, frames // 2, bias=False), nn.Tanh())
        self.offset_project_detail = nn.Sequential(nn.Linear(frames**2, frames // 2, bias=False), nn.Tanh())
        # Slot positions; the op hard-codes these, so a checkpoint may only hold these values.
        self.register_buffer("index_even", torch.arange(0, frames, 2))
        self.register_buffer("index_odd", torch.arange(1, frames, 2))
        self.register_load_state_dict_post_hook(_check_after_load)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T·H·W, C) → approximation, detail tokens, each (B, T/2·H·W, C)."""
        conv = self.dim_project[0]
        t, h, w = self.grid
        return lifting_split(
            tokens,
            conv.weight.flatten(1),
            conv.bias,
            self.offset_project_approx[0].weight,
            self.offset_project_detail[0].weight,
            frames=t,
            height=h,
            width=w,
            use_kernel=self.use_kernels,
        )

    def check_index_buffers(self) -> None:
        """Raise ValueError if the slot buffers differ from the [0,2,4,6] / [1,3,5,7] the op assumes."""
        frames = self.grid[0]
        for name, start in (("index_even", 0), ("index_odd", 1)):
            found = getattr(self, name).detach().cpu()
            if not torch.equal(found, torch.arange(start, frames, 2)):
                raise ValueError(
                    f"ISSM buffer {name} is {found.tolist()}, but the lifting split only supports "
                    f"{list(range(start, frames, 2))}"
                )


def _check_after_load(module: AdaptiveSplit, incompatible_keys) -> None:
    module.check_index_buffers()


class LiftingModule(nn.Module):
    """LADM (official ``WaveSF_trans_CLS``, preUpdate and WaveNorm on, no dropout).

    ``spatial_pos``, ``temporal_pos`` and ``class_pos`` exist in checkpoints but are unused.
    """

    def __init__(self, dim: int = LIFT_DIM, heads: int = LIFT_HEADS, grid: tuple[int, int, int] = LIFT_GRID):
        super().__init__()
        t, h, w = grid
        self.grid, self.heads, self.scale = grid, heads, (dim // heads) ** -0.5
        self.q_d, self.kv_a = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.q_a, self.kv_d = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.spatial_pos = nn.Parameter(torch.zeros(h * w, dim))
        self.temporal_pos = nn.Parameter(torch.zeros(t, dim))
        self.class_pos = nn.Parameter(torch.zeros(dim))
        self.project_d = nn.Sequential(nn.Linear(dim, dim))
        self.project_a = nn.Sequential(nn.Linear(dim, dim))
        self.adapt_split = AdaptiveSplit(dim, grid)
        self.xa_norm, self.xd_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.out_norm1, self.out_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.project = nn.Sequential(nn.Linear(dim, dim))
        self.mlp = mlp_with_dropout_slots(dim, 4 * dim, dim)
        self.project_compress = nn.Linear(t // 2 * h * w, 1, bias=False)

    def forward(self, tokens: torch.Tensor, return_pool_a: bool = False):
        """(B, T·H·W, C) → x_d (B, C); with return_pool_a, (pool_a (B, H, W), x_d)."""
        approx, detail = self.adapt_split(tokens)
        approx, detail = self.xa_norm(approx), self.xd_norm(detail)
        approx = approx + self.project_a(self._cross_attend(self.q_a, self.kv_d, approx, detail))  # update
        detail = detail - self.project_d(self._cross_attend(self.q_d, self.kv_a, detail, approx))  # predict
        q, k, v = split_heads(self.qkv(self.out_norm1(detail)), 3, self.heads)
        detail = detail + self.project(merge_heads(_attend(q, k, v, self.scale)))
        detail = self.mlp(self.out_norm2(detail))  # no residual, as upstream
        x_d = self.project_compress(detail.transpose(1, 2)).squeeze(-1)
        if not return_pool_a:
            return x_d
        return self._approximation_gap(tokens, approx), x_d

    def _cross_attend(self, q_layer: nn.Linear, kv_layer: nn.Linear, queries: torch.Tensor, context: torch.Tensor):
        """Cross-attention from `queries` to `context`, plus the values themselves (official
        ``residual``), heads merged: (B, N, C)."""
        (q,) = split_heads(q_layer(queries), 1, self.heads)
        k, v = split_heads(kv_layer(context), 2, self.heads)
        return merge_heads(_attend(q, k, v, self.scale) + v)

    def _approximation_gap(self, tokens: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
        """pool_a for the training loss: mean over (C, T/2) of [frame-pair average − updated x_a]."""
        t, h, w = self.grid
        pairs = tokens.unflatten(1, (t // 2, 2, h * w)).mean(dim=2)  # (B, T/2, HW, C)
        gap = pairs - approx.unflatten(1, (t // 2, h * w))
        return gap.mean(dim=(1, 3)).unflatten(1, (h, w))

