"""Temporal decisions: EMA over real time, hysteresis, the uncertain state and onset/offset events.

Sequences are synthetic and short enough to follow by hand; tau_s=0 turns smoothing off so the
decision rules can be checked on the raw numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.temporal import OFFSET, ONSET, UNCERTAIN, Event, TemporalDecider, TemporalOptions, decide_sequence

ABC = ("a", "b", "c")


def test_ema_weight_follows_elapsed_time():
    decider = TemporalDecider(TemporalOptions(labels=("a", "b"), tau_s=1.0, threshold=0.0, margin=0.0))
    first = decider.update("t", 10.0, [1.0, 0.0])
    assert first.scores == (1.0, 0.0)  # the first result initialises the average
    second = decider.update("t", 11.0, [0.0, 1.0])
    alpha = 1 - math.exp(-1.0)
    assert second.scores == pytest.approx((1 - alpha, alpha), abs=1e-12)
    # two half-second steps towards a constant equal one one-second step
    split = TemporalDecider(TemporalOptions(labels=("a", "b"), tau_s=1.0, threshold=0.0, margin=0.0))
    split.update("t", 10.0, [1.0, 0.0])
    split.update("t", 10.5, [0.0, 1.0])
    assert split.update("t", 11.0, [0.0, 1.0]).scores == pytest.approx(second.scores, abs=1e-12)


def test_tau_zero_means_no_smoothing():
    decider = TemporalDecider(TemporalOptions(labels=("a", "b"), tau_s=0.0, threshold=0.5, margin=0.0))
    decider.update(1, 0.0, [0.9, 0.1])
    assert decider.update(1, 0.04, [0.2, 0.8]).scores == (0.2, 0.8)


def test_hysteresis_uncertain_and_events():
    options = TemporalOptions(labels=ABC, tau_s=0.0, threshold=0.5, margin=0.1)
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    scores = np.array([
        [0.20, 0.20, 0.60],  # c reaches the threshold → onset c
        [0.30, 0.25, 0.45],  # c dips below 0.5 but stays above 0.5 - 0.1 → hold c
        [0.35, 0.30, 0.35],  # c below 0.4 → uncertain, offset c
        [0.45, 0.10, 0.45],  # top 0.45 below 0.5 → still uncertain
        [0.55, 0.20, 0.25],  # a reaches 0.5 → onset a
        [0.44, 0.52, 0.04],  # b over the threshold but leads a by only 0.08 < 0.1 → hold a
        [0.30, 0.60, 0.10],  # b leads by 0.3 → offset a, onset b
    ])
    decisions, events = decide_sequence(times, scores, options, track_id="cam0/7")
    assert [d.label for d in decisions] == ["c", "c", UNCERTAIN, UNCERTAIN, "a", "a", "b"]
    assert [d.confidence for d in decisions] == [0.60, 0.45, 0.35, 0.45, 0.55, 0.44, 0.60]
    assert events == [
        Event("cam0/7", ONSET, "c", 0.0, 0.60),
        Event("cam0/7", OFFSET, "c", 2.0, 0.35),
        Event("cam0/7", ONSET, "a", 4.0, 0.55),
        Event("cam0/7", OFFSET, "a", 6.0, 0.30),
        Event("cam0/7", ONSET, "b", 6.0, 0.60),
        Event("cam0/7", OFFSET, "b", 6.0, 0.60),  # end of the sequence closes b
    ]
    assert decisions[6].events == tuple(events[3:5])


def test_smoothing_suppresses_a_one_result_spike():
    # 10 results per second, label a throughout except one result strongly for b.
    times = np.arange(30) / 10.0
    scores = np.tile([0.8, 0.2], (30, 1))
    scores[15] = [0.05, 0.95]
    raw = TemporalOptions(labels=("a", "b"), tau_s=0.0, threshold=0.5, margin=0.1)
    smooth = TemporalOptions(labels=("a", "b"), tau_s=1.0, threshold=0.5, margin=0.1)
    _, raw_events = decide_sequence(times, scores, raw)
    smooth_decisions, smooth_events = decide_sequence(times, scores, smooth)
    assert [(e.kind, e.label) for e in raw_events] == [(ONSET, "a"), (OFFSET, "a"), (ONSET, "b"), (OFFSET, "b"), (ONSET, "a"), (OFFSET, "a")]
    assert [(e.kind, e.label) for e in smooth_events] == [(ONSET, "a"), (OFFSET, "a")]
    # the spike moves the average by alpha = 1 - e^-0.1 of the way: a falls to 0.8 - 0.75·alpha
    alpha = 1 - math.exp(-0.1)
    assert smooth_decisions[15].scores[0] == pytest.approx(0.8 - 0.75 * alpha, abs=1e-12)


def test_tracks_are_independent_and_end_cleanly():
    decider = TemporalDecider(TemporalOptions(labels=("a", "b"), tau_s=0.0, threshold=0.5, margin=0.1))
    assert decider.update(1, 0.0, [0.9, 0.1]).label == "a"
    assert decider.update(2, 0.0, [0.1, 0.9]).label == "b"
    assert decider.update(1, 1.0, [0.8, 0.2]).events == ()
    assert decider.tracks == (1, 2)
    assert decider.end_track(2, 5.0) == (Event(2, OFFSET, "b", 5.0, 0.9),)
    assert decider.tracks == (1,)
    # a track that never held a label ends without events
    decider.update(3, 0.0, [0.4, 0.45])
    assert decider.end_track(3) == ()
    # a new track with a used id starts afresh
    assert decider.update(2, 0.0, [0.5, 0.5]).events == (Event(2, ONSET, "a", 0.0, 0.5),)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": ()}, "non-empty and distinct"),
        ({"labels": ("a", "a")}, "non-empty and distinct"),
        ({"labels": ("a", UNCERTAIN)}, "own state"),
        ({"labels": ABC, "tau_s": -1.0}, "tau_s"),
        ({"labels": ABC, "tau_s": float("inf")}, "tau_s"),
        ({"labels": ABC, "threshold": 1.5}, "threshold"),
        ({"labels": ABC, "threshold": 0.3, "margin": 0.4}, "margin"),
        ({"labels": ABC, "margin": -0.1}, "margin"),
    ],
)
def test_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemporalOptions(**kwargs)


def test_bad_updates_are_errors():
    decider = TemporalDecider(TemporalOptions(labels=ABC))
    decider.update("x", 1.0, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"time 1.0 s does not follow the previous result at 1.0 s"):
        decider.update("x", 1.0, [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
        decider.update("x", 2.0, [0.5, 0.5])
    with pytest.raises(ValueError, match="non-finite"):
        decider.update("x", 2.0, [0.5, float("nan"), 0.5])
    with pytest.raises(ValueError, match="not finite"):
        decider.update("x", float("nan"), [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="precedes its last result"):
        decider.end_track("x", 0.5)
    with pytest.raises(ValueError, match="not active"):
        decider.end_track("y")
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        decide_sequence([0.0, 1.0], np.ones((3, 3)), TemporalOptions(labels=ABC))
