"""The reduced S4D through a real tritonserver (python backend: ONNX Runtime on the CPU) against
the local ONNX Runtime backend, same model, same threads, same machine.

    python benchmarks/bench_triton.py [--threads N] [--clips 128] [--paced-seconds 6] [--wait-us 50000] [--only-processes]

Needs tritonclient[grpc] and the server (python -m export.triton install-server). Cases:

* ``run b=1`` / ``run b=32``: backend.run on one batch, again and again: the request's own cost
  (gRPC, the python backend's stub, the server's scheduler) next to the same ONNX Runtime call.
* ``pushed N``: N streams pushed by one host thread as fast as they go (no decoding): clips/s
  and the mean batch; ready→emitted here is mostly queueing behind the backlog.
* ``paced 8``: 8 streams at 25 fps with staggered phases, as cameras: ready→emitted when the
  model keeps up.
* ``P proc × pushed|paced S``: the same work (8 streams in all) from P runtime processes of S
  streams each, as P camera boxes sharing one server, started together: clips/s over all of
  them, p50/p99 over all their results, and (triton) the server's clips per execution (its
  statistics), above the processes' mean request when its dynamic batcher merged requests of
  both. Triton twice: the export's default max_queue_delay (2 ms) and --wait-us (a second
  model of the same ONNX; default 50 ms, the runtime's own max_delay_ms), long enough for the
  other process's request to join. The delay counts from a request's arrival; each process
  has up to RuntimeOptions.in_flight requests out (default 2), so under a backlog the server's
  queue holds requests of both processes and its dynamic batcher merges them.
  Local ONNX Runtime processes split the threads (--threads // P each): both sides use the
  same cores.

As a script it prints one table (and writes it with --json PATH). In the suite
(``python -m pytest benchmarks/bench_triton.py [--bench-short]``) the ``run`` and ``pushed`` cases
are cases of their own, each against local ONNX Runtime in the same run (seconds per clip);
they skip without tritonclient or the server.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import suite  # noqa: E402
from export.triton import TritonOptions, export_triton  # noqa: E402
from export.triton_server import Ports, TritonServer  # noqa: E402
from runtime.api import Runtime, RuntimeOptions  # noqa: E402
from runtime.synthetic import synthetic_face_frames  # noqa: E402

SMALL_S4D = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}
HOP, FPS, MAX_BATCH = 8, 25, 32
WAITING = "s4d_small_waiting"  # the same ONNX served with --wait-us as its dynamic batcher's delay
DEFAULT_DELAY_US = TritonOptions.max_queue_delay_us


def export_model(folder: Path) -> Path:
    import models
    from export.onnx import export_onnx
    from models.demo_checkpoint import write_demo_checkpoint

    checkpoint = write_demo_checkpoint("s4d", folder / "s4d_small.pth", seed=0, config=SMALL_S4D)
    return export_onnx(models.load(checkpoint), folder / "s4d_small.onnx").path


def options_for(backend: str, server: str, threads: int, queue: int) -> RuntimeOptions:
    if backend == "triton":
        return RuntimeOptions(backend="triton", server=server, max_batch=MAX_BATCH, hop=HOP, queue_per_stream=queue)
    return RuntimeOptions(backend="onnxruntime", threads=threads, max_batch=MAX_BATCH, hop=HOP, queue_per_stream=queue)


def run_calls(runtime: Runtime, batch: int, calls: int) -> dict:
    """backend.run on the same batch `calls` times (after one warm-up): p50/p99 per call."""
    inputs = np.random.default_rng(0).standard_normal(runtime.spec.input_shape(batch)).astype(runtime.backend.input_dtype)
    runtime.backend.run(inputs)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime.backend.run(inputs)
        seconds.append(time.perf_counter() - started)
    p50, p99 = np.percentile(seconds, (50, 99))
    return {"case": f"run b={batch}", "clips_per_s": batch / float(np.mean(seconds)), "p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99}


def pushed_frames(clips_per_stream: int, seed: int) -> np.ndarray:
    return synthetic_face_frames(HOP * 4 * (clips_per_stream - 1) + 16 * 4, 64, 64, seed=seed)


def push_all(runtime: Runtime, ids: list[str], frames: np.ndarray) -> None:
    for t, image in enumerate(frames):
        for stream in ids:
            runtime.push_frame(stream, image, t / FPS)


def push_paced(runtime: Runtime, ids: list[str], frames: np.ndarray, start: float, phases: list[float]) -> None:
    """Each stream pushes at FPS from its own thread, `phases` (in frames) apart."""
    def camera(stream: str, phase: float) -> None:
        for t, image in enumerate(frames):
            time.sleep(max(0.0, start + (t + phase) / FPS - time.perf_counter()))
            runtime.push_frame(stream, image, t / FPS)

    threads = [threading.Thread(target=camera, args=(stream, phase)) for stream, phase in zip(ids, phases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_pushed(model: Path, options: RuntimeOptions, streams: int, clips: int) -> dict:
    per_stream = max(1, clips // streams)
    frames = pushed_frames(per_stream, seed=streams)
    with Runtime(model, options) as runtime:
        started = time.perf_counter()
        ids = [runtime.add_push_stream(FPS, stream_id=f"s{i}") for i in range(streams)]
        push_all(runtime, ids, frames)
        assert runtime.wait(timeout=600)
        wall = time.perf_counter() - started
        done = sum(s.results for s in runtime.stats().values())
        assert done == streams * per_stream, (done, streams * per_stream)
        batches = sum(runtime.batch_sizes.values())
        return {"case": f"pushed {streams}", "clips_per_s": done / wall, "mean_batch": done / batches,
                "backend_ms_per_batch": 1e3 * runtime.backend_seconds / batches, **_latency(runtime)}


def run_paced(model: Path, options: RuntimeOptions, streams: int, seconds: float) -> dict:
    """Phases staggered over one frame."""
    frames = synthetic_face_frames(int(seconds * FPS), 64, 64, seed=1)
    with Runtime(model, options) as runtime:
        ids = [runtime.add_push_stream(FPS, stream_id=f"s{i}") for i in range(streams)]
        push_paced(runtime, ids, frames, time.perf_counter() + 0.2, [k / streams for k in range(streams)])
        assert runtime.wait(timeout=120)
        done = sum(s.results for s in runtime.stats().values())
        return {"case": f"paced {streams}", "clips_per_s": done / seconds, "mean_batch": done / sum(runtime.batch_sizes.values()),
                **_latency(runtime)}


def process_worker(model: Path, options: RuntimeOptions, case: str, index: int, processes: int, streams: int, amount: float,
                   barrier, answers) -> None:
    """One runtime process of a multi-process case (started by spawn): open the backend, wait
    for the others, then push its streams (pushed: `amount` clips each; paced: `amount` s).
    Answers its counts, its results' ready→emitted seconds and its first/last moment
    (perf_counter is the system's monotonic clock: comparable across processes)."""
    results = []
    with Runtime(model, options, on_result=results.append) as runtime:
        ids = [runtime.add_push_stream(FPS, stream_id=f"p{index}s{i}") for i in range(streams)]
        frames = pushed_frames(int(amount), seed=index) if case == "pushed" else synthetic_face_frames(int(amount * FPS), 64, 64, seed=index)
        barrier.wait(timeout=120)
        started = time.perf_counter()
        if case == "pushed":
            push_all(runtime, ids, frames)
        else:  # all processes' streams staggered over one frame
            push_paced(runtime, ids, frames, started + 0.2, [(index * streams + k) / (processes * streams) for k in range(streams)])
        assert runtime.wait(timeout=600)
        finished = time.perf_counter()
        answers.put({"clips": len(results), "batches": sum(runtime.batch_sizes.values()), "backend_s": runtime.backend_seconds,
                     "latencies": [r.latencies()["ready→emitted"] for r in results], "started": started, "finished": finished})


def run_processes(model: Path, options: RuntimeOptions, case: str, processes: int, streams: int, amount: float) -> dict:
    """`processes` runtime processes of `streams` streams each, started together; a worker that
    dies (its traceback is on stderr) or a case past 600 s ends the benchmark."""
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=process_worker, args=(model, options, case, k, processes, streams, amount, barrier, answers))
               for k in range(processes)]
    for worker in workers:
        worker.start()
    got, deadline = [], time.monotonic() + 600
    try:
        while len(got) < processes:
            try:
                got.append(answers.get(timeout=1.0))
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"{case} with {processes} processes: worker exit codes {failed}, {len(got)} answered") from None
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
    clips, batches = sum(g["clips"] for g in got), sum(g["batches"] for g in got)
    if case == "pushed":
        assert clips == processes * streams * int(amount), (clips, processes * streams * int(amount))
        wall = max(g["finished"] for g in got) - min(g["started"] for g in got)
    else:
        wall = amount
    p50, p99 = np.percentile([s for g in got for s in g["latencies"]], (50, 99))
    return {"case": f"{processes} proc × {case} {streams}", "clips_per_s": clips / wall, "mean_batch": clips / batches,
            "backend_ms_per_batch": 1e3 * sum(g["backend_s"] for g in got) / batches, "p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99}


def server_counts(address: str, model: str) -> tuple[int, int]:
    """(clips, executions) the server counted for the model so far (its statistics extension)."""
    import tritonclient.grpc

    client = tritonclient.grpc.InferenceServerClient(address)
    try:
        (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def process_rows(model: Path, server: TritonServer, args) -> list[dict]:
    """The multi-process cases, 1 and 2 processes: local ONNX Runtime, triton with either delay."""
    rows = []
    for backend, served in (("onnxruntime", None), ("triton", model.stem), ("triton", WAITING)):
        label = backend if served is None else f"triton, delay {DEFAULT_DELAY_US if served == model.stem else args.wait_us} µs"
        for processes in (1, 2):
            threads = max(1, args.threads // processes) if served is None else args.threads
            options = replace(options_for(backend, server.grpc_address, threads, queue=args.clips), triton_model=served)
            for case, amount in (("pushed", max(1, args.clips // 8)), ("paced", args.paced_seconds)):
                before = server_counts(server.grpc_address, served) if served else None
                row = {"backend": label, **run_processes(model, options, case, processes, 8 // processes, amount)}
                if served:
                    clips, executions = np.subtract(server_counts(server.grpc_address, served), before)
                    row["server_batch"] = float(clips / executions)
                rows.append(row)
    return rows


def _latency(runtime: Runtime) -> dict:
    p50, _, p99, _ = runtime.latency()["ready→emitted"]
    return {"p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99}


def table(rows: list[dict]) -> str:
    lines = ["| backend | case | clips/s | mean batch | server clips/exec | backend ms/batch | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.1f}" if isinstance(r.get(k), float) else "–"
                 for k in ("clips_per_s", "mean_batch", "server_batch", "backend_ms_per_batch", "p50_ms", "p99_ms")]
        lines.append(f"| {r['backend']} | {r['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads, local and on the server")
    parser.add_argument("--clips", type=int, default=128, help="clips per pushed case")
    parser.add_argument("--calls", type=int, default=50, help="backend.run calls per run case")
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument("--wait-us", type=int, default=50_000, help="the second served model's max_queue_delay (µs)")
    parser.add_argument("--only-processes", action="store_true", help="run only the 1- and 2-process cases")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = export_model(folder)
        export_triton(model, folder / "repository", TritonOptions(max_batch=MAX_BATCH, threads=args.threads))
        export_triton(model, folder / "repository", TritonOptions(name=WAITING, max_batch=MAX_BATCH, threads=args.threads,
                                                                  max_queue_delay_us=args.wait_us))
        server = TritonServer(folder / "repository", ports=Ports.free(), log=folder / "server.log")
        startup = server.start()
        try:
            for backend in () if args.only_processes else ("onnxruntime", "triton"):
                options = options_for(backend, server.grpc_address, args.threads, queue=args.clips)
                with Runtime(model, options) as runtime:
                    rows += [{"backend": backend, **run_calls(runtime, b, args.calls)} for b in (1, MAX_BATCH)]
                for streams in (1, 8, 32):
                    rows.append({"backend": backend, **run_pushed(model, options, streams, args.clips)})
                rows.append({"backend": backend, **run_paced(model, options, 8, args.paced_seconds)})
            rows += process_rows(model, server, args)
        finally:
            server.stop()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} ONNX Runtime threads"
    print(f"tritonserver ready in {startup:.1f} s; {machine}\n{table(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "startup_s": startup, "rows": rows}, indent=2))
    return 0


# --- pytest-benchmark ------------------------------------------------------------------------

SUITE_CLIPS, SUITE_CALLS = (16, 5) if suite.short() else (128, 50)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(model, running server) for the suite's cases; a skip saying what is missing."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient not installed: pip install 'tritonclient[grpc]'")
    from export.triton_server import ServerFiles, ServerMissing

    try:
        ServerFiles.find()
    except ServerMissing as err:
        pytest.skip(str(err))
    folder = tmp_path_factory.mktemp("triton")
    model = export_model(folder)
    export_triton(model, folder / "repository", TritonOptions(max_batch=MAX_BATCH, threads=suite.THREADS))
    server = TritonServer(folder / "repository", ports=Ports.free(), log=folder / "server.log")
    server.start()
    yield model, server
    server.stop()


@pytest.mark.parametrize("backend", ["onnxruntime", "triton"])
@pytest.mark.parametrize("case,size", [("run", 1), ("run", MAX_BATCH), ("pushed", 8)])
def test_triton_against_local(benchmark, served, case, size, backend):
    model, server = served
    options = options_for(backend, server.grpc_address, suite.THREADS, queue=SUITE_CLIPS)
    if case == "run":
        with Runtime(model, options) as runtime:
            row = benchmark.pedantic(run_calls, args=(runtime, size, SUITE_CALLS), rounds=1, iterations=1)
    else:
        row = benchmark.pedantic(run_pushed, args=(model, options, size, SUITE_CLIPS), rounds=1, iterations=1)
    mode = row.pop("case")
    benchmark.group = f"triton {mode}"
    suite.record(benchmark, kind="triton", case=f"triton/{mode}/{backend}", baseline=f"triton/{mode}/onnxruntime",
                 batch=size if case == "run" else None, seconds=1 / row["clips_per_s"], backend=backend, mode=mode,
                 p95_ms=None, **row)


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_triton_requests_in_flight(benchmark, served, in_flight):
    """8 pushed streams in batches of 8 with 1, 2 or 4 requests on the network at once: what
    keeping the server's queue non-empty buys (baseline: one at a time)."""
    model, server = served
    options = replace(options_for("triton", server.grpc_address, suite.THREADS, queue=SUITE_CLIPS), max_batch=8,
                      in_flight=in_flight)
    row = benchmark.pedantic(run_pushed, args=(model, options, 8, SUITE_CLIPS), rounds=1, iterations=1)
    mode = f"{row.pop('case')}, {in_flight} in flight"
    benchmark.group = "triton requests in flight"
    suite.record(benchmark, kind="triton", case=f"triton/in-flight/{in_flight}", baseline="triton/in-flight/1",
                 batch=8, seconds=1 / row["clips_per_s"], backend="triton", mode=mode, p95_ms=None, in_flight=in_flight, **row)


if __name__ == "__main__":
    sys.exit(main())
