"""FineCLIPER (ACM MM 2024, arXiv 2407.02157), built from the paper: no code or weights exist.

A frozen CLIP ViT-B/16 encodes every frame with two adapters per block (models/finecliper_vit.py),
a temporal module pools the frames, and the clip feature is compared with stored positive and
negative class embeddings (models/finecliper_head.py). Variant ``landmarks`` adds the landmark
tower, fed landmark renderings (runtime/landmarks.py: MediaPipe's 468-point face mesh), and
fuses the two towers' logits with learned weights; ``parsing`` fails (no face-parsing model
in reach). Video-LLaVA's fine-grained text (the † variants) runs a video LLM per clip and is
out of scope for a camera runtime. Every unknown is a FineCLIPERConfig field (its docstring says
the defaults and why).

Checkpoint format (ours, detected by ``models.load``): ``{'model': state_dict, 'dfer_meta':
{'family': 'finecliper', 'config': {...}}}``; the state_dict holds ``visual.*`` under OpenAI
CLIP's names (frozen), ``adapters.video.N.{attn,mlp}.{fc1,fc2}.*``, ``temporal.video.*`` (for
the transformer pooling), ``text.positive`` / ``text.negative`` (classes × 512), and for
``landmarks`` ``landmark.conv1.weight``, ``adapters.landmark.N.*``, ``fusion.logits`` (and
``temporal.landmark.*``, ``landmark.visual.*`` where the config gives the tower its own).
CLIP weights in OpenAI or open_clip naming load through ``load_clip_visual``
(models/clip_weights.py).
"""

from __future__ import annotations

import torch
from torch import nn

from models import clip_weights
from models.checkpoint import CheckpointError, load_strict
from models.finecliper_head import ClassEmbeddings, Fusion, LandmarkTower, TemporalPool, adapter_stack
from models.finecliper_vit import CLIPVisual, FineCLIPERConfig
from runtime.spec import ModelSpec

FAMILY = "finecliper"
SIGNATURE: tuple[str, ...] = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "adapters.video.0.mlp.fc1.weight",
    "text.positive",
    "text.negative",
)
# OpenAI CLIP's image normalisation (clip/clip.py _transform).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# A reduced config for fast tests and benchmarks (the code paths of ViT-B/16 × 16 frames at a
# few ms per clip): width 64, 2 blocks, 32×32 frames (2×2 patches), 3 frames.
SMALL_CONFIG = {"image_size": 32, "width": 64, "layers": 2, "heads": 2, "output_dim": 32, "num_frames": 3,
                "temporal_heads": 2, "temporal_dim_head": 16, "temporal_mlp_dim": 64}  # fmt: skip


class FineCLIPER(nn.Module):
    """Clip (B, 3, T, H, W) [+ landmark renderings of the same shape] → (B, classes) logits."""

    def __init__(self, config: FineCLIPERConfig | None = None, fuse_adapter: bool = True, use_kernels: bool = False):
        super().__init__()
        cfg = config or FineCLIPERConfig()
        self.cfg = cfg
        self.fuse_adapter, self.use_kernels = bool(fuse_adapter), bool(use_kernels)
        self.visual = CLIPVisual(cfg)
        self.adapters = nn.ModuleDict({"video": adapter_stack(cfg, cfg.layers)})
        self.temporal = nn.ModuleDict({"video": TemporalPool(cfg)})
        self.text = ClassEmbeddings(cfg)
        if cfg.variant == "landmarks":
            self.landmark = LandmarkTower(cfg)
            self.adapters["landmark"] = adapter_stack(cfg, cfg.landmark_layers)
            if cfg.landmark_temporal == "own":
                self.temporal["landmark"] = TemporalPool(cfg)
            self.fusion = Fusion(2)

    @property
    def config(self) -> dict:
        return self.cfg.to_dict()

    @property
    def spec(self) -> ModelSpec:
        cfg = self.cfg
        return ModelSpec(
            family=FAMILY, labels=cfg.labels, frames=cfg.num_frames, height=cfg.image_size, width=cfg.image_size,
            frame_stride=cfg.frame_stride, mean=CLIP_MEAN, std=CLIP_STD, resize="bilinear", clip_merge="softmax",
            landmarks=cfg.variant == "landmarks",
        )  # fmt: skip

    def frame_features(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, T, output_dim): the adapted image tower on every frame."""
        frames = clip.transpose(1, 2).flatten(0, 1)
        features = self.visual(frames, self.adapters["video"], fused=self.fuse_adapter, use_kernel=self.use_kernels)
        return features.unflatten(0, clip.shape[:1] + clip.shape[2:3])

    def forward(self, clip: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        self._check(clip, "clip")
        logits = self.text(self.temporal["video"](self.frame_features(clip)))
        if self.cfg.variant == "base":
            if landmarks is not None:
                raise ValueError("the base FineCLIPER takes no landmark renderings (variant 'landmarks' does)")
            return logits
        if landmarks is None:
            raise ValueError("the landmarks FineCLIPER needs landmark renderings (runtime.landmarks) beside the clip")
        self._check(landmarks, "landmark renderings")
        frames = landmarks.transpose(1, 2).flatten(0, 1)
        features = self.landmark(frames, self.visual, self.adapters["landmark"], self.fuse_adapter, self.use_kernels)
        features = features.unflatten(0, landmarks.shape[:1] + landmarks.shape[2:3])
        pool = self.temporal["landmark" if self.cfg.landmark_temporal == "own" else "video"]
        return self.fusion([logits, self.text(pool(features))])

    def _check(self, x: torch.Tensor, what: str) -> None:
        cfg = self.cfg
        expected = (3, cfg.num_frames, cfg.image_size, cfg.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"FineCLIPER expects {what} (B, {', '.join(map(str, expected))}); got {tuple(x.shape)}")


def _init_weights(model: FineCLIPER) -> None:
    """Truncated-normal(0.02) Linear weights and zero biases in the adapters: random, so a demo
    exercises them (training starts from zero_adapters instead, as AIM does). The rest keeps
    PyTorch's default init: with 0.02 weights everywhere the blocks are near-identity, the class
    tokens hardly attend to the patches or frames, and a random demo's logits moved by < 0.1 %
    between unrelated clips."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("adapters."):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias) if module.bias is not None else None


