"""The reduced S4D through a real tritonserver (python backend: ONNX Runtime on the CPU) against
the local ONNX Runtime backend, same model, same threads, same machine.

    python benchmarks/bench_triton.py [--threads N] [--clips 128] [--paced-seconds 6]

Needs tritonclient[grpc] and the server (python -m export.triton install-server). Cases:

* ``run b=1`` / ``run b=32``: backend.run on one batch, again and again: the request's own cost
  (gRPC, the python backend's stub, the server's scheduler) next to the same ONNX Runtime call.
* ``pushed N``: N streams pushed by one host thread as fast as they go (no decoding): clips/s
  and the mean batch; ready→emitted here is mostly queueing behind the backlog.
* ``paced 8``: 8 streams at 25 fps with staggered phases, as cameras: ready→emitted when the
  model keeps up.

Not a test: it prints one table (and writes it with --json PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.triton import TritonOptions, export_triton  # noqa: E402
from export.triton_server import Ports, TritonServer  # noqa: E402
from runtime.api import Runtime, RuntimeOptions  # noqa: E402
from runtime.synthetic import synthetic_face_frames  # noqa: E402

SMALL_S4D = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}
HOP, FPS, MAX_BATCH = 8, 25, 32


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


def run_pushed(model: Path, options: RuntimeOptions, streams: int, clips: int) -> dict:
    per_stream = max(1, clips // streams)
    frames = synthetic_face_frames(HOP * 4 * (per_stream - 1) + 16 * 4, 64, 64, seed=streams)
    with Runtime(model, options) as runtime:
        started = time.perf_counter()
        ids = [runtime.add_push_stream(FPS, stream_id=f"s{i}") for i in range(streams)]
        for t, image in enumerate(frames):
            for stream in ids:
                runtime.push_frame(stream, image, t / FPS)
        assert runtime.wait(timeout=600)
        wall = time.perf_counter() - started
        done = sum(s.results for s in runtime.stats().values())
        assert done == streams * per_stream, (done, streams * per_stream)
        batches = sum(runtime.batch_sizes.values())
        return {"case": f"pushed {streams}", "clips_per_s": done / wall, "mean_batch": done / batches,
                "backend_ms_per_batch": 1e3 * runtime.backend_seconds / batches, **_latency(runtime)}


def run_paced(model: Path, options: RuntimeOptions, streams: int, seconds: float) -> dict:
    """Each stream pushes at FPS from its own thread, phases staggered over one frame."""
    frames = synthetic_face_frames(int(seconds * FPS), 64, 64, seed=1)
    with Runtime(model, options) as runtime:
        ids = [runtime.add_push_stream(FPS, stream_id=f"s{i}") for i in range(streams)]
        start = time.perf_counter() + 0.2

        def camera(k: int) -> None:
            for t, image in enumerate(frames):
                time.sleep(max(0.0, start + (t + k / streams) / FPS - time.perf_counter()))
                runtime.push_frame(ids[k], image, t / FPS)

        threads = [threading.Thread(target=camera, args=(k,)) for k in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert runtime.wait(timeout=120)
        done = sum(s.results for s in runtime.stats().values())
        return {"case": f"paced {streams}", "clips_per_s": done / seconds, "mean_batch": done / sum(runtime.batch_sizes.values()),
                **_latency(runtime)}


def _latency(runtime: Runtime) -> dict:
    p50, _, p99, _ = runtime.latency()["ready→emitted"]
    return {"p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99}


def table(rows: list[dict]) -> str:
    lines = ["| backend | case | clips/s | mean batch | backend ms/batch | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k]:.1f}" if isinstance(r.get(k), float) else "–" for k in ("clips_per_s", "mean_batch", "backend_ms_per_batch", "p50_ms", "p99_ms")]
        lines.append(f"| {r['backend']} | {r['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads, local and on the server")
    parser.add_argument("--clips", type=int, default=128, help="clips per pushed case")
    parser.add_argument("--calls", type=int, default=50, help="backend.run calls per run case")
    parser.add_argument("--paced-seconds", type=float, default=6.0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = export_model(folder)
        export_triton(model, folder / "repository", TritonOptions(max_batch=MAX_BATCH, threads=args.threads))
        server = TritonServer(folder / "repository", ports=Ports.free(), log=folder / "server.log")
        startup = server.start()
        try:
            for backend in ("onnxruntime", "triton"):
                options = options_for(backend, server.grpc_address, args.threads, queue=args.clips)
                with Runtime(model, options) as runtime:
                    rows += [{"backend": backend, **run_calls(runtime, b, args.calls)} for b in (1, MAX_BATCH)]
                for streams in (1, 8, 32):
                    rows.append({"backend": backend, **run_pushed(model, options, streams, args.clips)})
                rows.append({"backend": backend, **run_paced(model, options, 8, args.paced_seconds)})
        finally:
            server.stop()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} ONNX Runtime threads"
    print(f"tritonserver ready in {startup:.1f} s; {machine}\n{table(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "startup_s": startup, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
