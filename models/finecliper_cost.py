"""FineCLIPER's parameter counts and multiply-accumulates per clip, computed from the config.

Computed, not measured, so the full ViT-B/16 × 16 frames needs no forward on a small CPU; the
tests check both formulas against a built reduced model (its numel, and torch's FlopCounterMode
over an unfused forward, which counts the matmuls and convolutions that these formulas count).
Elementwise work (LayerNorm, softmax, activations) is left out: < 1 % of the MACs here.

    python -m models.finecliper_cost [--variant landmarks]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from models.finecliper_vit import FineCLIPERConfig

# Tunable parameters the paper reports (M): base 13, * (+ parsing and landmark towers) 19, *† 20.
PAPER_TUNABLE_M = {"base": 13, "parsing+landmarks": 19, "parsing+landmarks+text": 20}


@dataclass(frozen=True)
class Cost:
    frozen_params: int  # the CLIP image tower(s)
    tunable_params: int  # adapters, temporal modules, the landmark patch embedding, fusion weights
    constants: int  # stored class embeddings (positive and negative)
    macs_per_clip: int

    @property
    def total_params(self) -> int:
        return self.frozen_params + self.tunable_params

    def summary(self) -> dict:
        return {**asdict(self), "total_params": self.total_params, "gmacs_per_clip": self.macs_per_clip / 1e9}


def _linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def visual_params(cfg: FineCLIPERConfig, layers: int) -> int:
    d, h = cfg.width, cfg.mlp_width
    block = 4 * d + _linear(d, 3 * d) + _linear(d, d) + _linear(d, h) + _linear(h, d)
    embed = 3 * cfg.patch_size**2 * d + d + (cfg.grid**2 + 1) * d + 2 * d
    return embed + layers * block + 2 * d + d * cfg.output_dim


def adapter_params(cfg: FineCLIPERConfig, layers: int) -> int:
    return layers * 2 * (_linear(cfg.width, cfg.bottleneck) + _linear(cfg.bottleneck, cfg.width))


def temporal_params(cfg: FineCLIPERConfig) -> int:
    if cfg.temporal == "mean":
        return 0
    o, inner, m = cfg.output_dim, cfg.temporal_heads * cfg.temporal_dim_head, cfg.temporal_mlp_dim
    layer = 4 * o + _linear(o, 3 * inner, bias=False) + _linear(inner, o) + _linear(o, m) + _linear(m, o)
    return o + (cfg.num_frames + 1) * o + cfg.temporal_layers * layer


def frame_macs(cfg: FineCLIPERConfig, layers: int) -> int:
    """One frame through the patch embedding, ``layers`` adapted blocks and the projection."""
    n, d, h, r = cfg.grid**2 + 1, cfg.width, cfg.mlp_width, cfg.bottleneck
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * h + 2 * 2 * n * d * r
    return cfg.grid**2 * d * 3 * cfg.patch_size**2 + layers * block + d * cfg.output_dim


def temporal_macs(cfg: FineCLIPERConfig) -> int:
    if cfg.temporal == "mean":
        return 0
    n, o, inner, m = cfg.num_frames + 1, cfg.output_dim, cfg.temporal_heads * cfg.temporal_dim_head, cfg.temporal_mlp_dim
    return cfg.temporal_layers * (n * o * 3 * inner + 2 * n * n * inner + n * inner * o + 2 * n * o * m)


def cost(cfg: FineCLIPERConfig) -> Cost:
    towers = [(cfg.layers, True)]
    if cfg.variant == "landmarks":
        towers.append((cfg.landmark_layers, False))
    frozen = visual_params(cfg, cfg.layers)
    tunable = adapter_params(cfg, cfg.layers) + temporal_params(cfg)
    similarity = cfg.output_dim * cfg.num_classes * (2 if cfg.class_rule == "difference" else 1)
    macs = 0
    for layers, _ in towers:
        macs += cfg.num_frames * frame_macs(cfg, layers) + temporal_macs(cfg) + similarity
    if cfg.variant == "landmarks":
        tunable += 3 * cfg.patch_size**2 * cfg.width + adapter_params(cfg, cfg.landmark_layers) + 2
        if cfg.landmark_temporal == "own":
            tunable += temporal_params(cfg)
        if not cfg.landmark_shares_frozen:  # a frozen copy of the first blocks, without its patch embedding
            frozen += visual_params(cfg, cfg.landmark_layers) - 3 * cfg.patch_size**2 * cfg.width
    return Cost(frozen, tunable, 2 * cfg.num_classes * cfg.output_dim, macs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.finecliper_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="{}", help="JSON object of FineCLIPERConfig fields")
    args = parser.parse_args(argv)
    try:
        cfg = FineCLIPERConfig.from_dict(json.loads(args.config))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"config": cfg.to_dict(), **cost(cfg).summary(), "paper_tunable_M": PAPER_TUNABLE_M}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
