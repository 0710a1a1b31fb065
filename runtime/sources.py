"""Where frames come from: video files, network URLs, V4L2 devices (one decode thread each,
PyAV), and frames pushed in by the host.

Timestamps are the stream's own (``frame.time``); frame indices follow from them at the
stream's frame rate, so frames lost on the way show up as skipped indices and are counted.
Files end (or loop, with timestamps running on across passes, optionally paced at their own
frame rate to stand in for a camera); live sources (URLs, devices) reconnect with exponential
back-off, and every new connection starts a new timestamp segment.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from runtime.records import EventKind, RejectedFrame
from runtime.stage_clock import Stage, StageClock

log = logging.getLogger("runtime")


class SourceKind(enum.StrEnum):
    """Where a stream's frames come from; a str, equal to the names used before the enum."""

    FILE = "file"
    URL = "url"
    DEVICE = "device"
    PUSH = "push"  # frames handed in by the host (PushSource)


FILE, URL, DEVICE = SourceKind.FILE, SourceKind.URL, SourceKind.DEVICE


def source_kind(location: str) -> SourceKind:
    """url (it has a scheme), device (/dev/video*) or file, whether the file exists or not."""
    if "://" in location:
        return URL
    if location.startswith("/dev/video"):
        return DEVICE
    return FILE


def classify_location(location: str) -> SourceKind:
    """file, url or device; ValueError when it is none of them (a file that is not there)."""
    kind = source_kind(location)
    if kind is FILE and not Path(location).is_file():
        raise ValueError(_not_a_source(location))
    return kind


def _not_a_source(location: str) -> str:
    return f"{location!r} is no file, URL (rtsp://, http://, udp://, ...) or /dev/video device"


@dataclass(frozen=True)
class SourceOptions:
    """loop/realtime: files only (replay forever; pace at the file's frame rate).
    timeout_s: how long a live source may stay silent before it counts as broken.
    backoff_s: first and longest wait between reconnects (doubling in between).
    max_retries: failed connects in a row before a live source gives up (None: never).
    av_options: FFmpeg options for opening, e.g. (("rtsp_transport", "tcp"),)."""

    loop: bool = False
    realtime: bool = False
    timeout_s: float = 5.0
    backoff_s: tuple[float, float] = (0.5, 8.0)
    max_retries: int | None = None
    av_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        first, longest = self.backoff_s
        if not 0 < first <= longest:
            raise ValueError(f"backoff_s must be (first, longest) with 0 < first ≤ longest, got {self.backoff_s}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be ≥ 0 or None, got {self.max_retries}")


@dataclass(frozen=True)
class DecodedFrame:
    """One frame as it reached the runtime: a PyAV frame (decoded) or an RGB array (pushed).

    Conversion to RGB happens only for frames a clip samples (runtime.faces.Resizer)."""

    image: av.VideoFrame | np.ndarray
    time_s: float
    index: int
    segment: int
    captured: float


class FrameClock:
    """Stream times → frame indices at the stream's rate, counting frames lost in between.

    A frame that does not move time forward is out of order (a damaged stream's decoder
    emits some late): it is dropped and counted. A jump back of more than ``RESET_S`` means
    the stream's clock was reset: a new segment starts, with indices from 0."""

    RESET_S = 1.0

    def __init__(self, fps: float | None):
        self.fps = fps
        self.segment = -1
        self.lost = 0
        self.out_of_order = 0
        self._first: float | None = None
        self._last: tuple[float, int] | None = None

    def restart(self) -> None:
        self.segment += 1
        self._first = self._last = None

    def stamp(self, time_s: float) -> int | None:
        """The frame's index, or None for a frame to drop (out of order)."""
        if self._last is not None and time_s <= self._last[0]:
            if self._last[0] - time_s <= self.RESET_S:
                self.out_of_order += 1
                return None
            self.restart()
        index = self.next_index(time_s)
        self.advance(time_s, index)
        return index

    @property
    def last_time(self) -> float | None:
        return None if self._last is None else self._last[0]

    def next_index(self, time_s: float) -> int:
        """The index of a frame at time_s after the last one, without taking it."""
        if self._first is None:
            return 0
        fps = self.fps or 1.0 / (time_s - self._first)  # no declared rate: measured from the first interval
        return max(round((time_s - self._first) * fps), self._last[1] + 1)

    def advance(self, time_s: float, index: int) -> None:
        """Take the frame at time_s with its index (from next_index): time moves on."""
        if self._first is None:
            self.segment = max(self.segment, 0)
            self._first = time_s
        else:
            if self.fps is None:
                self.fps = 1.0 / (time_s - self._first)
            self.lost += index - self._last[1] - 1
        self._last = (time_s, index)


FrameSink = Callable[[DecodedFrame, object], None]
EventSink = Callable[[EventKind, str], None]


