"""Run a model on video streams and print per-track results.

    python -m runtime model.onnx --stream a.mp4 --stream rtsp://camera/1 [--json]
    python -m runtime model.onnx --stream a.mp4 --compound [--static-model fer.onnx] [--mhpf weights.json]
    python -m runtime model.onnx --backend triton --server HOST:8001 --stream a.mp4   (or MODEL = triton://HOST:8001/NAME)
    python -m runtime fer.onnx --stream a.mp4 --faces detect [--frame-step 2] [--annotate out/]

A per-frame model (python -m export.image_model) gives a result per face per taken frame
(every --frame-step-th frame of each track); --annotate writes each stream as an MP4 with its
face boxes, track ids and labels drawn on (needs Pillow).

Files end on their own; with live streams (or --loop) it runs until --duration or Ctrl-C.
Every clip of a file becomes a result (its decoder waits for the model); live streams and
--realtime files drop their oldest clip when --queue clips wait. Results and stream events go
to stdout (JSON lines with --json), the latency table to stderr on exit. A location that
cannot be opened (a missing file included) fails that stream alone, with a `failed` event.
Exit status: 0, 1 when some stream failed for good, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import replace

from runtime.api import Runtime, RuntimeOptions
from runtime.metadata import weights_note
from runtime.post import CompoundOptions
from runtime.records import Result, StreamEvent, StreamState
from runtime.sources import FILE, SourceOptions, source_kind
from runtime.streams import StreamOptions


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    printer = _Printer(args.json)
    try:
        options = RuntimeOptions(
            backend=args.backend, providers=tuple(args.providers.split(",")) if args.providers else None,
            server=args.server, triton_model=args.triton_model,
            threads=args.threads, max_batch=args.max_batch,
            max_delay_ms=args.max_delay_ms, queue_per_stream=args.queue, hop=args.hop,
            tau_s=args.tau_s, threshold=args.threshold, margin=args.margin, compound=_compound_options(args),
            frame_step=args.frame_step, annotate=args.annotate, in_flight=args.in_flight,
        )
        av_options = tuple(_key_value(option) for option in args.av_option)
        source = SourceOptions(loop=args.loop, realtime=args.realtime, max_retries=args.max_retries, av_options=av_options)
        stream_options = StreamOptions(faces=args.faces, detector=args.detector, detect_every=args.detect_every, source=source,
                                       min_face_score=args.min_face_score,
                                       resize=args.resize)
        metrics = _metrics(args.metrics_port, args.metrics_address)
        on_result = metrics.observing(printer.result) if metrics else printer.result
        runtime = Runtime(args.model, options, on_result=on_result, on_event=printer.event)
        if metrics:
            metrics.attach(runtime)
    except (ValueError, OSError, ImportError) as err:  # ImportError: --annotate without Pillow, --metrics-port without prometheus_client
        print(f"error: {err}", file=sys.stderr)
        return 2
    printer.labels = runtime.spec.labels
    print(f"backend: {runtime.backend.describe()}", file=sys.stderr)
    note = weights_note(runtime.model.untrained, runtime.model.demo)
    if note:
        print(f"note: {note}", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for location in args.stream:
            runtime.add_stream(location, options=_with_source_kind(location, stream_options))
        _run_until_done(runtime, stop, args.duration)
    except (ValueError, ImportError, OSError) as err:  # bad options, a detector not installed
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
        if runtime.stats():
            print(runtime.summary(), file=sys.stderr)
    return 1 if any(s.state is StreamState.FAILED for s in runtime.stats().values()) else 0


def _metrics(port: int | None, address: str):
    """Prometheus metrics served from the start (runtime.metrics), or None without --metrics-port."""
    if port is None:
        return None
    from runtime.metrics import RuntimeMetrics  # prometheus_client loads only here

    metrics = RuntimeMetrics()
    print(f"metrics: {metrics.serve(port, address)}", file=sys.stderr)
    return metrics


def _compound_options(args) -> CompoundOptions | None:
    if not (args.compound or args.static_model or args.mhpf):
        return None
    return CompoundOptions(static_model=args.static_model, static_frames=args.static_frames, weights=args.mhpf,
                           ignore=tuple(args.ignore_label))


def _key_value(option: str) -> tuple[str, str]:
    key, sep, value = option.partition("=")
    if not (key and sep):
        raise ValueError(f"--av-option takes KEY=VALUE, got {option!r}")
    return key, value


def _with_source_kind(location: str, options: StreamOptions) -> StreamOptions:
    """--loop/--realtime apply to the file streams of a mixed command line (a file that is not
    there too: its stream fails on its own)."""
    if source_kind(location) is FILE:
        return options
    source = replace(options.source, loop=False, realtime=False)
    return replace(options, source=source)


def _run_until_done(runtime: Runtime, stop: threading.Event, duration: float | None) -> None:
    """Until every stream has ended (files), duration has passed, or Ctrl-C."""
    waiter = threading.Thread(target=lambda: (runtime.wait(), stop.set()), daemon=True)
    waiter.start()
    stop.wait(duration)


class _Printer:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.labels: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def result(self, result: Result) -> None:
        if self.as_json:
            line = json.dumps(result.to_json_dict(self.labels), ensure_ascii=False)
        else:
            p = max(result.probabilities)
            span = f"{result.end_s:.2f} s" if result.start_s == result.end_s else f"{result.start_s:.2f}–{result.end_s:.2f} s"
            line = (
                f"{result.stream_id} track {result.track_id} clip {result.clip_index} "
                f"[{span}]: {result.label} ({p:.2f}), "
                f"smoothed {result.smoothed_label}"
                + (f", compound {result.compound.label} ({result.compound.confidence:.2f})" if result.compound else "")
                + ("  (demo weights)" if result.untrained else "")
            )
        self._print(line)

    def event(self, event: StreamEvent) -> None:
        if self.as_json:
            self._print(json.dumps(event.to_json_dict(), ensure_ascii=False))
        else:
            self._print(f"{event.stream_id} {event.kind.value}: {event.cause}")

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="exported model: a bundle directory from python -m export.trt or a .onnx file from python -m export.onnx, "
                        "or triton://HOST:PORT/NAME, a model served by Triton (python -m export.triton)")
    parser.add_argument("--stream", action="extend", nargs="+", required=True,
                        help="video files, URLs (rtsp/http/udp) or /dev/videoN devices; repeat or list several")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on this port (needs prometheus-client)")
    parser.add_argument("--metrics-address", default="127.0.0.1", help="the address --metrics-port listens on (default: this machine only)")
    parser.add_argument("--loop", action="store_true", help="replay files forever")
    parser.add_argument("--realtime", action="store_true", help="pace files at their frame rate, like cameras")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--backend", default="auto", help="auto (the bundle's TensorRT engine when it runs here, else ONNX Runtime), tensorrt, onnxruntime "
                        "or triton (a Triton Inference Server: --server)")
    parser.add_argument("--server", metavar="HOST:PORT", help="--backend triton: the Triton server's gRPC address")
    parser.add_argument("--triton-model", metavar="NAME", help="--backend triton: the served model's name (default: the name python -m export.triton gives this file)")
    parser.add_argument("--in-flight", type=int, metavar="N",
                        help="--backend triton: requests on the network at once (default 2), so batching goes on while they travel")
    parser.add_argument("--providers", help="ONNX Runtime providers in order: cpu, cuda, tensorrt "
                        "(default: cpu for --backend onnxruntime; cuda, else cpu, for auto)")
    parser.add_argument("--threads", type=int, help="inference threads (default: ONNX Runtime's choice)")
    parser.add_argument("--max-batch", type=int, default=RuntimeOptions.max_batch)
    parser.add_argument("--max-delay-ms", type=float, default=RuntimeOptions.max_delay_ms)
    parser.add_argument("--queue", type=int, default=RuntimeOptions.queue_per_stream, help="ready clips a stream may have waiting: then a file's decoder waits, a live stream drops its oldest")
    parser.add_argument("--hop", type=int, help="new samples between two clips of a track (default: clip length)")
    parser.add_argument("--frame-step", type=int, default=RuntimeOptions.frame_step,
                        help="per-frame models: a result from every N-th frame of each track (default: every frame)")
    parser.add_argument("--annotate", metavar="DIR", help="write each stream as DIR/<stream id>.mp4 with face boxes, "
                        "track ids and labels drawn on (the label known when the frame was decoded; needs Pillow)")
    parser.add_argument("--max-retries", type=int, help="give up on a live stream after this many failed connects in a row")
    parser.add_argument("--faces", choices=("full", "detect"), default="full",
                        help="full: each frame is a face crop (default); detect: find faces with the built-in detector")
    parser.add_argument("--detector", default=StreamOptions.detector, help="built-in detector model: short_range (default) or full_range")
    parser.add_argument("--detect-every", type=int, default=StreamOptions.detect_every, help="run the detector every N frames")
    parser.add_argument("--min-face-score", type=float, default=StreamOptions.min_face_score,
                        help="lowest detector score a face keeps (default: the model's, 0.66 short_range / 0.67 full_range)")
    parser.add_argument("--resize", default=StreamOptions.resize, choices=("official", "fast"),
                        help="face crops to the model's size with the spec's own filter as the papers resize (default), "
                             "or swscale's faster bilinear")
    parser.add_argument("--tau-s", type=float, default=RuntimeOptions.tau_s, help="smoothing time constant in stream seconds (0: none)")
    parser.add_argument("--threshold", type=float, default=RuntimeOptions.threshold, help="smoothed score a label needs (below: uncertain)")
    parser.add_argument("--margin", type=float, default=RuntimeOptions.margin, help="hysteresis on label changes")
    parser.add_argument("--compound", action="store_true", help="also decide ABAW compound expressions per track")
    parser.add_argument("--static-model", help="a per-frame FER ONNX (python -m export.image_model) fused with the clip model; implies --compound")
    parser.add_argument("--static-frames", type=int, default=CompoundOptions.static_frames, help="frames of each clip the static model sees")
    parser.add_argument("--mhpf", help="MHPF fusion weights (JSON) for the models 'dynamic' and 'static' (default: their mean)")
    parser.add_argument("--ignore-label", action="append", default=[], metavar="NAME",
                        help="a model label outside the ABAW seven to drop before fusion (e.g. contempt); repeat for more")
    parser.add_argument("--av-option", action="append", default=[], metavar="KEY=VALUE",
                        help="FFmpeg option for opening streams, e.g. rtsp_transport=tcp; repeat for more")
    return parser


if __name__ == "__main__":
    sys.exit(main())
