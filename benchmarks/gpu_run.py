"""One budgeted GPU session that always yields numbers: kernel parity, kernel timings, model timings.

    python -m benchmarks.gpu_run --out DIR [--budget-s 540] [--dry-run] [--full] [--stages parity,kernels,models]

On a GPU machine, from the repository root (a 10-minute slot fits the default budget; the run
reads no fixture, and tests/fixtures/ (~12 MB), which the kernel tests use, is in the tree)::

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_run --out OUT --budget-s 540

OUT gets ``results.json`` (every case: status ``done`` / ``failed`` with its error / ``not run:
budget``, estimate and elapsed seconds, the check, median and p90) and ``results.md`` (the
tables: ms, clips/s, GB/s, TFLOP/s, ratios to the official eager run, to a plain copy / plain
MLP and to the plain-ViT ceiling, the issue-4 targets, device, driver, torch, Triton and CUDA
versions). Both are rewritten after every case, so a run cut short keeps what it finished.

Stages, in order (benchmarks/gpu_ops.py, benchmarks/gpu_models.py say what each case does):

1. ``parity``: the Triton kernels on the GPU against their PyTorch references, fp16 on the
   models' shapes and odd ones, fp32 on the models' shapes (``--full``: fp32 everywhere).
2. ``kernels``: LiftingSplit vs a copy of x (batch 1/8/32); GatedExpertMLP vs a plain MLP of the
   same width (768→4608→768), the official routed FFN + MoE, the dense reference eager and
   compiled (800 × 1/8/32 tokens). Every op output is checked against fp32 before it is timed.
3. ``models``: S4D and IFDD fp16, batch 1/32/8: official eager/compiled, deploy eager/compiled
   (S4D; IFDD has one mode), deploy with kernels eager/compiled/compiled + CUDA graphs, and a
   plain ViT-B on S4D's 800 tokens with SDPA (eager, compiled, CUDA graphs), the ceiling.

Timing: warm-up, then reps of back-to-back calls with the device synchronised before each clock
read; median and p90 per call. First calls (compile, autotune, graph capture) are timed apart.

Budget: each stage may run until its cumulative share of the budget left after start-up has
passed (parity 12 %, kernels 20 %, models 68 %; unused time rolls over); a case starts only if
its estimate fits, else it is ``not run: budget``, and one that runs past 3× its estimate (or the
budget's end) is stopped and ``failed``. Compiles, autotuning and graph capture happen in a
case's first call, outside its timed loop but inside the budget. Estimates (benchmarks/gpu_plan.py;
guesses for an H200, never measured: ``--costs-from results.json`` uses a run's measured seconds):

    =====================================  ==========  ======================================
    step                                   estimate    paid by
    =====================================  ==========  ======================================
    start-up (imports, CUDA init)          ~15 s       before the first stage
    Triton kernel compile, each            2 s         first case of a shape and dtype
    Inductor, GatedExpertMLP reference     15 s        first shape, again for the dynamic one
    Inductor, whole model                  45–150 s    batch 1 (static), batch 32 (dynamic)
    model build + fp32/fp16 references     4–10 s      the family's first case
    timed op / model case                  1.5 / 3 s   every case
    =====================================  ==========  ======================================

    ========  ===========================  =========  =================================
    stage     window at --budget-s 540      estimated  left ``not run: budget``
    ========  ===========================  =========  =================================
    parity    62 s                          44 s       none (8 cases)
    kernels   104 s (+ parity's rest)       86 s       none (24 cases)
    models    354 s (+ the rest)            359 s      17 of 45: IFDD kernels and ViT
                                                       compiled at batch 32/8, S4D deploy,
                                                       IFDD and S4D official compiled
    ========  ===========================  =========  =================================

``--list`` prints every case with its estimate and whether it fits, without running anything.
Always left out (listed in results.md): bf16, GatedExpertMLP's fixed-gates mode, the
official-fixture tests, ONNX Runtime and TensorRT. The default plan is the reduced first-run
set: fp16 timings, fp32 parity only on the models' shapes, and no GEMM autotuning:
GatedExpertMLP's GEMMs are pinned to tile 0 (128×128×64, 8 warps, 3 stages) with
``kernels.gated_expert_mlp.pin_gemm_tile`` (``--full`` restores
fp32 parity everywhere and tunes all five tiles).

``--dry-run`` rehearses the same code on the CPU (about 25 s on 2 cores): tiny shapes, the kernels in
Triton's interpreter (``TRITON_INTERPRET=1``, set here before Triton is imported),
torch.compile's "eager" backend, no CUDA graphs, and IFDD replaced by its lifting module + head
(tests/test_gpu_run.py runs it in CI).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_plan import STAGE_SHARES, STAGES, Plan, dry_plan, gpu_plan


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()  # the budget's clock: imports and CUDA start-up count
    args = _parse(argv)
    # Triton decides between compiling and interpreting when a kernel is decorated, i.e. at the
    # first import of kernels/: the mode must be in the environment before that.
    os.environ["TRITON_INTERPRET"] = "1" if args.dry_run else "0"
    if args.dry_run:  # Inductor's pool of compile workers would start up on 2 cores and slow every call
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    import torch

    from benchmarks import gpu_models, gpu_ops, gpu_report
    from benchmarks.gpu_harness import Run, measured_costs
    from kernels._triton import interpreting, triton

    if triton is None:
        return _fail("Triton is not installed")
    if interpreting() != args.dry_run:
        return _fail(f"kernels were imported with TRITON_INTERPRET={int(interpreting())} before this run set it")
    plan = dry_plan() if args.dry_run else gpu_plan(full=args.full)
    plan = plan.with_options(perturb=args.perturb)
    # Every variant of a family compiles the same forward code, told apart by guards (use_kernels,
    # router_mode) and two shapes each: more entries than Dynamo's default 8 per code object.
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    # fp32 references in full fp32: no TF32 in matmuls or cuDNN convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    stages = [s.strip() for s in args.stages.split(",")]
    cases = [c for c in gpu_ops.op_cases(plan) + gpu_models.model_cases(plan) if c.stage in stages]
    measured = measured_costs(args.costs_from) if args.costs_from else {}
    if args.list:
        _list(cases, args.budget_s, plan, measured)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        return _fail("no CUDA device: run it on the GPU box, or rehearse with --dry-run")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = _machine(plan, torch, triton)
    meta["gemm_tiles"] = gpu_ops.pin_gemm_tiles(plan.gemm_config)
    meta["tolerance"] = (
        "ops per element |kernel − fp32 ref| ≤ 2·|fp16 ref − fp32 ref| + atol (fp16 atol 1e-3 LiftingSplit, 2e-3 "
        "GatedExpertMLP: ½ / 1 fp16 ulp at |y| < 4; fp32 2e-5); model logits worst |err| ≤ 2 × the fp16 PyTorch "
        f"deploy model's worst + {gpu_models.MODEL_ATOL:g}"
    )
    run = Run(args.out, args.budget_s, plan.reserve_s, meta, gpu_report.render, started=started, measured=measured)
    with torch.no_grad():  # not inference_mode: S4D's weight cache reads parameters' version counters
        results = run.execute(cases)
    run.write()
    print(gpu_report.render(run.as_dict()))
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 1 if any(r.status == "failed" for r in results) else 0


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole run (default 540)")
    parser.add_argument("--dry-run", action="store_true", help="CPU rehearsal: tiny shapes, Triton interpreter")
    parser.add_argument("--full", action="store_true", help="fp32 parity on every shape, autotune all GEMM tiles")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of parity,kernels,models")
    parser.add_argument("--costs-from", type=Path, help="an earlier results.json: its measured seconds as estimates")
    parser.add_argument("--list", action="store_true", help="print the cases and estimates, run nothing")
    parser.add_argument("--perturb", type=float, default=0.0, help=argparse.SUPPRESS)  # test hook: wrong kernels
    args = parser.parse_args(argv)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    return args


def _list(cases, budget_s: float, plan: Plan, measured: dict) -> None:
    """Every case with its estimate, as the run would see it if every earlier case took its estimate."""
    available = budget_s - plan.reserve_s - 15.0 * (not plan.dry_run)  # start-up
    deadline, share, clock, done = {}, 0.0, 0.0, set()
    for stage, fraction in STAGE_SHARES:
        share += fraction
        deadline[stage] = available * share
    for case in cases:
        estimate = case.estimate_s(done, measured)
        fits = clock + estimate <= deadline[case.stage]
        if fits:
            clock += estimate
            done.update(s.key for s in case.setups)
        print(f"{estimate:7.1f} s  {'runs   ' if fits else 'skipped'}  {case.name}")
    print(f"estimated total {clock:.0f} s of {available:.0f} s")


def _machine(plan: Plan, torch, triton) -> dict:
    """Device name, driver and versions for the report."""
    meta = {"dry_run": plan.dry_run, "dtype": plan.dtype, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "compile_backend": plan.compile_backend,
            "left_out": list(plan.left_out), "perturb": plan.perturb}  # fmt: skip
    if plan.device != "cuda":
        return dict(
            meta, device=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", driver="-"
        )
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = (
            subprocess.run(query, capture_output=True, text=True, timeout=20, check=False)
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown (nvidia-smi failed)"
    return dict(meta, device=torch.cuda.get_device_name(), driver=driver)


def _fail(message: str) -> int:
    print(f"benchmarks.gpu_run: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
