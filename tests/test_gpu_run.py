"""benchmarks.gpu_run rehearsed on the CPU (--dry-run): the GPU session's code path must keep
what it measures, keep its budget, and refuse to time a wrong kernel.

Each test runs the real command in a subprocess (the entry point sets TRITON_INTERPRET itself),
at the dry plan's tiny shapes: about 25 s for the full run, less for the others.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINAL = {"done", "failed", "not run: budget"}


def _dry_run(out: Path, *options: str) -> tuple[int, dict, str, str]:
    command = [sys.executable, "-m", "benchmarks.gpu_run", "--dry-run", "--out", str(out), *options]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert (out / "results.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return (
        proc.returncode,
        json.loads((out / "results.json").read_text()),
        (out / "results.md").read_text(),
        proc.stderr,
    )


def _expected_names(stages=("parity", "kernels", "models")) -> list[str]:
    from benchmarks.gpu_models import model_cases
    from benchmarks.gpu_ops import op_cases
    from benchmarks.gpu_plan import dry_plan

    plan = dry_plan()
    return [c.name for c in op_cases(plan) + model_cases(plan) if c.stage in stages]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return _dry_run(tmp_path_factory.mktemp("gpu_run") / "out")


def test_dry_run_finishes_every_case_of_every_stage(full_run):
    rc, data, _, stderr = full_run
    cases = data["cases"]
    assert rc == 0, stderr[-3000:]
    assert [c["name"] for c in cases] == _expected_names()
    failed = [f"{c['name']}: {c['status']} {c['error']}" for c in cases if c["status"] != "done"]
    assert not failed
    assert {c["stage"] for c in cases} == {"parity", "kernels", "models"}
    families = {(c["group"], c["variant"]) for c in cases if c["stage"] == "models"}
    assert len([f for f in families if f[0] == "s4d"]) == 7 and len([f for f in families if f[0] == "ifdd"]) == 5
    for case in cases:
        m = case["measurement"]
        assert m["check"], case["name"]  # every case checked its output
        assert case["elapsed_s"] is not None and case["estimate_s"] is not None
        if case["stage"] != "parity":
            assert 0 < m["median_ms"] <= m["p90_ms"] and m["reps"] >= 2, case["name"]
    kernel_checks = [c["measurement"]["check"] for c in cases if c["variant"] == "triton"]
    assert kernel_checks and all("max |err|" in check for check in kernel_checks)


def test_dry_run_writes_the_report(full_run):
    _, data, markdown, _ = full_run
    for heading in ("## Parity", "## Kernels", "## Models (fp16)", "## Left out of this run"):
        assert heading in markdown
    assert "triton 3." in markdown and data["meta"]["torch"] in markdown
    assert "| s4d | kernels_cudagraphs | 2 | done |" in markdown
    assert any("pinned" in item or "interpreter" in item for item in data["meta"]["left_out"])
    table = []  # every row of a table has its header's cells (a bare | in a check would add one)
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            table.append(len(re.split(r"(?<!\\)\|", line)))
        elif table:
            assert set(table) == {table[0]}, table
            table = []


def test_tiny_budget_keeps_finished_cases_and_skips_the_rest(tmp_path):
    _, data, markdown, stderr = _dry_run(tmp_path / "out", "--budget-s", "12")
    cases = data["cases"]
    assert [c["name"] for c in cases] == _expected_names()
    statuses = {c["status"] for c in cases}
    assert statuses <= {"done", "not run: budget"}, stderr[-3000:]
    assert statuses == {"done", "not run: budget"}
    for case in cases:
        if case["status"] == "not run: budget":  # skipped by its estimate, or cut at the budget's end (a loaded box)
            cut = "stopped after" in case["error"]
            assert case["measurement"] is None and (cut or (case["elapsed_s"] is None and "estimated" in case["error"]))
        else:
            assert case["measurement"]["check"]
    assert data["meta"]["elapsed_s"] <= 12 + 5  # the budget, plus the last case's overrun at most
    assert "not run: budget" in markdown


def test_a_wrong_kernel_output_is_failed_and_never_timed(tmp_path):
    rc, data, _, _ = _dry_run(tmp_path / "out", "--stages", "parity,kernels", "--perturb", "0.5")
    cases = data["cases"]
    assert rc == 1
    assert [c["name"] for c in cases] == _expected_names(("parity", "kernels"))
    kernel_cases = [c for c in cases if c["stage"] == "parity" or c["variant"] == "triton"]
    assert kernel_cases
    for case in kernel_cases:
        assert case["status"] == "failed" and case["error"].startswith("CheckFailed"), case
        assert case["measurement"] is None  # nothing was timed
    others = [c for c in cases if c not in kernel_cases]
    assert others and all(c["status"] == "done" for c in others)
    assert all(c["status"] in FINAL for c in cases)
