"""The runtime for embedding: many streams in, per-track emotion results out.

    with Runtime("model.onnx", on_result=print) as rt:
        rt.add_stream("rtsp://camera/stream")
        camera = rt.add_push_stream(fps=25)
        rt.push_frame(camera, rgb_frame, timestamp_s)

Threads: one per decoded source (decode → faces → clip buffers → normalised clips), one
dispatcher (batches → backend → probabilities) and one for delivery (callbacks or the
``results()`` iterator). ``close()`` stops the sources, then runs every clip still queued
and delivers every result before it returns: nothing computed is lost.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime.backends import open_backend
from runtime.batcher import Batcher
from runtime.latency import ALL, LatencyBook, summary_table
from runtime.model import ModelSource, load_model_source
from runtime.post import CompoundOptions, PostProcessor, StaticFrames
from runtime.records import Clip, EventKind, Result, StreamEvent
from runtime.sources import PushSource, VideoSource
from runtime.streams import StreamOptions, StreamPipeline, StreamStats
from runtime.temporal import TemporalOptions

log = logging.getLogger("runtime")
_END = object()


@dataclass(frozen=True)
class RuntimeOptions:
    """backend/providers/threads: see runtime.backends. max_batch: clips per inference (capped
    by the backend's own limit); max_delay_ms: longest a ready clip waits for a fuller batch;
    queue_per_stream: ready clips a stream may have waiting before its oldest is dropped;
    hop: new samples between two clips of a track (None: the clip length, no overlap);
    tau_s/threshold/margin: each track's decisions (runtime.temporal.TemporalOptions: EMA time
    constant in stream seconds, score a label needs, hysteresis); compound: compound
    expressions per track, optionally fused with a static per-frame model (runtime.post)."""

    backend: str = "auto"
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    max_batch: int = 32
    max_delay_ms: float = 50.0
    queue_per_stream: int = 8
    hop: int | None = None
    tau_s: float = 1.0
    threshold: float = 0.4
    margin: float = 0.05
    compound: CompoundOptions | None = None

    def __post_init__(self) -> None:
        TemporalOptions(labels=("any",), **self.temporal)  # the one check of these three

    @property
    def temporal(self) -> dict:
        return {"tau_s": self.tau_s, "threshold": self.threshold, "margin": self.margin}


class _Stream:
    def __init__(self, pipeline: StreamPipeline, source: VideoSource | PushSource):
        self.pipeline, self.source = pipeline, source
        self.state = "running"


class Runtime:
    def __init__(self, model: str | Path, options: RuntimeOptions = RuntimeOptions(), *,
                 on_result: Callable[[Result], None] | None = None,
                 on_event: Callable[[StreamEvent], None] | None = None):
        self.model = load_model_source(model)
        self.spec, self.options = self.model.spec, options
        self.hop = options.hop if options.hop is not None else self.spec.frames
        if not 1 <= self.hop <= self.spec.frames:
            raise ValueError(f"hop must lie in [1, {self.spec.frames}] (the clip length), got {self.hop}")
        self.static_model, self._static_backend, self._static_frames = self._open_static(options)
        static_labels = None if self.static_model is None else self.static_model.spec.labels
        self.post = PostProcessor(self.spec.labels, options.temporal, options.compound, static_labels)
        self.backend = open_backend(self.model, options.backend, options.providers, options.threads)
        max_batch = min(options.max_batch, self.backend.max_batch or options.max_batch)
        self._batcher = Batcher(max_batch, options.max_delay_ms / 1e3, options.queue_per_stream)
        # One input buffer, reused by every batch: stacking 32 clips of 64×64 into a fresh
        # array took 15 ms (page faults), into this one 4.4 ms (2-core dev box).
        self._inputs = self.backend.input_buffer(self.spec.input_shape(max_batch))
        self._on_result, self._on_event = on_result, on_event
        self._streams: dict[str, _Stream] = {}
        self._retired: dict[str, _Stream] = {}  # removed streams, kept for stats and the summary
        self._counts: dict[str, Counter] = {}
        self._events: deque[StreamEvent] = deque(maxlen=10_000)
        # Clips of a track not yet accounted for; a track ends once its last one is out.
        self._pending: Counter[tuple[str, int]] = Counter()
        self._ending: set[tuple[str, int]] = set()
        self._latency = LatencyBook()
        self._results: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._closed = False
        # Time inside backend.run, and in the dispatcher per batch (stack, run, post-process,
        # hand-over): their difference is the runtime's own cost on the inference path.
        self.backend_seconds = 0.0
        self.dispatch_seconds = 0.0
        self.batch_sizes: Counter[int] = Counter()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="runtime dispatcher", daemon=True)
        self._delivery = threading.Thread(target=self._deliver_loop, name="runtime delivery", daemon=True)
        self._dispatcher.start()
        self._delivery.start()

    # --- streams -------------------------------------------------------------------------

    def add_stream(self, location: str, stream_id: str | None = None, options: StreamOptions = StreamOptions()) -> str:
        """Decode a file, URL (rtsp/http/udp/...) or /dev/video device in its own thread."""
        if options.faces == "boxes":
            raise ValueError("decoded streams take face mode 'full' (the video is the face crop) or 'detect' "
                             "(the built-in detector), not 'boxes' (boxes come with pushed frames)")
        stream_id = self._new_id(stream_id, location)
        pipeline = self._pipeline(stream_id, options)
        source = VideoSource(location, options.source, pipeline.feed, lambda kind, cause: self._stream_event(stream_id, kind, cause))
        self._attach(stream_id, pipeline, source)
        source.start()
        return stream_id

    def add_push_stream(self, fps: float, stream_id: str | None = None, size: tuple[int, int] | None = None,
                        options: StreamOptions = StreamOptions()) -> str:
        """A stream whose frames the host pushes with push_frame; size is (height, width)."""
        stream_id = self._new_id(stream_id, "push")
        pipeline = self._pipeline(stream_id, options)
        source = PushSource(fps, size, pipeline.feed, lambda kind, cause: self._stream_event(stream_id, kind, cause))
        self._attach(stream_id, pipeline, source)
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
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise ValueError(f"no stream {stream_id!r} (streams: {', '.join(self._streams) or 'none'})")
        self._stop(stream)
        with self._lock:
            stream.state = "removed" if stream.state == "running" else stream.state
            self._retired[stream_id] = stream

    # --- results and reports ----------------------------------------------------------------

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Results as they come (when no on_result callback was given); ends after close(),
        or when none came for timeout seconds."""
        if self._on_result is not None:
            raise ValueError("results go to the on_result callback; create the Runtime without it to iterate")
        while True:
            try:
                item = self._results.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                self._results.put(_END)  # for any other iterator
                return
            yield item

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

    def wait(self, timeout: float | None = None) -> bool:
        """Until every decoded source has stopped and each of its ready clips is accounted for
        (result, drop or failed batch); False on timeout (live sources never stop by themselves)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        for stream in list(self._streams.values()):
            if isinstance(stream.source, VideoSource):
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                if not stream.source.join(left):
                    return False
        with self._progress:
            while not self._settled():
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def close(self) -> None:
        """Stop every source, run every clip still waiting, deliver every result, free the backend."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams.values()):
            self._stop(stream)
            with self._lock:
                stream.state = "closed" if stream.state == "running" else stream.state
        self._batcher.close()
        self._dispatcher.join()
        self._outbox.put(_END)
        self._delivery.join()
        self._results.put(_END)
        self.backend.close()
        if self._static_backend is not None:
            self._static_backend.close()

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

    def _open_static(self, options: RuntimeOptions) -> tuple[ModelSource | None, object, StaticFrames | None]:
        compound = options.compound
        if compound is None or compound.static_model is None:
            return None, None, None
        source = load_model_source(compound.static_model)
        frames = StaticFrames(source.spec, compound.static_frames)
        backend = "auto" if options.backend == "tensorrt" else options.backend  # a plain ONNX holds no engine
        return source, open_backend(source, backend, options.providers, options.threads), frames

    def _pipeline(self, stream_id: str, options: StreamOptions) -> StreamPipeline:
        return StreamPipeline(stream_id, self.spec, self.hop, options, self._enqueue, self._stream_event, self._end_track,
                              self._static_frames)

    def _attach(self, stream_id: str, pipeline: StreamPipeline, source) -> None:
        pipeline.clock = source.clock
        with self._lock:
            self._counts[stream_id] = Counter()
            self._streams[stream_id] = _Stream(pipeline, source)

    def _stop(self, stream: _Stream) -> None:
        if isinstance(stream.source, VideoSource):
            stream.source.stop()
            stream.source.join()
        stream.pipeline.end()

    def _push_ids(self) -> str:
        return ", ".join(i for i, s in self._streams.items() if isinstance(s.source, PushSource)) or "none"

    def _enqueue(self, clip: Clip) -> None:
        with self._lock:
            self._counts[clip.stream_id]["clips_ready"] += 1
            self._pending[clip.stream_id, clip.track_id] += 1
        dropped = self._batcher.put(clip)
        if dropped is not None:
            self._accounted(dropped.stream_id, dropped.track_id)
            with self._progress:
                self._counts[dropped.stream_id]["clips_dropped"] += 1
                self._progress.notify_all()
            why = "the runtime was closing" if dropped is clip else f"{self._batcher.queue_per_stream} newer clips of this stream were waiting"
            self._stream_event(
                dropped.stream_id, EventKind.CLIP_DROPPED,
                f"clip {dropped.index} of track {dropped.track_id} ({dropped.start_s:.2f}–{dropped.end_s:.2f} s) dropped: {why}",
            )

    def _stream_event(self, stream_id: str, kind: EventKind, cause: str, label_events=()) -> None:
        event = StreamEvent(stream_id, kind, cause, time.perf_counter(), tuple(label_events))
        with self._progress:
            self._events.append(event)
            if event.is_fault:
                self._counts[stream_id]["faults"] += 1
            stream = self._streams.get(stream_id)
            ended = stream is not None and kind in (EventKind.ENDED, EventKind.FAILED)
            if ended:
                stream.state = "ended" if kind is EventKind.ENDED else "failed"
            self._progress.notify_all()
        if ended:  # sent by the source's own thread, after its last frame
            stream.pipeline.end()
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a host callback's bug must not stop this stream
                log.exception("on_event callback failed")

    def _dispatch_loop(self) -> None:
        while (batch := self._batcher.next_batch()) is not None:
            dispatched = time.perf_counter()
            try:  # the fault isolation boundary for inference: a failed batch, never a dead thread
                inputs = self._inputs[: len(batch)]
                np.stack([clip.data for clip in batch], out=inputs)
                started = time.perf_counter()
                logits = self.backend.run(inputs)
                done = time.perf_counter()
                if np.shape(logits) != (len(batch), self.spec.num_classes):
                    raise ValueError(f"the model returned logits of shape {np.shape(logits)}, expected {(len(batch), self.spec.num_classes)}")
                probabilities = _softmax(np.asarray(logits, np.float64))
                static = self._static_probabilities(batch)
            except Exception as err:
                self._batch_failed(batch, err)
                continue
            self.backend_seconds += done - started
            self.batch_sizes[len(batch)] += 1
            for k, (clip, probs) in enumerate(zip(batch, probabilities)):
                self._outbox.put(self._result(clip, probs, None if static is None else static[k], dispatched, done, len(batch)))
            self.dispatch_seconds += time.perf_counter() - dispatched

    def _static_probabilities(self, batch: list[Clip]) -> np.ndarray | None:
        """The static model's mean per-frame probabilities for each clip of the batch."""
        if self._static_backend is None:
            return None
        frames = np.concatenate([clip.static_data for clip in batch]).astype(self._static_backend.input_dtype, copy=False)
        logits = self._static_backend.run(frames)
        classes = self.static_model.spec.num_classes
        if np.shape(logits) != (len(frames), classes):
            raise ValueError(f"the static model returned logits of shape {np.shape(logits)}, expected {(len(frames), classes)}")
        return _softmax(np.asarray(logits, np.float64)).reshape(len(batch), -1, classes).mean(axis=1)

    def _end_track(self, stream_id: str, track_id: int) -> None:
        """The track has no more clips coming; it ends once those already cut are accounted for."""
        with self._lock:
            self._ending.add((stream_id, track_id))
        self._maybe_finish_track((stream_id, track_id))

    def _accounted(self, stream_id: str, track_id: int) -> None:
        """A clip of the track became a result, a drop or a failure (called before it is
        counted, so a track's end is reported before wait() sees its stream settled)."""
        key = (stream_id, track_id)
        with self._lock:
            self._pending[key] -= 1
        self._maybe_finish_track(key)

    def _maybe_finish_track(self, key: tuple[str, int]) -> None:
        with self._lock:
            if key not in self._ending or self._pending[key] > 0:
                return
            self._ending.discard(key)
            del self._pending[key]
        offsets = self.post.end_track(key)
        held = ", ".join(f"{e.label} ({e.confidence:.2f})" for e in offsets) or "no label"
        self._stream_event(key[0], EventKind.TRACK_ENDED, f"track {key[1]} ended; it held {held}", offsets)

    def _result(self, clip: Clip, probs: np.ndarray, static: np.ndarray | None, dispatched: float, done: float,
                batch_size: int) -> Result:
        decision, compound, restarted = self.post.decide((clip.stream_id, clip.track_id), clip.end_s, probs, static)
        return Result(
            clip.stream_id, clip.track_id, clip.index, clip.start_s, clip.end_s, tuple(float(p) for p in probs),
            self.spec.labels[int(probs.argmax())], decision.label, clip.captured, clip.ready, dispatched, done,
            done, batch_size, self.model.untrained, decision.confidence, restarted + decision.events, compound,
        )

    def _batch_failed(self, batch: list[Clip], err: Exception) -> None:
        for clip in batch:
            self._accounted(clip.stream_id, clip.track_id)
        for stream_id, n in Counter(clip.stream_id for clip in batch).items():
            with self._progress:
                self._counts[stream_id]["clips_failed"] += n
                self._progress.notify_all()
            self._stream_event(stream_id, EventKind.INFERENCE_FAILED, f"batch of {len(batch)} failed, {n} clip(s) of this stream lost: {type(err).__name__}: {err}")

    def _deliver_loop(self) -> None:
        while (result := self._outbox.get()) is not _END:
            result = replace(result, emitted=time.perf_counter())
            self._latency.record(result)
            if self._on_result is None:
                self._results.put(result)
            else:
                try:
                    self._on_result(result)
                except Exception:  # a host callback's bug must not stop delivery
                    log.exception("on_result callback failed")
            self._accounted(result.stream_id, result.track_id)
            with self._progress:
                self._counts[result.stream_id]["results"] += 1
                self._progress.notify_all()

    def _settled(self) -> bool:
        return all(c["clips_ready"] == c["results"] + c["clips_dropped"] + c["clips_failed"] for c in self._counts.values())

    def _stats(self, stream_id: str, stream: _Stream) -> StreamStats:
        with self._lock:
            c = Counter(self._counts[stream_id])
        return StreamStats(
            state=stream.state, frames=stream.pipeline.frames, frames_lost=stream.source.clock.lost,
            frames_out_of_order=stream.source.clock.out_of_order,
            decode_errors=stream.source.decode_errors, clips_ready=c["clips_ready"],
            clips_invalidated=stream.pipeline.clips_invalidated, clips_dropped=c["clips_dropped"],
            clips_failed=c["clips_failed"], results=c["results"], tracks_evicted=stream.pipeline.tracks_evicted,
            faults=c["faults"],
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