class VideoSource:
    """Decodes a file, URL or device in its own thread; hands every frame to on_frame.

    stage_clock gets the thread's CPU time outside on_frame (demux, decode, opening) as DECODE,
    measured between frames: two thread_time reads per frame, ~1 µs (None: a clock of its own)."""

    def __init__(self, location: str, options: SourceOptions, on_frame: FrameSink, on_event: EventSink, *,
                 stage_clock: StageClock | None = None):
        # A file that is not there is this stream's fault, reported by its thread (FAILED) as
        # any file that cannot be opened: one bad location never stops the other streams.
        self.location, self.kind, self.options = location, source_kind(location), options
        if self.kind != FILE and (options.loop or options.realtime):
            raise ValueError(f"loop and realtime apply to files; {location!r} is a live {self.kind}")
        self._on_frame, self._on_event = on_frame, on_event
        self.stage_clock = stage_clock or StageClock()
        self._decode_mark = 0.0  # thread CPU time when this thread last went back to decoding
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source {location}", daemon=True)
        self.clock = FrameClock(None)
        self.decode_errors = 0
        self._offset = 0.0  # added to file times so looped passes continue the timeline
        self._pass_end: float | None = None
        self._pace: tuple[float, float] | None = None  # (stream time, perf_counter) at pacing start

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        self._decode_mark = time.thread_time()
        try:
            self._connect_and_decode()
        except Exception as err:  # this stream's thread must end with an event, whatever happened
            log.exception("source %s failed", self.location)
            self._on_event(EventKind.FAILED, f"{self.location}: internal error {type(err).__name__}: {err}")
        finally:
            self._decoded()

    def _connect_and_decode(self) -> None:
        if self.kind is FILE and not Path(self.location).is_file():
            self._on_event(EventKind.FAILED, _not_a_source(self.location))
            return
        failures = 0
        backoff = self.options.backoff_s[0]
        while not self._stop.is_set():
            try:
                container = self._open()
            except (av.error.FFmpegError, OSError) as err:
                failures += 1
                if self.kind == FILE or (self.options.max_retries is not None and failures > self.options.max_retries):
                    self._on_event(EventKind.FAILED, f"cannot open {self.location}: {self._why(err)}")
                    return
                self._on_event(EventKind.OPEN_FAILED, f"cannot open {self.location}: {self._why(err)}; retrying in {backoff:g} s")
                backoff = self._wait(backoff)
                continue
            with container:
                frames, cause = self._decode(container)
            if self._stop.is_set():
                return
            if frames:
                failures, backoff = 0, self.options.backoff_s[0]
            if self.kind == FILE:
                if cause:
                    self._on_event(EventKind.FAILED, cause)
                    return
                if not (self.options.loop and frames):
                    self._on_event(EventKind.ENDED, f"end of file after {frames} frames")
                    return
            else:
                self._on_event(EventKind.DISCONNECTED, f"{cause or 'end of stream'}; reconnecting in {backoff:g} s")
                backoff = self._wait(backoff)

    def _why(self, err: Exception) -> str:
        """FFmpeg's words, except for its interrupt: on a live source that is our timeout
        expiring on silence (a UDP sender that stopped never says so), not "Immediate exit"."""
        if isinstance(err, av.error.ExitError) and self.kind != FILE:
            return f"no data for {self.options.timeout_s:g} s"
        return str(err)

    def _wait(self, backoff: float) -> float:
        self._stop.wait(backoff)
        return min(2 * backoff, self.options.backoff_s[1])

    def _open(self):
        options = dict(self.options.av_options)
        if self.kind == FILE:
            return av.open(self.location, options=options)
        timeout = (self.options.timeout_s, self.options.timeout_s)
        return av.open(self.location, format="v4l2" if self.kind == DEVICE else None, options=options, timeout=timeout)

    def _decode(self, container) -> tuple[int, str | None]:
        """Decode one opened container to its end; (frames, cause of an abnormal end or None)."""
        if not container.streams.video:
            return 0, f"{self.location} has no video stream"
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.clock.fps = float(rate) if rate else None
        if self.kind != FILE or self._pass_end is None:  # not a loop's next pass: a new timeline
            self.clock.restart()
            self._pace = None
            self._on_event(EventKind.OPENED, f"{self.location}: {stream.codec_context.name} {stream.width}×{stream.height} at {self.clock.fps or '?'} fps")
        frames, last_time, in_error = 0, None, False
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as err:
                    self.decode_errors += 1
                    if not in_error:
                        self._on_event(EventKind.DECODE_ERROR, f"{self.location}: {err} (packet at {_seconds(packet)})")
                    in_error = True
                    continue
                for frame in decoded:
                    in_error = False
                    last_time = self._deliver(frame, frames)
                    frames += 1
        except av.error.FFmpegError as err:
            frames += self._flush(stream, frames)  # frames the decoder still holds are good
            return frames, f"{self.location}: {self._why(err)}"
        if self.kind == FILE and last_time is not None and not self._stop.is_set():
            self._check_complete(container, last_time)
            self._pass_end = last_time + self._offset + (1.0 / self.clock.fps if self.clock.fps else 0.0)
        return frames, None

    def _flush(self, stream, count: int) -> int:
        """After a broken read: deliver the frames still inside the decoder; how many."""
        flushed = 0
        try:
            for frame in stream.codec_context.decode(None):
                frame.time_base = stream.time_base  # the codec's flush leaves it unset
                self._deliver(frame, count + flushed)
                flushed += 1
        except av.error.FFmpegError:
            pass  # the read error already explains this connection's end
        return flushed

    def _deliver(self, frame, count: int) -> float:
        # A stream without timestamps is timed by arrival.
        time_s = frame.time if frame.time is not None and math.isfinite(frame.time) else time.perf_counter()
        if count == 0 and self.kind == FILE and self._pass_end is not None:
            self._offset = self._pass_end - time_s
        stamped = time_s + self._offset
        if self.options.realtime:
            self._pace_to(stamped)
        index = self.clock.stamp(stamped)
        if index is None:
            return time_s
        self._decoded()
        try:
            self._on_frame(DecodedFrame(frame, stamped, index, self.clock.segment, time.perf_counter()), None)
        finally:
            self._decode_mark = time.thread_time()
        return time_s

    def _decoded(self) -> None:
        """Add this thread's CPU time since it went back to decoding to DECODE."""
        self.stage_clock.add(Stage.DECODE, time.thread_time() - self._decode_mark)

    def _pace_to(self, time_s: float) -> None:
        if self._pace is None:
            self._pace = (time_s, time.perf_counter())
        delay = (time_s - self._pace[0]) - (time.perf_counter() - self._pace[1])
        if delay > 0:
            self._stop.wait(delay)

    def _check_complete(self, container, last_time: float) -> None:
        """Files whose container states a duration must reach it: else they were cut short."""
        if container.duration is None or not self.clock.fps:
            return
        start = (container.start_time or 0) / av.time_base
        expected_end = start + container.duration / av.time_base
        reached = last_time + 1.0 / self.clock.fps
        if expected_end - reached > 2.0 / self.clock.fps:
            self._on_event(EventKind.TRUNCATED, f"{self.location}: frames end at {reached:.2f} s, the container says {expected_end:.2f} s: file truncated")


