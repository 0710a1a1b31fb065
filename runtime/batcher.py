"""Cross-stream batching: ready clips wait in bounded per-stream queues until a batch leaves.

A batch leaves when ``max_batch`` clips are waiting, when a file's queue is full (its decoder
is stalled, so waiting longer only idles it), or when the oldest clip has waited ``max_delay_s``
(whichever comes first), oldest clips first across all streams. Without the stalled-file rule a
single file with ``--queue 8`` under ``--max-batch 32`` waited the whole delay on every batch:
fer's per-frame model on the 472-frame Wolfgang video with the detector took 4.5 / 3.9 s
without the rule and 3.6 / 3.0 s with it (two alternating runs, median of 3 each, 2 loaded cores). What a full queue does is its
stream's QueuePolicy: a live stream loses its own oldest clip, never another stream's (one
stalled or bursting camera cannot starve the others), and every drop is handed back to the
caller to count and report; a file's decoder waits for room instead, so no clip of it is lost.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from runtime.records import Clip


class QueuePolicy(enum.StrEnum):
    """What a stream's full queue does with its next clip.

    BLOCK: the producer (the stream's decoder) waits for room. For files: they decode far
    faster than inference and have no clock to keep up with; under DROP_OLDEST a 10 s file
    (15 clips) through the IFDD demo with ``--queue 2 --max-batch 1`` kept 3 clips and dropped 12.
    DROP_OLDEST: the stream's oldest waiting clip is dropped. For live sources (cameras, pushed
    frames, files paced in real time): they cannot wait, and a late clip is worth less than a new one.
    """

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


@dataclass
class _Lane:
    """One stream's queue. A released lane never blocks again: its source is stopping."""

    policy: QueuePolicy
    clips: deque[Clip] = field(default_factory=deque)
    released: bool = False


class Batcher:
    def __init__(self, max_batch: int, max_delay_s: float, queue_per_stream: int):
        if max_batch < 1 or queue_per_stream < 1 or not max_delay_s >= 0:
            raise ValueError(
                f"need max_batch ≥ 1, queue_per_stream ≥ 1 and max_delay_s ≥ 0, "
                f"got {max_batch}, {queue_per_stream}, {max_delay_s}"
            )
        self.max_batch, self.max_delay_s, self.queue_per_stream = max_batch, max_delay_s, queue_per_stream
        self._lanes: dict[str, _Lane] = {}
        self._waiting = 0
        self._closing = False
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the dispatcher waits here for a batch
        self._room = threading.Condition(self._lock)  # blocked producers wait here for room
        self.dropped: Counter[str] = Counter()

    def open_stream(self, stream_id: str, policy: QueuePolicy) -> None:
        """Set a stream's policy (a stream never opened is DROP_OLDEST)."""
        with self._lock:
            self._lane(stream_id).policy = policy

    def release(self, stream_id: str) -> None:
        """Wake the stream's blocked producer and never block it again: called before its
        source is stopped and joined, so neither waits on the other. Clips it still puts are
        queued beyond the limit (a stopping source makes a few at most), not dropped."""
        with self._lock:
            self._lane(stream_id).released = True
            self._room.notify_all()

    def put(self, clip: Clip) -> Clip | None:
        """Queue a clip; returns the clip dropped to make room (the stream's oldest), if any.
        A BLOCK stream's producer waits here while its queue is full. Once closing, the clip
        itself is dropped (a host may push while the runtime closes)."""
        with self._lock:
            lane = self._lane(clip.stream_id)
            while lane.policy is QueuePolicy.BLOCK and self._full(lane) and not (lane.released or self._closing):
                self._room.wait()
            if self._closing:
                self.dropped[clip.stream_id] += 1
                return clip
            dropped = None
            if lane.policy is QueuePolicy.DROP_OLDEST and self._full(lane):
                dropped = lane.clips.popleft()
                self.dropped[clip.stream_id] += 1
                self._waiting -= 1
            lane.clips.append(clip)
            self._waiting += 1
            if self._waiting >= self.max_batch or len(lane.clips) == 1 or self._stalls(lane):
                self._ready.notify()
            return dropped

    def next_batch(self) -> list[Clip] | None:
        """Block until a batch is due; None once closed and empty."""
        with self._lock:
            while True:
                stalled = any(self._stalls(lane) for lane in self._lanes.values())
                if self._waiting >= self.max_batch or stalled or (self._closing and self._waiting):
                    return self._take()
                if self._closing:
                    return None
                oldest = self._oldest_ready()
                if oldest is None:
                    self._ready.wait()
                    continue
                due = oldest + self.max_delay_s - time.perf_counter()
                if due <= 0:
                    return self._take()
                self._ready.wait(due)

    def close(self) -> None:
        """Flush: next_batch hands out what is waiting, then None; blocked producers return."""
        with self._lock:
            self._closing = True
            self._ready.notify_all()
            self._room.notify_all()

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def _lane(self, stream_id: str) -> _Lane:
        return self._lanes.setdefault(stream_id, _Lane(QueuePolicy.DROP_OLDEST))

    def _full(self, lane: _Lane) -> bool:
        return len(lane.clips) >= self.queue_per_stream

    def _stalls(self, lane: _Lane) -> bool:
        """A full BLOCK lane: its producer cannot add a clip until a batch leaves."""
        return lane.policy is QueuePolicy.BLOCK and not lane.released and self._full(lane)

    def _oldest_ready(self) -> float | None:
        heads = [lane.clips[0].ready for lane in self._lanes.values() if lane.clips]
        return min(heads) if heads else None

    def _take(self) -> list[Clip]:
        batch = []
        while len(batch) < self.max_batch and self._waiting:
            lane = min((lane for lane in self._lanes.values() if lane.clips), key=lambda lane: lane.clips[0].ready)
            batch.append(lane.clips.popleft())
            self._waiting -= 1
        self._room.notify_all()
        return batch