def zero_adapters(model: FineCLIPER) -> FineCLIPER:
    """AIM's initialisation: every adapter's fc2 zero, so the towers start as plain CLIP."""
    with torch.no_grad():
        for stack in model.adapters.values():
            for pair in stack:
                for adapter in (pair.attn, pair.mlp):
                    adapter.fc2.weight.zero_()
                    adapter.fc2.bias.zero_()
    return model


def build_model(config: dict | None = None, *, num_frames: int | None = None, fuse_adapter: bool = True,
                use_kernels: bool = False) -> FineCLIPER:  # fmt: skip
    """A randomly initialised FineCLIPER in eval mode, with seeded unit class embeddings.

    num_frames overrides the config's, only where the weights allow it (mean pooling); the
    temporal transformer's positions fix the clip length, and another is an error."""
    cfg = FineCLIPERConfig.from_dict(config)
    if num_frames is not None and num_frames != cfg.num_frames:
        if cfg.temporal == "transformer":
            raise ValueError(
                f"this FineCLIPER was built for {cfg.num_frames} frames (its temporal transformer has "
                f"{cfg.num_frames + 1} positions); num_frames={num_frames} needs a checkpoint trained for it"
            )
        cfg = FineCLIPERConfig.from_dict({**cfg.to_dict(), "num_frames": num_frames})
    model = FineCLIPER(cfg, fuse_adapter=fuse_adapter, use_kernels=use_kernels)
    _init_weights(model)
    with torch.no_grad():  # the demo's stand-in text side: seeded random unit vectors
        for buffer in (model.text.positive, model.text.negative):
            buffer.copy_(nn.functional.normalize(torch.randn(buffer.shape), dim=-1))
    return model.eval()


def load_clip_visual(model: FineCLIPER, state_dict: dict[str, torch.Tensor]) -> FineCLIPER:
    """Load CLIP image-tower weights (OpenAI or open_clip naming) into the frozen towers, strictly."""
    state = clip_weights.visual_state(state_dict)
    load_strict(model.visual, state, "CLIP visual (FineCLIPER)")
    own = getattr(model, "landmark", None)
    if own is not None and own.visual is not None:
        keep = own.visual.state_dict()
        load_strict(own.visual, {k: v for k, v in state.items() if k in keep}, "CLIP visual (landmark tower)")
    return model


def config_from_state_dict(state_dict: dict[str, torch.Tensor], hints: dict | None = None) -> dict:
    """The FineCLIPERConfig of one of our checkpoints without its metadata: sizes from the
    shapes; what the weights cannot tell (heads, temporal heads, scale, temperature, class rule,
    labels' names, frame stride) takes the defaults unless ``hints`` gives it. A contradicting hint is an error."""
    missing = [k for k in SIGNATURE if k not in state_dict]
    if missing:
        raise CheckpointError(f"not a FineCLIPER checkpoint: missing {', '.join(missing)}")
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    inferred = clip_weights.config_from_visual(visual)
    heads = inferred.pop("heads")  # not in the shapes: CLIP's head width 64 unless hinted
    inferred["adapter_reduction"] = inferred["width"] // state_dict["adapters.video.0.mlp.fc1.weight"].shape[0]
    classes = state_dict["text.positive"].shape[0]
    if "temporal.video.pos_embedding" in state_dict:
        inferred["num_frames"] = state_dict["temporal.video.pos_embedding"].shape[1] - 1
        inferred["temporal_layers"] = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("temporal.video.layers."))
    else:
        inferred["temporal"] = "mean"
    if "landmark.conv1.weight" in state_dict:
        inferred["variant"] = "landmarks"
        inferred["landmark_layers"] = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("adapters.landmark."))
        inferred["landmark_shares_frozen"] = not any(k.startswith("landmark.visual.") for k in state_dict)
        inferred["landmark_temporal"] = "own" if any(k.startswith("temporal.landmark.") for k in state_dict) else "shared"
    hints = {k: list(v) if isinstance(v, tuple) else v for k, v in (hints or {}).items()}
    clashes = [f"{k}={hints[k]!r} (weights say {v!r})" for k, v in inferred.items() if k in hints and hints[k] != v]
    if clashes:
        raise CheckpointError("FineCLIPER config hints contradict the checkpoint: " + ", ".join(clashes))
    config = {"heads": heads, **inferred, **hints}
    if "labels" not in config and classes != len(FineCLIPERConfig().labels):
        config["labels"] = [f"class_{i}" for i in range(classes)]
    return FineCLIPERConfig.from_dict(config).to_dict()


def config_from_clip_visual(state_dict: dict[str, torch.Tensor]) -> dict:
    """The config fields a CLIP image tower fixes (width, layers, patch, image size, heads, projection)."""
    return clip_weights.config_from_visual(clip_weights.visual_state(state_dict))
