"""benchmarks.report on recorded runs: tables and plots exist and the numbers are the JSON's.

tests/fixtures/bench_short.json is a real ``python -m pytest benchmarks -m cpu --bench-short``
run, shrunk by tests/fixtures/bench_shrink.py (a few cases per kind, no per-round data);
bench_gpu_dry_run.json is a ``python -m benchmarks.gpu_run --dry-run`` results.json (the CPU
rehearsal), likewise shrunk: the report must draw it and label it, and the README must never
show it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import report, report_tables
from benchmarks.report_tables import BACKEND_NAMES, STAGES, fmt, ratio
from tests.conftest import FIXTURES

SUITE_JSON = FIXTURES / "bench_short.json"
GPU_JSON = FIXTURES / "bench_gpu_dry_run.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = report.load([SUITE_JSON, GPU_JSON])
    path = report.write_report(results, out)
    return results, path.read_text(), out


def rows_of(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of every table whose first column is first_header, as {column: cell}."""
    rows, header = [], None
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")] if line.startswith("|") else None
        if cells is None:
            header = None
        elif header is None and cells[0] == first_header:
            header = cells
        elif header is not None and not line.startswith("|---"):
            rows.append(dict(zip(header, cells)))
    return rows


def model_mismatches(markdown: str, data: dict) -> list[str]:
    """Every model case of the JSON against its row of report.md: p50/p95/p99, clips/s, ratio."""
    rows = {(r["family"], r["batch"], r["backend"]): r for r in rows_of(markdown, "family") if "backend" in r}
    wrong = []
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if e.get("kind") != "model":
            continue
        row = rows.get((e["family"], str(e["batch"]), BACKEND_NAMES[e["backend"]]))
        want = {"p50 ms": fmt(e["p50_ms"]), "p95 ms": fmt(e["p95_ms"]), "p99 ms": fmt(e["p99_ms"]),
                "clips/s": fmt(e["clips_per_s"]), "÷ baseline (eager)": ratio(e["ratio_to_baseline"])}
        if row is None:
            wrong.append(f"no row for {e['case']}")
            continue
        wrong += [f"{e['case']} {k}: {row.get(k)} != {v}" for k, v in want.items() if row.get(k) != v]
    return wrong


def test_report_and_plots_are_written(built):
    results, text, out = built
    assert len(results.suites) == 1 and len(results.gpu) == 1 and results.gpu[0].dry_run
    for heading in ("### Models", "### Runtime end to end", "### CPU per clip by stage", "### Per-frame FER model",
                    "## GPU run 1: `bench_gpu_dry_run.json` (dry run on the CPU: not a measurement)"):
        assert heading in text
    run = results.suites[0]
    for line in ("machine " + run.machine, "date " + run.date, "commit " + run.commit, report_tables.versions_line(run.versions)):
        assert line in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["gpu1_kernels.png", "gpu1_models.png", "suite1_model.png", "suite1_runtime.png", "suite1_stage.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name  # a drawn figure, not an empty canvas
        assert f"]({name})" in text  # linked under its table


def test_model_numbers_are_the_json_ones(built):
    _, text, _ = built
    data = json.loads(SUITE_JSON.read_text())
    assert sum(b["extra_info"].get("kind") == "model" for b in data["benchmarks"]) >= 8
    assert model_mismatches(text, data) == []


def test_a_changed_number_is_caught(built, tmp_path):
    """The comparison can fail: a report built from a JSON with one p50 changed disagrees with the original."""
    data = json.loads(SUITE_JSON.read_text())
    changed = json.loads(SUITE_JSON.read_text())
    case = next(b for b in changed["benchmarks"] if b["extra_info"].get("kind") == "model")
    case["extra_info"]["p50_ms"] *= 1.5
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    text = report.write_report(report.load([tmp_path / "changed.json"]), tmp_path / "out").read_text()
    assert len(model_mismatches(text, data)) == 1


def test_runtime_and_stage_numbers_are_the_json_ones(built):
    _, text, _ = built
    data = json.loads(SUITE_JSON.read_text())
    runtime = {(r["video"], r["case"], r["streams"]): r for r in rows_of(text, "video") if "clips/s" in r}
    stages = {(r["video"], r["case"], r["streams"]): r for r in rows_of(text, "video") if "decode" in r}
    cases = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"].get("kind") == "runtime"]
    assert {e["video"] for e in cases} == {"generated", "real"}
    for e in cases:
        key = (e["video"], e["mode"], str(e["streams"]))
        assert runtime[key]["clips/s"] == fmt(e["clips_per_s"])
        assert runtime[key]["ready→result p50 / p95 / p99 ms"] == f"{fmt(e['p50_ms'])} / {fmt(e['p95_ms'])} / {fmt(e['p99_ms'])}"
        assert runtime[key]["runtime CPU ÷ backend"] == fmt(100 * e["runtime_share"], " %")
        assert [stages[key][s] for s in STAGES] == [fmt(e[f"stage_{s}_ms"]) for s in STAGES]


def test_int8_ratio_is_int8_over_fp32_of_the_same_run():
    run = report.load([SUITE_JSON]).suites[0]
    int8 = [c for c in run.of_kind("model") if c.get("backend") == "ort-int8-qdq"]
    assert int8
    for c in int8:
        fp32 = run.find(f"{c.get('family')}/b{c.batch}/ort-fp32")
        assert report_tables.int8_ratio(run, c) == pytest.approx(c.seconds / fp32.seconds)
        assert c.get("top1_agree") is not None and c.get("max_prob_diff") is not None


def test_readme_section_is_rewritten_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro\n\n", "\n\n## Next\n\ntext\n"
    readme.write_text(f"{before}{report.README_START}\nold numbers\n{report.README_END}{after}")
    report.update_readme(report.load([SUITE_JSON, GPU_JSON]), readme)
    text = readme.read_text()
    assert text.startswith(before + report.README_START) and text.endswith(report.README_END + after)
    assert "old numbers" not in text
    section = text.split(report.README_START)[1].split(report.README_END)[0]
    run = report.load([SUITE_JSON]).suites[0]
    assert run.machine in section and run.date in section and "no GPU run has been measured yet" in section
    assert "dry run" not in section.replace("--dry-run", "")  # the rehearsal's numbers never reach the README
    fp32 = run.find("ifdd/b1/ort-fp32")
    assert f"{fmt(fp32.get('p50_ms'))} ({ratio(fp32.ratio)})" in section


def test_bad_inputs_get_one_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    not_bench = tmp_path / "other.json"
    not_bench.write_text('{"rows": []}')
    for args, says in (([str(not_bench)], "neither pytest-benchmark JSON"),
                       ([str(SUITE_JSON), "--readme", str(readme)], "needs the two marker lines")):
        done = subprocess.run([sys.executable, "-m", "benchmarks.report", *args, "-o", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
    assert readme.read_text() == "no markers here\n"
