"""FineCLIPER (models/finecliper*.py): plain-CLIP equivalence, the fused adapter, CLIP weight
namings, our checkpoint format, options, parameter counts and MACs.

Tolerances (fp32): frame features 1e-5 (observed ≤ 2e-6 on O(1) features: one reassociated
sum per op; a one-element change of any block moves them by > 1e-3); logits are cosines / 0.01
and carry 100× that rounding, so logit comparisons use 1e-4 (observed ≤ 2e-5).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import models
from models import clip_weights, finecliper
from models.checkpoint import CheckpointError
from models.demo_checkpoint import write_demo_checkpoint
from models.finecliper_cost import cost
from models.finecliper_vit import FineCLIPERConfig
from tests.conftest import assert_close
from tests.test_loader import assert_one_line_error, run_cli

SMALL = finecliper.SMALL_CONFIG  # the same code paths as ViT-B/16 × 16 frames at a few ms per forward
SMALL_LANDMARKS = {**SMALL, "variant": "landmarks", "landmark_layers": 1}
FEATURES = 1e-5
LOGITS = 1e-4


def small(seed: int = 0, **overrides) -> finecliper.FineCLIPER:
    torch.manual_seed(seed)
    return finecliper.build_model({**SMALL, **overrides})


def clip_input(batch: int = 2, seed: int = 1, frames: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def plain_clip_visual(state: dict[str, torch.Tensor], images: torch.Tensor, heads: int) -> torch.Tensor:
    """CLIP's VisionTransformer.forward written from OpenAI's code, on its own state_dict:
    conv1 → class token + positions → ln_pre → pre-norm blocks (nn.MultiheadAttention,
    QuickGELU MLP) → ln_post on the class token → proj."""
    width = state["conv1.weight"].shape[0]
    x = F.conv2d(images, state["conv1.weight"], stride=state["conv1.weight"].shape[-1])
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    x = torch.cat([state["class_embedding"] + torch.zeros(x.shape[0], 1, width), x], dim=1)
    x = F.layer_norm(x + state["positional_embedding"], (width,), state["ln_pre.weight"], state["ln_pre.bias"])
    x = x.permute(1, 0, 2)  # NLD → LND, as OpenAI's Transformer runs
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    for i in range(layers):
        p = {k.split(f"resblocks.{i}.", 1)[1]: v for k, v in state.items() if k.startswith(f"transformer.resblocks.{i}.")}
        attn = nn.MultiheadAttention(width, heads)
        attn.load_state_dict({k[5:]: v for k, v in p.items() if k.startswith("attn.")})
        h = F.layer_norm(x, (width,), p["ln_1.weight"], p["ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (width,), p["ln_2.weight"], p["ln_2.bias"])
        h = F.linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    x = F.layer_norm(x.permute(1, 0, 2)[:, 0], (width,), state["ln_post.weight"], state["ln_post.bias"])
    return x @ state["proj"]


def openai_state(model: finecliper.FineCLIPER) -> dict[str, torch.Tensor]:
    """A CLIP state_dict in OpenAI naming: the model's visual tower plus text-side keys to drop."""
    state = {f"visual.{k}": v.clone() for k, v in model.visual.state_dict().items()}
    state.update({"logit_scale": torch.tensor(4.6), "token_embedding.weight": torch.zeros(10, 32)})
    return state


def test_zero_adapters_give_the_plain_clip_visual_forward():
    model = finecliper.zero_adapters(small())
    clip = clip_input()
    frames = clip.transpose(1, 2).flatten(0, 1)
    state = {k: v.detach() for k, v in model.visual.state_dict().items()}
    with torch.no_grad():
        ours = model.frame_features(clip).flatten(0, 1)
        expected = plain_clip_visual(state, frames, heads=2)
        assert_close(ours, expected, atol=FEATURES, name="zero adapters vs plain CLIP")
        # The same check fails for trained (non-zero) adapters and for a perturbed frozen weight.
        assert (small().frame_features(clip).flatten(0, 1) - expected).abs().max() > 1e-3
        state["transformer.resblocks.1.mlp.c_proj.bias"] = state["transformer.resblocks.1.mlp.c_proj.bias"].clone()
        state["transformer.resblocks.1.mlp.c_proj.bias"][0] += 0.05  # one element: ln_post removes a uniform shift
        assert (plain_clip_visual(state, frames, heads=2) - ours).abs().max() > 1e-3


