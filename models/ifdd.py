"""IFDD (CyberPegasus/IFDD @1a1f557), the official ``MFViT_Main`` in its DFEW configuration.

A re-implementation for inference whose state_dict is the official one, key for key (297 keys),
so checkpoints saved by the official ``tools/train.py`` (``ckpt['model']``) load strictly:

    embed      Conv3d 3→96, kernel (3,7,7), stride (2,4,4): 16×224×224 → 8×56×56 tokens
    backbone   ten MViTv2-style blocks (``MFViT_XS``: 1-2-5-2 blocks, widths 96/192/384/768,
               pooling attention with decomposed relative positions, residual pooling),
               a stage-2 ⊕ stage-3 fusion (dilated ``PANLayer`` conv + 1×1 ``CatConv``),
               then the lifting scheme: ISSM (adaptive temporal split) + LADM
    head       Dropout + Linear 768→7

Quirks of the official code reproduced here (shared/fixtures/README.md has the details):
* the fusion takes stage 2 from the tokens *entering* block 8 and stage 3 from the final LayerNorm;
  the CLS tokens are dropped there and never reach the classifier;
* LADM: update before predict, the attention values are added back to the attention output,
  the MLP after the MHSA has no residual, tokens are compressed by a bias-free Linear 196→1;
* the ISSM samples frames at p·T/(T−1) − 0.5 (grid_sample with mismatched align_corners),
  implemented once in ``kernels.lifting_split``.

Every size is static (T=8, 56→28→14→7), so the relative-position indices are constants and the
graph has no data-dependent shape; only the batch dimension is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels.lifting_split import lifting_split
from runtime.spec import DFEW_LABELS, ModelSpec

FAMILY = "ifdd"
SIGNATURE: tuple[str, ...] = (
    "embed.conv_proj.weight",
    "backbone.backbone.blocks.0.attn.rel_pos_t",
    "backbone.CatConv.weight",
    "backbone.WaveLifts.adapt_split.dim_project.0.weight",
    "head.head.1.weight",
)
# Official test: frames /255 clamped to [0,1], no mean/std; non-overlapping 16-frame clips whose
# logits are averaged.
SPEC = ModelSpec(
    family=FAMILY,
    labels=DFEW_LABELS,
    frames=16,
    height=224,
    width=224,
    frame_stride=1,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    resize="bicubic",
    clip_merge="logits",
)

EMBED_DIM = 96
TOKEN_GRID = (8, 56, 56)  # (T, H, W) of the embedded clip
LIFT_GRID = (8, 7, 7)  # (T, H, W) the lifting scheme works on
LIFT_DIM = 768
LIFT_HEADS = 8
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


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear-GELU-Linear with the official Dropout slots (p=0), so the keys are mlp.0 / mlp.3."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, out), nn.Dropout(0.0))


def _split_heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, N, parts·heads·d) → `parts` tensors of (B, heads, N, d), e.g. q, k, v of a fused qkv."""
    x = x.unflatten(-1, (parts, heads, -1))
    return x.permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) → (B, N, heads·d)."""
    return x.transpose(1, 2).flatten(2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale·q·kᵀ)·v, spelled out as the official code does it."""
    return torch.matmul(torch.matmul(q * scale, k.transpose(-2, -1)).softmax(dim=-1), v)


# ----------------------------------------------------------------------------------------------
# MViT backbone


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
        q, k, v = _split_heads(self.qkv(x), 3, self.heads)
        q, k, v = self.pool_q(q), self.pool_k(k), self.pool_v(v)
        # logits = scale·q·kᵀ + relative term, as one matmul over [q, per-axis scores]·[k, one-hot]ᵀ
        queries = torch.cat([q * self.scale, self._relative_scores(q)], dim=-1)
        keys = torch.cat([k, self.key_axes.to(k.dtype).expand(*k.shape[:2], -1, -1)], dim=-1)
        out = torch.matmul(torch.matmul(queries, keys.transpose(-2, -1)).softmax(dim=-1), v)
        out = torch.cat([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], dim=2)
        return self.project(_merge_heads(out))

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
        self.mlp = _mlp(cfg.out_dim, 4 * cfg.out_dim, cfg.out_dim)
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


