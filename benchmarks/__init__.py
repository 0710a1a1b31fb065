"""Benchmarks: pytest-benchmark files (bench_*.py) and the budgeted GPU run (``python -m benchmarks.gpu_run``)."""
