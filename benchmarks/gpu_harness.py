"""The budgeted runner of ``benchmarks.gpu_run``: cases, their checks and timing, and results.json.

Every case's result is written the moment it finishes (results.json rewritten atomically, and
results.md with it), so a run cut short keeps what it measured: a case being run is marked
``running``, one never reached ``pending``; a finished run has only ``done``, ``failed`` (with
the error) and ``not run: budget``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.gpu_plan import STAGE_SHARES, Setup

DONE, FAILED, SKIPPED = "done", "failed", "not run: budget"


class CheckFailed(Exception):
    """A case's output is wrong: the case is failed and never timed."""


class CaseTimeout(Exception):
    """A case ran past its allowance (3× its estimate, at most to the end of the budget)."""


@dataclass
class Measurement:
    """What a finished case reports. Times are per call; ``items`` (clips, tokens) per call."""

    check: str = ""
    first_call_s: float | None = None  # includes compiling / autotuning / capturing
    median_ms: float | None = None
    p90_ms: float | None = None
    reps: int = 0
    inner: int = 0
    items: int | None = None
    item_name: str = ""
    bytes_moved: int | None = None
    flops: int | None = None
    note: str = ""


@dataclass
class Case:
    """One measurement: ``run`` does its set-up, checks its output, times it, and returns the numbers.

    ``group`` / ``variant`` / ``size`` place it in the report (e.g. "s4d", "kernels_compiled", 8).
    """

    name: str
    stage: str
    group: str
    variant: str
    size: int
    run: Callable[[], Measurement]
    timing_s: float
    setups: tuple[Setup, ...] = ()

    def estimate_s(self, done: set[str], measured: dict[str, float]) -> float:
        if self.name in measured:
            return measured[self.name]
        return self.timing_s + sum(s.cost_s for s in self.setups if s.key not in done)


@dataclass
class Result:
    name: str
    stage: str
    group: str
    variant: str
    size: int
    status: str = "pending"
    estimate_s: float | None = None
    elapsed_s: float | None = None
    error: str = ""
    measurement: Measurement | None = None


@dataclass
class Run:
    """Runs cases stage by stage inside the budget and keeps results.json / results.md current."""

    out_dir: Path
    budget_s: float
    reserve_s: float
    meta: dict
    render: Callable[[dict], str]  # results dict → markdown
    started: float = field(default_factory=time.monotonic)
    measured: dict[str, float] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    done_setups: set[str] = field(default_factory=set)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def execute(self, cases: list[Case], log: Callable[[str], None] = print) -> list[Result]:
        self.results = [Result(c.name, c.stage, c.group, c.variant, c.size) for c in cases]
        self.write()
        end = self.budget_s - self.reserve_s
        available = max(0.0, end - self.elapsed())
        start = self.elapsed()
        deadlines, share = {}, 0.0
        for stage, fraction in STAGE_SHARES:
            share += fraction
            deadlines[stage] = start + available * share
        self.meta["stage_deadlines_s"] = {k: round(v, 1) for k, v in deadlines.items()}
        for case, result in zip(cases, self.results):
            estimate = case.estimate_s(self.done_setups, self.measured)
            result.estimate_s = round(estimate, 2)
            now = self.elapsed()
            if now + estimate > deadlines[case.stage]:
                result.status = SKIPPED
                result.error = (
                    f"estimated {estimate:.1f} s, {max(0.0, deadlines[case.stage] - now):.1f} s left to its stage"
                )
                log(f"[{now:6.1f}s] {case.name}: {SKIPPED} ({result.error})")
                self.write()
                continue
            result.status = "running"
            self.write()
            own_allowance = max(3 * estimate, estimate + 30)
            allowance = min(own_allowance, end - now)
            begin = time.monotonic()
            try:
                with _deadline(allowance):
                    result.measurement = case.run()
                result.status = DONE
                self.done_setups.update(s.key for s in case.setups)
            except CaseTimeout as error:  # cut by the budget's end: not this case's fault, so not "failed"
                result.status = SKIPPED if allowance < own_allowance else FAILED
                result.error = _describe(error)
            except Exception as error:  # noqa: BLE001  (any failure is this case's result; the run goes on)
                result.status = FAILED
                result.error = _describe(error)
            result.elapsed_s = round(time.monotonic() - begin, 3)
            log(f"[{self.elapsed():6.1f}s] {case.name}: {result.status} in {result.elapsed_s:.1f} s"
                f" (est. {estimate:.1f}){_summary(result)}")  # fmt: skip
            self.write()
        return self.results

    def as_dict(self) -> dict:
        return {
            "meta": dict(self.meta, elapsed_s=round(self.elapsed(), 1), budget_s=self.budget_s),
            "cases": [dataclasses.asdict(r) for r in self.results],
        }

    def write(self) -> None:
        data = self.as_dict()
        _write_atomic(self.out_dir / "results.json", json.dumps(data, indent=1, default=str))
        _write_atomic(self.out_dir / "results.md", self.render(data))


