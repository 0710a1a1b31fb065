"""S4D (models/s4d.py) against the fixtures recorded from the official VisionTransformerMoE.

Tolerances: the official router mode reproduces the recorded fp32 outputs to 1e-5 (observed:
bit-exact); deploy-vs-official comparisons on tokens/batches where they agree by construction use
1e-5; ONNX Runtime vs PyTorch uses 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch

from models import s4d
from models.checkpoint import CheckpointError, load_strict
from runtime.spec import DFEW_LABELS, IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import assert_close, fixture_path, load_fixture

SMALL_CONFIG = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}
EXACT = 1e-5  # fp32 parity with the recorded official outputs


@pytest.fixture(scope="module")
def moae() -> dict:
    return load_fixture("s4d/moae_block.pt")


@pytest.fixture(scope="module")
def small() -> dict:
    return load_fixture("s4d/model_small.pt")


def small_model(small: dict, router_mode: str = "official", **overrides) -> s4d.S4D:
    model = s4d.build_model({**SMALL_CONFIG, **overrides}, router_mode=router_mode)
    load_strict(model, small["state_dict"], s4d.FAMILY)
    return model


def moe_from_fixture(moae: dict) -> s4d.SparseMoE:
    kw = moae["init_kwargs"]
    moe = s4d.SparseMoE(kw["in_features"], kw["hidden_features"], kw["num_experts"], kw["top_k"], kw["capacity_factor"])
    moe.load_state_dict({k: v.float() for k, v in moae["state_dict"].items()})
    return moe.eval()


def set_noise(model: s4d.S4D, noises) -> None:
    for moe, noise in zip(model.moe_modules, noises, strict=True):
        moe.router_noise = noise


def dropped_tokens(topk_indices: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """(B, N) mask of tokens that lost at least one expert to the capacity limit (official rule)."""
    flat = topk_indices.reshape(-1, topk_indices.shape[-1])
    dropped = torch.zeros(flat.shape[0], dtype=torch.bool)
    for e in range(num_experts):
        takers = (flat == e).any(-1).nonzero().squeeze(1)  # in flattened (b, n) order
        dropped[takers[capacity:]] = True
    return dropped.view(topk_indices.shape[:-1])


def at_rows(tokens: torch.Tensor, moae: dict) -> torch.Tensor:
    """The fixture's token rows of a (B, N, ...) tensor: every token that capacity drops and a
    sample of kept ones, the rows its outputs were stored for (tests/fixtures/README.md)."""
    return tokens.flatten(0, 1)[moae["rows"]]


# ---------------------------------------------------------------- full size (vitmoe_base_patch16_160)


def official_keys() -> list:
    return json.loads(fixture_path("s4d/state_dict_keys.json").read_text())


def test_state_dict_reproduces_the_380_official_keys():
    model = s4d.S4D()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == official_keys()
    assert model.pos_embed.shape == (1, 800, 768)


@pytest.mark.slow
def test_full_size_strict_load_and_forward_in_both_modes():
    gen = torch.Generator().manual_seed(0)
    state = {k: 0.02 * torch.randn(shape, generator=gen) for k, shape, _ in official_keys()}
    model = s4d.build_model()
    load_strict(model, state, s4d.FAMILY)
    clip = torch.randn(1, 3, 16, 160, 160, generator=gen)
    for mode in s4d.ROUTER_MODES:
        model.router_mode = mode
        with torch.no_grad():
            logits = model(clip)
        assert logits.shape == (1, 7) and torch.isfinite(logits).all(), mode


# ---------------------------------------------------------------- one MoE layer (blocks[6].moe_layer)


def test_moe_layer_official_with_recorded_noise(moae):
    moe = moe_from_fixture(moae)
    moe.router_mode, moe.router_noise = "official", moae["router_noise"]
    x = moae["inputs"][0].float()
    with torch.no_grad():
        probs, indices = moe.router(x, moae["router_noise"])
        out = moe(x)
    assert_close(probs, moae["intermediates"]["router_probs"], atol=EXACT, name="router_probs")
    assert torch.equal(indices, moae["intermediates"]["topk_indices"])
    assert s4d.expert_capacity(2 * 800, 8, 2, 1.0) == moae["intermediates"]["expert_capacity"] == 400
    assert_close(at_rows(out, moae), moae["outputs"][0], atol=EXACT, name="moe output")


def test_moe_layer_official_with_zero_noise(moae):
    moe = moe_from_fixture(moae)
    moe.router_mode, moe.router_noise = "official", torch.zeros(())
    x = moae["inputs"][0].float()
    with torch.no_grad():
        probs, indices = moe.router(x, torch.zeros(()))
        out = moe(x)
    assert_close(probs, moae["intermediates_zero_noise"]["router_probs"], atol=EXACT, name="router_probs")
    assert torch.equal(indices, moae["intermediates_zero_noise"]["topk_indices"])
    assert_close(at_rows(out, moae), moae["outputs_zero_noise"][0], atol=EXACT, name="moe output (zero noise)")


def test_official_router_draws_fresh_noise_even_in_eval(moae):
    moe = moe_from_fixture(moae)
    moe.router_mode = "official"
    x = moae["inputs"][0].float()[:, :64]
    with torch.no_grad():
        assert not torch.equal(moe(x), moe(x))


def test_moe_layer_deploy_matches_official_except_on_dropped_tokens(moae):
    """Deploy has no capacity: it equals the zero-noise official output wherever nothing was dropped."""
    moe = moe_from_fixture(moae)
    x = moae["inputs"][0].float()
    dropped = dropped_tokens(moae["intermediates_zero_noise"]["topk_indices"], 8, capacity=400)
    assert int(dropped.sum()) > 0 and at_rows(dropped, moae).sum() == dropped.sum()  # the rows hold every one
    dropped = at_rows(dropped, moae)
    with torch.no_grad():
        out = at_rows(moe.forward_deploy(x), moae)
    expected = moae["outputs_zero_noise"][0]
    assert_close(out[~dropped], expected[~dropped], atol=EXACT, name="deploy on kept tokens")
    gap = (out[dropped] - expected[dropped]).abs().amax(-1)
    assert (gap > 1e-3).all(), "a dropped token should lose an expert's contribution in the official output"


def test_fused_block_path_matches_the_moe_layer(moae):
    """The deploy block's single gated_expert_mlp call: with a zero MLP and x = 0 it is the MoE alone."""
    cfg = s4d.S4DConfig(moe_layers=(0,), depth=1)
    block = s4d.Block(cfg, use_moe=True).eval()
    block.moe_layer.load_state_dict(moe_from_fixture(moae).state_dict())
    for p in block.mlp.parameters():
        torch.nn.init.zeros_(p)
    h = moae["inputs"][0].float()
    dropped = dropped_tokens(moae["intermediates_zero_noise"]["topk_indices"], 8, capacity=400)
    with torch.no_grad():
        out = block.fused_mlp_moe(torch.zeros_like(h), h)
        reference = block.moe_layer.forward_deploy(h)
    assert_close(out, reference, atol=EXACT, name="fused vs deploy MoE")
    out, dropped, expected = at_rows(out, moae), at_rows(dropped, moae), moae["outputs_zero_noise"][0]
    assert_close(out[~dropped], expected[~dropped], atol=EXACT, name="fused vs official on kept tokens")