# ----------------------------------------------------------------------------------------------
# Lifting scheme: ISSM (split) and LADM (update, predict, transform, compress)


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
        self.mlp = _mlp(dim, 4 * dim, dim)
        self.project_compress = nn.Linear(t // 2 * h * w, 1, bias=False)

    def forward(self, tokens: torch.Tensor, return_pool_a: bool = False):
        """(B, T·H·W, C) → x_d (B, C); with return_pool_a, (pool_a (B, H, W), x_d)."""
        approx, detail = self.adapt_split(tokens)
        approx, detail = self.xa_norm(approx), self.xd_norm(detail)
        approx = approx + self.project_a(self._cross_attend(self.q_a, self.kv_d, approx, detail))  # update
        detail = detail - self.project_d(self._cross_attend(self.q_d, self.kv_a, detail, approx))  # predict
        q, k, v = _split_heads(self.qkv(self.out_norm1(detail)), 3, self.heads)
        detail = detail + self.project(_merge_heads(_attend(q, k, v, self.scale)))
        detail = self.mlp(self.out_norm2(detail))  # no residual, as upstream
        x_d = self.project_compress(detail.transpose(1, 2)).squeeze(-1)
        if not return_pool_a:
            return x_d
        return self._approximation_gap(tokens, approx), x_d

    def _cross_attend(self, q_layer: nn.Linear, kv_layer: nn.Linear, queries: torch.Tensor, context: torch.Tensor):
        """Cross-attention from `queries` to `context`, plus the values themselves (official
        ``residual``), heads merged: (B, N, C)."""
        (q,) = _split_heads(q_layer(queries), 1, self.heads)
        k, v = _split_heads(kv_layer(context), 2, self.heads)
        return _merge_heads(_attend(q, k, v, self.scale) + v)

    def _approximation_gap(self, tokens: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
        """pool_a for the training loss: mean over (C, T/2) of [frame-pair average − updated x_a]."""
        t, h, w = self.grid
        pairs = tokens.unflatten(1, (t // 2, 2, h * w)).mean(dim=2)  # (B, T/2, HW, C)
        gap = pairs - approx.unflatten(1, (t // 2, h * w))
        return gap.mean(dim=(1, 3)).unflatten(1, (h, w))


# ----------------------------------------------------------------------------------------------
# The whole model


class ConvEmbed(nn.Module):
    """Official ``embedNet_light`` for 16 frames: one strided Conv3d (its temporal pool is Identity)."""

    def __init__(self):
        super().__init__()
        self.conv_proj = nn.Conv3d(3, EMBED_DIM, kernel_size=(3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.conv_proj(video)


def _tokens_to_frames(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, 1+T·H·W, C) with CLS → per-frame maps (B·T, C, H, W), CLS dropped."""
    t, h, w = grid
    patches = tokens[:, 1:].unflatten(1, (t, h, w))
    return patches.permute(0, 1, 4, 2, 3).flatten(0, 1)


class LiftingBackbone(nn.Module):
    """Official ``MFViT_FPN``: encoder, stage-2/3 fusion, then the LADM."""

    def __init__(self):
        super().__init__()
        stage2_dim, stage3_dim = BLOCKS[STAGE2_END - 1].out_dim, BLOCKS[-1].out_dim
        dilation = 2  # stride and dilation that take the 14×14 stage-2 maps to 7×7
        self.backbone = MViTEncoder()
        self.PANLayer = nn.ModuleList(
            [nn.Conv2d(stage2_dim, stage2_dim, 3, stride=dilation, padding=dilation, dilation=dilation, bias=False)]
        )
        self.CatConv = nn.Conv2d(stage2_dim + stage3_dim, LIFT_DIM, kernel_size=1, bias=False)
        self.WaveLifts = LiftingModule()

    def forward(self, x: torch.Tensor, return_pool_a: bool = False):
        stage2, stage3 = self.backbone(x)
        return self.WaveLifts(self.fuse(stage2, stage3), return_pool_a)

    def fuse(self, stage2: torch.Tensor, stage3: torch.Tensor) -> torch.Tensor:
        """Stage-2 (14×14, strided dilated conv) and stage-3 (7×7) maps → LADM tokens (B, T·49, C)."""
        t, h, w = LIFT_GRID
        stage2 = self.PANLayer[0](_tokens_to_frames(stage2, (t, 2 * h, 2 * w)))
        stage3 = _tokens_to_frames(stage3, LIFT_GRID)
        fused = self.CatConv(torch.cat([stage2, stage3], dim=1))  # (B·T, C, H, W)
        return fused.unflatten(0, (-1, t)).permute(0, 1, 3, 4, 2).flatten(1, 3)


class ClassifierHead(nn.Module):
    """Official ``headNet``: Dropout(0.5) then Linear 768→7 (keys head.head.1.*)."""

    def __init__(self, dim: int = LIFT_DIM, num_classes: int = len(DFEW_LABELS), dropout: float = 0.5):
        super().__init__()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class IFDD(nn.Module):
    """(B, 3, 16, 224, 224) clip in [0, 1] → (B, 7) DFEW logits.

    ``use_kernels`` makes the ISSM run the Triton kernels on CUDA (``kernels.lifting_split``);
    on CPU and during ONNX export the model is the same either way.
    """

    spec = SPEC

    def __init__(self, use_kernels: bool = False):
        super().__init__()
        self.embed = ConvEmbed()
        self.backbone = LiftingBackbone()
        self.head = ClassifierHead()
        self.config: dict = {}
        self.use_kernels = use_kernels
        _init_weights(self)

    def forward(self, video: torch.Tensor, return_lifting: bool = False):
        """Logits; with return_lifting, (logits, pool_a, x_d) as the official train mode returns."""
        if not return_lifting:
            return self.head(self.backbone(self.embed(video)))
        pool_a, x_d = self.backbone(self.embed(video), return_pool_a=True)
        return self.head(x_d), pool_a, x_d

    @property
    def use_kernels(self) -> bool:
        return self.backbone.WaveLifts.adapt_split.use_kernels

    @use_kernels.setter
    def use_kernels(self, enabled: bool) -> None:
        self.backbone.WaveLifts.adapt_split.use_kernels = bool(enabled)

    def validate_loaded_state(self) -> None:
        """ValueError if the loaded buffers hold values this implementation cannot reproduce."""
        self.backbone.WaveLifts.adapt_split.check_index_buffers()


def _init_weights(model: nn.Module) -> None:
    """Random init in the spirit of the official one (checkpoints overwrite all of it)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(config: dict | None = None, *, use_kernels: bool = False) -> IFDD:
    """A randomly initialised IFDD in eval mode. IFDD has no config: its sizes are hard-coded."""
    if config is not None and config != {}:
        raise ValueError(f"IFDD takes no config (widths, depths and grids are fixed upstream); got {sorted(config)}")
    return IFDD(use_kernels=use_kernels).eval()


def config_from_state_dict(state_dict: dict) -> dict:
    """IFDD checkpoints carry no size information worth reading: the config is always empty."""
    return {}
