"""GatedExpertMLP Triton kernels vs the PyTorch reference and the official S4D MoE fixture;
the fixed-gates mode (reference, kernels, ONNX export).

On CPU the kernels run in Triton's interpreter (tests/conftest.py); with TRITON_INTERPRET=0 on
a GPU machine the same tests run the compiled, autotuned kernels on CUDA.
"""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels._triton import interpreting, triton
from kernels.gated_expert_mlp import gated_expert_mlp, gated_expert_mlp_ref, gated_expert_mlp_triton
from kernels.gated_expert_mlp import pack_gated_expert_weights
from models.s4d import within_capacity
from tests.conftest import assert_close, assert_within_rounding, load_fixture

if triton is None:
    pytest.skip("Triton is not installed (the `kernels` extra)", allow_module_level=True)
DEVICE = "cpu" if interpreting() else "cuda"
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the model's kernel dispatch only runs on CUDA")

# (dtype, atol, rtol): atol on top of 2× the reference's own rounding (STYLE 2), one output ulp
# at |y| < 4 for fp16/bf16 (the kernel rounds the hidden and the output once each; observed
# kernel errors are ≤ 0.5× the bound). fp32: the kernels only reorder sums of ≤ 4 600 terms
# (observed ≤ 8e-7).
DTYPES = [(torch.float32, 2e-5, 0.0), (torch.float16, 2e-3, 0.0), (torch.bfloat16, 1.6e-2, 0.0)]
# (tokens, dim, ffn, experts, expert_dim, top_k): one token, odd sizes everywhere, widths that
# do not fill a tile, 1600 tokens, and S4D's own layer (768 → 3072 + 8·192 + 8) on a few tokens
# (in fp16 only under the interpreter, for time: the odd shapes cover every dtype).
SHAPES = [
    (1, 64, 128, 1, 16, 1),
    (7, 96, 160, 3, 24, 2),
    (33, 80, 200, 5, 40, 1),
    (100, 128, 256, 8, 32, 2),
    (1600, 64, 64, 8, 16, 2),
]
S4D_SHAPE = (5, 768, 3072, 8, 192, 2)
S4D_DTYPES = DTYPES if DEVICE == "cuda" else DTYPES[1:2]


def _weights(dim, ffn, num_experts, expert_dim, routed=True, seed=0):
    """Packed weights of nn.Linear layers (their default init keeps every activation O(1))."""
    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
    experts = [(nn.Linear(dim, expert_dim), nn.Linear(expert_dim, dim)) for _ in range(num_experts)]
    router = nn.Linear(dim, num_experts)
    with torch.no_grad():
        w1cat, b1cat, w2cat, b2cat = pack_gated_expert_weights(fc1, fc2, experts, router)
        if not routed:
            w1cat, b1cat = w1cat[:, :-num_experts], b1cat[:-num_experts]
    return fc1, fc2, experts, (w1cat, b1cat, w2cat, b2cat)


def _check(x, h, weights, dtype, atol, rtol, **options):
    args = [t.to(dtype).to(DEVICE) for t in (x, h, *weights)]
    kernel = gated_expert_mlp_triton(*args, **options)
    ref_lowp = gated_expert_mlp_ref(*args, **options)
    ref32 = gated_expert_mlp_ref(*(a.float() for a in args), **options)
    assert kernel.dtype == dtype and kernel.shape == x.shape
    assert_within_rounding(kernel.cpu(), ref32.cpu(), ref_lowp.float().cpu(), atol, rtol)


@pytest.mark.parametrize(
    "tokens,dim,ffn,num_experts,expert_dim,top_k,dtype,atol,rtol",
    [shape + dtype for shape in SHAPES for dtype in DTYPES] + [S4D_SHAPE + dtype for dtype in S4D_DTYPES],
    ids=lambda value: str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else None,
)
def test_kernel_matches_reference(tokens, dim, ffn, num_experts, expert_dim, top_k, dtype, atol, rtol):
    *_, weights = _weights(dim, ffn, num_experts, expert_dim)
    x, h = torch.randn(tokens, dim), torch.randn(1, tokens, dim)
    with torch.no_grad():
        options = dict(num_experts=num_experts, top_k=top_k, expert_dim=expert_dim)
        _check(x.unsqueeze(0), h, weights, dtype, atol, rtol, **options)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("gates", [(0.25,), (0.5, -1.5), (1.0, 0.0, 2.0)])
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_fixed_gates_kernel_matches_reference(gates, activation, dtype, atol, rtol):
    num_experts = len(gates)
    *_, weights = _weights(96, 192, num_experts, 24, routed=False)
    x, h = torch.randn(2, 9, 96), torch.randn(2, 9, 96)
    with torch.no_grad():
        _check(x, h, weights, dtype, atol, rtol, num_experts=num_experts, expert_dim=24, fixed_gates=gates,
               ffn_activation=activation)  # fmt: skip