def _seconds(packet) -> str:
    return f"{float(packet.pts * packet.time_base):.2f} s" if packet.pts is not None and packet.time_base else "unknown time"


class PushSource:
    """Frames handed in by the host (RGB uint8 arrays with their timestamps), fed inline on the
    host's thread; a bad frame is rejected with an event and the stream goes on."""

    kind = SourceKind.PUSH

    def __init__(self, fps: float, size: tuple[int, int] | None, on_frame: FrameSink, on_event: EventSink):
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"a pushed stream needs its frame rate: fps > 0, got {fps}")
        self.size = size  # (height, width); fixed by the first accepted frame when not given
        self.clock = FrameClock(fps)
        self.decode_errors = 0
        self._on_frame, self._on_event = on_frame, on_event
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Nothing of a pushed stream runs on its own: it stops when the host stops pushing."""

    def join(self, timeout: float | None = None) -> bool:
        return True

    def push(self, image, time_s: float, boxes=None) -> bool:
        """False (and a REJECTED_FRAME event) when the frame or the pipeline refuses it
        (RejectedFrame). Only an accepted frame moves the stream's clock and fixes its size, so
        the corrected frame can be pushed again at the same time. Any other error is a bug and
        is raised."""
        with self._lock:
            try:
                self._check(image, time_s)
                index = self.clock.next_index(time_s)
                # A pushed stream's time only moves forward (_check): one segment, 0.
                self._on_frame(DecodedFrame(image, time_s, index, 0, time.perf_counter()), boxes)
            except RejectedFrame as err:
                self._on_event(EventKind.REJECTED_FRAME, f"frame at {time_s} s rejected: {err}")
                return False
            self.clock.advance(time_s, index)
            self.size = image.shape[:2]
            return True

    def _check(self, image, time_s: float) -> None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            described = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise RejectedFrame(f"expected an RGB uint8 array (H, W, 3), got {described}")
        if self.size is not None and image.shape[:2] != tuple(self.size):
            raise RejectedFrame(f"frame is {image.shape[1]}×{image.shape[0]}, this stream's frames are {self.size[1]}×{self.size[0]}")
        last = self.clock.last_time
        if not math.isfinite(time_s) or (last is not None and time_s <= last):
            raise RejectedFrame(f"timestamp {time_s} does not follow the previous frame's {last}")
