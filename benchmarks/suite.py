"""What every benchmark case shares: the short mode, threads, and ``record`` (one helper that
writes a case's extra_info: its baseline and the ratio to it, batch, device, versions, p50/p95/p99).

Ratios come only from cases timed in the same pytest session: ``record`` keeps each case's
seconds in ``TIMES``; a case whose baseline already ran gets its ratio at once, and the
conftest's ``pytest_benchmark_update_json`` hook fills in the rest from the same run's JSON
before it is written (``fill_ratios``), so the order of the cases never matters. A baseline
that did not run in this session (deselected with -k, skipped) leaves the ratio ``None``.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform

import numpy as np

from models import FAMILIES

SHORT_ENV = "DFER_BENCH_SHORT"  # "1": the short mode (--bench-short sets it); CI runs it
THREADS = int(os.environ.get("DFER_BENCH_THREADS", os.cpu_count() or 1))
SAME_CASE = "same case"  # baseline timed inside the case itself (the ratio is given to record)
TIMES: dict[str, float] = {}  # case id → seconds, for this session only
VERSIONED = ("numpy", "torch", "onnxruntime", "onnx", "av", "triton", "tensorrt_rtx", "ai_edge_litert")
# The model cases (benchmarks/bench_models_cpu.py): every family, and FineCLIPER's second
# variant, whose graph also takes landmark renderings.
MODEL_CASES = (*FAMILIES, "finecliper-landmarks")


def short() -> bool:
    """Short mode: few rounds, small stream counts, reduced configs where a family has one."""
    return os.environ.get(SHORT_ENV) == "1"


def rounds(full: int, short_rounds: int = 1) -> int:
    return short_rounds if short() else full


@functools.cache
def cpu_device() -> str:
    return f"cpu: {_cpu_name()} ({platform.machine()}), {os.cpu_count()} cores, {THREADS} threads"


def _cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform.processor() elsewhere, often empty)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the libraries a case may run on (only those installed), and Python's."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception:  # not installed, or fails to import here: not part of this run
            continue
    return found


def percentiles_ms(data) -> dict[str, float]:
    """p50/p95/p99 in ms of the per-round seconds (with few rounds p99 is close to the max)."""
    p50, p95, p99 = np.percentile(np.asarray(data, dtype=float), (50, 95, 99))
    return {"p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95, "p99_ms": 1e3 * p99}


def record(benchmark, *, kind: str, case: str, baseline: str, batch: int | None, device: str | None = None,
           seconds: float | None = None, ratio: float | None = None, calls_per_round: int = 1, **extra) -> None:
    """Fill benchmark.extra_info for one case.

    case: this case's id (``family/b4/ort-int8``), unique in the session; baseline: the id of the
    case it is compared with (itself for a baseline, SAME_CASE when it was timed inside this case
    and ``ratio`` is given). seconds: the time compared (default: the median round per
    iteration); ratio = seconds ÷ the baseline's seconds, so < 1 is faster than the baseline.
    calls_per_round: calls a timed iteration makes (the percentiles are per call)."""
    stats = getattr(benchmark, "stats", None)
    per_call = [d / calls_per_round for d in stats.stats.data] if stats is not None else []  # one per round
    if seconds is None:
        seconds = float(np.median(per_call))
    TIMES[case] = seconds
    if ratio is None:
        ratio = 1.0 if baseline == case else (seconds / TIMES[baseline] if baseline in TIMES else None)
    info = {"kind": kind, "case": case, "baseline": baseline, "ratio_to_baseline": _round(ratio),
            "seconds": seconds, "batch": batch, "device": device or cpu_device(), "threads": THREADS,
            "short": short(), "rounds": len(per_call), "versions": versions()}
    if per_call:
        info.update({k: _round(v) for k, v in percentiles_ms(per_call).items()})
    info.update({k: _round(v) for k, v in extra.items()})
    benchmark.extra_info.update(info)


def fill_ratios(benchmarks: list[dict]) -> None:
    """Ratios of the cases in one pytest-benchmark JSON whose baseline ran after them."""
    seconds = {b["extra_info"]["case"]: b["extra_info"]["seconds"] for b in benchmarks if "case" in b.get("extra_info", {})}
    for b in benchmarks:
        info = b.get("extra_info", {})
        if info.get("ratio_to_baseline") is None and info.get("baseline") in seconds:
            info["ratio_to_baseline"] = _round(info["seconds"] / seconds[info["baseline"]])


def _round(value):
    if isinstance(value, float | np.floating):
        return float(f"{float(value):.5g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value
