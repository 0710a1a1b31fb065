"""Live latency percentiles per stage and per stream, and the summary table printed on exit.

Each (stream, stage) keeps its latest ``window`` samples, so the percentiles describe the
recent past of a long-running camera rather than its whole history, in bounded memory.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

import numpy as np

from runtime.records import Result

STAGES = ("capture→ready", "ready→dispatch", "dispatch→done", "done→emitted", "ready→emitted")
PERCENTILES = (50, 95, 99)
ALL = "all"


class LatencyBook:
    def __init__(self, window: int = 4096):
        self._samples: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._lock = threading.Lock()

    def record(self, result: Result) -> None:
        with self._lock:
            for stage, seconds in result.latencies().items():
                self._samples[(result.stream_id, stage)].append(seconds)
                self._samples[(ALL, stage)].append(seconds)

    def percentiles(self, stream_id: str = ALL) -> dict[str, tuple[float, float, float, int]]:
        """stage → (p50, p95, p99 in seconds, number of samples), for stages with samples."""
        with self._lock:
            samples = {stage: np.array(self._samples[(stream_id, stage)]) for stage in STAGES if (stream_id, stage) in self._samples}
        return {stage: (*np.percentile(s, PERCENTILES).tolist(), len(s)) for stage, s in samples.items() if len(s)}


def summary_table(book: LatencyBook, stats: dict) -> str:
    """Per-stream counters and ready→emitted percentiles, then every stage over all streams."""
    lines = [
        f"{'stream':<24} {'state':<8} {'frames':>7} {'lost':>5} {'clips':>6} {'results':>7} {'dropped':>7} {'invalid':>7} {'faults':>6}"
        f"   ready→emitted ms p50 / p95 / p99"
    ]
    for stream_id, s in stats.items():
        pct = book.percentiles(stream_id).get("ready→emitted")
        latency = " / ".join(f"{1e3 * v:.1f}" for v in pct[:3]) if pct else "-"
        lines.append(
            f"{stream_id[:24]:<24} {s.state:<8} {s.frames:>7} {s.frames_lost:>5} {s.clips_ready:>6} {s.results:>7} "
            f"{s.clips_dropped:>7} {s.clips_invalidated:>7} {s.faults:>6}   {latency}"
        )
    stages = book.percentiles()
    if not stages:
        return "\n".join(lines + ["", "no results"])
    lines.append("")
    lines.append(f"{'stage (all streams)':<24} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'n':>7}")
    for stage, (p50, p95, p99, n) in stages.items():
        lines.append(f"{stage:<24} {1e3 * p50:>9.2f} {1e3 * p95:>9.2f} {1e3 * p99:>9.2f} {n:>7}")
    return "\n".join(lines)
