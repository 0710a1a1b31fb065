"""The runtime for embedding: many streams in, per-track emotion results out.

    with Runtime("model.onnx", on_result=print) as rt:
        rt.add_stream("rtsp://camera/stream")
        camera = rt.add_push_stream(fps=25)
        rt.push_frame(camera, rgb_frame, timestamp_s)

Threads: one per decoded source (decode → faces → clip buffers → normalised clips,
runtime.sources and runtime.streams), the dispatcher's (batches → backend → probabilities →
results, with as many batches in flight as the backend takes, runtime.dispatch) and one for delivery (callbacks or the ``results()`` iterator,
runtime.delivery); runtime.ledger accounts for every clip. A file's decoder waits while its
stream's queue is full, a live stream drops its oldest clip (runtime.batcher.QueuePolicy).
``close()`` stops the sources, then runs every clip still queued and delivers every result
before it returns: nothing computed is lost.

The model is a clip model (layout NCTHW) or a per-frame image model (NCHW, e.g. from
``python -m export.image_model``): the latter runs on "clips" of one frame, so each face of
each taken frame (every frame_step-th of its track) gets a result with the same decisions,
events and batching across streams. With ``annotate`` set, each stream is also written as an
MP4 with its boxes and labels drawn on (runtime.annotate).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.annotate import Annotator, TrackLabels, require_pillow, video_path
from runtime.backends import open_backend
from runtime.batcher import Batcher
from runtime.delivery import Delivery
from runtime.dispatch import Dispatcher, StaticModel
from runtime.latency import ALL, LatencyBook, summary_table
from runtime.ledger import ClipLedger
from runtime.model import load_model_source
from runtime.triton_backend import is_triton_url, served_model_source
from runtime.post import CompoundOptions, PostProcessor, StaticFrames
from runtime.records import Clip, EventKind, Result, StreamEvent, StreamState
from runtime.sources import PushSource, VideoSource
from runtime.stage_clock import StageClock, StageTimes
from runtime.streams import StreamOptions, StreamPipeline, StreamStats
from runtime.temporal import TemporalOptions

log = logging.getLogger("runtime")
# The source events that end a stream, and the state each leaves it in.
_FINAL = {EventKind.ENDED: StreamState.ENDED, EventKind.FAILED: StreamState.FAILED}


@dataclass(frozen=True)
class RuntimeOptions:
    """backend/providers/threads: see runtime.backends; server/triton_model: the triton
    backend's gRPC address (HOST:PORT) and model name (runtime.triton_backend). max_batch: clips per inference (capped
    by the backend's own limit); max_delay_ms: longest a ready clip waits for a fuller batch;
    queue_per_stream: ready clips a stream may have waiting (then a file's decoder waits, a
    live stream drops its oldest: StreamOptions.queue_policy);
    hop: new samples between two clips of a track (None: the clip length, no overlap);
    tau_s/threshold/margin: each track's decisions (runtime.temporal.TemporalOptions: EMA time
    constant in stream seconds, score a label needs, hysteresis); compound: compound
    expressions per track, optionally fused with a static per-frame model (runtime.post).
    frame_step: per-frame (NCHW) models only: each track's result comes from every
    frame_step-th frame. Default 1, every frame: the crop is always the current frame's (between
    detections, StreamOptions.detect_every, at the last detected box), a per-frame FER model
    costs little next to the detector, and the smoothing (in stream time) gains from dense
    samples; raise it to cut inference. annotate: a folder that gets one MP4 per stream,
    <stream id>.mp4, of every frame with its face boxes, track ids and each track's latest
    smoothed label at the frame's decoding drawn on (runtime.annotate; needs Pillow); None: none.
    in_flight: batches the triton backend has on the network at once (runtime.dispatch; None:
    its default, runtime.triton_backend.DEFAULT_IN_FLIGHT); local backends run one at a time."""

    backend: str = "auto"
    providers: tuple[str, ...] | None = None
    server: str | None = None
    triton_model: str | None = None
    threads: int | None = None
    max_batch: int = 32
    max_delay_ms: float = 50.0
    queue_per_stream: int = 8
    hop: int | None = None
    tau_s: float = 1.0
    threshold: float = 0.4
    margin: float = 0.05
    compound: CompoundOptions | None = None
    frame_step: int = 1
    annotate: str | Path | None = None
    in_flight: int | None = None

    def __post_init__(self) -> None:
        TemporalOptions(labels=("any",), **self.temporal)  # the one check of these three
        if type(self.frame_step) is not int or self.frame_step < 1:
            raise ValueError(f"frame_step must be an integer ≥ 1, got {self.frame_step!r}")

    @property
    def temporal(self) -> dict:
        return {"tau_s": self.tau_s, "threshold": self.threshold, "margin": self.margin}


@dataclass
class _Stream:
    pipeline: StreamPipeline
    source: VideoSource | PushSource
    state: StreamState = StreamState.RUNNING

    def stop_as(self, final: StreamState) -> None:
        """Stopped by the host: a running stream becomes final; one that already ended or
        failed keeps that state (it says more). Under the runtime's lock."""
        if self.state is StreamState.RUNNING:
            self.state = self.state.to(final)


