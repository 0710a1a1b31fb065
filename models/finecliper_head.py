"""FineCLIPER's parts after the frame encoder: temporal pooling, the stored class embeddings and
their similarity rule, the landmark tower and the adaptive fusion of the towers' logits.

The temporal transformer is DFER-CLIP's ``Temporal_Transformer_Cls`` (from Former-DFER): a
learned class token and positions, pre-norm blocks (attention without qkv bias, GELU MLP), the
class token's output as the clip feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.finecliper_vit import Adapters, CLIPVisual, FineCLIPERConfig


class TemporalAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.to_qkv(x).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(batch, tokens, -1))


class TemporalLayer(nn.Module):
    def __init__(self, cfg: FineCLIPERConfig):
        super().__init__()
        dim = cfg.output_dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TemporalAttention(dim, cfg.temporal_heads, cfg.temporal_dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.temporal_mlp_dim)
        self.fc2 = nn.Linear(cfg.temporal_mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TemporalPool(nn.Module):
    """(B, T, D) frame features → (B, D): the temporal transformer's class token, or the mean."""

    def __init__(self, cfg: FineCLIPERConfig):
        super().__init__()
        self.mode = cfg.temporal
        if self.mode == "transformer":
            dim = cfg.output_dim
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
            self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_frames + 1, dim))
            self.layers = nn.ModuleList(TemporalLayer(cfg) for _ in range(cfg.temporal_layers))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean":
            return frames.mean(dim=1)
        x = torch.cat([self.cls_token.expand(frames.shape[0], -1, -1), frames], 1) + self.pos_embedding
        for layer in self.layers:
            x = layer(x)
        return x[:, 0]


class ClassEmbeddings(nn.Module):
    """The label encoder's output, stored: per class the positive and the negative prompt's
    embedding (``positive``, ``negative``: (classes, D) buffers, unit-normalised in forward).

    FineCLIPER's text side is constant at deployment: a user runs the frozen CLIP text encoder
    with their trained positive and negative adapters once over "A person with an expression of
    {label}" and "A person with an expression of no {label}" and stores the results here."""

    def __init__(self, cfg: FineCLIPERConfig):
        super().__init__()
        self.rule = cfg.class_rule
        self.inv_temperature = 1.0 / cfg.temperature
        self.register_buffer("positive", torch.zeros(cfg.num_classes, cfg.output_dim))
        self.register_buffer("negative", torch.zeros(cfg.num_classes, cfg.output_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) clip features → (B, classes) logits by the class rule."""
        video = F.normalize(features, dim=-1)
        logits = video @ F.normalize(self.positive, dim=-1).t()
        if self.rule == "difference":
            logits = logits - video @ F.normalize(self.negative, dim=-1).t()
        return logits * self.inv_temperature


class LandmarkTower(nn.Module):
    """Landmark renderings → per-frame features: its own patch embedding, then the first
    ``landmark_layers`` CLIP blocks (the video encoder's frozen ones, or a frozen copy of its
    own with ``landmark_shares_frozen`` False) with adapters of its own."""

    def __init__(self, cfg: FineCLIPERConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.visual = None if cfg.landmark_shares_frozen else CLIPVisual(cfg, layers=cfg.landmark_layers)
        if self.visual is not None:
            self.visual.conv1 = None  # the tower's own patch embedding replaces the copy's

    def forward(self, images: torch.Tensor, shared: CLIPVisual, adapters, fused: bool, use_kernel: bool) -> torch.Tensor:
        visual = shared if self.visual is None else self.visual
        return visual(images, adapters, fused=fused, use_kernel=use_kernel, conv1=self.conv1)


class Fusion(nn.Module):
    """The adaptive weights that fuse the towers' logits: softmax over one learned logit per
    tower (at initialisation equal weights)."""

    def __init__(self, towers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(towers))

    def forward(self, logits: list[torch.Tensor]) -> torch.Tensor:
        weights = self.logits.softmax(0)
        return sum(w * tower for w, tower in zip(weights, logits))


def adapter_stack(cfg: FineCLIPERConfig, layers: int) -> nn.ModuleList:
    return nn.ModuleList(Adapters(cfg.width, cfg.bottleneck) for _ in range(layers))
