"""IFDD (CyberPegasus/IFDD @1a1f557), the official ``MFViT_Main`` in its DFEW configuration.

A re-implementation for inference whose state_dict is the official one, key for key (297 keys),
so checkpoints saved by the official ``tools/train.py`` (``ckpt['model']``) load strictly:

    embed      Conv3d 3→96, kernel (3,7,7), stride (2,4,4): 16×224×224 → 8×56×56 tokens
    backbone   ten MViTv2-style blocks (``MFViT_XS``: 1-2-5-2 blocks, widths 96/192/384/768,
               pooling attention with decomposed relative positions, residual pooling),
               a stage-2 ⊕ stage-3 fusion (dilated ``PANLayer`` conv + 1×1 ``CatConv``),
               then the lifting scheme: ISSM (adaptive temporal split) + LADM
    head       Dropout + Linear 768→7

Quirks of the official code reproduced here (tests/fixtures/README.md says which fixture pins each):
* the fusion takes stage 2 from the tokens *entering* block 8 and stage 3 from the final LayerNorm;
  the CLS tokens are dropped there and never reach the classifier;
* LADM: update before predict, the attention values are added back to the attention output,
  the MLP after the MHSA has no residual, tokens are compressed by a bias-free Linear 196→1;
* the ISSM samples frames at p·T/(T−1) − 0.5 (grid_sample with mismatched align_corners),
  implemented once in ``kernels.lifting_split``.

Every size is static (T=8, 56→28→14→7), so the relative-position indices are constants and the
graph has no data-dependent shape; only the batch dimension is dynamic.

The parts: models/ifdd_backbone.py (embed, MViT blocks), models/ifdd_lifting.py (ISSM, LADM);
this file holds the family entry points and assembles the model, the stage-2/3 fusion included.
"""

from __future__ import annotations

import torch
from torch import nn

from models.ifdd_backbone import BLOCKS, STAGE2_END, ConvEmbed, MViTEncoder
from models.ifdd_lifting import LIFT_DIM, LIFT_GRID, AdaptiveSplit, LiftingModule  # noqa: F401  (AdaptiveSplit re-exported)
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