def test_quick_gelu_reaches_only_the_ffn_columns():
    """CLIP's MLP (QuickGELU) beside a GELU adapter: x + c_proj(qgelu(c_fc h)) + s · up(gelu(down h)),
    in the kernel and the reference; the GELU-FFN result differs (the check can fail)."""
    fc1, fc2, experts, weights = _weights(64, 128, 1, 16, routed=False)
    (down, up), s = experts[0], 0.5
    x, h = torch.randn(3, 5, 64), torch.randn(3, 5, 64)
    options = dict(num_experts=1, expert_dim=16, fixed_gates=[s])
    with torch.no_grad():
        hidden = fc1(h)
        want = x + fc2(hidden * torch.sigmoid(1.702 * hidden)) + s * up(F.gelu(down(h)))
        got = gated_expert_mlp_ref(x, h, *weights, **options, ffn_activation="quick_gelu")
        kernel = gated_expert_mlp_triton(*(t.to(DEVICE) for t in (x, h, *weights)), **options, ffn_activation="quick_gelu")
        assert_close(got, want, atol=1e-5, name="quick_gelu reference")  # fp32, sums of ≤ 144 terms
        assert_close(kernel.cpu(), want, atol=2e-5, name="quick_gelu kernel")  # DTYPES' fp32 bound
        assert (gated_expert_mlp_ref(x, h, *weights, **options) - want).abs().max() > 1e-3  # GELU FFN: 7e-3 off
    with pytest.raises(ValueError, match="ffn_activation must be one of gelu, quick_gelu, got 'relu'"):
        gated_expert_mlp_triton(x, h, *weights, **options, ffn_activation="relu")


def test_fixed_gates_reference_is_an_adapter_beside_the_mlp():
    """FineCLIPER / AdaptFormer: x + fc2(gelu(fc1 h)) + s · up(gelu(down h)), one always-on expert."""
    fc1, fc2, experts, weights = _weights(64, 128, 1, 16, routed=False)
    (down, up), s = experts[0], 0.3
    x, h = torch.randn(3, 5, 64), torch.randn(3, 5, 64)
    with torch.no_grad():
        got = gated_expert_mlp_ref(x, h, *weights, num_experts=1, expert_dim=16, fixed_gates=[s])
        want = x + fc2(F.gelu(fc1(h))) + s * up(F.gelu(down(h)))
    assert_close(got, want, atol=1e-5, name="fixed-gates reference")  # fp32, sums of ≤ 144 terms


def test_kernel_matches_official_moe_where_no_capacity_binds():
    """Official SparseMoEWithCapacity with ε = 0, in fp32, on tokens that capacity kept.

    The fixture stores the output rows of every token that capacity drops and of a sample of
    kept ones (223 of 1600); the kernel has no capacity and computes every token on its own, so
    running it on those rows alone tests the same thing as the whole clip, and keeps the
    interpreter fast.
    """
    fixture = load_fixture("s4d/moae_block.pt")
    state = {k: v.float() for k, v in fixture["state_dict"].items()}

    def linear(prefix):
        layer = nn.Linear(*reversed(state[f"{prefix}.weight"].shape))
        layer.load_state_dict({"weight": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]})
        return layer

    experts = [(linear(f"experts.{e}.fc1"), linear(f"experts.{e}.fc2")) for e in range(8)]
    zero_fc1, zero_fc2 = nn.Linear(768, 16), nn.Linear(16, 768)  # an FFN that adds nothing
    for p in list(zero_fc1.parameters()) + list(zero_fc2.parameters()):
        nn.init.zeros_(p)
    with torch.no_grad():
        packed = pack_gated_expert_weights(zero_fc1, zero_fc2, experts, linear("router.topkroute_linear"))
    weights = [w.to(DEVICE) for w in packed]
    indices = fixture["intermediates_zero_noise"]["topk_indices"]
    rows = fixture["rows"]  # flat b·N + n
    kept = within_capacity(indices, 8, capacity=400).sum(-1).eq(2)[rows]
    h = fixture["inputs"][0].float().flatten(0, 1)[rows].unsqueeze(0).to(DEVICE)
    out = gated_expert_mlp_triton(torch.zeros_like(h), h, *weights, num_experts=8, top_k=2, expert_dim=192)[0].cpu()
    expected = fixture["outputs_zero_noise"][0]
    assert 0 < (~kept).sum() < kept.numel()  # the rows hold kept and dropped tokens
    assert_close(out[kept], expected[kept], atol=1e-5, name="kept tokens")  # fp32, O(0.1) outputs
    assert (out[~kept] - expected[~kept]).abs().amax(-1).min() > 1e-3  # dropped tokens differ