# ---------------------------------------------------------------- reduced full model (model_small.pt)


def test_pos_embed_is_the_official_sinusoid_table(small):
    model = small_model(small)
    assert_close(model.pos_embed, small["pos_embed"], atol=1e-6, name="pos_embed")
    assert "pos_embed" not in model.state_dict()


def test_small_model_official_reproduces_recorded_logits(small):
    model = small_model(small)
    set_noise(model, small["router_noise"])
    with torch.no_grad():
        assert_close(model(small["input"]), small["logits"], atol=EXACT, name="logits")
        set_noise(model, [torch.zeros(())] * 2)
        assert_close(model(small["input"]), small["logits_zero_noise"], atol=EXACT, name="logits (zero noise)")


def test_small_model_deploy_equals_official_without_capacity_limit(small):
    """Deploy = official with ε = 0 once capacity can no longer drop tokens."""
    deploy = small_model(small, router_mode="deploy")
    unlimited = small_model(small, capacity_factor=1e6)
    set_noise(unlimited, [torch.zeros(())] * 2)
    with torch.no_grad():
        assert_close(deploy(small["input"]), unlimited(small["input"]), atol=EXACT, name="deploy vs official")


def test_deploy_is_batch_independent_official_is_not(small):
    deploy = small_model(small, router_mode="deploy")
    official = small_model(small)
    set_noise(official, [torch.zeros(())] * 2)
    batch = torch.cat([small["input"], torch.randn(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(3))])
    with torch.no_grad():
        assert_close(deploy(batch[1:2])[0], deploy(batch)[1], atol=1e-5, name="deploy alone vs in batch")
        assert not torch.allclose(official(batch[1:2])[0], official(batch)[1], atol=1e-4)


def test_image_input_uses_image_head_on_a_two_frame_clip(small):
    """Official PadIm2Video: an image is repeated to tubelet_size frames, pos rows of the first slot."""
    model = small_model(small, router_mode="deploy")
    two_frames = small_model(small, router_mode="deploy", num_frames=2)
    two_frames.head["video"].load_state_dict(model.head["image"].state_dict())
    image = small["input"][:, :, 0]
    with torch.no_grad():
        logits = model(image)
        expected = two_frames(image.unsqueeze(2).repeat(1, 1, 2, 1, 1))
    assert_close(logits, expected, atol=1e-6, name="image logits")


