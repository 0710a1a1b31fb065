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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import emit_custom_op
from kernels.gated_expert_mlp import gated_expert_mlp, pack_gated_expert_weights
from models.checkpoint import CheckpointError
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
LAYER_NORM_EPS = 1e-6  # the registered models use partial(nn.LayerNorm, eps=1e-6)
HEAD_DIM = 64  # official sizes: 384 → 6 heads, 768 → 12, 1024 → 16


@dataclass(frozen=True)
class S4DConfig:
    """Architecture of one S4D model; the defaults are vitmoe_base_patch16_160 for DFEW."""

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

    @classmethod
    def from_dict(cls, data: dict | None) -> "S4DConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data or {}) - names)
        if unknown:
            raise ValueError(f"unknown S4D config field(s): {', '.join(unknown)}")
        return cls(**(data or {}))

    def to_dict(self) -> dict:
        """JSON-able (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D sin/cos table (1, N, D): sin on even channels, cos on odd ones.

    Computed in float64 and rounded once to float32, as the official numpy code does.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    even = torch.arange(dim) % 2 == 0
    return torch.where(even, angles.sin(), angles.cos()).float().unsqueeze(0)


class Mlp(nn.Module):
    """Linear → GELU → Linear (the block MLP and each expert)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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
        moe = self.moe_layer
        expert_dim = moe.experts[0].fc1.out_features
        return gated_expert_mlp(
            x, h, *self.packed_weights(), num_experts=moe.num_experts, top_k=moe.top_k, expert_dim=expert_dim,
            use_kernel=self.use_kernels,
        )  # fmt: skip

    def packed_weights(self) -> tuple[torch.Tensor, ...]:
        """The FFN, experts and router concatenated into the op's four weights.

        Packing copies ~14 MB per full-size block (fp32), so inference keeps the packed copy
        and packs again only when a weight changed (load_state_dict, .to(), .half(): a new
        storage or a bumped version counter). Training (grad needed), ONNX export and
        torch.compile tracing pack on every call, inside the graph."""
        moe = self.moe_layer
        experts = [(e.fc1, e.fc2) for e in moe.experts]
        router = moe.router.topkroute_linear
        if (torch.is_grad_enabled() and self.mlp.fc1.weight.requires_grad) or emit_custom_op() or torch.compiler.is_compiling():
            self._packed = None
            return pack_gated_expert_weights(self.mlp.fc1, self.mlp.fc2, experts, router)
        linears = [self.mlp.fc1, self.mlp.fc2, *(layer for pair in experts for layer in pair), router]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for layer in linears for p in (layer.weight, layer.bias))
        if getattr(self, "_packed", None) is None or self._packed[0] != key:
            packed = pack_gated_expert_weights(self.mlp.fc1, self.mlp.fc2, experts, router)
            self._packed = (key, tuple(t.detach() for t in packed))
        return self._packed[1]


class PatchEmbed(nn.Module):
    """Non-overlapping tubelet × patch × patch Conv3d, tokens flattened in (t, h, w) order."""

    def __init__(self, cfg: S4DConfig):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


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
