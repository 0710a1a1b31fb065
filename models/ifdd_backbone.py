"""IFDD's embedding and MViTv2 encoder: the official ``embedNet_light`` and ``MFViT_XS``.

Ten pooling-attention blocks (1-2-5-2, widths 96/192/384/768) with decomposed relative positions
and residual pooling, on the static 8×56×56 token grid of a 16×224×224 clip. The small layer
helpers at the top are shared with the lifting scheme (models/ifdd_lifting.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EMBED_DIM = 96
TOKEN_GRID = (8, 56, 56)  # (T, H, W) of the embedded clip
MVIT_EPS = 1e-6  # the MViT LayerNorms; the LADM ones keep PyTorch's 1e-5


@dataclass(frozen=True)
class BlockConfig:
    """One MViT block. Pooling kernels are 3×3×3 everywhere and never stride in time."""

    heads: int
    in_dim: int
    out_dim: int
    q_stride: int  # spatial stride of the query pooling (also of the residual path)
    kv_stride: int  # spatial stride of the key/value pooling


# The official ``MFViT_XS`` table.
BLOCKS = tuple(
    BlockConfig(*row)
    for row in (
        (1, 96, 96, 1, 8),
        (2, 96, 192, 2, 4),
        (2, 192, 192, 1, 4),
        (4, 192, 384, 2, 2),
        (4, 384, 384, 1, 2),
        (4, 384, 384, 1, 2),
        (4, 384, 384, 1, 2),
        (4, 384, 384, 1, 2),
        (8, 384, 768, 2, 1),
        (8, 768, 768, 1, 1),
    )
)
# The official backbone records a stage's tokens when the head count first changes, i.e. the
# input of block 8 (the first 8-head block) is "stage 2".
STAGE2_END = 8


def _pooled_grid(thw: tuple[int, int, int], stride: int) -> tuple[int, int, int]:
    """Grid after a kernel-3, padding-1 pooling with this spatial stride."""
    t, h, w = thw
    return t, (h - 1) // stride + 1, (w - 1) // stride + 1


def mlp_with_dropout_slots(dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear-GELU-Linear with the official Dropout slots (p=0), so the keys are mlp.0 / mlp.3."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, out), nn.Dropout(0.0))


def split_heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, N, parts·heads·d) → `parts` tensors of (B, heads, N, d), e.g. q, k, v of a fused qkv."""
    x = x.unflatten(-1, (parts, heads, -1))
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) → (B, N, heads·d)."""
    return x.transpose(1, 2).flatten(2)


class ConvEmbed(nn.Module):
    """Official ``embedNet_light`` for 16 frames: one strided Conv3d (its temporal pool is Identity)."""

    def __init__(self):
        super().__init__()
        self.conv_proj = nn.Conv3d(3, EMBED_DIM, kernel_size=(3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.conv_proj(video)


class TokenPool(nn.Module):
    """Pools the patch tokens of (B, heads, 1+T·H·W, C) on their 3-D grid; the CLS token skips the
    pooling but not the LayerNorm after it (``norm_act.0``), as in the official ``Pool``."""

    def __init__(self, pool: nn.Module, grid: tuple[int, int, int], norm_dim: int | None):
        super().__init__()
        self.pool = pool
        self.norm_act = nn.Sequential(nn.LayerNorm(norm_dim, eps=MVIT_EPS)) if norm_dim else None
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads, channels = x.shape[1], x.shape[3]
        cls, patches = x[:, :, :1], x[:, :, 1:]
        maps = patches.transpose(2, 3).reshape(-1, channels, *self.grid)
        pooled = self.pool(maps).flatten(2)  # (B·heads, C, N')
        pooled = pooled.unflatten(0, (-1, heads)).transpose(2, 3)
        x = torch.cat([cls, pooled], dim=2)
        return x if self.norm_act is None else self.norm_act(x)


def _depthwise_pool(channels: int, stride: int) -> nn.Conv3d:
    return nn.Conv3d(channels, channels, 3, stride=(1, stride, stride), padding=1, groups=channels, bias=False)


def _relative_index(q_size: int, k_size: int) -> torch.Tensor:
    """Official MViTv2 distance table: rows of rel_pos_* that pair query i with key j, with the
    coarser axis scaled up to the finer one (computed in float then truncated, as upstream)."""
    q_ratio, k_ratio = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    distance = torch.arange(q_size)[:, None] * q_ratio - (torch.arange(k_size)[None, :] + (1.0 - k_size)) * k_ratio
    return distance.long()


def _key_axis_one_hot(k_grid: tuple[int, int, int]) -> torch.Tensor:
    """(1+kt·kh·kw, kt+kh+kw) one-hot of each key token's (t, h, w); the CLS key row is zero.

    Appended to the keys, it lets one matmul add a query's per-axis relative scores to the
    logits of every key at that (t, h, w): no 6-D (q_t,q_h,q_w,k_t,k_h,k_w) broadcast and no
    extra pass over the logits: 490 ms against 680 ms for matmul + additive bias on block 1's
    2×2×6273×1569 logits (2 CPU cores). SDPA taking the bias as its mask was slower than the
    explicit matmul + bias (3.1 s against 2.9 s per B=2 forward), so attention stays explicit.
    """
    kt, kh, kw = k_grid
    t, h, w = torch.meshgrid(torch.arange(kt), torch.arange(kh), torch.arange(kw), indexing="ij")
    keys = torch.arange(1, 1 + kt * kh * kw).repeat(3)
    axes = torch.cat([t.flatten(), kt + h.flatten(), kt + kh + w.flatten()])
    one_hot = torch.zeros(1 + kt * kh * kw, kt + kh + kw)
    one_hot[keys, axes] = 1.0
    return one_hot


class PooledAttention(nn.Module):
    """MViTv2 multi-head pooling attention with decomposed relative positions and residual
    pooling (the pooled query is added back to every patch output, not to CLS)."""

    def __init__(self, cfg: BlockConfig, grid: tuple[int, int, int]):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.out_dim // cfg.heads
        self.scale = self.head_dim**-0.5
        self.q_grid, self.kv_grid = _pooled_grid(grid, cfg.q_stride), _pooled_grid(grid, cfg.kv_stride)
        self.qkv = nn.Linear(cfg.in_dim, 3 * cfg.out_dim)
        self.project = nn.Sequential(nn.Linear(cfg.out_dim, cfg.out_dim))
        self.pool_q = TokenPool(_depthwise_pool(self.head_dim, cfg.q_stride), grid, self.head_dim)
        self.pool_k = TokenPool(_depthwise_pool(self.head_dim, cfg.kv_stride), grid, self.head_dim)
        self.pool_v = TokenPool(_depthwise_pool(self.head_dim, cfg.kv_stride), grid, self.head_dim)

        (qt, qh, qw), (kt, kh, kw) = self.q_grid, self.kv_grid
        spatial, temporal = 2 * max(qh, kh) - 1, 2 * grid[0] - 1
        if qh != qw or kh != kw or temporal != 2 * max(qt, kt) - 1:  # upstream would interpolate the tables
            raise ValueError(f"unsupported pooling geometry {self.q_grid} / {self.kv_grid}")
        self.rel_pos_h = nn.Parameter(torch.zeros(spatial, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(spatial, self.head_dim))
        self.rel_pos_t = nn.Parameter(torch.zeros(temporal, self.head_dim))
        for table in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
            nn.init.trunc_normal_(table, std=0.02)
        # Constants of the static geometry, kept out of the state_dict.
        self.register_buffer("rel_index_t", _relative_index(qt, kt), persistent=False)
        self.register_buffer("rel_index_h", _relative_index(qh, kh), persistent=False)
        self.register_buffer("rel_index_w", _relative_index(qw, kw), persistent=False)
        self.register_buffer("key_axes", _key_axis_one_hot(self.kv_grid), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 3, self.heads)
        q, k, v = self.pool_q(q), self.pool_k(k), self.pool_v(v)
        # logits = scale·q·kᵀ + relative term, as one matmul over [q, per-axis scores]·[k, one-hot]ᵀ
        queries = torch.cat([q * self.scale, self._relative_scores(q)], dim=-1)
        keys = torch.cat([k, self.key_axes.to(k.dtype).expand(*k.shape[:2], -1, -1)], dim=-1)
        out = torch.matmul(torch.matmul(queries, keys.transpose(-2, -1)).softmax(dim=-1), v)
        out = torch.cat([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], dim=2)
        return self.project(merge_heads(out))

    def _relative_scores(self, q: torch.Tensor) -> torch.Tensor:
        """(B, heads, 1+Nq, kt+kh+kw): q·R_t, q·R_h, q·R_w for every key position on each axis.

        Each table depends on the query's position along its own axis, so the matmul is batched
        over that axis (plain broadcasting MatMuls; no Einsum or GatherND in the exported graph).
        """
        qt, qh, qw = self.q_grid
        patches = q[:, :, 1:].unflatten(2, self.q_grid)  # (B, heads, qt, qh, qw, d)
        table_t = _gather_rows(self.rel_pos_t, self.rel_index_t)  # (qt, d, kt)
        by_t = torch.matmul(patches.flatten(3, 4), table_t).unflatten(3, (qh, qw))
        by_h = torch.matmul(patches, _gather_rows(self.rel_pos_h, self.rel_index_h))
        by_w = torch.matmul(patches.transpose(3, 4), _gather_rows(self.rel_pos_w, self.rel_index_w)).transpose(3, 4)
        per_axis = torch.cat([by_t, by_h, by_w], dim=-1).flatten(2, 4)
        return F.pad(per_axis, (0, 0, 1, 0))  # the CLS query gets no relative term


def _gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a (q, k) index, returned as (q, d, k) ready to right-multiply queries."""
    return table.index_select(0, index.flatten()).unflatten(0, index.shape).transpose(1, 2)


