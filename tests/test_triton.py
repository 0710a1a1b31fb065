"""Serving from a real NVIDIA Triton Inference Server: export.triton's repositories, the
server it starts (nvidia-pytriton's tritonserver 2.51, python backend, on the CPU) and the
runtime's triton backend against it.

Needs tritonclient[grpc] and the extracted server (python -m export.triton install-server, or
$DFER_TRITONSERVER_DIR); without them the tests that need them skip, saying which is missing.
The onnxruntime and tensorrt backends' configs are checked field by field against the bundle's
manifest, but only NVIDIA's GPU server containers run them: no test here can.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

import models
from export.onnx import export_onnx
from export.request import BuildRequest
from export.stages import Progress, write_onnx_part
from export.triton import THREADS_PARAMETER, TritonOptions, check_config, export_triton
from export.triton_server import Ports, ServerFiles, ServerMissing, TritonServer
from models.demo_checkpoint import write_demo_checkpoint
from runtime.api import Runtime, RuntimeOptions
from runtime.backends import BackendUnavailable
from runtime.bundle import Bundle
from runtime.clips import clip_count
from runtime.demo_videos import write_face_video
from runtime.model import load_model_source
from runtime.records import EventKind
from runtime.spec import ModelSpec
from runtime.triton_backend import (
    SPEC_PARAMETER,
    TritonBackend,
    parse_triton_url,
    served_name,
)
from tests.test_loader import ROOT, SMALL_S4D, assert_one_line_error, run_cli
from tests.test_runtime_units import TINY, tiny_probabilities, write_tiny_model

try:
    import tritonclient.grpc  # noqa: F401

    CLIENT_MISSING = None
except ImportError as err:
    CLIENT_MISSING = f"tritonclient not installed ({err}): pip install 'tritonclient[grpc]'"
try:
    SERVER_FILES, SERVER_MISSING = ServerFiles.find(), None
except ServerMissing as err:
    SERVER_FILES, SERVER_MISSING = None, str(err)

needs_client = pytest.mark.skipif(CLIENT_MISSING is not None, reason=str(CLIENT_MISSING))
needs_server = pytest.mark.skipif(CLIENT_MISSING is not None or SERVER_MISSING is not None,
                                  reason=str(CLIENT_MISSING or SERVER_MISSING))
STARTUP_LIMIT_S = 60.0  # measured: 1.5–2.5 s for both models on the 2-core dev box
PROBABILITY_ATOL = 1e-5  # fp32 logits of the same ONNX in two ONNX Runtime sessions (seen: ≤ 1e-7)
FPS = 25


@pytest.fixture(scope="module")
def s4d_onnx(tmp_path_factory):
    checkpoint = write_demo_checkpoint("s4d", tmp_path_factory.mktemp("s4d") / "s4d_small.pth", seed=0, config=SMALL_S4D)
    return export_onnx(models.load(checkpoint), checkpoint.with_suffix(".onnx")).path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", **TINY)


def start_server(repository, log) -> TritonServer:
    server = TritonServer(repository, files=SERVER_FILES, ports=Ports.free(), log=log)
    seconds = server.start(timeout_s=STARTUP_LIMIT_S)
    print(f"tritonserver ready in {seconds:.2f} s")
    return server


@pytest.fixture(scope="module")
def server(s4d_onnx, tiny, tmp_path_factory):
    """One server on both models (python backend, one ONNX Runtime thread each)."""
    repository = tmp_path_factory.mktemp("repository")
    for model in (s4d_onnx, tiny):
        export_triton(model, repository, TritonOptions(backend="python", max_batch=8, threads=1))
    server = start_server(repository, repository.parent / "server.log")
    yield server
    assert server.stop() == 0


# --- the repository --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(s4d_onnx, tmp_path_factory):
    """An ONNX-only bundle plus a stand-in TensorRT engine entry (its bytes are not a plan:
    only a GPU server could load one), so the tensorrt config can be checked against it."""
    output = write_onnx_part(BuildRequest(s4d_onnx, tmp_path_factory.mktemp("bundle") / "small.dfer"), Progress(lambda _: None)).output
    plan = b"stand-in for a serialized TensorRT plan"
    (output / "model.tensorrt.sm_90.fp16.engine").write_bytes(plan)
    (output / "model.tensorrt.sm_90.fp16.layers.json").write_text("{}")
    manifest = json.loads((output / "manifest.json").read_text())
    manifest["engines"] = [
        {"file": "model.tensorrt.sm_90.fp16.engine", "sha256": hashlib.sha256(plan).hexdigest(), "size_bytes": len(plan),
         "builder": "tensorrt", "builder_version": "10.13.0", "gpu_sm": ["sm_90"], "precision": "fp16",
         "batch_profile": {"min": 1, "opt": 4, "max": 16}, "plugins": {}, "layer_report": "model.tensorrt.sm_90.fp16.layers.json",
         "build": {"seconds": 1.0, "peak_rss_mib": 1.0}},
    ]
    (output / "manifest.json").write_text(json.dumps(manifest))
    return output


@needs_client
@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_gpu_configs_match_the_manifest_field_by_field(bundle, tmp_path, backend):
    manifest = Bundle.open(bundle).manifest
    options = TritonOptions(backend=backend, name="s4d", max_batch=8, max_queue_delay_us=500, instances=2, gpu="sm_90")
    folder = export_triton(bundle, tmp_path, options)
    config = check_config((folder / "config.pbtxt").read_text(), load_model_source(bundle))
    engine = manifest.engines[0]
    assert config.name == "s4d" and config.backend == ""
    assert config.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[backend]
    assert config.max_batch_size == (engine.batch_profile.max if backend == "tensorrt" else 8)
    (clip,) = config.input
    assert (clip.name, clip.data_type, list(clip.dims)) == (manifest.input.name, 11, list(manifest.input.shape[1:]))  # 11: TYPE_FP32
    assert [(o.name, list(o.dims)) for o in config.output] == [(o.name, list(o.shape[1:])) for o in manifest.outputs]
    preferred = [engine.batch_profile.opt, engine.batch_profile.max] if backend == "tensorrt" else [8]
    assert list(config.dynamic_batching.preferred_batch_size) == preferred
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    assert (group.count, group.kind) == (2, group.KIND_GPU)
    assert ModelSpec.from_dict(json.loads(config.parameters[SPEC_PARAMETER].string_value)) == manifest.model.spec
    assert config.parameters["dfer_family"].string_value == "s4d" and config.parameters["dfer_untrained"].string_value == "true"
    files = sorted(p.name for p in (folder / "1").iterdir())
    if backend == "tensorrt":
        assert files == ["model.plan"] and (folder / "1" / "model.plan").read_bytes() == (bundle / engine.file).read_bytes()
    else:
        assert files == ["model.onnx"] and (folder / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()


@needs_client
def test_fp16_tensors_become_type_fp16(bundle, tmp_path):
    fp16 = tmp_path / "fp16.dfer"
    shutil.copytree(bundle, fp16)
    manifest = json.loads((fp16 / "manifest.json").read_text())
    manifest["input"]["dtype"] = manifest["outputs"][0]["dtype"] = "float16"
    (fp16 / "manifest.json").write_text(json.dumps(manifest))
    config = check_config((export_triton(fp16, tmp_path / "repo", TritonOptions(backend="tensorrt", gpu="sm_90")) / "config.pbtxt").read_text(),
                          load_model_source(fp16))
    assert (config.name, config.input[0].data_type, config.output[0].data_type) == ("fp16", 10, 10)  # 10: TYPE_FP16


def test_engine_choice_names_what_is_missing(bundle, s4d_onnx, tmp_path):
    with pytest.raises(ValueError, match=r"no tensorrt-builder engine for sm_80.*model.tensorrt.sm_90.fp16.engine \(tensorrt, sm_90\)"):
        export_triton(bundle, tmp_path, TritonOptions(backend="tensorrt", gpu="sm_80"))
    with pytest.raises(ValueError, match="is an ONNX file: --backend tensorrt needs a bundle"):
        export_triton(s4d_onnx, tmp_path, TritonOptions(backend="tensorrt", gpu="sm_90"))
    assert not any(tmp_path.iterdir())  # nothing written for a refused export
    with pytest.raises(ValueError, match="unknown Triton backend 'onnx'"):
        TritonOptions(backend="onnx")
    with pytest.raises(ValueError, match="threads must be an integer ≥ 1, got 0"):
        TritonOptions(threads=0)


def test_python_backend_repository_and_names(tiny, tmp_path):
    folder = export_triton(tiny, tmp_path, TritonOptions(threads=2))
    assert folder == tmp_path / "tiny" and sorted(p.name for p in (folder / "1").iterdir()) == ["model.onnx", "model.py"]
    text = (folder / "config.pbtxt").read_text()
    assert 'backend: "python"' in text and "kind: KIND_CPU" in text and f'key: "{THREADS_PARAMETER}" value {{ string_value: "2" }}' in text
    assert f'THREADS_PARAMETER = "{THREADS_PARAMETER}"' in (folder / "1" / "model.py").read_text()  # what model.py reads
    assert served_name(tmp_path / "My model.v2.onnx") == "My_model_v2" and served_name(tmp_path / "x.dfer") == "x"
    assert parse_triton_url("triton://gpu-box:8001/s4d") == ("gpu-box:8001", "s4d")
    with pytest.raises(ValueError, match="triton://HOST:PORT/NAME"):
        parse_triton_url("triton://gpu-box/s4d")


def test_cli_exports_and_says_how_to_install_the_server(tiny, tmp_path):
    proc = run_cli("export.triton", str(tiny), "-o", str(tmp_path / "repo"), "--name", "t", "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr
    assert "max_batch_size: 4" in (tmp_path / "repo" / "t" / "config.pbtxt").read_text()
    assert_one_line_error(run_cli("export.triton", str(tmp_path / "missing.onnx"), "-o", str(tmp_path)), "does not exist")
    no_server = run_cli("export.triton", "serve", str(tmp_path / "repo"), "--server-dir", str(tmp_path / "none"))
    assert_one_line_error(no_server, "no tritonserver in", "python -m export.triton install-server")


# --- the runtime through the server --------------------------------------------------------------


def run_videos(model, options: RuntimeOptions, videos: dict) -> tuple[dict, list]:
    results, events = [], []
    with Runtime(model, options, on_result=results.append, on_event=events.append) as runtime:
        for name, path in videos.items():
            runtime.add_stream(str(path), stream_id=name)
        assert runtime.wait(timeout=300)
    return {(r.stream_id, r.track_id, r.clip_index, r.start_s, r.end_s): r.probabilities for r in results}, events


@needs_server
def test_generated_streams_give_the_clips_and_probabilities_of_local_onnxruntime(server, s4d_onnx, tmp_path):
    frames = {"a.mp4": 150, "b.mkv": 110, "c.ts": 70}
    videos = {name: write_face_video(tmp_path / name, n, seed=k) for k, (name, n) in enumerate(frames.items())}
    local, _ = run_videos(s4d_onnx, RuntimeOptions(backend="onnxruntime", threads=1, hop=8), videos)
    options = RuntimeOptions(backend="triton", server=server.grpc_address, hop=8)
    served, events = run_videos(s4d_onnx, options, videos)
    assert not [e for e in events if e.is_fault]
    for name, n in frames.items():  # every clip the frame counts give, on both
        assert len([k for k in served if k[0] == name]) == clip_count(n, 16, 4, 8)
    assert served.keys() == local.keys()
    worst = max(np.abs(np.subtract(served[k], local[k])).max() for k in local)
    print(f"largest probability difference triton vs local ONNX Runtime: {worst:.2e}")
    assert worst <= PROBABILITY_ATOL
    by_url, _ = run_videos(f"triton://{server.grpc_address}/s4d_small", RuntimeOptions(hop=8), {"a.mp4": videos["a.mp4"]})
    assert by_url.keys() == {k for k in served if k[0] == "a.mp4"}  # the spec from the server's config
    assert max(np.abs(np.subtract(by_url[k], local[k])).max() for k in by_url) <= PROBABILITY_ATOL


@needs_server
def test_a_wrong_model_name_or_port_fails_at_start_with_one_line(server, s4d_onnx, tiny):
    cases = [
        ({"server": server.grpc_address, "triton_model": "nope"}, f"the Triton server at {server.grpc_address} has no model 'nope'; it serves s4d_small, tiny"),
        ({"server": f"127.0.0.1:{Ports.free().grpc}"}, "no Triton server answers at 127.0.0.1:"),
        ({"server": server.grpc_address, "triton_model": "tiny"}, "model 'tiny' at"),  # another model's spec
    ]
    for remote, message in cases:
        with pytest.raises(BackendUnavailable) as failure:
            Runtime(s4d_onnx, RuntimeOptions(backend="triton", **remote))
        assert message in str(failure.value) and "\n" not in str(failure.value)
    proc = run_cli("runtime", str(tiny), "--backend", "triton", "--server", server.grpc_address, "--triton-model", "nope", "--stream", "x.mp4")
    assert_one_line_error(proc, "has no model 'nope'")


def push_clips(runtime: Runtime, streams, clips: int, start: int) -> int:
    """Push frames for `clips` more clips on each stream (tiny: a clip every 8 frames)."""
    rng = np.random.default_rng(start)
    for t in range(start, start + 8 * clips):
        for stream in streams:
            runtime.push_frame(stream, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), t / FPS)
    return start + 8 * clips


@needs_server
def test_a_server_outage_fails_each_affected_stream_once_and_restarting_resumes(tiny, tmp_path):
    repository = tmp_path / "repository"
    export_triton(tiny, repository, TritonOptions(max_batch=8, threads=1))
    server = start_server(repository, tmp_path / "server.log")
    results, events = [], []
    try:
        runtime = Runtime(tiny, RuntimeOptions(backend="triton", server=server.grpc_address, max_delay_ms=100),
                          on_result=results.append, on_event=events.append)
        with runtime:
            streams = [runtime.add_push_stream(fps=FPS, stream_id=s) for s in ("a", "b")]
            t = push_clips(runtime, streams, clips=2, start=0)
            assert runtime.wait(timeout=30) and len(results) == 4
            server.stop()
            t = push_clips(runtime, streams, clips=1, start=t)  # these clips meet no server
            assert runtime.wait(timeout=60)
            server.start(timeout_s=STARTUP_LIMIT_S)
            push_clips(runtime, streams, clips=2, start=t)
        failures = [e for e in events if e.kind is EventKind.INFERENCE_FAILED]
        assert sorted(e.stream_id for e in failures) == ["a", "b"]
        assert all(f"Triton server {server.grpc_address} after 5 tries" in e.cause for e in failures), failures[0].cause
        assert [e for e in events if e.is_fault and e.kind is not EventKind.INFERENCE_FAILED] == []
        for stream, stats in runtime.stats().items():
            assert (stats.clips_ready, stats.results, stats.clips_failed, stats.clips_dropped) == (5, 4, 1, 0), stream
            assert sorted(r.clip_index for r in results if r.stream_id == stream) == [0, 1, 3, 4]
        assert runtime.backend.retries >= 4
    finally:
        server.stop()


@needs_server
def test_a_batch_waits_out_a_restart_within_its_retries(tiny, tmp_path):
    repository = tmp_path / "repository"
    export_triton(tiny, repository, TritonOptions(max_batch=8, threads=1))
    server = start_server(repository, tmp_path / "server.log")
    try:
        backend = TritonBackend(load_model_source(tiny), server=server.grpc_address, retry_pauses_s=(0.5,) * 60)
        frames = np.random.default_rng(3).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        spec = load_model_source(tiny).spec
        batch = np.stack([spec.normalize(frames)] * 3)
        server.stop()
        restart = threading.Thread(target=lambda: (time.sleep(1.0), server.start(timeout_s=STARTUP_LIMIT_S)))
        restart.start()
        logits = backend.run(batch)
        restart.join()
        expected = np.log(tiny_probabilities(frames, spec))
        np.testing.assert_allclose(logits - logits.max(axis=1, keepdims=True), np.stack([expected - expected.max()] * 3), atol=1e-5)
        assert backend.retries >= 1
        backend.close()
    finally:
        server.stop()


def run_pushed(model, options: RuntimeOptions, clips_per_stream: int) -> tuple[list, Runtime]:
    """Four push streams of `clips_per_stream` tiny clips each, pushed before any can finish (a
    queue deep enough that none is dropped), so the batcher always has the next batch ready."""
    results = []
    options = dataclasses.replace(options, queue_per_stream=4 * clips_per_stream, max_delay_ms=1.0)
    with Runtime(model, options, on_result=results.append) as runtime:
        streams = [runtime.add_push_stream(fps=FPS, stream_id=s) for s in "abcd"]
        push_clips(runtime, streams, clips=clips_per_stream, start=0)
        assert runtime.wait(timeout=120)
    return results, runtime


@needs_server
def test_several_requests_in_flight_keep_each_tracks_results_in_clip_order(server, tiny):
    """in_flight 3: more than one request waits on the server at once (the backend's own count),
    yet every track's results arrive in clip order with the probabilities of one at a time. The
    control: in_flight 1 never has two (so the peak check can fail)."""
    one, one_runtime = run_pushed(tiny, RuntimeOptions(backend="triton", server=server.grpc_address, max_batch=2, in_flight=1), 12)
    three, three_runtime = run_pushed(tiny, RuntimeOptions(backend="triton", server=server.grpc_address, max_batch=2, in_flight=3), 12)
    print(f"peak requests in flight: {one_runtime.backend.peak_in_flight} with in_flight 1, "
          f"{three_runtime.backend.peak_in_flight} with in_flight 3; batches {dict(three_runtime.batch_sizes)}")
    assert one_runtime.backend.peak_in_flight == 1 and 2 <= three_runtime.backend.peak_in_flight <= 3
    for results in (one, three):
        for stream in "abcd":  # delivery order = clip order, every clip once
            assert [r.clip_index for r in results if r.stream_id == stream] == list(range(12))
    by_clip = {(r.stream_id, r.clip_index): r.probabilities for r in one}
    assert max(np.abs(np.subtract(r.probabilities, by_clip[(r.stream_id, r.clip_index)])).max() for r in three) <= PROBABILITY_ATOL
    assert "3 in flight" in three_runtime.backend.details()


def test_in_flight_is_the_triton_backends_option(tiny):
    with pytest.raises(ValueError) as failure:
        Runtime(tiny, RuntimeOptions(backend="onnxruntime", in_flight=2))
    assert str(failure.value) == "in_flight applies to the triton backend; onnxruntime runs one batch at a time on this machine"


# A runtime process of its own: connects, says so, starts its streams on the parent's "go" (so the
# two processes' first requests meet in the server's queue), then prints each result with its
# full-precision probabilities (the CLI's JSON rounds them to 4 places) and its batch count.
WORKER = """
import json, sys
from pathlib import Path
from runtime.api import Runtime, RuntimeOptions
model, server, name, max_batch, *videos = sys.argv[1:]
results, events = [], []
options = RuntimeOptions(backend="triton", server=server, triton_model=name, max_batch=int(max_batch), hop=8)
with Runtime(model, options, on_result=results.append, on_event=events.append) as runtime:
    print("connected", flush=True)
    sys.stdin.readline()
    for video in videos:
        runtime.add_stream(video, stream_id=Path(video).name)
    assert runtime.wait(timeout=60)
for r in results:
    print(json.dumps([r.stream_id, r.track_id, r.clip_index, r.start_s, r.end_s, list(r.probabilities)]))
print(json.dumps({"requests": sum(runtime.batch_sizes.values()), "faults": [e.cause for e in events if e.is_fault]}))
"""
PROCESS_MAX_BATCH = 4  # per request: a server batch of more clips holds requests of both processes


def run_two_processes(model, server: TritonServer, name: str, videos: list) -> tuple[dict, int]:
    """Two runtime processes, half the videos each, on one served model: their results and
    the requests they sent, all bounded by timeouts."""
    halves = [[str(v) for v in videos[k::2]] for k in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(model), server.grpc_address, name, str(PROCESS_MAX_BATCH), *half], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for half in halves]
    try:
        for proc in procs:
            assert proc.stdout.readline() == "connected\n", proc.communicate(timeout=30)[1][-3000:]
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results, requests, lines = {}, 0, 0
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        *answers, summary = [json.loads(line) for line in out.splitlines()]
        assert summary["faults"] == [], summary
        requests, lines = requests + summary["requests"], lines + len(answers)
        results.update({tuple(answer[:5]): answer[5] for answer in answers})
    assert len(results) == lines  # no clip twice
    return results, requests


def executions(server: TritonServer, name: str) -> tuple[int, int, dict[int, int]]:
    """The server's own counts for the model (its statistics extension): requests answered,
    executions of model.py, and executions by batch size (clips in one ONNX Runtime run)."""
    import tritonclient.grpc

    client = tritonclient.grpc.InferenceServerClient(server.grpc_address)
    try:
        (stats,) = client.get_inference_statistics(name, as_json=True)["model_stats"]
    finally:
        client.close()
    by_size = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    return int(stats["inference_stats"]["success"].get("count", 0)), int(stats.get("execution_count", 0)), by_size


@needs_server
def test_two_runtime_processes_share_one_server_whose_batches_hold_clips_of_both(s4d_onnx, tmp_path):
    """Two models of the same ONNX on one server: "merging" with a 0.5 s dynamic batcher delay,
    "unbatched" without a dynamic batcher (Triton's default scheduler runs each request alone: the
    control that shows the merge check can fail; a delay of 0 still merges whatever queued while
    the instance was busy, so it would be no sure control)."""
    repository = tmp_path / "repository"
    export_triton(s4d_onnx, repository, TritonOptions(name="merging", max_batch=8, max_queue_delay_us=500_000, threads=1))
    config = export_triton(s4d_onnx, repository, TritonOptions(name="unbatched", max_batch=8, threads=1)) / "config.pbtxt"
    text, found = re.subn(r"dynamic_batching \{[^}]*\}\n", "", config.read_text())
    assert found == 1
    config.write_text(text)
    frames = (150, 130, 110, 100)  # 3 + 3 and 2 + 2 clips: 5 per process, ≥ 2 requests each
    videos = [write_face_video(tmp_path / f"v{k}.mp4", n, seed=k) for k, n in enumerate(frames)]
    local, _ = run_videos(s4d_onnx, RuntimeOptions(backend="onnxruntime", threads=1, hop=8), {v.name: v for v in videos})
    assert len(local) == sum(clip_count(n, 16, 4, 8) for n in frames) == 10
    server = start_server(repository, tmp_path / "server.log")
    try:
        for name in ("merging", "unbatched"):
            served, requests = run_two_processes(s4d_onnx, server, name, videos)
            assert served.keys() == local.keys()  # every clip of both processes, once
            worst = max(np.abs(np.subtract(served[k], local[k])).max() for k in local)
            answered, executed, by_size = executions(server, name)
            print(f"{name}: {requests} requests from the two processes, {executed} executions, clips per execution {by_size}, "
                  f"largest probability difference vs local ONNX Runtime {worst:.2e}")
            assert worst <= PROBABILITY_ATOL
            assert answered == requests and sum(k * n for k, n in by_size.items()) == len(local)  # only these clips reached it
            if name == "merging":  # fewer executions than requests, some with more clips than one process sends
                assert executed < requests and max(by_size) > PROCESS_MAX_BATCH
            else:
                assert executed == requests and max(by_size) <= PROCESS_MAX_BATCH
    finally:
        assert server.stop() == 0


@needs_server
def test_serve_runs_until_ctrl_c(tiny, tmp_path):
    export_triton(tiny, tmp_path / "repo")
    ports = Ports.free()
    command = [sys.executable, "-m", "export.triton", "serve", str(tmp_path / "repo"), "--server-dir", str(SERVER_FILES.root),
               "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics)]
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while "tritonserver ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        assert f"gRPC 127.0.0.1:{ports.grpc}" in log.read_text(errors="replace")
        TritonBackend(load_model_source(tiny), server=f"127.0.0.1:{ports.grpc}").close()
        proc.send_signal(signal.SIGINT)
        # serve gives tritonserver its exit timeout + 10 s before killing it (TritonServer.stop)
        assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")[-3000:]
        assert not TritonServer(tmp_path / "repo", files=SERVER_FILES, ports=ports).ready()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- Prometheus metrics (runtime.metrics): local ONNX Runtime, no server needed -------------------


@pytest.mark.skipif(importlib.util.find_spec("prometheus_client") is None, reason="prometheus_client not installed: pip install prometheus-client")
def test_metrics_say_what_the_runtime_counted(tiny):
    from prometheus_client.parser import text_string_to_metric_families

    from runtime.metrics import RuntimeMetrics

    metrics = RuntimeMetrics()
    url = metrics.serve(0)
    results = []
    runtime = Runtime(tiny, RuntimeOptions(backend="onnxruntime", max_delay_ms=1, hop=2), on_result=metrics.observing(results.append))
    metrics.attach(runtime)
    frames = np.random.default_rng(0).integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
    with runtime:
        stream = runtime.add_push_stream(fps=10, stream_id="cam")
        for t, frame in enumerate(frames):
            runtime.push_frame(stream, frame, t / 10)
    with urllib.request.urlopen(url, timeout=10) as answer:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(answer.read().decode()) for s in family.samples}
    metrics.close()
    cam = (("stream", "cam"),)
    assert len(results) == 5
    assert [samples[(f"dfer_{name}_total", cam)] for name in ("frames", "clips", "results", "clips_dropped", "faults")] == [23, 5, 5, 0, 0]
    assert samples[("dfer_batch_size_count", ())] == sum(runtime.batch_sizes.values()) and samples[("dfer_batch_size_sum", ())] == 5
    assert samples[("dfer_backend_seconds_total", ())] == pytest.approx(runtime.backend_seconds)
    assert samples[("dfer_latency_seconds_count", (("stage", "ready→emitted"),))] == 5
