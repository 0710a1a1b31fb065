"""What one ``benchmarks.gpu_run`` measures and what each step is expected to cost (no torch here).

Two plans share every code path: :func:`gpu_plan` (an H200 lent for ~15 minutes) and
:func:`dry_plan` (tiny shapes on 2 CPU cores, Triton's interpreter, torch.compile's "eager"
backend). A case's estimated cost is its timing plus the set-up steps (:class:`Setup`: a Triton
or Inductor compile, a model build) that no earlier case has done yet; the GPU numbers are
estimates until a first run measures them (``--costs-from`` reads a run's measured ``elapsed_s``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Stages run in this order; each may run until its cumulative share of the budget left after
# start-up has passed (time a stage leaves unused rolls over to the next).
STAGE_SHARES = (("parity", 0.12), ("kernels", 0.20), ("models", 0.68))
STAGES = tuple(name for name, _ in STAGE_SHARES)


@dataclass(frozen=True)
class LiftingShape:
    """A LiftingSplit problem: x (batch, frames·height·width, channels), descriptor K."""

    batch: int
    frames: int
    height: int
    width: int
    channels: int
    descriptor_dim: int

    @property
    def size(self) -> int:
        """What the report lists it by: the batch."""
        return self.batch

    def label(self) -> str:
        return f"B{self.batch}_T{self.frames}_{self.height}x{self.width}_C{self.channels}"


@dataclass(frozen=True)
class GatedShape:
    """A GatedExpertMLP problem: clips × tokens rows of width dim, FFN + experts × expert_dim."""

    clips: int
    tokens: int
    dim: int
    ffn: int
    experts: int
    expert_dim: int
    top_k: int

    @property
    def rows(self) -> int:
        return self.clips * self.tokens

    @property
    def size(self) -> int:
        """What the report lists it by: the token rows."""
        return self.rows

    @property
    def hidden_width(self) -> int:
        return self.ffn + self.experts * self.expert_dim

    def label(self) -> str:
        return f"{self.rows}tok_D{self.dim}_H{self.ffn}_E{self.experts}x{self.expert_dim}_k{self.top_k}"


@dataclass(frozen=True)
class Setup:
    """A one-off step some cases share (a compile, a model build): paid by the first case that needs it."""

    key: str
    cost_s: float


@dataclass(frozen=True)
class Costs:
    """Estimated seconds per step. GPU values: guesses for an H200 with 16 cores, not yet measured."""

    triton_kernel_s: float  # one Triton kernel specialisation, cold cache (LLVM + ptxas)
    autotune_key_s: float  # benchmarking the GEMM tiles for one new autotune key
    inductor_op_s: float  # torch.compile of an op-sized function (one shape kind)
    inductor_model_s: dict  # family variant → one full-model compile (one shape kind)
    build_s: dict  # family → build, move to the device, fp32 + fp16 references at one batch
    timed_op_s: float  # warm-up + timing loop of an op case
    timed_model_s: float  # warm-up + timing loop of a model case (capped by Plan.max_timing_s)
    parity_s: float  # one parity comparison after the compile


@dataclass(frozen=True)
class Plan:
    """Everything that differs between the GPU run and the CPU dry run."""

    dry_run: bool
    device: str
    dtype: str  # the timed dtype (parity adds float32 where listed)
    parity_lifting: tuple  # ((LiftingShape, dtype), ...)
    parity_gated: tuple  # ((GatedShape, dtype), ...)
    lifting: tuple  # LiftingShape per timed batch
    gated: tuple  # GatedShape per timed token count
    model_batches: tuple
    s4d_config: dict | None  # None: the official DFEW config
    tiny_ifdd: bool  # IFDD's lifting module + head instead of the full model (dry run)
    vit: dict  # the plain ViT ceiling: dim, depth, heads, mlp, img, patch, frames, tubelet
    compile_backend: str
    cuda_graphs: bool
    warmup: int
    reps: int
    min_reps: int
    target_rep_s: float  # one timed rep launches the case enough times to last this long
    max_inner: int
    max_timing_s: float
    reserve_s: float  # kept back at the end for the report
    costs: Costs
    gemm_config: int | None = 0  # pinned GatedExpertMLP tile index; None tunes them all
    perturb: float = 0.0  # added to every kernel output (test hook: the checks must then fail)
    left_out: tuple = field(default_factory=tuple)

    def with_options(self, **changes) -> Plan:
        return dataclasses.replace(self, **changes)


IFDD_LIFT = LiftingShape(1, 8, 7, 7, 768, 7)  # IFDD's ISSM on the fused 8×7×7 tokens
S4D_TOKENS = 800  # 8 × 10 × 10 tubelets of a 16 × 160 × 160 clip


def _s4d_gated(clips: int) -> GatedShape:
    return GatedShape(clips, S4D_TOKENS, 768, 3072, 8, 192, 2)  # S4D's blocks 6..11


GPU_COSTS = Costs(
    triton_kernel_s=2.0,
    autotune_key_s=1.5,
    inductor_op_s=15.0,
    inductor_model_s={
        "s4d_deploy": 60.0,
        "s4d_kernels": 60.0,
        "s4d_official": 150.0,
        "ifdd_official": 90.0,
        "ifdd_kernels": 90.0,
        "vit_plain": 45.0,
    },
    build_s={"s4d": 6.0, "ifdd": 10.0, "vit": 4.0},
    timed_op_s=1.5,
    timed_model_s=3.0,
    parity_s=0.5,
)
# Measured on the 2-core CI machine (dry run, tiny shapes), rounded up.
DRY_COSTS = Costs(
    triton_kernel_s=0.1,
    autotune_key_s=0.0,
    inductor_op_s=1.0,
    inductor_model_s={
        "s4d_deploy": 2.0,
        "s4d_kernels": 2.0,
        "s4d_official": 4.0,
        "ifdd_official": 2.0,
        "ifdd_kernels": 2.0,
        "vit_plain": 1.5,
    },
    build_s={"s4d": 0.5, "ifdd": 0.5, "vit": 0.3},
    timed_op_s=0.3,
    timed_model_s=0.5,
    parity_s=0.3,
)

ALWAYS_LEFT_OUT = (
    "bf16 (parity and timing)",
    "GatedExpertMLP's fixed-gates mode (FineCLIPER adapters)",
    "the official-fixture parity tests (tests/test_kernel_*.py; pytest runs them on the box with TRITON_INTERPRET=0)",
    "ONNX Runtime and TensorRT (the box has no TensorRT; its ORT is a CPU build)",
    "IFDD deploy without kernels: IFDD has one mode, so it is its official run",
)


def gpu_plan(*, full: bool = False) -> Plan:
    """The H200 run: fp16 timings at the models' real sizes; ``full`` adds fp32 parity on every
    shape and tunes all five GEMM tiles."""
    lifting_odd = (LiftingShape(3, 8, 7, 7, 64, 7), LiftingShape(2, 4, 3, 5, 96, 7))
    gated_odd = (GatedShape(1, 7, 96, 160, 3, 24, 2), GatedShape(1, 33, 80, 200, 5, 40, 1))
    fp32_lifting = (IFDD_LIFT, *lifting_odd) if full else (IFDD_LIFT,)
    fp32_gated = (_s4d_gated(1), *gated_odd) if full else (_s4d_gated(1),)
    left_out = ALWAYS_LEFT_OUT
    if not full:
        left_out += (
            "fp32 parity on the odd shapes (--full)",
            (
                "GatedExpertMLP autotuning: tile 0 (128×128×64, 8 warps, 3 stages) pinned, the other 4 never "
                "compiled or benchmarked (--full tunes all 5)"
            ),
        )
    return Plan(
        dry_run=False,
        device="cuda",
        dtype="float16",
        parity_lifting=tuple((s, "float16") for s in (IFDD_LIFT, *lifting_odd))
        + tuple((s, "float32") for s in fp32_lifting),
        parity_gated=tuple((s, "float16") for s in (_s4d_gated(1), *gated_odd))
        + tuple((s, "float32") for s in fp32_gated),
        lifting=tuple(dataclasses.replace(IFDD_LIFT, batch=b) for b in (1, 8, 32)),
        gated=tuple(_s4d_gated(c) for c in (1, 8, 32)),
        model_batches=(1, 32, 8),  # 1 compiles static, 32 dynamic, 8 reuses the dynamic graph
        s4d_config=None,
        tiny_ifdd=False,
        vit=dict(dim=768, depth=12, heads=12, mlp=3072, img=160, patch=16, frames=16, tubelet=2),
        compile_backend="inductor",
        cuda_graphs=True,
        warmup=3,
        reps=25,
        min_reps=5,
        target_rep_s=2e-3,
        max_inner=200,
        max_timing_s=1.5,
        reserve_s=5.0,
        costs=GPU_COSTS,
        gemm_config=None if full else 0,
        left_out=left_out,
    )


def dry_plan() -> Plan:
    """The CPU rehearsal: every stage and case of the GPU run at tiny shapes."""
    tiny_lift = LiftingShape(1, 4, 3, 3, 32, 7)
    tiny_gated = GatedShape(1, 16, 64, 128, 4, 16, 2)
    return Plan(
        dry_run=True,
        device="cpu",
        dtype="float16",
        parity_lifting=((tiny_lift, "float16"), (LiftingShape(2, 6, 2, 3, 40, 5), "float16"), (tiny_lift, "float32")),
        parity_gated=((tiny_gated, "float16"), (GatedShape(1, 7, 48, 80, 3, 8, 1), "float16"), (tiny_gated, "float32")),
        lifting=tuple(dataclasses.replace(tiny_lift, batch=b) for b in (1, 2)),
        gated=tuple(dataclasses.replace(tiny_gated, clips=c) for c in (1, 2)),
        model_batches=(1, 2),
        s4d_config={
            "img_size": 32,
            "patch_size": 16,
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 2,
            "num_frames": 4,
            "moe_layers": [1],
            "num_experts": 4,
        },
        tiny_ifdd=True,
        vit=dict(dim=64, depth=2, heads=2, mlp=256, img=32, patch=16, frames=4, tubelet=2),
        compile_backend="eager",
        cuda_graphs=False,
        warmup=1,
        reps=3,
        min_reps=2,
        target_rep_s=0.0,
        max_inner=1,
        max_timing_s=0.2,
        reserve_s=1.0,
        costs=DRY_COSTS,
        gemm_config=0,
        left_out=ALWAYS_LEFT_OUT
        + (
            "dry run: tiny shapes; kernels in Triton's interpreter on CPU (the GEMMs' autotuner is bypassed there)",
            "dry run: torch.compile with the 'eager' backend (Dynamo only), CUDA graphs not captured",
            "dry run: the models dispatch to the PyTorch references (their kernel path needs CUDA)",
            (
                "dry run: IFDD is its lifting module + head on 4×7×7 tokens of width 32 (the full model takes 15 s "
                "a forward on 2 cores)"
            ),
        ),
    )