def test_launcher_rejects_bad_inputs_by_name():
    *_, weights = _weights(32, 64, 4, 8)
    x = torch.zeros(1, 5, 32, device=DEVICE)
    weights = [w.to(DEVICE) for w in weights]
    options = dict(num_experts=4, top_k=2, expert_dim=8)
    with pytest.raises(ValueError, match="W2cat dtype torch.float16 does not match x"):
        gated_expert_mlp_triton(x, x, weights[0], weights[1], weights[2].half(), weights[3], **options)
    with pytest.raises(ValueError, match="x dtype torch.float64 is not supported"):
        gated_expert_mlp_triton(x.double(), x.double(), *(w.double() for w in weights), **options)
    with pytest.raises(ValueError, match=f"h is on meta, the kernel runs on {DEVICE}"):
        gated_expert_mlp_triton(x, x.to("meta"), *weights, **options)
    with pytest.raises(ValueError, match="not both"):
        gated_expert_mlp_triton(x, x, *weights, **options, fixed_gates=[1.0] * 4)
    with pytest.raises(ValueError, match="fixed_gates must hold 4 values"):
        gated_expert_mlp_triton(x, x, weights[0][:, :-4], weights[1][:-4], *weights[2:], num_experts=4,
                                expert_dim=8, fixed_gates=[1.0])  # fmt: skip
    with pytest.raises(ValueError, match="W1cat/b1cat"):  # router columns given in fixed-gates mode
        gated_expert_mlp_triton(x, x, *weights, num_experts=4, expert_dim=8, fixed_gates=[1.0] * 4)


def test_empty_input_gives_empty_output():
    *_, weights = _weights(32, 64, 2, 8)
    x = torch.zeros(0, 32, device=DEVICE)
    out = gated_expert_mlp_triton(x, x, *(w.to(DEVICE) for w in weights), num_experts=2, top_k=1, expert_dim=8)
    assert out.shape == (0, 32)


@pytest.mark.parametrize("custom_ops", [True, False])
def test_fixed_gates_export(tmp_path, custom_ops):
    """With custom ops: one dfer::GatedExpertMLP node (fixed-gates attributes, no top_k) backed
    by its fixed-gates function; without: standard ops only. ONNX Runtime agrees with both."""
    from export.onnx import OPSET, attach_custom_op_functions
    from kernels import onnx_custom_ops
    from runtime.backends import onnx_session

    *_, weights = _weights(32, 64, 1, 8, routed=False)

    class Adapter(nn.Module):
        def forward(self, x, h):
            return gated_expert_mlp(x, h, *weights, num_experts=1, expert_dim=8, fixed_gates=[0.5],
                                    ffn_activation="quick_gelu", use_kernel=True)  # fmt: skip

    x, h = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    with onnx_custom_ops(custom_ops):
        program = torch.onnx.export(Adapter().eval(), (x, h), input_names=["x", "h"], output_names=["y"],
                                    dynamo=True, opset_version=OPSET)  # fmt: skip
    model = program.model_proto
    custom = [node for node in model.graph.node if node.domain == "dfer"]
    assert attach_custom_op_functions(model) == (("GatedExpertMLP",) if custom_ops else ())
    if custom_ops:
        (node,) = custom
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"num_experts": 1, "expert_dim": 8, "fixed_gates": [0.5], "ffn_activation": b"quick_gelu"}
        assert [f.name for f in model.functions if f.domain == "dfer"] == ["GatedExpertMLP"]
    else:
        assert not custom and not any(f.domain == "dfer" for f in model.functions)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "adapter.onnx"
    onnx.save_model(model, path)
    (got,) = onnx_session(path).run(["y"], {"x": x.numpy(), "h": h.numpy()})
    with torch.no_grad():
        want = gated_expert_mlp_ref(x, h, *weights, num_experts=1, expert_dim=8, fixed_gates=[0.5], ffn_activation="quick_gelu")
    assert_close(torch.from_numpy(got), want, atol=1e-5, name="ORT vs reference")  # fp32


def test_routed_and_fixed_nodes_cannot_share_a_model():
    from onnx import helper

    from kernels.gated_expert_mlp import onnx_function_for

    routed = helper.make_node("GatedExpertMLP", [], [], domain="dfer", num_experts=8, top_k=2, expert_dim=4)
    fixed = helper.make_node("GatedExpertMLP", [], [], domain="dfer", num_experts=1, expert_dim=4, fixed_gates=[0.5],
                             ffn_activation="quick_gelu")  # fmt: skip
    with pytest.raises(ValueError, match=r"several kinds \(quick_gelu, routed\) cannot share one model-local function"):
        onnx_function_for([routed, fixed])
    assert "top_k" in onnx_function_for([routed]).to_function_proto().attribute
    assert "fixed_gates" in onnx_function_for([fixed]).to_function_proto().attribute


@needs_cuda
def test_s4d_block_uses_the_kernel_on_cuda():
    """An S4D MoE block with use_kernels=True agrees with its reference path, in fp16 on CUDA."""
    from models.s4d import Block, S4DConfig

    block = Block(S4DConfig(), use_moe=True).cuda().half().eval()
    x = torch.randn(2, 800, 768, device="cuda").half()
    h = block.norm2(x)
    with torch.no_grad():
        reference = block.fused_mlp_moe(x, h)
        block.use_kernels = True
        kernel = block.fused_mlp_moe(x, h)
        block.use_kernels = False
        exact = block.float().fused_mlp_moe(x.float(), h.float())
    assert_within_rounding(kernel.float().cpu(), exact.cpu(), reference.float().cpu(), atol=2e-3, name="S4D block")
