"""The PNG plots of benchmarks.report (matplotlib, Agg): latency vs batch per backend, throughput
and p99 vs streams, per-stage CPU per clip as stacked bars and, for measured or rehearsed
gpu_run results, kernel rates against their baselines and model latency against the plain-ViT
ceiling. Each plot is keyed ``<section prefix><table function>`` so report.md puts it under
its table."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import GpuRun, Results, SuiteRun
from benchmarks.report_tables import BACKEND_NAMES, STAGES, _model_order, _runtime_order

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(results: Results, out: Path) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    for i, run in enumerate(sorted(results.suites, key=lambda r: r.date, reverse=True)):
        prefix = f"suite{i + 1}_"
        for key, draw in (("model_table", latency_vs_batch), ("runtime_table", streams_plot), ("stage_table", stages_plot)):
            path = draw(run, out / f"{prefix}{key.replace('_table', '')}.png")
            if path:
                plots[prefix + key] = path
    for i, gpu in enumerate(results.gpu):
        for key, draw in (("kernels", gpu_kernels_plot), ("models", gpu_models_plot)):
            path = draw(gpu, out / f"gpu{i + 1}_{key}.png")
            if path:
                plots[f"gpu{i + 1}_{key}"] = path
    return plots


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _title_suffix(run: SuiteRun) -> str:
    return " (short mode)" if run.short else ""


def latency_vs_batch(run: SuiteRun, path: Path) -> Path | None:
    cases = sorted(run.of_kind("model"), key=_model_order)
    families = sorted({c.get("family") for c in cases})
    if not families:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        mine = [c for c in cases if c.get("family") == family]
        for backend in dict.fromkeys(c.get("backend") for c in mine):
            line = sorted((c for c in mine if c.get("backend") == backend), key=lambda c: c.batch)
            batches, p50 = [c.batch for c in line], [c.get("p50_ms") for c in line]
            spread = [[0 for _ in line], [max(0.0, c.get("p95_ms") - c.get("p50_ms")) for c in line]]
            ax.errorbar(batches, p50, yerr=spread, marker="o", capsize=3, label=BACKEND_NAMES.get(backend, backend))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({c.batch for c in mine}), labels=[str(b) for b in sorted({c.batch for c in mine})])
        reduced = "" if mine[0].get("model_config") in (None, "full") else ", reduced config"
        ax.set(title=f"{family}{reduced}: latency vs batch{_title_suffix(run)}", xlabel="batch (clips)", ylabel="p50 latency per call (ms, log); bar to p95")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Models on {mine[0].device}", fontsize=10)
    return _save(fig, path)


def streams_plot(run: SuiteRun, path: Path) -> Path | None:
    cases = _runtime_order(run.of_kind("runtime"))
    if not cases:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in dict.fromkeys((c.get("video"), c.get("mode")) for c in cases):
        line = [c for c in cases if (c.get("video"), c.get("mode")) == key]
        streams = [c.get("streams") for c in line]
        label = f"{key[0]} video, {key[1]}"
        left.plot(streams, [c.get("clips_per_s") for c in line], marker="o", label=label)
        right.plot(streams, [c.get("p99_ms") for c in line], marker="o", label=label)
    for ax, what, unit in ((left, "throughput", "clips/s"), (right, "ready→result p99", "ms")):
        ax.set_xscale("log", base=2)
        ticks = sorted({c.get("streams") for c in cases})
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
        ax.set(title=f"Runtime {what} vs streams{_title_suffix(run)}", xlabel="streams", ylabel=f"{what} ({unit})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{cases[0].get('model')}, {cases[0].device}", fontsize=10)
    return _save(fig, path)


def stages_plot(run: SuiteRun, path: Path) -> Path | None:
    cases = [c for c in _runtime_order(run.of_kind("runtime")) if c.get("stage_backend_ms") is not None]
    if not cases:
        return None
    plt = _pyplot()
    labels = [f"{c.get('video')} {c.get('mode')} ×{c.get('streams')}" for c in cases]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(cases) + 1.8))
    left = [0.0] * len(cases)
    for stage in (*STAGES, "backend"):
        widths = [c.get(f"stage_{stage}_ms") or 0.0 for c in cases]
        ax.barh(labels, widths, left=left, label=stage + (" (wall)" if stage == "backend" else ""),
                hatch="//" if stage == "backend" else None, edgecolor="white" if stage != "backend" else "grey")
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set(title=f"Runtime CPU per clip by stage{_title_suffix(run)}", xlabel="ms per clip (stage CPU time; backend: wall time)",
           ylabel="video, case × streams")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper right")  # the top rows (generated, pushed first) are the short ones
    return _save(fig, path)


def _done(gpu: GpuRun, stage: str) -> list[dict]:
    return [c for c in gpu.cases if c["stage"] == stage and c["status"] == "done" and (c.get("measurement") or {}).get("median_ms")]


def gpu_kernels_plot(gpu: GpuRun, path: Path) -> Path | None:
    """GB/s (LiftingSplit, against the copy floor) and TFLOP/s (GatedExpertMLP, against a plain MLP)."""
    from benchmarks.gpu_report import KERNEL_BASELINES

    cases = _done(gpu, "kernels")
    groups = [g for g in KERNEL_BASELINES if any(c["group"] == g for c in cases)]
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, group in zip(axes[0], groups):
        mine = [c for c in cases if c["group"] == group]
        key, scale, unit = ("bytes_moved", 1e6, "GB/s") if group == "lifting_split" else ("flops", 1e9, "TFLOP/s")
        sizes = sorted({c["size"] for c in mine})
        variants = list(dict.fromkeys(c["variant"] for c in mine))
        width = 0.8 / len(variants)
        for k, variant in enumerate(variants):
            values = [next(((c["measurement"].get(key) or 0) / c["measurement"]["median_ms"] / scale
                            for c in mine if c["variant"] == variant and c["size"] == s), 0) for s in sizes]
            baseline = variant == KERNEL_BASELINES[group][0]
            ax.bar([i + k * width for i in range(len(sizes))], values, width,
                   label=f"{variant} ({'copy floor' if group == 'lifting_split' else 'plain MLP'}, baseline)" if baseline else variant,
                   color="grey" if baseline else None, hatch="//" if baseline else None)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], labels=[str(s) for s in sizes])
        ax.set(title=f"{group}: {unit} vs baseline" + (" (dry run)" if gpu.dry_run else ""),
               xlabel="batch" if group == "lifting_split" else "tokens", ylabel=unit)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{gpu.data['meta'].get('device')}, {gpu.data['meta'].get('dtype')}", fontsize=10)
    return _save(fig, path)


def gpu_models_plot(gpu: GpuRun, path: Path) -> Path | None:
    """Median latency per variant and batch; for S4D the plain-ViT ceiling (the fastest plain ViT-B on
    S4D's 800 tokens, as gpu_report's ÷ ViT ceiling column) as a dashed line."""
    cases = _done(gpu, "models")
    families = [g for g in dict.fromkeys(c["group"] for c in cases) if g != "vit"]
    if not families:
        return None
    ceiling = {}
    for c in cases:
        if c["group"] == "vit":
            ceiling[c["size"]] = min(ceiling.get(c["size"], float("inf")), c["measurement"]["median_ms"])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.4), squeeze=False)
    for ax, family in zip(axes[0], families):
        mine = [c for c in cases if c["group"] == family]
        sizes = sorted({c["size"] for c in mine})
        variants = list(dict.fromkeys(c["variant"] for c in mine))
        width = 0.8 / len(variants)
        for k, variant in enumerate(variants):
            values = [next((c["measurement"]["median_ms"] for c in mine if c["variant"] == variant and c["size"] == s), 0)
                      for s in sizes]
            ax.bar([i + k * width for i in range(len(sizes))], values, width, label=variant)
        for i, s in enumerate(sizes):
            if s in ceiling and family == "s4d":
                ax.hlines(ceiling[s], i - width / 2, i + 0.8 - width / 2, colors="black", linestyles="--",
                          label="plain ViT ceiling" if i == 0 else None)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], labels=[str(s) for s in sizes])
        ax.set_yscale("log")
        against = " vs plain-ViT ceiling" if family == "s4d" else ""
        ax.set(title=f"{family}: latency{against}" + (" (dry run)" if gpu.dry_run else ""), xlabel="batch",
               ylabel="median latency per call (ms, log)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{gpu.data['meta'].get('device')}, {gpu.data['meta'].get('dtype')}", fontsize=10)
    return _save(fig, path)
