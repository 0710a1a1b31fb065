"""The clip ledger: per stream, how many clips became ready and how each one ended, and the
tracks whose end waits for their last clips.

Every ready clip ends exactly once: as a result, a drop (a full live queue, or the runtime
closing) or a failed batch. A stream is settled when all its ready clips have ended, and
``wait_settled`` blocks on that. A track with no more clips coming (evicted, or its stream
ended) ends once its last clip is accounted for: ``on_track_end`` is called then, before that
clip is counted, so the track's end is reported before anyone sees its stream settled.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from runtime.records import Clip, Result

TrackKey = tuple[str, int]  # (stream id, track id)


class Outcome(enum.Enum):
    """How a ready clip ended."""

    RESULT = "result"
    DROPPED = "dropped"
    FAILED = "failed"


@dataclass
class ClipCounts:
    """One stream's counters (copies go out; the ledger's own change under its lock)."""

    clips_ready: int = 0
    results: int = 0
    clips_dropped: int = 0
    clips_failed: int = 0
    faults: int = 0

    @property
    def settled(self) -> bool:
        return self.clips_ready == self.results + self.clips_dropped + self.clips_failed

    def add(self, outcome: Outcome, n: int) -> None:
        if outcome is Outcome.RESULT:
            self.results += n
        elif outcome is Outcome.DROPPED:
            self.clips_dropped += n
        else:
            self.clips_failed += n


class ClipLedger:
    def __init__(self, on_track_end: Callable[[str, int], None]):
        self._on_track_end = on_track_end
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._counts: dict[str, ClipCounts] = {}
        self._pending: Counter[TrackKey] = Counter()  # clips of a track not yet ended
        self._ending: set[TrackKey] = set()  # tracks with no more clips coming

    def open_stream(self, stream_id: str) -> None:
        with self._lock:
            self._counts[stream_id] = ClipCounts()

    def clip_ready(self, clip: Clip) -> None:
        with self._lock:
            self._counts[clip.stream_id].clips_ready += 1
            self._pending[clip.stream_id, clip.track_id] += 1

    def delivered(self, result: Result) -> None:
        self._end_clips([result], Outcome.RESULT)

    def dropped(self, clip: Clip) -> None:
        self._end_clips([clip], Outcome.DROPPED)

    def failed(self, batch: Sequence[Clip]) -> None:
        self._end_clips(batch, Outcome.FAILED)

    def fault(self, stream_id: str) -> None:
        with self._lock:
            self._counts[stream_id].faults += 1

    def end_track(self, stream_id: str, track_id: int) -> None:
        """The track has no more clips coming; it ends once those already cut have ended."""
        key = (stream_id, track_id)
        with self._lock:
            self._ending.add(key)
            finished = self._finished(key)
        if finished:
            self._on_track_end(*key)

    def counts(self, stream_id: str) -> ClipCounts:
        with self._lock:
            return replace(self._counts[stream_id])

    def wait_settled(self, deadline: float | None = None) -> bool:
        """Until every stream is settled; False once perf_counter() passes deadline."""
        with self._changed:
            while not all(c.settled for c in self._counts.values()):
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _end_clips(self, clips: Sequence[Clip | Result], outcome: Outcome) -> None:
        keys = [(clip.stream_id, clip.track_id) for clip in clips]
        with self._lock:
            for key in keys:
                self._pending[key] -= 1
            finished = list(dict.fromkeys(key for key in keys if self._finished(key)))
        for key in finished:
            self._on_track_end(*key)
        with self._changed:
            for stream_id, n in Counter(stream_id for stream_id, _ in keys).items():
                self._counts[stream_id].add(outcome, n)
            self._changed.notify_all()

    def _finished(self, key: TrackKey) -> bool:
        """Whether the track just ended (ending, no clip pending); forgets it then. Under the lock."""
        if key not in self._ending or self._pending[key] > 0:
            return False
        self._ending.discard(key)
        del self._pending[key]
        return True
