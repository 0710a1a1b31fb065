"""The dispatcher: batches from the batcher through the backend (and the static model, when one
runs) to probabilities, per-track decisions and results for delivery, a bounded number in flight.

It is the fault isolation boundary for inference: a batch that fails is counted and reported
per stream (INFERENCE_FAILED), and the dispatcher goes on with the next one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from runtime.backends import Backend
from runtime.ledger import ClipLedger
from runtime.model import ModelSource
from runtime.numeric import softmax
from runtime.post import PostProcessor, StaticFrames
from runtime.records import Clip, EventKind, Result
from runtime.stage_clock import Stage, StageClock

EventSink = Callable[[str, EventKind, str], None]


@dataclass(frozen=True)
class StaticModel:
    """A per-frame model run beside the clip model (compound expressions, runtime.post)."""

    source: ModelSource
    backend: Backend
    frames: StaticFrames

    def probabilities(self, batch: list[Clip]) -> np.ndarray:
        """The mean of its per-frame probabilities over each clip's frames: (clips, classes)."""
        frames = np.concatenate([clip.static_data for clip in batch]).astype(self.backend.input_dtype, copy=False)
        classes = self.source.spec.num_classes
        logits = checked_logits(self.backend.run(frames), len(frames), classes, "static model")
        return softmax(logits).reshape(len(batch), -1, classes).mean(axis=1)


def checked_logits(logits, rows: int, classes: int, what: str) -> np.ndarray:
    if np.shape(logits) != (rows, classes):
        raise ValueError(f"the {what} returned logits of shape {np.shape(logits)}, expected {(rows, classes)}")
    return np.asarray(logits, np.float64)


@dataclass
class _InFlight:
    """One batch between the submitting and the finishing thread: its slot (input buffer) is
    given back once the backend has answered."""

    batch: list[Clip]
    slot: tuple[np.ndarray, ...]  # one buffer per graph input: the clips (and a landmarks model's renderings)
    dispatched: float
    future: Future