def measured_costs(path: Path) -> dict[str, float]:
    """Case name → elapsed seconds of the done cases of an earlier results.json (--costs-from)."""
    data = json.loads(Path(path).read_text())
    return {c["name"]: float(c["elapsed_s"]) for c in data["cases"] if c["status"] == DONE and c["elapsed_s"]}


def time_calls(fn: Callable[[], object], *, sync: Callable[[], None], plan) -> Measurement:
    """Warm up, then ``plan.reps`` reps of ``inner`` back-to-back calls, synchronised before each
    clock read; per-call median and p90 (nearest rank) over the reps.

    ``inner`` is chosen from one timed call so a rep lasts ``plan.target_rep_s`` (µs-scale
    kernels launch back to back, as in a model); the loop stops early after ``plan.min_reps``
    once ``plan.max_timing_s`` has passed.
    """
    for _ in range(plan.warmup):
        fn()
    sync()
    begin = time.perf_counter()
    fn()
    sync()
    single = time.perf_counter() - begin
    inner = max(1, min(plan.max_inner, math.ceil(plan.target_rep_s / max(single, 1e-7))))
    samples: list[float] = []
    stop = time.perf_counter() + plan.max_timing_s
    while len(samples) < plan.reps and (len(samples) < plan.min_reps or time.perf_counter() < stop):
        sync()
        begin = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - begin) / inner)
    ranked = sorted(samples)
    p90 = ranked[max(0, math.ceil(0.9 * len(ranked)) - 1)]
    return Measurement(median_ms=statistics.median(samples) * 1e3, p90_ms=p90 * 1e3, reps=len(samples), inner=inner)


def within_rounding(got, ref32, ref_lowp, *, atol: float, name: str, per_element: bool = True) -> str:
    """|got − ref32| ≤ 2·|ref_lowp − ref32| + atol, or CheckFailed; returns the check's summary.

    ref_lowp is the reference run in got's dtype: the kernel may be off by twice the rounding
    PyTorch's own low-precision run suffers (0 in fp32, leaving atol). ``per_element`` as the
    kernel tests do; a model's logits compare worst against worst instead (``False``), since two
    fp16 runs of 12 layers round differently everywhere and no element's own error bounds another's.
    """
    import torch

    got, ref32, ref_lowp = (torch.as_tensor(t).detach().double().cpu() for t in (got, ref32, ref_lowp))
    if got.shape != ref32.shape:
        raise CheckFailed(f"{name}: shape {tuple(got.shape)} != reference {tuple(ref32.shape)}")
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values")
    error = (got - ref32).abs()
    own = (ref_lowp - ref32).abs()
    if per_element:
        bound = 2 * own + atol
        bad = error > bound
        if bad.any():
            worst = int((error - bound).argmax())
            raise CheckFailed(
                f"{name}: {int(bad.sum())}/{bad.numel()} elements beyond 2·|ref_lowp − ref32| + {atol:g}; "
                f"worst error {error.flatten()[worst]:.3g} where the bound is {bound.flatten()[worst]:.3g}"
            )
        return f"{name}: max |err| {error.max():.3g} ≤ 2·own rounding + {atol:g} per element"
    bound = 2 * float(own.max()) + atol
    if float(error.max()) > bound:
        raise CheckFailed(f"{name}: max |err| {error.max():.3g} > 2·{own.max():.3g} (fp16 reference's) + {atol:g}")
    return f"{name}: max |err| {error.max():.3g} ≤ {bound:.3g} (2 × the fp16 reference's {own.max():.3g} + {atol:g})"


