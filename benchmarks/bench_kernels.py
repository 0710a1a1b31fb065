"""GPU latency of the two Triton kernels against their baselines, fp16, in one run.

    python -m pytest benchmarks/bench_kernels.py -m gpu --benchmark-columns=median,min,max

Every case is marked ``gpu`` and skips without CUDA. Each round launches the op INNER times back to back and then
synchronises the device, so launch overhead counts as it does in a model and the clock stops
only when the GPU is done; ``extra_info`` holds the per-call time, the bytes moved per second
(LiftingSplit) or TFLOP/s (GatedExpertMLP), and ratios to the baselines measured earlier in the
same run (run the whole file: baselines come first in each group); ``ratio_to_baseline``
(benchmarks.suite.record) is the time ÷ the copy floor / plain MLP of the same size.

Targets (issue 4): LiftingSplit ≤ 2× the copy floor at every batch; GatedExpertMLP ≤ 1.2× a
plain MLP of the same width.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from benchmarks import suite
from kernels.gated_expert_mlp import gated_expert_mlp_ref, gated_expert_mlp_triton, pack_gated_expert_weights
from kernels.lifting_split import RECEPTIVE_FIELD, lifting_split_ref, lifting_split_triton

INNER = 20  # launches per timed round
ROUNDS = 30
T, H, W, C, K = 8, 7, 7, 768, 7  # IFDD's ISSM
DIM, FFN, EXPERTS, EXPERT_DIM, TOP_K = 768, 3072, 8, 192, 2  # S4D's MoE blocks
LIFTING = ["copy_floor", "official_style", "reference_eager", "reference_compiled", "triton"]
GATED = ["plain_mlp_same_width", "official_routed", "reference_eager", "reference_compiled", "triton"]
_per_call: dict[tuple, float] = {}
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("GPU benchmark: CUDA is not available")


def _timed(benchmark, group: str, case: str, key: tuple, run, extra: dict) -> None:
    """Benchmark INNER calls of run per round, synchronised; record per-call µs and ratios."""

    def rounds():
        for _ in range(INNER):
            run()
        torch.cuda.synchronize()

    benchmark.group = group
    benchmark.pedantic(rounds, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    per_call = benchmark.stats.stats.median / INNER
    _per_call[key] = per_call
    benchmark.extra_info.update(
        case=case, per_call_us=round(per_call * 1e6, 2), inner_calls=INNER, device=torch.cuda.get_device_name(),
        torch=torch.__version__, triton=_triton_version(),
    )  # fmt: skip
    benchmark.extra_info.update({k: round(v(per_call), 3) if callable(v) else v for k, v in extra.items()})
    baseline = LIFTING[0] if key[0] == "lifting" else GATED[0]
    suite.record(benchmark, kind="kernel", case="/".join(map(str, key)), baseline="/".join(map(str, (*key[:-1], baseline))),
                 batch=key[1], device=torch.cuda.get_device_name(), seconds=per_call, calls_per_round=INNER,
                 **{k: v for k, v in benchmark.extra_info.items() if k not in ("case", "device")}, variant=case)
    if case == "triton":
        for (*rest, other), seconds in list(_per_call.items()):
            if tuple(rest) == key[:-1] and other != "triton":
                benchmark.extra_info[f"ratio_to_{other}"] = round(per_call / seconds, 3)


def _triton_version() -> str:
    import triton

    return triton.__version__


# ----------------------------------------------------------------------------------------------
# LiftingSplit


def _lifting_inputs(batch: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, T * H * W, C, device="cuda", generator=g).half()
    w_dim = (torch.randn(K, C, device="cuda", generator=g) / C**0.5).half()
    b_dim = (torch.randn(K, device="cuda", generator=g) * 0.1).half()
    w_off = [torch.randn(T // 2, T * T, device="cuda", generator=g).half() for _ in range(2)]
    return x, w_dim, b_dim, *w_off


def _official_style_split(x, w_dim, b_dim, w_off_a, w_off_d):
    """The ISSM as the official module computes it (tests/fixtures/README.md): conv descriptor, similarity,
    softmaxes, offsets, then grid_sample along time on a (T × 1) image per channel map."""
    batch = x.shape[0]
    frames = x.reshape(batch * T, H, W, C).permute(0, 3, 1, 2)
    descriptor = F.gelu(F.conv2d(frames, w_dim[:, :, None, None], b_dim)).reshape(batch, T, -1)
    similarity = descriptor @ descriptor.transpose(1, 2) / C
    offsets = [
        torch.tanh(torch.softmax(sign * similarity, -1).flatten(1) @ w.t()) * RECEPTIVE_FIELD
        for sign, w in ((1.0, w_off_a), (-1.0, w_off_d))
    ]
    video = x.reshape(batch, T, H * W * C).transpose(1, 2).reshape(batch, H * W * C, T, 1)
    outputs = []
    for start, offset in zip((0, 1), offsets):
        positions = torch.arange(start, T, 2, device=x.device, dtype=x.dtype) + offset
        grid_t = 2.0 * positions / (T - 1) - 1.0
        grid = torch.stack([torch.zeros_like(grid_t), grid_t], -1).unsqueeze(2)  # (B, T/2, 1, 2): (x, y)
        sampled = F.grid_sample(video, grid, mode="bilinear", padding_mode="border", align_corners=False)
        outputs.append(sampled.reshape(batch, H * W * C, T // 2).transpose(1, 2).reshape(batch, -1, C))
    return tuple(outputs)


@functools.cache
def _compiled_lifting_ref():
    return torch.compile(functools.partial(lifting_split_ref, frames=T, height=H, width=W))


def _lifting_case(batch: int, case: str):
    """(callable, bytes it must move at least) for one case."""
    args = _lifting_inputs(batch)
    x = args[0]
    nbytes = x.numel() * x.element_size()
    grid = dict(frames=T, height=H, width=W)
    if case == "copy_floor":  # read x once, write x once: the bandwidth bound of any copy
        out = torch.empty_like(x)
        return (lambda: out.copy_(x)), 2 * nbytes
    runs = {
        "official_style": lambda: _official_style_split(*args),
        "reference_eager": lambda: lifting_split_ref(*args, **grid),
        "reference_compiled": lambda: _compiled_lifting_ref()(*args),
        "triton": lambda: lifting_split_triton(*args, **grid),
    }
    return runs[case], 3 * nbytes  # x read twice (descriptor, gather), outputs (= |x|) written once


@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("case", LIFTING)
def test_lifting_split(benchmark, batch, case):
    run, nbytes = _lifting_case(batch, case)
    with torch.no_grad():
        run()  # compile / autotune outside the clock
        _timed(benchmark, f"LiftingSplit batch {batch}", case, ("lifting", batch, case), run,
               {"GB_per_s": lambda s: nbytes / s / 1e9, "bytes_moved": nbytes})  # fmt: skip


def test_lifting_split_kernel_matches_reference_on_gpu():
    """A real-hardware parity check beside the numbers (fp16, IFDD shape)."""
    args = _lifting_inputs(4)
    got = lifting_split_triton(*args, frames=T, height=H, width=W)
    want = lifting_split_ref(*(a.float() for a in args), frames=T, height=H, width=W)
    for g, w in zip(got, want):
        assert (g.float() - w).abs().max().item() < 2e-2


# ----------------------------------------------------------------------------------------------
# GatedExpertMLP


@functools.cache
def _gated_layers():
    """S4D's block 6 (MLP + MoE), random weights, fp16, deploy and official routers."""
    from models.s4d import Block, S4DConfig

    torch.manual_seed(0)
    block = Block(S4DConfig(), use_moe=True).cuda().half().eval()
    moe = block.moe_layer
    packed = pack_gated_expert_weights(
        block.mlp.fc1, block.mlp.fc2, [(e.fc1, e.fc2) for e in moe.experts], moe.router.topkroute_linear
    )
    plain_fc1 = torch.nn.Linear(DIM, FFN + EXPERTS * EXPERT_DIM).cuda().half()
    plain_fc2 = torch.nn.Linear(FFN + EXPERTS * EXPERT_DIM, DIM).cuda().half()
    return block, [p.detach() for p in packed], plain_fc1, plain_fc2


