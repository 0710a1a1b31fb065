"""LiftingSplit Triton kernels vs the PyTorch reference and the official ISSM fixture.

On CPU the kernels run in Triton's interpreter (tests/conftest.py); with TRITON_INTERPRET=0 on
a GPU machine the same tests run the compiled kernels on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from kernels._triton import interpreting, triton
from kernels.lifting_split import lifting_split, lifting_split_ref, lifting_split_triton, sampling_positions
from kernels.lifting_split import sampling_positions_triton
from tests.conftest import assert_close, assert_within_rounding, load_fixture

if triton is None:
    pytest.skip("Triton is not installed (the `kernels` extra)", allow_module_level=True)
DEVICE = "cpu" if interpreting() else "cuda"
needs_device = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the model's kernel dispatch only runs on CUDA")
pytestmark = needs_device

# (dtype, atol, rtol): atol on top of 2× the reference's own rounding (STYLE 2), half an output
# ulp at |x| < 4 for fp16/bf16. The kernels compute the positions in fp32, so they are 3–10×
# closer to fp32 than the fp16/bf16 reference is. fp32: sums are only reordered (observed ≤ 6e-6).
DTYPES = [(torch.float32, 2e-5, 0.0), (torch.float16, 1e-3, 0.0), (torch.bfloat16, 8e-3, 0.0)]
# (batch, frames, height, width, channels, descriptor K): IFDD's shape, odd grids and channel
# counts, T not a power of two, the smallest T, and 1568 tokens.
SHAPES = [
    (1, 8, 7, 7, 768, 7),
    (3, 8, 7, 7, 64, 7),
    (2, 4, 3, 5, 96, 7),
    (1, 6, 2, 3, 72, 5),
    (2, 2, 3, 3, 80, 7),
    (1, 8, 14, 14, 64, 7),
]


def _inputs(batch, frames, height, width, channels, k, dtype, seed=0):
    """Weights scaled so the descriptor is O(1) and the offsets spread over ±2 frames (clamping too)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames * height * width, channels, generator=g)
    w_dim = torch.randn(k, channels, generator=g) / channels**0.5
    b_dim = torch.randn(k, generator=g) * 0.1
    w_off = [torch.randn(frames // 2, frames * frames, generator=g) for _ in range(2)]
    return [t.to(dtype).to(DEVICE) for t in (x, w_dim, b_dim, *w_off)]


def _run_both(args, frames, height, width):
    grid = dict(frames=frames, height=height, width=width)
    kernel = lifting_split_triton(*args, **grid)
    ref_lowp = lifting_split_ref(*args, **grid)
    ref32 = lifting_split_ref(*(a.float() for a in args), **grid)
    return kernel, ref_lowp, ref32


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("batch,frames,height,width,channels,k", SHAPES)
def test_kernel_matches_reference(batch, frames, height, width, channels, k, dtype, atol, rtol):
    args = _inputs(batch, frames, height, width, channels, k, dtype)
    kernel, ref_lowp, ref32 = _run_both(args, frames, height, width)
    for got, low, want, name in zip(kernel, ref_lowp, ref32, ("x_a", "x_d")):
        assert got.dtype == dtype and got.shape == want.shape
        assert_within_rounding(got.cpu(), want.cpu(), low.float().cpu(), atol, rtol, name=name)


@pytest.mark.parametrize("batch,frames,height,width,channels,k", SHAPES[:3])
def test_kernel_positions_match_reference(batch, frames, height, width, channels, k):
    args = _inputs(batch, frames, height, width, channels, k, torch.float32, seed=1)
    got = sampling_positions_triton(*args, frames=frames, height=height, width=width)
    want = sampling_positions(*args, frames=frames)
    slots = torch.arange(0, frames, 2, device=DEVICE).float()
    assert max((want[0] - slots).abs().max(), (want[1] - slots - 1).abs().max()) > 0.5  # offsets move the slots
    for g, w, name in zip(got, want, ("approx", "detail")):
        assert_close(g.cpu(), w.cpu(), atol=2e-6, name=f"{name} positions")  # fp32, |p| ≤ 9


def test_kernel_matches_official_issm_fixture():
    """x8 extra case included: it reaches the clamped borders (tests/test_lifting_split.py)."""
    issm = load_fixture("ifdd/issm.pt")
    state = issm["state_dict"]
    weights = [state["dim_project.0.weight"].float().flatten(1), state["dim_project.0.bias"].float(),
               state["offset_project_approx.0.weight"].float(), state["offset_project_detail.0.weight"].float()]  # fmt: skip
    weights = [w.to(DEVICE) for w in weights]
    for case in [issm] + list(issm["extra_cases"]):
        x = case["inputs"][0].float()  # B, C, T, H·W
        b, c, t, hw = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, t * hw, c).to(DEVICE)
        x_a, x_d = lifting_split_triton(tokens, *weights, frames=8, height=7, width=7)
        scale = float(case.get("input_scale", 1.0))
        for got, want, name in zip((x_a, x_d), case["outputs"], ("x_a", "x_d")):
            official = got.cpu().reshape(b, 4, hw, c).permute(0, 3, 1, 2)[:, issm["channels"]]  # the stored ones
            assert_close(official, want, atol=1e-5 * scale, name=name)  # as the reference's own test
        pos_a, pos_d = sampling_positions_triton(tokens, *weights, frames=8, height=7, width=7)
        assert_close(pos_a.cpu(), case["intermediates"]["index_approx_frames"], atol=1e-5, name="approx positions")
        assert_close(pos_d.cpu(), case["intermediates"]["index_detail_frames"], atol=1e-5, name="detail positions")


def test_launcher_rejects_bad_inputs_by_name():
    args = _inputs(1, 8, 7, 7, 64, 7, torch.float32)
    grid = dict(frames=8, height=7, width=7)
    with pytest.raises(ValueError, match="W_dim dtype torch.float16 does not match x"):
        lifting_split_triton(args[0], args[1].half(), *args[2:], **grid)
    with pytest.raises(ValueError, match="x dtype torch.float64 is not supported"):
        lifting_split_triton(*(a.double() for a in args), **grid)
    with pytest.raises(ValueError, match=f"W_offD is on meta, the kernel runs on {DEVICE}"):
        lifting_split_triton(*args[:4], args[4].to("meta"), **grid)
    with pytest.raises(ValueError, match="tokens"):
        lifting_split_triton(args[0][:, 1:], *args[1:], **grid)


def test_empty_batch_gives_empty_outputs():
    args = _inputs(1, 8, 7, 7, 16, 7, torch.float32)
    x_a, x_d = lifting_split_triton(args[0][:0], *args[1:], frames=8, height=7, width=7)
    assert x_a.shape == x_d.shape == (0, 4 * 49, 16)


def test_dispatcher_uses_the_reference_off_cuda():
    """use_kernel asks for the kernel on CUDA only; on CPU the dispatcher is the reference, bit for bit."""
    args = [a.cpu() for a in _inputs(2, 8, 7, 7, 32, 7, torch.float32)]
    grid = dict(frames=8, height=7, width=7)
    for got, want in zip(lifting_split(*args, **grid, use_kernel=True), lifting_split_ref(*args, **grid)):
        assert torch.equal(got, want)


@needs_cuda
def test_ifdd_split_uses_the_kernel_on_cuda():
    """The model's ISSM with use_kernels=True agrees with the reference path, in fp16 on CUDA."""
    from models.ifdd import AdaptiveSplit

    module = AdaptiveSplit().cuda().half().eval()
    tokens = torch.randn(4, 392, 768, device="cuda").half()
    with torch.no_grad():
        reference = module(tokens)
        module.use_kernels = True
        kernel = module(tokens)
    ref32 = AdaptiveSplit().cuda().eval()
    ref32.load_state_dict(module.float().state_dict())
    with torch.no_grad():
        exact = ref32(tokens.float())
    for got, low, want in zip(kernel, reference, exact):
        assert_within_rounding(got.float().cpu(), want.cpu(), low.float().cpu(), atol=1e-3, name="ISSM")
