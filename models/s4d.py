"""S4D (github.com/MSA-LMC/S4D): the VideoMAE ViT with mixture-of-expert adapters, DFEW config.

Re-implements ``VisionTransformerMoE`` as built by ``vitmoe_base_patch16_160`` with the DFEW
fine-tuning settings (moe_type ``moe_adapters``, 8 experts, top-2, MoE in blocks 6..11), with
submodule names chosen so official checkpoints load with ``strict=True``.

The official MoE router is not deterministic: it adds fresh Gaussian noise on every forward, even
in eval, and each expert keeps only the first ``capacity`` tokens of the *whole batch*, so a
sample's logits depend on the noise and on its batch mates. Two router modes are offered:

* ``"official"``: bit-faithful to the paper's code (noise, capacity, dropping), for parity tests.
  Set ``moe.router_noise`` to a tensor to replace the sampled noise (``torch.zeros(())`` gives
  the noise-free router, the recorded fixture noise reproduces a recorded run).
* ``"deploy"`` (default): no noise and no capacity, so outputs are deterministic and
  batch-independent. The MLP + MoE half of each MoE block is one ``gated_expert_mlp`` call,
  which exports to ONNX with a dynamic batch.

The parts: models/s4d_vit.py (config, embedding, attention, blocks), models/s4d_moe.py (router,
experts, the packed deploy path); this file holds the family entry points and the whole model.
"""

from __future__ import annotations

import torch
from torch import nn

from models.checkpoint import CheckpointError
from models.s4d_moe import SparseMoE, expert_capacity, within_capacity  # noqa: F401  (re-exported)
from models.s4d_vit import LAYER_NORM_EPS, Block, PatchEmbed, S4DConfig, sinusoid_table
from runtime.spec import DFEW_LABELS, IMAGENET_MEAN, IMAGENET_STD, ModelSpec

FAMILY = "s4d"
# Keys every S4D checkpoint has, whatever its size (MoE block indices vary, so none is listed).
SIGNATURE: tuple[str, ...] = (
    "patch_embed.proj.weight",
    "blocks.0.attn.q_bias",
    "blocks.0.attn.v_bias",
    "fc_norm.weight",
    "head.image.weight",
    "head.video.weight",
)
ROUTER_MODES = ("deploy", "official")
HEAD_DIM = 64  # official sizes: 384 → 6 heads, 768 → 12, 1024 → 16


class S4D(nn.Module):
    """VisionTransformerMoE: patch embed + sinusoid positions → blocks → mean pool → fc_norm → head."""

    def __init__(self, config: S4DConfig | None = None, router_mode: str = "deploy", use_kernels: bool = False):
        super().__init__()
        cfg = config or S4DConfig()
        self.s4d_config = cfg
        self.patch_embed = PatchEmbed(cfg)
        # Fixed table, not a parameter: official checkpoints do not contain it.
        self.register_buffer("pos_embed", sinusoid_table(cfg.num_patches, cfg.embed_dim), persistent=False)
        moe_layers = set(cfg.moe_layers)
        self.blocks = nn.ModuleList(Block(cfg, i in moe_layers) for i in range(cfg.depth))
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.ModuleDict({
            "image": nn.Linear(cfg.embed_dim, cfg.multi_head[0]),
            "video": nn.Linear(cfg.embed_dim, cfg.multi_head[1]),
        })
        self.set_router_mode(router_mode)
        self.use_kernels = use_kernels

    @property
    def use_kernels(self) -> bool:
        """Run the MoE blocks' deploy path as Triton kernels when on CUDA."""
        return self._use_kernels

    @use_kernels.setter
    def use_kernels(self, enabled: bool) -> None:
        self._use_kernels = bool(enabled)
        for block in self.blocks:
            block.use_kernels = self._use_kernels

    @property
    def config(self) -> dict:
        return self.s4d_config.to_dict()

    @property
    def spec(self) -> ModelSpec:
        cfg = self.s4d_config
        labels = DFEW_LABELS
        if cfg.num_classes != len(DFEW_LABELS):
            labels = tuple(f"class_{i}" for i in range(cfg.num_classes))
        return ModelSpec(
            family=FAMILY, labels=labels, frames=cfg.num_frames, height=cfg.img_size, width=cfg.img_size,
            frame_stride=4, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="bilinear", clip_merge="softmax",
        )

    @property
    def moe_modules(self) -> list[SparseMoE]:
        return [b.moe_layer for b in self.blocks if b.moe_layer is not None]

    @property
    def router_mode(self) -> str:
        return self._router_mode

    @router_mode.setter
    def router_mode(self, mode: str) -> None:
        self.set_router_mode(mode)

    def set_router_mode(self, mode: str) -> "S4D":
        """Switch every MoE layer between "deploy" and "official" routing."""
        if mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {mode!r}")
        self._router_mode = mode
        for moe in self.moe_modules:
            moe.router_mode = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) clip → video-head logits; (B, C, H, W) image → image-head logits."""
        head = self._check_input(x)
        if head == "image":  # PadIm2Video: the image becomes a clip of tubelet_size repeats
            x = x.unsqueeze(2).repeat(1, 1, self.s4d_config.tubelet_size, 1, 1)
        tokens = self.patch_embed(x)
        # An image has one temporal slot; the official interpolation then keeps the first frame's rows.
        tokens = tokens + self.pos_embed[:, : tokens.shape[1]].to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head[head](self.fc_norm(tokens.mean(dim=1)))

    def _check_input(self, x: torch.Tensor) -> str:
        cfg = self.s4d_config
        side = (cfg.img_size, cfg.img_size)
        if x.ndim == 5 and tuple(x.shape[1:]) == (cfg.in_chans, cfg.num_frames, *side):
            return "video"
        if x.ndim == 4 and tuple(x.shape[1:]) == (cfg.in_chans, *side):
            return "image"
        raise ValueError(
            f"S4D expects a clip (B, {cfg.in_chans}, {cfg.num_frames}, {cfg.img_size}, {cfg.img_size}) or an image "
            f"(B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}); got {tuple(x.shape)}"
        )


def _init_weights(module: nn.Module) -> None:
    """The official init: truncated-normal(0.02) Linear weights with zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(config: dict | None = None, router_mode: str = "deploy", **options) -> S4D:
    """A randomly initialised S4D in eval mode. options: use_kernels (bool)."""
    unknown = sorted(set(options) - {"use_kernels"})
    if unknown:
        raise ValueError(f"unknown S4D build option(s): {', '.join(unknown)}")
    model = S4D(S4DConfig.from_dict(config), router_mode=router_mode, **options)
    model.apply(_init_weights)
    return model.eval()