@functools.cache
def _compiled_gated_ref():
    return torch.compile(
        functools.partial(gated_expert_mlp_ref, num_experts=EXPERTS, top_k=TOP_K, expert_dim=EXPERT_DIM)
    )


def _gated_case(tokens: int, case: str):
    block, packed, plain_fc1, plain_fc2 = _gated_layers()
    x = torch.randn(tokens // 800, 800, DIM, device="cuda").half()
    with torch.no_grad():
        h = block.norm2(x)
    options = dict(num_experts=EXPERTS, top_k=TOP_K, expert_dim=EXPERT_DIM)

    def official():
        block.moe_layer.router_mode = "official"
        return x + (block.mlp(h) + block.moe_layer(h))

    runs = {
        "plain_mlp_same_width": lambda: x + plain_fc2(F.gelu(plain_fc1(h))),
        "official_routed": official,
        "reference_eager": lambda: gated_expert_mlp_ref(x, h, *packed, **options),
        "reference_compiled": lambda: _compiled_gated_ref()(x, h, *packed),
        "triton": lambda: gated_expert_mlp_triton(x, h, *packed, **options),
    }
    width = FFN + EXPERTS * EXPERT_DIM
    flops = 2 * tokens * DIM * (width + EXPERTS) + 2 * tokens * width * DIM
    return runs[case], flops


@pytest.mark.parametrize("tokens", [800, 800 * 8, 800 * 32])
@pytest.mark.parametrize("case", GATED)
def test_gated_expert_mlp(benchmark, tokens, case):
    run, flops = _gated_case(tokens, case)
    with torch.no_grad():
        run()
        _timed(benchmark, f"GatedExpertMLP {tokens} tokens", case, ("gated", tokens, case), run,
               {"TFLOP_per_s": lambda s: flops / s / 1e12, "flops": flops})  # fmt: skip


def test_gated_expert_mlp_kernel_matches_reference_on_gpu():
    block, packed, *_ = _gated_layers()
    x = torch.randn(2, 800, DIM, device="cuda").half()
    options = dict(num_experts=EXPERTS, top_k=TOP_K, expert_dim=EXPERT_DIM)
    with torch.no_grad():
        h = block.norm2(x)
        got = gated_expert_mlp_triton(x, h, *packed, **options)
        want = gated_expert_mlp_ref(x.float(), h.float(), *(p.float() for p in packed), **options)
    assert (got.float() - want).abs().max().item() < 2e-2
