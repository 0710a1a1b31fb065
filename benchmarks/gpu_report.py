"""results.md of ``benchmarks.gpu_run``: one table per stage, ratios to the baselines measured in
the same run, the issue-4 targets, and what was left out. Reads only results.json's dict."""

from __future__ import annotations

DONE = "done"
# Targets (issue 4), shown beside the deploy-with-kernels rows.
MODEL_TARGETS = {("s4d", 1): ("ms", 1.3), ("ifdd", 1): ("ms", 3.0), ("s4d", 32): ("clips/s", 1800),
                 ("ifdd", 32): ("clips/s", 1200)}  # fmt: skip
KERNEL_BASELINES = {
    "lifting_split": ("copy", 2.0),
    "gated_expert_mlp": ("plain_mlp", 1.2),
}  # op: (baseline, target ratio)


def render(data: dict) -> str:
    meta, cases = data["meta"], data["cases"]
    counts = {}
    for case in cases:
        counts[case["status"]] = counts.get(case["status"], 0) + 1
    lines = [
        "# dfer-edge GPU run"
        + (" (dry run: CPU, tiny shapes; the numbers mean nothing)" if meta.get("dry_run") else ""),
        "",
        (
            f"device {meta.get('device')} · driver {meta.get('driver')} · torch {meta.get('torch')} · "
            f"triton {meta.get('triton')} · CUDA {meta.get('cuda')} · dtype {meta.get('dtype')}"
        ),
        f"budget {meta.get('budget_s')} s, elapsed {meta.get('elapsed_s')} s · "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
        f"GatedExpertMLP tiles: {meta.get('gemm_tiles')}",
        f"tolerances: {meta.get('tolerance')}",
        "",
    ]
    lines += _parity([c for c in cases if c["stage"] == "parity"])
    lines += _kernels([c for c in cases if c["stage"] == "kernels"])
    lines += _models([c for c in cases if c["stage"] == "models"])
    unfinished = [c for c in cases if c["status"] != DONE]
    if unfinished:
        lines += ["## Not done", ""] + [f"- `{c['name']}`: {c['status']}. {c['error']}" for c in unfinished] + [""]
    lines += ["## Left out of this run", ""] + [f"- {item}" for item in meta.get("left_out", [])] + [""]
    return "\n".join(lines)


def _parity(cases: list) -> list[str]:
    lines = ["## Parity (kernels vs references)", "", "| case | status | first call s | check |", "|---|---|---|---|"]
    for c in cases:
        m = c["measurement"] or {}
        lines.append(
            f"| {c['name']} | {c['status']} | {_num(m.get('first_call_s'))} | {_cell(m.get('check') or c['error'])} |"
        )
    return lines + [""]


def _kernels(cases: list) -> list[str]:
    lines = ["## Kernels", "", "| op | variant | size | status | median | p90 | GB/s | TFLOP/s | ÷ baseline | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in cases:
        m = c["measurement"] or {}
        baseline, target = KERNEL_BASELINES[c["group"]]
        base = _median(cases, c["group"], baseline, c["size"])
        ratio = ""
        if m.get("median_ms") and base and c["variant"] != baseline:
            ratio = f"{m['median_ms'] / base:.2f}× {baseline}" + (
                f" (target ≤ {target})" if c["variant"] == "triton" else ""
            )
        size = f"B{c['size']}" if c["group"] == "lifting_split" else f"{c['size']} tok"
        lines.append(
            f"| {c['group']} | {c['variant']} | {size} | {c['status']} | {_time(m.get('median_ms'))} | "
            f"{_time(m.get('p90_ms'))} | {_num(_rate(m, 'bytes_moved', 1e6))} | {_num(_rate(m, 'flops', 1e9))} | "
            f"{ratio} | {_cell(m.get('note', '') or c['error'])} |"
        )
    return lines + [""]


def _models(cases: list) -> list[str]:
    header = (
        "| family | variant | batch | status | median ms | p90 ms | clips/s | speedup vs official eager | "
        "÷ ViT ceiling | target | note |"
    )
    lines = ["## Models (fp16)", "", header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        m = c["measurement"] or {}
        ms = m.get("median_ms")
        official = _median(cases, c["group"], "official_eager", c["size"])
        ceiling = min(
            (
                v
                for v in (
                    _median(cases, "vit", n, c["size"]) for n in ("plain_eager", "plain_compiled", "plain_cudagraphs")
                )
                if v
            ),
            default=None,
        )
        speedup = f"{official / ms:.2f}×" if ms and official and c["group"] != "vit" else ""
        vs_ceiling = f"{ms / ceiling:.2f}" if ms and ceiling and c["group"] == "s4d" else ""
        clips = c["size"] / ms * 1e3 if ms else None
        lines.append(
            f"| {c['group']} | {c['variant']} | {c['size']} | {c['status']} | {_num(ms)} | {_num(m.get('p90_ms'))} | "
            f"{_num(clips)} | {speedup} | {vs_ceiling} | {_target(c, ms, clips)} | {_cell(m.get('note', '') or c['error'])} |"
        )
    return lines + [""]


def _target(case: dict, ms, clips) -> str:
    goal = MODEL_TARGETS.get((case["group"], case["size"]))
    if goal is None or not case["variant"].startswith("kernels") or ms is None:
        return ""
    unit, value = goal
    met = ms <= value if unit == "ms" else clips >= value
    return f"{'≤' if unit == 'ms' else '≥'} {value} {unit}: {'met' if met else 'missed'}"


def _median(cases: list, group: str, variant: str, size: int):
    for c in cases:
        if (c["group"], c["variant"], c["size"], c["status"]) == (group, variant, size, DONE):
            return (c["measurement"] or {}).get("median_ms")
    return None


def _rate(m: dict, key: str, scale: float):
    return m[key] / m["median_ms"] / scale if m.get(key) and m.get("median_ms") else None


def _time(ms) -> str:
    if ms is None:
        return ""
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.3f} ms"


def _cell(text: str) -> str:
    """Text for a table cell: a bare | would end the cell."""
    return text.replace("|", "\\|")


def _num(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}"