def config_from_state_dict(state_dict: dict[str, torch.Tensor], hints: dict | None = None) -> dict:
    """Infer the S4DConfig of a checkpoint from its key names and shapes.

    The weights cannot tell img_size and num_frames (pos_embed is not stored), num_heads, top_k
    or capacity_factor: those take the official values (head dim 64) unless ``hints`` gives them.
    A hint that contradicts the weights is an error.
    """
    missing = [k for k in SIGNATURE if k not in state_dict]
    if missing:
        raise CheckpointError(f"not an S4D checkpoint: missing {', '.join(missing)}")
    inferred, widths = _config_from_weights(state_dict)
    hints = {k: list(v) if isinstance(v, tuple) else v for k, v in (hints or {}).items()}
    clashes = [f"{k}={hints[k]!r} (weights say {v!r})" for k, v in inferred.items() if k in hints and hints[k] != v]
    if clashes:
        raise CheckpointError("S4D config hints contradict the checkpoint: " + ", ".join(clashes))
    dim = inferred["embed_dim"]
    if "num_heads" not in hints and dim % HEAD_DIM:
        raise CheckpointError(f"cannot infer num_heads for embed_dim {dim}; pass it in hints")
    config = S4DConfig.from_dict({"num_heads": dim // HEAD_DIM, **hints, **inferred})
    if (int(dim * config.mlp_ratio), config.expert_hidden)[: len(widths)] != widths:
        raise CheckpointError(f"S4D hidden widths {widths} are not int(embed_dim * ratio)")
    return config.to_dict()


def _config_from_weights(state_dict: dict[str, torch.Tensor]) -> tuple[dict, tuple[int, ...]]:
    """The config fields the shapes determine, and the (mlp, expert) hidden widths seen."""
    dim, in_chans, tubelet, patch, _ = state_dict["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    router = "blocks.{}.moe_layer.router.topkroute_linear.weight"
    moe_layers = [i for i in range(depth) if router.format(i) in state_dict]
    classes = [state_dict[f"head.{key}.weight"].shape[0] for key in ("image", "video")]
    widths = (state_dict["blocks.0.mlp.fc1.weight"].shape[0],)
    inferred = {
        "patch_size": patch, "in_chans": in_chans, "embed_dim": dim, "depth": depth, "tubelet_size": tubelet,
        "mlp_ratio": widths[0] / dim, "qkv_bias": "blocks.0.attn.q_bias" in state_dict,
        "moe_layers": moe_layers, "num_classes": classes[1], "multi_head": classes,
    }
    if moe_layers:
        widths += (state_dict[f"blocks.{moe_layers[0]}.moe_layer.experts.0.fc1.weight"].shape[0],)
        inferred["num_experts"] = state_dict[router.format(moe_layers[0])].shape[0]
        inferred["expert_ratio"] = widths[1] / dim
    return inferred, widths
