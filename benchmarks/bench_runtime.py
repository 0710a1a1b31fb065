"""The runtime under load: 1, 8, 32 and 64 streams of generated video through the reduced S4D
on ONNX Runtime CPU.

    python -m pytest benchmarks/bench_runtime.py -s        # table at the end, numbers in extra_info
    python benchmarks/bench_runtime.py                      # the table only

Two cases per stream count, each with its own setup:

* ``throughput``: every stream decodes its file as fast as it can; clips/s over the whole run.
  The same batch sizes are then replayed straight through the backend (the baseline, same
  run, same threads) to give the runtime's overhead as ratios to raw backend time:
  ``in-path`` = dispatcher time (stack, run, softmax, hand-over) / raw backend time − 1, which
  splits into ``bookkeeping`` (dispatcher time outside backend.run / time inside it) and
  contention (backend.run inside the runtime, sharing the cores with decoding, / raw);
  ``end-to-end`` = wall time / raw backend time, decoding included.
* ``pushed``: the same clips pushed by one host thread from generated frames, no decoding:
  the runtime's own overhead without decoders competing for the cores.
* ``paced``: streams loop their file at its own frame rate (25 fps), started at staggered
  phases like unsynchronised cameras; clip-ready → result percentiles when not saturated.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.api import Runtime, RuntimeOptions  # noqa: E402
from runtime.backends import open_backend  # noqa: E402
from runtime.demo_videos import write_face_video  # noqa: E402
from runtime.sources import SourceOptions  # noqa: E402
from runtime.streams import StreamOptions  # noqa: E402

SMALL_S4D = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}
STREAMS = (1, 8, 32, 64)
HOP, FPS = 8, 25
CLIPS_PER_CASE = 128  # throughput: clips per case, spread over the streams
PACED_SECONDS = 8.0
THREADS = int(os.environ.get("DFER_BENCH_THREADS", os.cpu_count() or 1))
# Queues hold a whole throughput case: files wait for room anyway (QueuePolicy.BLOCK), but
# pushed streams drop their oldest clip, and these cases measure speed, not the drop policy.
OPTIONS = RuntimeOptions(
    backend="onnxruntime",
    providers=("cpu",),
    threads=THREADS,
    max_batch=32,
    max_delay_ms=50,
    hop=HOP,
    queue_per_stream=CLIPS_PER_CASE,
)


def export_model(folder: Path) -> Path:
    import models
    from export.onnx import export_onnx
    from models.demo_checkpoint import write_demo_checkpoint

    loaded = models.load(write_demo_checkpoint("s4d", folder / "s4d_small.pth", config=SMALL_S4D))
    return export_onnx(loaded, folder / "s4d_small.onnx").path


def write_video(path: Path, num_frames: int, seed: int) -> Path:
    return write_face_video(path, num_frames, seed=seed, size=64, fps=FPS)


def frames_for(streams: int) -> tuple[int, int]:
    """(clips per stream, frames per stream) for CLIPS_PER_CASE clips in all."""
    clips_per_stream = max(2, CLIPS_PER_CASE // streams)
    return clips_per_stream, 4 * (16 + HOP * (clips_per_stream - 1))  # stride 4, 16-frame clips


def run_throughput(model: Path, folder: Path, streams: int) -> dict:
    """Decoded files, as fast as the decoders go."""
    clips_per_stream, frames = frames_for(streams)
    video = write_video(folder / f"t{streams}.mp4", frames, seed=streams)
    runtime = Runtime(model, OPTIONS)
    started = time.perf_counter()
    for i in range(streams):
        runtime.add_stream(str(video), stream_id=f"s{i}")
    runtime.wait()
    return throughput_row("throughput", runtime, streams, clips_per_stream, time.perf_counter() - started)


def run_pushed(model: Path, folder: Path, streams: int) -> dict:
    """Frames pushed by one host thread, no decoding: the runtime's own cost, isolated."""
    from runtime.synthetic import synthetic_face_frames

    clips_per_stream, frames = frames_for(streams)
    images = synthetic_face_frames(frames, 64, 64, seed=streams)
    runtime = Runtime(model, OPTIONS)
    started = time.perf_counter()
    ids = [runtime.add_push_stream(FPS, stream_id=f"s{i}") for i in range(streams)]
    for t, image in enumerate(images):
        for stream in ids:
            runtime.push_frame(stream, image, t / FPS)
    runtime.wait()
    return throughput_row("pushed", runtime, streams, clips_per_stream, time.perf_counter() - started)