class MultiscaleBlock(nn.Module):
    """Pre-norm MViTv2 block; a width change projects the normalised input for the shortcut,
    a query stride max-pools it (``pool_skip``, no parameters)."""

    def __init__(self, cfg: BlockConfig, grid: tuple[int, int, int]):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.in_dim, eps=MVIT_EPS)
        self.norm2 = nn.LayerNorm(cfg.out_dim, eps=MVIT_EPS)
        self.attn = PooledAttention(cfg, grid)
        self.mlp = mlp_with_dropout_slots(cfg.out_dim, 4 * cfg.out_dim, cfg.out_dim)
        self.project = nn.Linear(cfg.in_dim, cfg.out_dim) if cfg.in_dim != cfg.out_dim else None
        self.pool_skip = None
        if cfg.q_stride > 1:
            stride = cfg.q_stride
            kernel, pad = stride + 1, (stride + 1) // 2
            max_pool = nn.MaxPool3d((1, kernel, kernel), stride=(1, stride, stride), padding=(0, pad, pad))
            self.pool_skip = TokenPool(max_pool, grid, norm_dim=None)
        self.out_grid = self.attn.q_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        shortcut = x if self.project is None else self.project(normed)
        if self.pool_skip is not None:
            shortcut = self.pool_skip(shortcut.unsqueeze(1)).squeeze(1)
        x = shortcut + self.attn(normed)
        return x + self.mlp(self.norm2(x))


class ClassToken(nn.Module):
    """Prepends the learnt CLS token (official ``PositionalEncoding`` with relative positions)."""

    def __init__(self, dim: int):
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.class_token, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = self.class_token.expand(tokens.shape[0], 1, -1)
        return torch.cat([cls, tokens], dim=1)


class MViTEncoder(nn.Module):
    """The ten blocks; returns the stage-2 tokens (input of block 8) and the normalised output."""

    def __init__(self):
        super().__init__()
        self.pos_encoding = ClassToken(EMBED_DIM)
        self.blocks = nn.ModuleList()
        grid = TOKEN_GRID
        for cfg in BLOCKS:
            self.blocks.append(MultiscaleBlock(cfg, grid))
            grid = self.blocks[-1].out_grid
        self.norm = nn.LayerNorm(BLOCKS[-1].out_dim, eps=MVIT_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pos_encoding(x.flatten(2).transpose(1, 2))  # (B, C, T, H, W) → (B, 1+THW, C)
        for block in self.blocks[:STAGE2_END]:
            x = block(x)
        stage2 = x
        for block in self.blocks[STAGE2_END:]:
            x = block(x)
        return stage2, self.norm(x)
