"""Segment fusion: per-window predictions spread back onto the video's frames.

Team RAS cut each video into 4 s windows with a 2 s hop, predict once per window, give each
frame the mean of the windows that cover it and forward-fill frames no window reaches. The
arithmetic below follows the official notebook (get_C-EXPR_DB_pred.ipynb, slice_audio and
get_df) exactly, including its edges:

* a video of at most 4 s is one window [0, duration];
* windows start at 0, 2, 4, ... ; the last one is cut at the video's end (a tail shorter than
  the 1 s minimum would be dropped, which a 2 s hop never produces);
* a window [s, e] covers frames int(s·fps) .. int(e·fps), both ends included (truncation, so
  neighbouring windows share their boundary frame and the last window may reach one frame past
  the video, which is dropped).

One deliberate difference: the official forward fill runs over the whole submission file, so a
frame with no window takes the previous *video's* value; here the fill stays inside a video
and frames before a video's first window are an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WINDOW_S = 4.0
HOP_S = 2.0
MIN_TAIL_S = 1.0


def segment_windows(duration_s: float, window_s: float = WINDOW_S, hop_s: float = HOP_S,
                    min_tail_s: float = MIN_TAIL_S) -> list[tuple[float, float]]:
    """(start, end) seconds of the windows a video of duration_s is cut into."""
    if not np.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"video duration must be a finite number of seconds ≥ 0, got {duration_s}")
    if not (window_s > 0 and 0 < hop_s and min_tail_s >= 0):
        raise ValueError(f"need window_s > 0, hop_s > 0, min_tail_s ≥ 0; got {window_s}, {hop_s}, {min_tail_s}")
    if duration_s <= window_s:
        return [(0.0, float(duration_s))]
    windows, start = [], 0.0
    while start < duration_s:
        end = start + window_s
        if end <= duration_s:
            windows.append((start, end))
            if end == duration_s:
                break
        else:
            if duration_s - start >= min_tail_s:
                windows.append((start, float(duration_s)))
            break
        start += hop_s
    return windows


def window_frames(start_s: float, end_s: float, fps: float) -> tuple[int, int]:
    """First and last 0-based frame a window covers, both included (official truncation)."""
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not (np.isfinite(start_s) and np.isfinite(end_s) and 0 <= start_s <= end_s):
        raise ValueError(f"window ({start_s}, {end_s}) s must satisfy 0 ≤ start ≤ end")
    return int(start_s * fps), int(end_s * fps)


def frames_from_windows(scores: np.ndarray, windows: Sequence[tuple[float, float]], fps: float,
                        num_frames: int | None = None) -> np.ndarray:
    """Per-window scores (W, K) → per-frame scores (num_frames, K).

    Each frame gets the mean of the windows covering it; a frame no window covers repeats the
    previous frame. num_frames defaults to one past the last covered frame; frames beyond it
    are dropped.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(windows) or len(windows) == 0:
        raise ValueError(f"window scores have shape {scores.shape}, expected ({len(windows)}, classes) with at least one window")
    spans = [window_frames(start, end, fps) for start, end in windows]
    if num_frames is None:
        num_frames = max(last for _, last in spans) + 1
    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    total = np.zeros((num_frames, scores.shape[1]))
    count = np.zeros(num_frames)
    for (first, last), row in zip(spans, scores):
        total[first:last + 1] += row
        count[first:last + 1] += 1
    covered = np.flatnonzero(count)
    if covered.size == 0 or covered[0] > 0:
        first = int(covered[0]) if covered.size else num_frames
        raise ValueError(f"frames 0..{first - 1} come before the first window; there is nothing to forward-fill them from")
    # Forward fill: every frame takes the values of the last covered frame at or before it.
    source = np.maximum.accumulate(np.where(count > 0, np.arange(num_frames), 0))
    return total[source] / count[source][:, None]
