"""The op-level cases of ``benchmarks.gpu_run``: kernel parity, then kernel timings.

Tolerances (:data:`ATOL`), element by element: the kernel may be off from the fp32 reference
by twice the error the PyTorch reference itself makes in the kernel's dtype, plus an absolute
slack. fp16: half an fp16 ulp at |y| < 4 for LiftingSplit (it rounds its output once, the
positions are fp32), one ulp for GatedExpertMLP (hidden and output each rounded once); fp32:
sums only reordered. These are the bounds tests/test_kernel_*.py enforce under the interpreter.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch
from torch import nn

from benchmarks.gpu_harness import (
    Case,
    CheckFailed,
    Measurement,
    checked_timing,
    finite,
    first_call,
    perturbed,
    within_rounding,
)
from benchmarks.gpu_plan import GatedShape, LiftingShape, Plan, Setup
from kernels import gated_expert_mlp as gated_op
from kernels._triton import interpreting
from kernels.lifting_split import lifting_split_ref, lifting_split_triton

ATOL = {"lifting_split": {"float16": 1e-3, "float32": 2e-5}, "gated_expert_mlp": {"float16": 2e-3, "float32": 2e-5}}
LIFTING_KERNELS = 3  # descriptor, predictor, gather
GEMM_KERNELS = 2


def pin_gemm_tiles(index: int | None) -> str:
    """Leave GatedExpertMLP's GEMMs one autotune tile (``index`` into GEMM_CONFIGS), or all (None).
    Under the interpreter the launcher bypasses the autotuner (one fixed tile per problem)."""
    if interpreting():
        return "interpreter: the launcher picks one tile per problem, no autotuning"
    tiles = gated_op.GEMM_CONFIGS
    gated_op.pin_gemm_tile(index)
    if index is None:
        return f"autotuned over all {len(tiles)} tiles"
    meta, warps, stages = tiles[index]
    tile = "×".join(str(meta[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return f"tile {index} pinned: {tile}, {warps} warps, {stages} stages (the other {len(tiles) - 1} never compiled)"


VARIANTS = {
    "lifting_split": ("copy", "reference_eager", "triton"),
    "gated_expert_mlp": ("plain_mlp", "official_routed", "reference_eager", "reference_compiled", "triton"),
}


def op_cases(plan: Plan) -> list[Case]:
    """Parity cases, then timing cases, in run order."""
    return _parity_cases(plan) + _timing_cases(plan)


# ----------------------------------------------------------------------------------------------
# parity: compiled (or interpreted) kernels against their references


def _triton_setup(op: str, label: str, dtype: str, kernels: int, plan: Plan) -> Setup:
    tiles = 1 if plan.gemm_config is not None or op == "lifting_split" else len(gated_op.GEMM_CONFIGS)
    autotune = plan.costs.autotune_key_s if tiles > 1 else 0.0
    return Setup(f"triton:{op}:{dtype}:{label}", kernels * tiles * plan.costs.triton_kernel_s + autotune)


def _parity_cases(plan: Plan) -> list[Case]:
    ops = (
        ("lifting_split", plan.parity_lifting, _lifting_parity, LIFTING_KERNELS),
        ("gated_expert_mlp", plan.parity_gated, _gated_parity, GEMM_KERNELS),
    )
    return [
        Case(
            name=f"parity/{op}/{dtype}/{shape.label()}",
            stage="parity",
            group=op,
            variant=dtype,
            size=shape.size,
            run=functools.partial(run, plan, shape, dtype),
            timing_s=plan.costs.parity_s,
            setups=(_triton_setup(op, shape.label(), dtype, kernels, plan),),
        )
        for op, problems, run, kernels in ops
        for shape, dtype in problems
    ]


def _lifting_parity(plan: Plan, shape: LiftingShape, dtype: str) -> Measurement:
    args32 = _lifting_inputs(shape, plan.device)
    args = [a.to(getattr(torch, dtype)) for a in args32]
    grid = dict(frames=shape.frames, height=shape.height, width=shape.width)
    kernel = perturbed(lifting_split_triton, plan.perturb)
    got, first = first_call(lambda: kernel(*args, **grid), device=plan.device)
    low, ref32 = lifting_split_ref(*args, **grid), lifting_split_ref(*args32, **grid)
    atol = ATOL["lifting_split"][dtype]
    checks = [within_rounding(g, r, lo, atol=atol, name=n) for g, r, lo, n in zip(got, ref32, low, ("x_a", "x_d"))]
    return Measurement(check="; ".join(checks), first_call_s=first)


def _gated_parity(plan: Plan, shape: GatedShape, dtype: str) -> Measurement:
    weights32 = _gated_weights(shape, plan.device)
    generator = torch.Generator().manual_seed(1)
    x32, h32 = (torch.randn(shape.clips, shape.tokens, shape.dim, generator=generator).to(plan.device) for _ in "xh")
    to = getattr(torch, dtype)
    x, h, weights = x32.to(to), h32.to(to), [w.to(to) for w in weights32]
    options = dict(num_experts=shape.experts, top_k=shape.top_k, expert_dim=shape.expert_dim)
    kernel = perturbed(gated_op.gated_expert_mlp_triton, plan.perturb)
    got, first = first_call(lambda: kernel(x, h, *weights, **options), device=plan.device)
    low = gated_op.gated_expert_mlp_ref(x, h, *weights, **options)
    ref32 = gated_op.gated_expert_mlp_ref(x32, h32, *weights32, **options)
    check = within_rounding(got, ref32, low, atol=ATOL["gated_expert_mlp"][dtype], name="out")
    return Measurement(check=check, first_call_s=first)


def _lifting_inputs(shape: LiftingShape, device: str) -> list[torch.Tensor]:
    """fp32 inputs with an O(1) descriptor and offsets spread over ±2 frames (so clamping happens)."""
    g = torch.Generator().manual_seed(0)
    s = shape
    x = torch.randn(s.batch, s.frames * s.height * s.width, s.channels, generator=g)
    w_dim = torch.randn(s.descriptor_dim, s.channels, generator=g) / s.channels**0.5
    b_dim = torch.randn(s.descriptor_dim, generator=g) * 0.1
    w_off = [torch.randn(s.frames // 2, s.frames * s.frames, generator=g) for _ in range(2)]
    return [t.to(device) for t in (x, w_dim, b_dim, *w_off)]


def _gated_weights(shape: GatedShape, device: str) -> list[torch.Tensor]:
    """Packed fp32 weights of nn.Linear layers (their default init keeps activations O(1))."""
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(shape.dim, shape.ffn), nn.Linear(shape.ffn, shape.dim)
    experts = [
        (nn.Linear(shape.dim, shape.expert_dim), nn.Linear(shape.expert_dim, shape.dim)) for _ in range(shape.experts)
    ]
    router = nn.Linear(shape.dim, shape.experts)
    return [w.detach().to(device) for w in gated_op.pack_gated_expert_weights(fc1, fc2, experts, router)]


# ----------------------------------------------------------------------------------------------
# kernels: LiftingSplit against a copy of x, GatedExpertMLP against its baselines


def _timing_cases(plan: Plan) -> list[Case]:
    cases = []
    ops = (
        ("lifting_split", plan.lifting, _lifting_timing, LIFTING_KERNELS),
        ("gated_expert_mlp", plan.gated, _gated_timing, GEMM_KERNELS),
    )
    for op, shapes, timing, kernels in ops:
        for index, shape in enumerate(shapes):
            for variant in VARIANTS[op]:
                setups = ()
                if variant == "triton":
                    setups = (_triton_setup(op, shape.label(), plan.dtype, kernels, plan),)
                if variant == "reference_compiled":  # the first shape compiles static, the next one dynamic
                    setups = (Setup(f"inductor:{op}_ref:{'dynamic' if index else 'static'}", plan.costs.inductor_op_s),)
                size = f"B{shape.size}" if op == "lifting_split" else f"{shape.size}tok"
                cases.append(Case(
                    name=f"kernels/{op}/{variant}/{size}", stage="kernels", group=op, variant=variant,
                    size=shape.size, run=functools.partial(timing, plan, shape, variant),
                    timing_s=plan.costs.timed_op_s, setups=setups,
                ))  # fmt: skip
    return cases


@functools.cache
def _lifting_problem(shape: LiftingShape, device: str, dtype: str):
    args32 = _lifting_inputs(shape, device)
    args = [a.to(getattr(torch, dtype)) for a in args32]
    grid = dict(frames=shape.frames, height=shape.height, width=shape.width)
    return args, grid, lifting_split_ref(*args32, **grid), lifting_split_ref(*args, **grid)


def _lifting_timing(plan: Plan, shape: LiftingShape, variant: str) -> Measurement:
    args, grid, ref32, low = _lifting_problem(shape, plan.device, plan.dtype)
    x = args[0]
    nbytes = x.numel() * x.element_size()
    atol = ATOL["lifting_split"][plan.dtype]
    if variant == "copy":  # read x once, write it once: the bandwidth bound of any pass over x
        out = torch.empty_like(x)

        def copied(result):
            if not torch.equal(result, x):
                raise CheckFailed("copy: output differs from x")
            return "copy: equals x"

        return checked_timing(lambda: out.copy_(x), copied, plan=plan, bytes_moved=2 * nbytes,
                              items=shape.batch, item_name="clips", note="x read once, written once")  # fmt: skip
    fn = perturbed(lifting_split_triton, plan.perturb) if variant == "triton" else lifting_split_ref

    def check(out):
        return "; ".join(
            within_rounding(g, r, lo, atol=atol, name=n) for g, r, lo, n in zip(out, ref32, low, ("x_a", "x_d"))
        )

    return checked_timing(lambda: fn(*args, **grid), check, plan=plan, bytes_moved=3 * nbytes, items=shape.batch,
                          item_name="clips", note="bytes: x read twice, outputs (|x|) written once")  # fmt: skip


@functools.cache
def _gated_layers(shape: GatedShape, device: str, dtype: str):
    """An S4D MoE block (fp32 and fp16), its packed weights, and a plain MLP of the same width."""
    from models.s4d import Block, S4DConfig

    torch.manual_seed(0)
    config = S4DConfig(embed_dim=shape.dim, num_heads=max(1, shape.dim // 64), mlp_ratio=shape.ffn / shape.dim,
                       num_experts=shape.experts, expert_ratio=shape.expert_dim / shape.dim, top_k=shape.top_k)  # fmt: skip
    block32 = Block(config, use_moe=True).to(device).eval()
    block16 = copy.deepcopy(block32).to(getattr(torch, dtype))
    block16.moe_layer.router_mode = "official"
    packed32 = block32.packed_weights()
    plain = nn.Sequential(nn.Linear(shape.dim, shape.hidden_width), nn.GELU(), nn.Linear(shape.hidden_width, shape.dim))
    return block32, block16, packed32, plain.to(device, getattr(torch, dtype)).eval()


@functools.cache
def _compiled_gated_ref(shape: GatedShape, backend: str):
    options = dict(num_experts=shape.experts, top_k=shape.top_k, expert_dim=shape.expert_dim)
    return torch.compile(functools.partial(gated_op.gated_expert_mlp_ref, **options), backend=backend)


def _gated_timing(plan: Plan, shape: GatedShape, variant: str) -> Measurement:
    block32, block16, packed32, plain = _gated_layers(shape, plan.device, plan.dtype)
    to = getattr(torch, plan.dtype)
    generator = torch.Generator().manual_seed(2)
    x32 = torch.randn(shape.clips, shape.tokens, shape.dim, generator=generator).to(plan.device)
    h32 = block32.norm2(x32)
    x, h, packed = x32.to(to), h32.to(to), [w.to(to) for w in packed32]
    options = dict(num_experts=shape.experts, top_k=shape.top_k, expert_dim=shape.expert_dim)
    flops = (
        2 * shape.rows * shape.dim * (shape.hidden_width + shape.experts)
        + 2 * shape.rows * shape.hidden_width * shape.dim
    )
    numbers = dict(items=shape.rows, item_name="tokens")
    if variant == "plain_mlp":
        return checked_timing(lambda: x + plain(h), functools.partial(finite, name="plain MLP"), plan=plan,
                              flops=2 * 2 * shape.rows * shape.dim * shape.hidden_width, **numbers,
                              note=f"{shape.dim}→{shape.hidden_width}→{shape.dim}, GELU, + x")  # fmt: skip
    if variant == "official_routed":

        def official():
            return x + (block16.mlp(h) + block16.moe_layer(h))  # noisy router, per-expert capacity

        return checked_timing(official, functools.partial(finite, name="official routed"), plan=plan, **numbers,
                              note="official router: noise + capacity, experts on their kept tokens")  # fmt: skip
    ref32 = gated_op.gated_expert_mlp_ref(x32, h32, *packed32, **options)
    low = gated_op.gated_expert_mlp_ref(x, h, *packed, **options)
    compiled = (
        _compiled_gated_ref(dataclasses.replace(shape, clips=1), plan.compile_backend)
        if variant == "reference_compiled"
        else None
    )
    kernel = perturbed(gated_op.gated_expert_mlp_triton, plan.perturb)
    runs = {
        "reference_eager": lambda: gated_op.gated_expert_mlp_ref(x, h, *packed, **options),
        "reference_compiled": lambda: compiled(x, h, *packed),
        "triton": lambda: kernel(x, h, *packed, **options),
    }
    atol = ATOL["gated_expert_mlp"][plan.dtype]
    return checked_timing(runs[variant], lambda out: within_rounding(out, ref32, low, atol=atol, name="out"),
                          plan=plan, flops=flops, **numbers)  # fmt: skip