class Dispatcher:
    """Batches from the batcher through the backend to results, with up to ``in_flight``
    batches running at once.

    Two threads and a small pool: the submitting thread waits for a free input buffer (one per
    batch in flight), only then takes the next batch (so clips keep gathering in the batcher
    while every buffer is busy, and the next batch leaves fuller) and hands it to the pool,
    which copies it into the buffer and runs it; the finishing thread takes the batches in the order they were submitted, waits for
    each answer and post-processes it, so every track's results and decisions stay in clip order
    whatever order the answers arrive in. With one in flight (local backends) this still
    overlaps copying and post-processing with the backend's run. A backend with a network
    between it and the model (triton) runs several so the link and the server stay busy.

    backend_seconds: wall time inside backend.run, summed over batches (overlapping batches
    each count their own); dispatch_seconds: from taking a batch to handing over its results;
    stage times go to ``stage_clock`` (runtime.stage_clock). batch_sizes: batches run, by size.
    """

    def __init__(self, *, model: ModelSource, backend: Backend, static: StaticModel | None, post: PostProcessor,
                 max_batch: int, next_batch: Callable[[], list[Clip] | None], deliver: Callable[[Result], None],
                 ledger: ClipLedger, report: EventSink, stage_clock: StageClock | None = None, in_flight: int = 1):
        if in_flight < 1:
            raise ValueError(f"in_flight must be ≥ 1, got {in_flight}")
        self.model, self.backend, self.static, self.post = model, backend, static, post
        self._next_batch, self._deliver, self._ledger, self._report = next_batch, deliver, ledger, report
        self.stage_clock = stage_clock or StageClock()
        self.in_flight = in_flight
        # Input buffers reused by every batch: stacking 32 clips of 64×64 into a fresh array took
        # 15 ms (page faults), into a reused one 4.4 ms (2-core dev box).
        shape = model.spec.input_shape(max_batch)
        self._free_slots: queue.Queue[tuple[np.ndarray, ...]] = queue.Queue()
        for _ in range(in_flight):
            self._free_slots.put(tuple(backend.input_buffer(shape) for _ in range(2 if model.spec.landmarks else 1)))
        self._submitted: queue.Queue[_InFlight | None] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="runtime backend")
        self.backend_seconds = 0.0
        self.dispatch_seconds = 0.0
        self.batch_sizes: Counter[int] = Counter()
        self._threads = [threading.Thread(target=self._submit_loop, name="runtime dispatcher", daemon=True),
                         threading.Thread(target=self._finish_loop, name="runtime results", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        """Returns once the batcher is closed and every batch it held has run."""
        for thread in self._threads:
            thread.join()
        self._pool.shutdown()

    def _submit_loop(self) -> None:
        try:
            while True:
                slot = self._free_slots.get()
                batch = self._next_batch()
                if batch is None:
                    return
                dispatched = time.perf_counter()
                self._submitted.put(_InFlight(batch, slot, dispatched, self._pool.submit(self._infer, batch, slot)))
        finally:
            self._submitted.put(None)

    def _finish_loop(self) -> None:
        while (flight := self._submitted.get()) is not None:
            try:  # whatever goes wrong, a failed batch, never a dead thread
                probabilities, static, started, done = flight.future.result()
            except Exception as err:
                self._failed(flight.batch, err)
                continue
            finally:
                self._free_slots.put(flight.slot)
            batch = flight.batch
            with self.stage_clock.cpu(Stage.POST):
                self.backend_seconds += done - started
                self.batch_sizes[len(batch)] += 1
                for k, (clip, probs) in enumerate(zip(batch, probabilities)):
                    clip_static = None if static is None else static[k]
                    self._deliver(self._result(clip, probs, clip_static, dispatched=flight.dispatched, done=done,
                                               batch_size=len(batch)))
            self.stage_clock.add(Stage.BACKEND, done - started)
            self.stage_clock.count_clips(len(batch))
            self.dispatch_seconds += time.perf_counter() - flight.dispatched

    def _infer(self, batch: list[Clip], slot: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray | None, float, float]:
        """On a pool thread: the batch copied into its slot and run; (probabilities, static model
        probabilities or None, backend start, done). Whatever fails here fails this batch only."""
        with self.stage_clock.cpu(Stage.ASSEMBLE):
            inputs, *renderings = (buffer[: len(batch)] for buffer in slot)
            np.stack([clip.data for clip in batch], out=inputs)
            if renderings:
                np.stack([clip.landmark_data for clip in batch], out=renderings[0])
        started = time.perf_counter()
        logits = self.backend.run(inputs, landmarks=renderings[0]) if renderings else self.backend.run(inputs)
        done = time.perf_counter()
        probabilities = softmax(checked_logits(logits, len(batch), self.model.spec.num_classes, "model"))
        static = None if self.static is None else self.static.probabilities(batch)
        return probabilities, static, started, done

    def _result(self, clip: Clip, probs: np.ndarray, static: np.ndarray | None, *, dispatched: float, done: float,
                batch_size: int) -> Result:
        decision, compound, restarted = self.post.decide((clip.stream_id, clip.track_id), clip.end_s, probs, static)
        return Result(
            stream_id=clip.stream_id, track_id=clip.track_id, clip_index=clip.index, start_s=clip.start_s,
            end_s=clip.end_s, probabilities=tuple(float(p) for p in probs),
            label=self.model.spec.labels[int(probs.argmax())], smoothed_label=decision.label,
            captured=clip.captured, ready=clip.ready, dispatched=dispatched, done=done, batch_size=batch_size,
            untrained=self.model.untrained, confidence=decision.confidence, events=restarted + decision.events,
            compound=compound,
        )

    def _failed(self, batch: list[Clip], err: Exception) -> None:
        """Reported before it is counted: once wait() sees the clips settled, the events are in."""
        for stream_id, n in Counter(clip.stream_id for clip in batch).items():
            why = f"batch of {len(batch)} failed, {n} clip(s) of this stream lost: {type(err).__name__}: {err}"
            self._report(stream_id, EventKind.INFERENCE_FAILED, why)
        self._ledger.failed(batch)
