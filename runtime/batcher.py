"""Cross-stream batching: ready clips wait in bounded per-stream queues until a batch leaves.

A batch leaves when ``max_batch`` clips are waiting or the oldest has waited ``max_delay_s``
(whichever comes first), oldest clips first across all streams. A stream whose queue is full
loses its own oldest clip, never another stream's: one stalled or bursting camera cannot
starve the others. Every drop is counted per stream and handed back to the caller to report.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

from runtime.records import Clip


class Batcher:
    def __init__(self, max_batch: int, max_delay_s: float, queue_per_stream: int):
        if max_batch < 1 or queue_per_stream < 1 or not max_delay_s >= 0:
            raise ValueError(
                f"need max_batch ≥ 1, queue_per_stream ≥ 1 and max_delay_s ≥ 0, "
                f"got {max_batch}, {queue_per_stream}, {max_delay_s}"
            )
        self.max_batch, self.max_delay_s, self.queue_per_stream = max_batch, max_delay_s, queue_per_stream
        self._queues: dict[str, deque[Clip]] = {}
        self._waiting = 0
        self._closing = False
        self._cond = threading.Condition()
        self.dropped: Counter[str] = Counter()

    def put(self, clip: Clip) -> Clip | None:
        """Queue a clip; returns the clip dropped to make room (the stream's oldest), if any.
        Once closing, the clip itself is dropped (a host may push while the runtime closes)."""
        with self._cond:
            if self._closing:
                self.dropped[clip.stream_id] += 1
                return clip
            queue = self._queues.setdefault(clip.stream_id, deque())
            dropped = None
            if len(queue) == self.queue_per_stream:
                dropped = queue.popleft()
                self.dropped[clip.stream_id] += 1
                self._waiting -= 1
            queue.append(clip)
            self._waiting += 1
            if self._waiting >= self.max_batch or len(queue) == 1:
                self._cond.notify()
            return dropped

    def next_batch(self) -> list[Clip] | None:
        """Block until a batch is due; None once closed and empty."""
        with self._cond:
            while True:
                if self._waiting >= self.max_batch or (self._closing and self._waiting):
                    return self._take()
                if self._closing:
                    return None
                oldest = self._oldest_ready()
                if oldest is None:
                    self._cond.wait()
                    continue
                due = oldest + self.max_delay_s - time.perf_counter()
                if due <= 0:
                    return self._take()
                self._cond.wait(due)

    def close(self) -> None:
        """Flush: next_batch hands out what is waiting, then None."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return self._waiting

    def _oldest_ready(self) -> float | None:
        heads = [q[0].ready for q in self._queues.values() if q]
        return min(heads) if heads else None

    def _take(self) -> list[Clip]:
        batch = []
        while len(batch) < self.max_batch and self._waiting:
            queue = min((q for q in self._queues.values() if q), key=lambda q: q[0].ready)
            batch.append(queue.popleft())
            self._waiting -= 1
        return batch
