"""FineCLIPER's config and its frozen CLIP ViT-B/16 image tower with the two adapters per block.

The tower's submodules carry OpenAI CLIP's names (``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj``), so
``visual.*`` keys load as they are. The adapters live outside the frozen blocks (``Adapters``),
because the landmark tower runs the same frozen blocks with adapters of its own.

Adapter placement follows AIM (Yang et al., ICLR 2023), which FineCLIPER's figure matches:
``x = x + A_attn(attn(ln_1 x))`` with A_attn(a) = a + fc2(gelu(fc1 a)) (the adapter's skip), then
``x = x + mlp(h) + s · A_mlp(h)``, h = ln_2 x, A_mlp without a skip (``parallel_adapter_skip``).
The MLP + parallel adapter is one ``gated_expert_mlp`` call in fixed-gates mode (one expert,
gate s, QuickGELU FFN columns), exported as ``dfer::GatedExpertMLP``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import emit_custom_op
from kernels.gated_expert_mlp import QUICK_GELU_ALPHA, gated_expert_mlp
from models.checkpoint import ConfigRecord
from runtime.spec import DFEW_LABELS

VARIANTS = ("base", "landmarks", "parsing")
TEMPORAL_MODES = ("transformer", "mean")
CLASS_RULES = ("difference", "positive")
MLP_ACTIVATIONS = ("quick_gelu", "gelu")
PARSING_UNAVAILABLE = (
    "variant 'parsing' needs face-parsing maps (FaceXFormer in the paper), and no face-parsing model ships in a "
    "package this project installs; use variant 'base' or 'landmarks'"
)


@dataclass(frozen=True)
class FineCLIPERConfig(ConfigRecord):
    """Every size and every guess of one FineCLIPER model; defaults: ViT-B/16 at 224, DFEW.

    Unknowns of the paper, with the chosen default and why:
    num_frames 16, image_size 224, temporal "transformer" (1 layer, 8 heads × 64, MLP 1024, a
    class token), temperature 0.01: DFER-CLIP's public code, whose no-adapter numbers
    FineCLIPER's ablation reproduces. frame_stride 4: the sampling step of DFEW's 16-segment
    protocol on ~2–4 s clips at 25–30 fps (S4D uses the same). adapter_reduction 4 (bottleneck
    192): AIM's mlp_ratio 0.25; with it the base model's visual adapters + temporal
    transformer are 9.2 M tunable, the paper's 13 M also holding the (not deployed) text
    adapters. class_rule "difference": logit_c = (cos(v, pos_c) − cos(v, neg_c)) / τ, the
    margin the positive/negative prompt pair is trained to open, which also cancels the shared
    prompt stem in both embeddings; "positive" is DFER-CLIP's rule (negatives unused).
    landmark_layers 4, shared frozen blocks, landmark_temporal "shared" (the video's temporal
    module pools the landmark frames too): a tower of 4 adapted layers plus its own patch
    embedding is 3.0 M tunable, half the paper's 6 M (19 M − 13 M) for the parsing + landmark
    towers; "own" gives the tower a temporal module of its own (+2.1 M). adapter_scale 0.5: the
    paper's best s. parallel_adapter_skip False: AIM's MLP adapter has none (a skip there only
    adds s·h). mlp_activation "quick_gelu": OpenAI's CLIP (open_clip's own ViT-B-16: "gelu").
    """

    CONFIG_NAME = "FineCLIPER"

    variant: str = "base"
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    output_dim: int = 512
    mlp_activation: str = "quick_gelu"  # OpenAI CLIP; open_clip's own-trained ViT-B-16 uses "gelu"
    num_frames: int = 16
    frame_stride: int = 4
    adapter_reduction: int = 4
    adapter_scale: float = 0.5
    parallel_adapter_skip: bool = False
    temporal: str = "transformer"
    temporal_layers: int = 1
    temporal_heads: int = 8
    temporal_dim_head: int = 64
    temporal_mlp_dim: int = 1024
    temperature: float = 0.01
    class_rule: str = "difference"
    labels: tuple[str, ...] = DFEW_LABELS
    landmark_layers: int = 4
    landmark_shares_frozen: bool = True
    landmark_temporal: str = "shared"

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        if self.variant == "parsing":
            raise ValueError(PARSING_UNAVAILABLE)
        choices = {"variant": VARIANTS[:2], "temporal": TEMPORAL_MODES, "class_rule": CLASS_RULES,
                   "mlp_activation": MLP_ACTIVATIONS, "landmark_temporal": ("shared", "own")}  # fmt: skip
        problems = [f"{k} must be one of {', '.join(v)}, got {getattr(self, k)!r}" for k, v in choices.items()
                    if getattr(self, k) not in v]  # fmt: skip
        if self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.adapter_reduction < 1 or self.width % self.adapter_reduction:
            problems.append(f"the adapter bottleneck: width {self.width} is not divisible by adapter_reduction "
                            f"{self.adapter_reduction}")  # fmt: skip
        if self.num_frames < 1 or self.frame_stride < 1:
            problems.append(f"num_frames {self.num_frames} and frame_stride {self.frame_stride} must be ≥ 1")
        if self.variant == "landmarks" and not 1 <= self.landmark_layers <= self.layers:
            problems.append(f"landmark_layers {self.landmark_layers} must lie in 1..layers ({self.layers})")
        if not self.labels or self.temperature <= 0:
            problems.append(f"labels must not be empty and temperature {self.temperature} must be > 0")
        if problems:
            raise ValueError("invalid FineCLIPER config: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def bottleneck(self) -> int:
        return self.width // self.adapter_reduction

    @property
    def num_classes(self) -> int:
        return len(self.labels)


class Attention(nn.Module):
    """nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj), batch-first, in plain ops."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (width // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """CLIP's MLP: c_fc → QuickGELU (or GELU) → c_proj."""

    def __init__(self, width: int, hidden: int, activation: str):
        super().__init__()
        self.activation = activation
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.c_fc(x)
        if self.activation == "quick_gelu":
            hidden = hidden * torch.sigmoid(QUICK_GELU_ALPHA * hidden)
        else:
            hidden = F.gelu(hidden)
        return self.c_proj(hidden)