def test_wrong_input_shape_is_a_clear_error(small):
    model = small_model(small)
    with pytest.raises(ValueError, match="S4D expects a clip"):
        model(torch.zeros(1, 3, 8, 64, 64))


def test_deploy_exports_to_onnx_with_dynamic_batch(small):
    ort = pytest.importorskip("onnxruntime")
    from kernels import onnx_custom_ops

    model = small_model(small, router_mode="deploy")
    batch = torch.export.Dim("batch", min=1, max=64)
    with onnx_custom_ops(False), torch.no_grad():
        program = torch.onnx.export(model, (small["input"],), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert not ops & {"NonZero", "ScatterND", "ScatterElements", "If", "Loop"}, ops
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for size in (1, 3):
        clip = torch.randn(size, 3, 16, 64, 64, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            expected = model(clip)
        assert_close(session.run(None, {name: clip.numpy()})[0], expected, atol=1e-5, name=f"ORT batch {size}")


# ---------------------------------------------------------------- API: config, spec, options


def test_config_round_trips_full_size():
    model = s4d.build_model()
    assert model.config == s4d.S4DConfig().to_dict()
    assert s4d.config_from_state_dict(model.state_dict()) == model.config
    json.dumps(model.config)


def test_config_round_trips_reduced(small):
    expected = s4d.S4DConfig.from_dict(SMALL_CONFIG).to_dict()
    # img_size and num_heads are not in the weights: they come as hints.
    hints = {"img_size": 64, "num_heads": 4}
    assert s4d.config_from_state_dict(small["state_dict"], hints) == expected
    # Without hints: the official img_size 160 and the head-dim-64 convention (64 → 1 head).
    assert s4d.config_from_state_dict(small["state_dict"]) == {**expected, "img_size": 160, "num_heads": 1}


def test_config_errors(small):
    with pytest.raises(ValueError, match="unknown S4D config field.*bogus"):
        s4d.build_model({"bogus": 1})
    with pytest.raises(ValueError, match="unknown S4D build option.*turbo"):
        s4d.build_model(SMALL_CONFIG, turbo=True)
    with pytest.raises(ValueError, match="router_mode"):
        s4d.build_model(SMALL_CONFIG, router_mode="fast")
    with pytest.raises(CheckpointError, match="embed_dim"):
        s4d.config_from_state_dict(small["state_dict"], {"embed_dim": 768})
    with pytest.raises(CheckpointError, match="not an S4D checkpoint: missing fc_norm.weight"):
        s4d.config_from_state_dict({k: v for k, v in small["state_dict"].items() if k != "fc_norm.weight"})


def test_spec_options_and_signature(small):
    model = s4d.build_model(SMALL_CONFIG, use_kernels=True)
    assert model.use_kernels and model.router_mode == "deploy" and not model.training
    spec = model.spec
    assert (spec.family, spec.labels, spec.frames, spec.height, spec.width) == ("s4d", DFEW_LABELS, 16, 64, 64)
    assert (spec.frame_stride, spec.mean, spec.std) == (4, IMAGENET_MEAN, IMAGENET_STD)
    assert (spec.resize, spec.clip_merge) == ("bilinear", "softmax")
    assert all(key in small["state_dict"] for key in s4d.SIGNATURE)
    official = {key for key, _, _ in official_keys()}
    assert isinstance(s4d.SIGNATURE, tuple) and set(s4d.SIGNATURE) <= official


def test_packed_weights_are_kept_for_inference_and_repacked_when_weights_change(small):
    model = small_model(small, router_mode="deploy")
    block = next(b for b in model.blocks if b.moe_layer is not None)
    x = small["input"]
    with torch.no_grad():
        first = model(x)
        packed = block.packed_weights()
        assert all(a is b for a, b in zip(packed, block.packed_weights()))  # no copy per forward
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state[f"{_prefix(model, block)}moe_layer.experts.0.fc2.bias"] += 0.5
        model.load_state_dict(state)  # copies in place: same storage, new version
        repacked = block.packed_weights()
        assert repacked[3] is not packed[3] and not torch.equal(repacked[3], packed[3])
        changed = model(x)
    fresh = small_model(small, router_mode="deploy")
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert_close(changed, fresh(x), atol=EXACT, name="after reload")
        assert not torch.equal(changed, first)
    # With gradients the packing stays in the graph: the expert weights get their gradients.
    model(x).sum().backward()
    assert block.moe_layer.experts[0].fc1.weight.grad is not None


def _prefix(model, block) -> str:
    index = next(i for i, b in enumerate(model.blocks) if b is block)
    return f"blocks.{index}."