@pytest.mark.parametrize("overrides", [{}, {"parallel_adapter_skip": True}, {"mlp_activation": "gelu"}])
def test_fused_adapter_equals_unfused(overrides):
    model = small(**overrides)
    clip = clip_input()
    with torch.no_grad():
        fused = model(clip)
        model.fuse_adapter = False
        unfused = model(clip)
        assert_close(fused, unfused, atol=LOGITS, name="fused vs unfused logits")
        # A changed adapter weight must reach the fused op (its packed copy is cached).
        model.adapters["video"][0].mlp.fc2.bias += 0.05 * torch.randn(64, generator=torch.Generator().manual_seed(0))
        model.fuse_adapter = True
        assert (model(clip) - fused).abs().max() > 1e-2


def test_openai_and_open_clip_named_weights_load_strictly():
    source = small(seed=4)
    openai = openai_state(source)
    assert len([k for k in openai if k.startswith("visual.")]) == 8 + 12 * 2  # ViT-B/16: 8 + 12 · 12 = 152
    timm = {"visual.trunk.cls_token": source.visual.class_embedding.reshape(1, 1, -1),
            "visual.trunk.pos_embed": source.visual.positional_embedding[None],
            "visual.trunk.patch_embed.proj.weight": source.visual.conv1.weight,
            "visual.trunk.norm_pre.weight": source.visual.ln_pre.weight, "visual.trunk.norm_pre.bias": source.visual.ln_pre.bias,
            "visual.trunk.norm.weight": source.visual.ln_post.weight, "visual.trunk.norm.bias": source.visual.ln_post.bias,
            "visual.head.proj.weight": source.visual.proj.t()}  # fmt: skip
    names = {v: k for k, v in clip_weights._TIMM_BLOCK.items()}
    for key, value in source.visual.transformer.state_dict().items():
        index, rest = key.split(".", 2)[1:]
        timm[f"visual.trunk.blocks.{index}.{names[rest]}"] = value
    clip = clip_input()
    with torch.no_grad():
        expected = source.frame_features(clip)
        for naming, state in (("openai", openai), ("open_clip_timm", timm)):
            assert clip_weights.naming_of(state) == naming
            target = small(seed=9)
            finecliper.load_clip_visual(target, state)
            target.adapters.load_state_dict(source.adapters.state_dict())
            target.temporal.load_state_dict(source.temporal.state_dict())
            assert_close(target.frame_features(clip), expected, atol=FEATURES, name=naming)
    assert finecliper.config_from_clip_visual(openai) == {
        "width": 64, "patch_size": 16, "image_size": 32, "layers": 2, "heads": 1, "output_dim": 32, "mlp_ratio": 4.0}
    own = small(**{k: v for k, v in SMALL_LANDMARKS.items() if k not in SMALL}, landmark_shares_frozen=False)
    finecliper.load_clip_visual(own, openai)  # the landmark tower's frozen copy of block 0 comes along
    assert torch.equal(own.landmark.visual.transformer.resblocks[0].attn.in_proj_weight,
                       source.visual.transformer.resblocks[0].attn.in_proj_weight)  # fmt: skip
    del openai["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match="1 missing .*resblocks.1.mlp.c_fc.bias"):
        finecliper.load_clip_visual(small(), openai)
    timm["visual.trunk.blocks.0.ls1.gamma"] = torch.ones(64)  # a layer-scale ViT has no CLIP counterpart
    with pytest.raises(CheckpointError, match="no CLIP counterpart.*ls1.gamma"):
        clip_weights.visual_state(timm)


def test_our_format_round_trips_through_models_load(tmp_path):
    for config in (SMALL, SMALL_LANDMARKS, {**SMALL, "temporal": "mean", "class_rule": "positive"}):
        path = write_demo_checkpoint("finecliper", tmp_path / "fc.pth", seed=2, config=config)
        loaded = models.load(path)
        assert loaded.family == "finecliper" and loaded.untrained and loaded.demo == "random"
        assert {k: loaded.config[k] for k in config} == json.loads(json.dumps(config))
        raw = torch.load(path, weights_only=True)
        unknowable = ("heads", "temporal_heads", "temporal_dim_head", "temporal_mlp_dim", "class_rule", "num_frames")
        hints = {k: config[k] for k in unknowable if k in config}
        assert finecliper.config_from_state_dict(raw["model"], hints) == loaded.config  # without the metadata
    assert all(key in raw["model"] for key in finecliper.SIGNATURE)
    assert models.detect_family(raw["model"]) == "finecliper"


def test_demo_cli_with_clip_visual(tmp_path):
    source = small(seed=6)
    weights = tmp_path / "clip.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in openai_state(source).items()}}, weights)  # open_clip's wrapper
    out = tmp_path / "fc.pth"
    config = {k: v for k, v in SMALL.items() if k not in ("width", "layers", "image_size", "output_dim")}
    proc = run_cli("models.demo_checkpoint", "--family", "finecliper", "--clip-visual", str(weights),
                   "--config", json.dumps({**config, "heads": 2}), "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "random unit vectors as class embeddings" in proc.stdout and "warning" not in proc.stderr
    loaded = models.load(out)
    assert torch.equal(loaded.model.visual.conv1.weight, source.visual.conv1.weight)
    proc = run_cli("models.demo_checkpoint", "--family", "s4d", "--clip-visual", str(weights), "-o", str(out))
    assert_one_line_error(proc, "--clip-visual is for the finecliper family")


def test_landmarks_variant_fuses_two_towers():
    model = small(**{k: v for k, v in SMALL_LANDMARKS.items() if k not in SMALL})
    clip, renderings = clip_input(), clip_input(seed=5)
    with torch.no_grad():
        both = model(clip, renderings)
        assert both.shape == (2, 7)
        assert (model(clip, clip_input(seed=6)) - both).abs().max() > 1e-3  # the renderings matter
        model.fuse_adapter = False
        assert_close(model(clip, renderings), both, atol=LOGITS, name="landmarks fused vs unfused")
    with pytest.raises(ValueError, match="needs landmark renderings"):
        model(clip)
    with pytest.raises(ValueError, match="takes no landmark renderings"):
        small()(clip, renderings)


def test_bad_options_fail_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"adapter bottleneck: width 64 is not divisible by adapter_reduction 5"):
        finecliper.build_model({**SMALL, "adapter_reduction": 5})
    with pytest.raises(ValueError, match=r"^variant 'parsing' needs face-parsing maps .* no face-parsing model ships"):
        finecliper.build_model({**SMALL, "variant": "parsing"})
    with pytest.raises(ValueError, match="unknown FineCLIPER config field.*bottleneck"):
        finecliper.build_model({**SMALL, "bottleneck": 16})
    path = write_demo_checkpoint("finecliper", tmp_path / "fc.pth", seed=0, config=SMALL)
    with pytest.raises(ValueError, match=r"built for 3 frames \(its temporal transformer has 4 positions\); num_frames=8"):
        models.load(path, num_frames=8)
    with pytest.raises(ValueError, match=r"FineCLIPER expects clip \(B, 3, 3, 32, 32\); got \(1, 3, 8, 32, 32\)"):
        models.load(path).model(clip_input(1, frames=8))
    mean = write_demo_checkpoint("finecliper", tmp_path / "mean.pth", seed=0, config={**SMALL, "temporal": "mean"})
    assert models.load(mean, num_frames=8).spec.frames == 8  # mean pooling fixes no clip length
    with pytest.raises(ValueError, match="option router_mode is accepted only by s4d models, not by this finecliper"):
        models.load(path, router_mode="deploy")
    proc = run_cli("models.demo_checkpoint", "--family", "finecliper", "--config", json.dumps({"variant": "parsing"}),
                   "-o", str(tmp_path / "p.pth"))  # fmt: skip
    assert_one_line_error(proc, "variant 'parsing' needs face-parsing maps")


@pytest.mark.parametrize("overrides", [{}, SMALL_LANDMARKS, {**SMALL_LANDMARKS, "landmark_shares_frozen": False,
                                       "landmark_temporal": "own"}, {"temporal": "mean", "class_rule": "positive"}])
def test_parameter_and_mac_formulas_match_a_built_model(overrides):
    model = small(**overrides)
    model.fuse_adapter = False  # the fused op adds a (tokens × 1 × width) gate·bias matmul of its own
    counted = cost(model.cfg)
    assert sum(p.numel() for p in model.parameters()) == counted.total_params
    frozen = sum(p.numel() for name, p in model.named_parameters() if name.startswith(("visual.", "landmark.visual.")))
    assert frozen == counted.frozen_params
    clip = clip_input(1)
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        model(clip, clip_input(1, seed=3)) if model.cfg.variant == "landmarks" else model(clip)
    assert flops.get_total_flops() == 2 * counted.macs_per_clip


def test_full_size_counts_against_the_paper():
    """ViT-B/16, 16 frames at 224: 86.2 M frozen; tunable 9.2 M (base: adapters 7.1 M + temporal
    2.1 M; the paper's 13 M also holds text adapters, not deployed) and 12.2 M with the landmark
    tower (+3.0 M; the paper's + 6 M covers parsing and landmarks); 303 / 406 GMACs per clip."""
    base, landmarks = cost(FineCLIPERConfig()), cost(FineCLIPERConfig(variant="landmarks"))
    assert base.frozen_params == 86_192_640  # CLIP ViT-B/16's image tower with its projection
    assert (base.tunable_params, landmarks.tunable_params) == (9_211_392, 12_168_194)
    assert round(base.macs_per_clip / 1e9, 1) == 303.4 and round(landmarks.macs_per_clip / 1e9, 1) == 405.7
    with torch.device("meta"):
        built = finecliper.FineCLIPER(FineCLIPERConfig(variant="landmarks"))
    assert sum(p.numel() for p in built.parameters()) == landmarks.total_params


def test_spec_and_class_rules():
    model = small()
    spec = model.spec
    assert (spec.family, spec.frames, spec.height, spec.frame_stride, spec.clip_merge) == ("finecliper", 3, 32, 4, "softmax")
    assert spec.mean == finecliper.CLIP_MEAN and spec.labels[0] == "happy"
    features = torch.randn(4, 32)
    with torch.no_grad():
        difference = model.text(features)
        model.text.rule = "positive"
        positive = model.text(features)
    video = F.normalize(features, dim=-1)
    pos, neg = F.normalize(model.text.positive, dim=-1), F.normalize(model.text.negative, dim=-1)
    assert_close(positive, video @ pos.t() / 0.01, atol=LOGITS, name="positive rule")
    assert_close(difference, (video @ pos.t() - video @ neg.t()) / 0.01, atol=LOGITS, name="difference rule")


def test_block_packing_feeds_the_triton_kernel():
    """A block's packed [c_fc | fc1], [c_proj ; fc2] through the fixed-gates QuickGELU kernel
    (Triton's interpreter on the CPU, compiled on CUDA) equals the unfused block MLP + s · adapter."""
    from kernels._triton import interpreting, triton
    from kernels.gated_expert_mlp import gated_expert_mlp_triton

    if triton is None:
        pytest.skip("Triton is not installed (the `kernels` extra)")
    device = "cpu" if interpreting() else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)")
    model = small()
    block, adapters = model.visual.transformer.resblocks[0], model.adapters["video"][0]
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        h = block.ln_2(x)
        expected = x + block.mlp(h) + 0.5 * adapters.mlp(h)
        weights = [w.to(device) for w in adapters.packed_weights(block.mlp)]
        got = gated_expert_mlp_triton(x.to(device), h.to(device), *weights, num_experts=1, expert_dim=16,
                                      fixed_gates=(0.5,), ffn_activation="quick_gelu")  # fmt: skip
    assert_close(got.cpu(), expected, atol=FEATURES, name="kernel vs unfused block")