class Runtime:
    def __init__(self, model: str | Path, options: RuntimeOptions = RuntimeOptions(), *,
                 on_result: Callable[[Result], None] | None = None,
                 on_event: Callable[[StreamEvent], None] | None = None):
        if is_triton_url(model):  # triton://HOST:PORT/NAME: the spec comes from the server's config
            self.model, options = served_model_source(str(model), options)
        else:
            self.model = load_model_source(model)
        self.spec, self.options = self.model.spec, options
        self.hop = options.hop if options.hop is not None else self.spec.frames
        if not 1 <= self.hop <= self.spec.frames:
            raise ValueError(f"hop must lie in [1, {self.spec.frames}] (the clip length), got {self.hop}")
        self.stride = _sampling_stride(self.spec, options.frame_step)
        self._annotations = _annotation_folder(options.annotate)
        self._labels = TrackLabels()
        self._annotated: set[Path] = set()  # the annotated videos of this runtime's streams
        self._static = _open_static(options)
        self.static_model = None if self._static is None else self._static.source
        static_labels = None if self.static_model is None else self.static_model.spec.labels
        self.post = PostProcessor(self.spec.labels, options.temporal, options.compound, static_labels)
        self.backend = open_backend(self.model, options.backend, options.providers, options.threads,
                                    server=options.server, triton_model=options.triton_model, in_flight=options.in_flight)
        max_batch = min(options.max_batch, self.backend.max_batch or options.max_batch)
        self._batcher = Batcher(max_batch, options.max_delay_ms / 1e3, options.queue_per_stream)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._retired: dict[str, _Stream] = {}  # removed streams, kept for stats and the summary
        self._events: deque[StreamEvent] = deque(maxlen=10_000)
        self._ids = itertools.count()
        self._closed = False
        self._latency = LatencyBook()
        self.stage_clock = StageClock()  # every stream and the dispatcher add their stage times here
        self._ledger = ClipLedger(on_track_end=self._track_ended)
        self._delivery = Delivery(on_result, self._ledger, self._latency)
        self._dispatcher = Dispatcher(
            model=self.model, backend=self.backend, static=self._static, post=self.post, max_batch=max_batch,
            next_batch=self._batcher.next_batch, deliver=self._deliver, ledger=self._ledger, report=self._stream_event,
            stage_clock=self.stage_clock, in_flight=self.backend.in_flight,
        )
        self._dispatcher.start()

    # --- streams -------------------------------------------------------------------------

    def add_stream(self, location: str, stream_id: str | None = None, options: StreamOptions = StreamOptions()) -> str:
        """Decode a file, URL (rtsp/http/udp/...) or /dev/video device in its own thread.

        A location that cannot be opened, a file that is not there included, is that stream's
        fault, not the call's: the stream is added and fails (a FAILED event naming the
        location, state failed) while the others go on. ValueError only for what no location
        fixes: face mode 'boxes', loop/realtime on a live source, a stream id in use (or whose
        annotated video another stream writes), a closed runtime."""
        if options.faces == "boxes":
            raise ValueError("decoded streams take face mode 'full' (the video is the face crop) or 'detect' "
                             "(the built-in detector), not 'boxes' (boxes come with pushed frames)")
        stream_id = self._new_id(stream_id, location)
        pipeline = self._pipeline(stream_id, options)
        source = VideoSource(location, options.source, pipeline.feed, functools.partial(self._stream_event, stream_id),
                             stage_clock=self.stage_clock)
        self._attach(stream_id, pipeline, source, options)
        source.start()
        return stream_id

    def add_push_stream(self, fps: float, stream_id: str | None = None, size: tuple[int, int] | None = None,
                        options: StreamOptions = StreamOptions()) -> str:
        """A stream whose frames the host pushes with push_frame; size is (height, width)."""
        stream_id = self._new_id(stream_id, "push")
        pipeline = self._pipeline(stream_id, options)
        source = PushSource(fps, size, pipeline.feed, functools.partial(self._stream_event, stream_id))
        self._attach(stream_id, pipeline, source, options)
        return stream_id

    def push_frame(self, stream_id: str, image: np.ndarray, time_s: float, boxes=None) -> bool:
        """Hand in one RGB uint8 frame (and face boxes [x0, y0, x1, y1] in 'boxes' mode).
        False when the frame was rejected; the event says why, and the stream goes on."""
        if self._closed:
            raise ValueError("the runtime is closed")
        stream = self._streams.get(stream_id)
        if stream is None or not isinstance(stream.source, PushSource):
            raise ValueError(f"{stream_id!r} is not an open push stream (push streams: {self._push_ids()})")
        return stream.source.push(image, time_s, boxes)

    def remove_stream(self, stream_id: str) -> None:
        """Stop a stream; its clips already queued still become results."""
        with self._lock:
            stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise ValueError(f"no stream {stream_id!r} (streams: {', '.join(self._streams) or 'none'})")
        self._stop({stream_id: stream}, StreamState.REMOVED)
        with self._lock:
            self._retired[stream_id] = stream

    # --- results and reports ----------------------------------------------------------------

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Results as they come (when no on_result callback was given); ends after close(),
        or when none came for timeout seconds."""
        return self._delivery.results(timeout)

    def events(self) -> list[StreamEvent]:
        with self._lock:
            return list(self._events)

    def stats(self) -> dict[str, StreamStats]:
        with self._lock:
            streams = {**self._retired, **self._streams}
        return {stream_id: self._stats(stream_id, s) for stream_id, s in streams.items()}

    def latency(self, stream_id: str = ALL) -> dict[str, tuple[float, float, float, int]]:
        """stage → (p50, p95, p99 seconds, samples), live."""
        return self._latency.percentiles(stream_id)

    def summary(self) -> str:
        return summary_table(self._latency, self.stats())

    @property
    def backend_seconds(self) -> float:
        """Time inside backend.run (runtime.dispatch.Dispatcher)."""
        return self._dispatcher.backend_seconds

    @property
    def dispatch_seconds(self) -> float:
        """Time in the dispatcher per batch: stack, run, post-process, hand-over."""
        return self._dispatcher.dispatch_seconds

    def stage_times(self) -> StageTimes:
        """CPU seconds per pipeline stage so far, over every stream (runtime.stage_clock)."""
        return self.stage_clock.snapshot()

    @property
    def batch_sizes(self) -> Counter[int]:
        return self._dispatcher.batch_sizes

    def wait(self, timeout: float | None = None) -> bool:
        """Until every decoded source has stopped and each of its ready clips is accounted for
        (result, drop or failed batch); False on timeout (live sources never stop by themselves)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._lock:
            sources = [stream.source for stream in self._streams.values()]
        for source in sources:
            if not source.join(None if deadline is None else max(0.0, deadline - time.perf_counter())):
                return False
        return self._ledger.wait_settled(deadline)

    def close(self) -> None:
        """Stop every source, run every clip still waiting, deliver every result, free the backend."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            streams = dict(self._streams)
        self._stop(streams, StreamState.CLOSED)
        self._batcher.close()
        self._dispatcher.join()
        self._delivery.close()
        self.backend.close()
        if self._static is not None:
            self._static.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- inside ---------------------------------------------------------------------------

    def _new_id(self, stream_id: str | None, hint: str) -> str:
        if self._closed:
            raise ValueError("the runtime is closed")
        stream_id = stream_id or f"{next(self._ids)}:{hint}"
        if stream_id in self._streams:
            raise ValueError(f"stream id {stream_id!r} is already in use")
        return stream_id

    def _pipeline(self, stream_id: str, options: StreamOptions) -> StreamPipeline:
        static_frames = None if self._static is None else self._static.frames
        annotator = None
        if self._annotations is not None:
            path = video_path(self._annotations, stream_id)
            if path in self._annotated:
                raise ValueError(f"stream id {stream_id!r} would overwrite the annotated video {path} of an earlier stream")
            self._annotated.add(path)
            annotator = Annotator(path, stream_id, self._labels)
        return StreamPipeline(stream_id, self.spec, self.hop, options, self._enqueue, self._stream_event,
                              self._ledger.end_track, static_frames, stride=self.stride, annotator=annotator,
                              stage_clock=self.stage_clock)

    def _deliver(self, result: Result) -> None:
        """On the dispatcher's thread: the track's label for annotated frames, then delivery."""
        if self._annotations is not None:
            self._labels.record(result)
        self._delivery.put(result)

    def _attach(self, stream_id: str, pipeline: StreamPipeline, source: VideoSource | PushSource,
                options: StreamOptions) -> None:
        pipeline.clock = source.clock
        self._ledger.open_stream(stream_id)
        self._batcher.open_stream(stream_id, options.policy_for(source.kind))
        with self._lock:
            self._streams[stream_id] = _Stream(pipeline, source)

    def _stop(self, streams: dict[str, _Stream], final: StreamState) -> None:
        """Stop the streams' sources, ending their tracks. Each stream's blocked decoder is
        released first, so joining it cannot wait on a queue that only the dispatcher drains."""
        for stream_id, stream in streams.items():
            self._batcher.release(stream_id)
            stream.source.stop()
        for stream in streams.values():
            stream.source.join()
            stream.pipeline.end()
            with self._lock:
                stream.stop_as(final)

    def _push_ids(self) -> str:
        return ", ".join(i for i, s in self._streams.items() if isinstance(s.source, PushSource)) or "none"

    def _enqueue(self, clip: Clip) -> None:
        self._ledger.clip_ready(clip)
        dropped = self._batcher.put(clip)
        if dropped is None:
            return
        why = "the runtime was closing" if dropped is clip else f"{self._batcher.queue_per_stream} newer clips of this stream were waiting"
        self._stream_event(
            dropped.stream_id, EventKind.CLIP_DROPPED,
            f"clip {dropped.index} of track {dropped.track_id} ({dropped.start_s:.2f}–{dropped.end_s:.2f} s) dropped: {why}",
        )
        self._ledger.dropped(dropped)  # after its event: once wait() sees it settled, the event is in

    def _stream_event(self, stream_id: str, kind: EventKind, cause: str, label_events=()) -> None:
        event = StreamEvent(stream_id=stream_id, kind=kind, cause=cause, time=time.perf_counter(),
                            label_events=tuple(label_events))
        if event.is_fault:
            self._ledger.fault(stream_id)
        with self._lock:
            self._events.append(event)
            ended = self._streams.get(stream_id) if kind in _FINAL else None
        if ended is not None:  # sent by the source's own thread, after its last frame
            ended.pipeline.end()  # first: a stream seen ended or failed has its annotated video finished
            with self._lock:
                if ended.state is StreamState.RUNNING:  # the host may have stopped it meanwhile
                    ended.state = ended.state.to(_FINAL[kind])
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a host callback's bug must not stop this stream
                log.exception("on_event callback failed")

    def _track_ended(self, stream_id: str, track_id: int) -> None:
        """The ledger saw the track's last clip out: close its decisions, report what it held."""
        offsets = self.post.end_track((stream_id, track_id))
        self._labels.forget(stream_id, track_id)
        held = ", ".join(f"{e.label} ({e.confidence:.2f})" for e in offsets) or "no label"
        self._stream_event(stream_id, EventKind.TRACK_ENDED, f"track {track_id} ended; it held {held}", offsets)

    def _stats(self, stream_id: str, stream: _Stream) -> StreamStats:
        c = self._ledger.counts(stream_id)
        return StreamStats(
            state=stream.state, frames=stream.pipeline.frames, frames_lost=stream.source.clock.lost,
            frames_out_of_order=stream.source.clock.out_of_order,
            decode_errors=stream.source.decode_errors, clips_ready=c.clips_ready,
            clips_invalidated=stream.pipeline.clips_invalidated, clips_dropped=c.clips_dropped,
            clips_failed=c.clips_failed, results=c.results, tracks_evicted=stream.pipeline.tracks_evicted,
            faults=c.faults, landmarks_missed=stream.pipeline.landmarks_missed,
        )


def _sampling_stride(spec, frame_step: int) -> int:
    """Source frames between two samples of a track: a clip model's trained frame_stride, a
    per-frame model's frame_step."""
    if spec.layout == "NCHW":
        return frame_step
    if frame_step != 1:
        raise ValueError(f"frame_step applies to per-frame (NCHW) models; this {spec.layout} clip model samples "
                         f"every {spec.frame_stride}-th frame, as it was trained (set hop for fewer clips)")
    return spec.frame_stride


def _annotation_folder(folder: str | Path | None) -> Path | None:
    """The annotation folder, made now: no Pillow or no writable folder fails at start."""
    if folder is None:
        return None
    require_pillow()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open_static(options: RuntimeOptions) -> StaticModel | None:
    compound = options.compound
    if compound is None or compound.static_model is None:
        return None
    source = load_model_source(compound.static_model)
    frames = StaticFrames(source.spec, compound.static_frames)
    # a plain ONNX holds no engine; the static model runs here, not on a Triton server
    backend = "auto" if options.backend in ("tensorrt", "triton") else options.backend
    return StaticModel(source=source, backend=open_backend(source, backend, options.providers, options.threads), frames=frames)
