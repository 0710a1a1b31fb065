"""Evaluator throughput on the CPU (videos/s, clips/s): batch 1 against the batch it picks.

    python -m pytest benchmarks/bench_evaluate.py -s [--bench-short]   # table at the end, numbers in extra_info

Full-size IFDD (224², 16 frames, merged logits) and S4D (160², 16 frames every 4th, two
segments, merged softmax) with untrained demo weights, plus the reduced S4D of the tests, on
ONNX Runtime CPU with DFER_BENCH_THREADS threads (default: all cores). The videos are
generated H.264 face crops: IFDD's 32 frames at 224² (two clips, no resize, as DFEW's frames),
S4D's 130 frames at 192² (two distinct segments, resized to 160² as Pillow would).
``decode+cut`` is the share of wall time outside the backend: decoding, resizing, normalising.
The baseline of each case is its batch 1 (``ratio_to_baseline`` in seconds per clip); the short
mode runs the reduced S4D only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import models
from benchmarks import suite
from export.onnx import export_onnx
from models.demo_checkpoint import write_demo_checkpoint
from runtime.backends import open_backend
from runtime.demo_videos import write_face_video
from runtime.evaluate import DEFAULT_BATCH, Evaluator
from runtime.model import load_model_source
from runtime.videoset import VideoEntry

THREADS = suite.THREADS
SMALL_S4D = {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 4, "moe_layers": [2, 3]}
# case → (family, model config, videos, frames per video, video size)
CASES = {
    "ifdd": ("ifdd", None, 4, 32, 224),
    "s4d": ("s4d", None, 4, 130, 192),
    "s4d-small": ("s4d", SMALL_S4D, 16, 130, 96),
}
BATCHES = (1, DEFAULT_BATCH)
_rows: list[str] = []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """case → (ONNX path, video entries), built once per run."""
    cache = {}

    def get(case: str):
        if case not in cache:
            family, config, count, frames, size = CASES[case]
            folder = tmp_path_factory.mktemp(case)
            loaded = models.load(write_demo_checkpoint(family, folder / "demo.pth", config=config))
            onnx_path = export_onnx(loaded, folder / "model.onnx").path
            videos = [write_face_video(folder / f"v{i}.mp4", frames, seed=i, size=size) for i in range(count)]
            cache[case] = onnx_path, [VideoEntry(name=p.stem, path=p, kind="video") for p in videos]
        return cache[case]

    return get


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", ["s4d-small"] if suite.short() else list(CASES))
def test_evaluator_throughput(benchmark, prepared, case, batch):
    onnx_path, videos = prepared(case)
    source = load_model_source(onnx_path)
    backend = open_backend(source, "onnxruntime", ("cpu",), THREADS)
    runs = []

    def run():
        evaluator = Evaluator(source, backend, batch=batch)
        start = time.perf_counter()
        results = list(evaluator.run([(video, None) for video in videos]))
        runs.append((time.perf_counter() - start, evaluator))
        return results

    results = benchmark.pedantic(run, rounds=suite.rounds(2), iterations=1, warmup_rounds=suite.rounds(1, 0))
    backend.close()
    seconds, evaluator = min(runs, key=lambda r: r[0])
    assert len(results) == len(videos)
    info = {
        "videos_per_s": len(videos) / seconds,
        "clips_per_s": evaluator.clips_run / seconds,
        "decode_cut_share": 1 - evaluator.backend_seconds / seconds,
        "threads": THREADS,
    }
    suite.record(benchmark, kind="evaluate", case=f"evaluate/{case}/b{batch}", baseline=f"evaluate/{case}/b1", batch=batch,
                 seconds=seconds / evaluator.clips_run, videos=len(videos), clips=evaluator.clips_run, **info)
    _rows.append(f"{case:>10} batch {batch:>2}: {info['videos_per_s']:7.2f} videos/s {info['clips_per_s']:7.2f} clips/s "
                 f"({evaluator.clips_run} clips, decode+cut {100 * info['decode_cut_share']:.0f} % of the time)")


def teardown_module(module) -> None:
    if _rows:
        print(f"\nevaluator throughput, ONNX Runtime CPU, {THREADS} threads:\n" + "\n".join(_rows))


if __name__ == "__main__":
    raise SystemExit(pytest.main([str(Path(__file__)), "-s", "-q"]))