class Adapter(nn.Module):
    """FC-down → GELU → FC-up (the skip, where there is one, is added by the block)."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.fc1 = nn.Linear(width, bottleneck)
        self.fc2 = nn.Linear(bottleneck, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Adapters(nn.Module):
    """One block's tunable pair: ``attn`` after self-attention, ``mlp`` parallel to the MLP."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.attn = Adapter(width, bottleneck)
        self.mlp = Adapter(width, bottleneck)
        self._packed: tuple | None = None

    def packed_weights(self, mlp: Mlp) -> tuple[torch.Tensor, ...]:
        """[c_fc | fc1], [c_proj ; fc2] and biases as gated_expert_mlp takes them, packed again
        only when a weight changed (4.7 MB per full-size block in fp32; see SparseMoE.packed_weights)."""
        linears = (mlp.c_fc, mlp.c_proj, self.mlp.fc1, self.mlp.fc2)
        if torch.is_grad_enabled() or emit_custom_op() or torch.compiler.is_compiling():
            return _pack(*linears)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for layer in linears for p in (layer.weight, layer.bias))
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, tuple(t.detach() for t in _pack(*linears)))
        return self._packed[1]


def _pack(c_fc: nn.Linear, c_proj: nn.Linear, fc1: nn.Linear, fc2: nn.Linear) -> tuple[torch.Tensor, ...]:
    w1cat = torch.cat([c_fc.weight, fc1.weight], 0).t()
    b1cat = torch.cat([c_fc.bias, fc1.bias], 0)
    w2cat = torch.cat([c_proj.weight, fc2.weight], 1).t()
    return w1cat, b1cat, w2cat, torch.stack([c_proj.bias, fc2.bias], 0)


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm block, run with a block's Adapters (None: the plain CLIP block)."""

    def __init__(self, cfg: FineCLIPERConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg.width, cfg.heads)
        self.ln_2 = nn.LayerNorm(cfg.width)
        self.mlp = Mlp(cfg.width, cfg.mlp_width, cfg.mlp_activation)
        self.scale = cfg.adapter_scale
        self.parallel_skip = cfg.parallel_adapter_skip

    def forward(self, x: torch.Tensor, adapters: Adapters | None = None, fused: bool = True,
                use_kernel: bool = False) -> torch.Tensor:  # fmt: skip
        attn = self.attn(self.ln_1(x))
        if adapters is None:
            x = x + attn
            return x + self.mlp(self.ln_2(x))
        x = x + attn + adapters.attn(attn)
        h = self.ln_2(x)
        if self.parallel_skip:
            x = x + self.scale * h
        if not fused:
            return x + self.mlp(h) + self.scale * adapters.mlp(h)
        return gated_expert_mlp(
            x, h, *adapters.packed_weights(self.mlp), num_experts=1, expert_dim=adapters.mlp.fc1.out_features,
            fixed_gates=(self.scale,), ffn_activation=self.mlp.activation, use_kernel=use_kernel,
        )  # fmt: skip


class Transformer(nn.Module):
    def __init__(self, cfg: FineCLIPERConfig, layers: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(cfg) for _ in range(layers))


class CLIPVisual(nn.Module):
    """CLIP's VisionTransformer (OpenAI names); ``forward`` takes (N, 3, H, W) images."""

    def __init__(self, cfg: FineCLIPERConfig, layers: int | None = None):
        super().__init__()
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(width**-0.5 * torch.randn(width))
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(cfg.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(cfg, cfg.layers if layers is None else layers)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(width**-0.5 * torch.randn(width, cfg.output_dim))

    def embed(self, images: torch.Tensor, conv1: nn.Conv2d | None = None) -> torch.Tensor:
        """Patch tokens (through ``conv1`` or a tower's own patch embedding), class token, positions, ln_pre."""
        tokens = (conv1 if conv1 is not None else self.conv1)(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls, tokens], 1) + self.positional_embedding.to(tokens.dtype))

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.ln_post(tokens[:, 0]) @ self.proj

    def forward(self, images: torch.Tensor, adapters=None, fused: bool = True, use_kernel: bool = False,
                conv1: nn.Conv2d | None = None) -> torch.Tensor:  # fmt: skip
        """(N, 3, H, W) → (N, output_dim) features; adapters: one Adapters per block run (or None)."""
        tokens = self.embed(images, conv1)
        blocks = self.transformer.resblocks
        if adapters is not None:
            blocks = blocks[: len(adapters)]
        for i, block in enumerate(blocks):
            tokens = block(tokens, None if adapters is None else adapters[i], fused=fused, use_kernel=use_kernel)
        return self.head(tokens)