def throughput_row(case: str, runtime: Runtime, streams: int, clips_per_stream: int, wall: float) -> dict:
    runtime.close()
    stats = runtime.stats().values()
    clips = sum(s.results for s in stats)
    assert clips == streams * clips_per_stream and not any(s.clips_dropped for s in stats)
    raw = replay(runtime)
    batches = sum(runtime.batch_sizes.values())
    return {
        "case": case,
        "streams": streams,
        "clips": clips,
        "clips_per_s": clips / wall,
        "mean_batch": clips / batches,
        "raw_backend_s": raw,
        "runtime_backend_s": runtime.backend_seconds,
        "in_path_overhead": runtime.dispatch_seconds / raw - 1,
        "end_to_end_overhead": wall / raw - 1,
        "bookkeeping": runtime.dispatch_seconds / runtime.backend_seconds - 1,
        "contention": runtime.backend_seconds / raw - 1,
        **percentiles(runtime),
    }


def replay(runtime: Runtime) -> float:
    """Raw backend time for the batch sizes the runtime ran, on fresh inputs (best of 2)."""
    spec = runtime.spec
    backend = open_backend(runtime.model, OPTIONS.backend, OPTIONS.providers, THREADS)
    inputs = {
        n: np.random.default_rng(n).standard_normal(spec.input_shape(n)).astype(np.float32) for n in runtime.batch_sizes
    }
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for n, times in runtime.batch_sizes.items():
            for _ in range(times):
                backend.run(inputs[n])
        best = min(best, time.perf_counter() - started)
    return best


def run_paced(model: Path, folder: Path, streams: int) -> dict:
    video = write_video(folder / "paced.mp4", 250, seed=99)
    runtime = Runtime(model, OPTIONS)
    looping = StreamOptions(source=SourceOptions(loop=True, realtime=True))
    period = HOP * 4 / FPS  # seconds between two clips of one stream
    started = time.perf_counter()
    for i in range(streams):
        time.sleep(max(0.0, started + i * period / streams - time.perf_counter()))
        runtime.add_stream(str(video), stream_id=f"s{i}", options=looping)
    time.sleep(max(0.0, started + PACED_SECONDS - time.perf_counter()))
    runtime.close()
    elapsed = time.perf_counter() - started
    stats = runtime.stats().values()
    clips = sum(s.results for s in stats)
    return {
        "case": "paced",
        "streams": streams,
        "clips": clips,
        "clips_per_s": clips / elapsed,
        "mean_batch": clips / max(1, sum(runtime.batch_sizes.values())),
        "dropped": sum(s.clips_dropped for s in stats),
        "frames_lost": sum(s.frames_lost for s in stats),
        **percentiles(runtime),
    }


def percentiles(runtime: Runtime) -> dict:
    p50, p95, p99, _ = runtime.latency().get("ready→emitted", (np.nan,) * 4)
    return {"p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95, "p99_ms": 1e3 * p99}


def table(rows: list[dict]) -> str:
    lines = [
        "| case | streams | clips | clips/s | mean batch | ready→result p50 / p95 / p99 ms | in-path overhead "
        "(bookkeeping, contention) | end-to-end / raw backend | dropped, frames lost |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in rows:
        if r["case"] != "paced":
            overhead = f"{100 * r['in_path_overhead']:+.1f} % ({100 * r['bookkeeping']:+.1f} %, {100 * r['contention']:+.1f} %)"
            end_to_end, losses = f"{1 + r['end_to_end_overhead']:.2f}×", "0, 0"
        else:
            overhead, end_to_end, losses = "-", "-", f"{r['dropped']}, {r['frames_lost']}"
        lines.append(
            f"| {r['case']} | {r['streams']} | {r['clips']} | {r['clips_per_s']:.1f} | {r['mean_batch']:.1f} | "
            f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} | {overhead} | {end_to_end} | {losses} |"
        )
    return "\n".join(lines)


def environment() -> dict:
    import av
    import onnxruntime

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": THREADS,
        "onnxruntime": onnxruntime.__version__,
        "av": av.__version__,
    }


# --- pytest-benchmark ------------------------------------------------------------------------

_rows: list[dict] = []


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    yield export_model(tmp_path_factory.mktemp("model"))
    if _rows:
        print("\n" + table(_rows) + f"\n{environment()}")


CASES = {"throughput": run_throughput, "pushed": run_pushed, "paced": run_paced}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("streams", STREAMS)
def test_runtime_load(benchmark, model, tmp_path, streams, case):
    run = CASES[case]
    row = benchmark.pedantic(run, args=(model, tmp_path, streams), rounds=1, iterations=1)
    benchmark.group = f"runtime {case}"
    benchmark.extra_info.update(
        {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, **environment()
    )
    _rows.append(row)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_path = export_model(folder)
        rows = [run(model_path, folder, n) for run in CASES.values() for n in STREAMS]
    print(table(rows))
    print(environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