def finite(out, *, name: str) -> str:
    """For outputs no reference computes (the noisy official router, other models): finite, or CheckFailed."""
    import torch

    tensors = out if isinstance(out, tuple | list) else (out,)
    for tensor in tensors:
        if not torch.isfinite(tensor).all():
            raise CheckFailed(f"{name}: non-finite output")
    return f"{name}: finite (no reference: not the same computation)"


def perturbed(fn: Callable, eps: float) -> Callable:
    """fn with eps added to every output tensor: the test hook that proves the checks can fail."""
    if not eps:
        return fn

    def shifted(*args, **kwargs):
        out = fn(*args, **kwargs)
        return tuple(t + eps for t in out) if isinstance(out, tuple) else out + eps

    return shifted


@contextlib.contextmanager
def count_calls(module, attribute: str) -> Iterator[list]:
    """Count calls of module.attribute (the real function still runs): did a model take the kernel path?"""
    original = getattr(module, attribute)
    calls: list = []

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(module, attribute, counted)
    try:
        yield calls
    finally:
        setattr(module, attribute, original)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in this (main) thread after ``seconds``."""

    def expire(signum, frame):
        raise CaseTimeout(f"stopped after {seconds:.0f} s, 3× its estimate or the end of the budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _describe(error: Exception) -> str:
    if isinstance(error, CheckFailed | CaseTimeout):
        return f"{type(error).__name__}: {error}"
    where = traceback.extract_tb(error.__traceback__)[-1:]
    place = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    first = str(error).strip().splitlines()[0][:400] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}{place}"


def _summary(result: Result) -> str:
    m = result.measurement
    if result.status != DONE:
        return f": {result.error}"
    if m.median_ms is None:
        return f": {m.check}"
    return f": median {m.median_ms:.4g} ms, p90 {m.p90_ms:.4g} ms"


def _write_atomic(path: Path, text: str) -> None:
    """Write text to path via a temporary file in the same folder and os.replace (never half-written)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def synchronizer(device: str) -> Callable[[], None]:
    """torch.cuda.synchronize on CUDA (the clock stops only when the GPU is done); a no-op on CPU."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def checked_timing(
    fn: Callable[[], object], check: Callable[[object], str], *, plan, first: Callable | None = None, **numbers
) -> Measurement:
    """First call (compile, autotune: outside the clock; ``first`` instead of fn if given, e.g. fn
    instrumented), check its output (CheckFailed: never timed), then time fn; ``numbers`` (items,
    bytes_moved, flops, note, ...) go into the Measurement."""
    out, seconds = first_call(first or fn, device=plan.device)
    summary = check(out)
    measurement = time_calls(fn, sync=synchronizer(plan.device), plan=plan)
    return dataclasses.replace(measurement, check=summary, first_call_s=seconds, **numbers)


def first_call(fn: Callable[[], object], *, device: str) -> tuple[object, float]:
    """(output, seconds) of a first call, which compiles, autotunes or captures as it needs."""
    sync = synchronizer(device)
    sync()
    begin = time.perf_counter()
    out = fn()
    sync()
    return out, round(time.perf_counter() - begin, 3)
