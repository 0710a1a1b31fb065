"""One stream's pipeline: frames → faces (tracks) → per-track clip buffers → normalised clips.

A per-frame (NCHW) model takes "clips" of one frame: each track's buffer holds one sample and
emits it as a (3, H, W) input, every ``stride``-th frame of the track (RuntimeOptions.frame_step).
With an annotator (runtime.annotate) every frame is also written, boxes and labels drawn on.
A landmarks model (ModelSpec.landmarks) also gets each sample's landmark rendering: the face
mesh on the face's box in the frame, drawn into the crop the sample was cut with
(runtime.landmarks.LandmarkRenderer; face mode 'full': the whole frame), timed as LANDMARKS.

It runs on the thread that brings the frame (the source's decode thread, or the host's thread
for pushed frames), so streams never wait on each other before the batcher. A stream whose
queue policy is BLOCK waits in the batcher inside ``feed``, holding this pipeline's lock (a
track's clips are counted before its end); so the counters stats() reads take no lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import numpy as np

from runtime.annotate import Annotator
from runtime.batcher import QueuePolicy
from runtime.clips import ClipBuffer
from runtime.detector import MODELS as DETECTOR_MODELS, FaceDetector
from runtime.faces import FACE_MODES, RESIZE_MODES, DetectedFaces, FullFrame, HostBoxes, IouTracker, Resizer
from runtime.landmarks import LandmarkRenderer
from runtime.post import StaticFrames
from runtime.records import Clip, EventKind, StreamState
from runtime.sources import DecodedFrame, SourceKind, SourceOptions
from runtime.spec import ModelSpec
from runtime.stage_clock import Stage, StageClock


@dataclass(frozen=True)
class StreamOptions:
    """faces: 'full' (the frame is the face), 'boxes' (pushed with host boxes) or 'detect'
    (the built-in detector, runtime.detector).
    margin: crop margin around a host or detected box, as a fraction of its longer side.
    detector: the built-in detector's model: 'short_range' (faces within ~2 m) or 'full_range'
    (~5 m, ~4× the inference time). detect_every: detect on every n-th frame; in between, the
    faces of the last detection keep their boxes. min_face_score: the lowest detector score a
    face keeps; None: the model's default (runtime.detector.MODELS, above its measured false
    hits on a cartoon title).
    track_timeout_s: stream time after which an unseen track is evicted.
    max_gap_s: time gap between two samples that discards a partial clip; None: two sample
    periods (2 · frame_stride / fps), i.e. one lost sample is tolerated. A per-frame model's
    one-frame clips are never partial: a face unseen for a while only skips frames.
    queue_policy: what the stream's full queue does (runtime.batcher.QueuePolicy); None: chosen
    from the source, BLOCK for files not paced in real time (looped or not), DROP_OLDEST for
    live sources (URLs, devices), realtime files and pushed frames.
    resize: how face crops reach the model's size: 'official' (the spec's own filter, Pillow's
    bilinear or bicubic to the bit, as the papers' test scripts resize) or 'fast' (swscale's
    bilinear, ~6x cheaper per frame, up to 8 grey levels off); runtime.faces.Resizer has the
    numbers."""

    faces: str = "full"
    margin: float = 0.2
    track_timeout_s: float = 1.0
    max_gap_s: float | None = None
    detector: str = "short_range"
    detect_every: int = 1
    min_face_score: float | None = None
    source: SourceOptions = field(default_factory=SourceOptions)
    queue_policy: QueuePolicy | None = None
    resize: str = "official"

    def policy_for(self, kind: SourceKind) -> QueuePolicy:
        """The queue policy of a stream from this kind of source."""
        if self.queue_policy is not None:
            return self.queue_policy
        live = kind is not SourceKind.FILE or self.source.realtime
        return QueuePolicy.DROP_OLDEST if live else QueuePolicy.BLOCK

    def __post_init__(self) -> None:
        if self.faces not in FACE_MODES:
            raise ValueError(f"unknown face mode {self.faces!r}; known: {', '.join(FACE_MODES)}")
        if not 0 <= self.margin <= 2:
            raise ValueError(f"margin must lie in [0, 2], got {self.margin}")
        if not self.track_timeout_s > 0:
            raise ValueError(f"track_timeout_s must be > 0, got {self.track_timeout_s}")
        if self.max_gap_s is not None and not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0 seconds or None, got {self.max_gap_s}")
        if self.detector not in DETECTOR_MODELS:
            raise ValueError(f"unknown face detector {self.detector!r}; known: {', '.join(DETECTOR_MODELS)}")
        if self.min_face_score is not None and not 0 < self.min_face_score < 1:
            raise ValueError(f"min_face_score must lie in (0, 1) or be None, got {self.min_face_score}")
        if type(self.detect_every) is not int or self.detect_every < 1:
            raise ValueError(f"detect_every must be an integer ≥ 1, got {self.detect_every!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; known: {', '.join(RESIZE_MODES)}")
        if self.queue_policy is not None and not isinstance(self.queue_policy, QueuePolicy):
            raise ValueError(f"queue_policy must be a QueuePolicy ({', '.join(QueuePolicy)}) or None, got {self.queue_policy!r}")


@dataclass(frozen=True)
class StreamStats:
    """Counters of one stream. Every ready clip ends as a result, a drop or a failed batch."""

    state: StreamState
    frames: int
    frames_lost: int
    frames_out_of_order: int
    decode_errors: int
    clips_ready: int
    clips_invalidated: int
    clips_dropped: int
    clips_failed: int
    results: int
    tracks_evicted: int
    faults: int
    landmarks_missed: int = 0  # sampled frames whose face the mesh did not find (black renderings)


class StreamPipeline:
    """stride: source frames between two samples of a track (None: the model's frame_stride);
    annotator: writes every frame with its boxes and labels drawn on (None: no video);
    stage_clock: where the face stage, crops and normalisation add their CPU time (None: one of
    its own; ``clock`` is the source's FrameClock)."""

    def __init__(self, stream_id: str, spec: ModelSpec, hop: int, options: StreamOptions,
                 emit_clip: Callable[[Clip], None], emit_event: Callable[[str, EventKind, str], None],
                 end_track: Callable[[str, int], None], static: StaticFrames | None = None, *,
                 stride: int | None = None, annotator: Annotator | None = None, stage_clock: StageClock | None = None):
        self.stream_id, self.spec, self.hop, self.options = stream_id, spec, hop, options
        self.stride = spec.frame_stride if stride is None else stride
        self.annotator = annotator
        self.stage_clock = stage_clock or StageClock()
        self.static, self._static_resizer = static, Resizer()  # its own swscale context: another size
        self._emit_clip, self._emit_event, self._end_track = emit_clip, emit_event, end_track
        resizer = Resizer(spec.resize if options.resize == "official" else None)
        if options.faces == "full":
            self.faces = FullFrame(spec.height, spec.width, resizer)
        elif options.faces == "boxes":
            tracker = IouTracker(timeout_s=options.track_timeout_s)
            self.faces = HostBoxes(spec.height, spec.width, options.margin, tracker, resizer, stage_clock=self.stage_clock)
        else:
            tracker = IouTracker(timeout_s=options.track_timeout_s)
            self.faces = DetectedFaces(spec.height, spec.width, options.margin, tracker, resizer,
                                       FaceDetector(options.detector, options.min_face_score), options.detect_every,
                                       stage_clock=self.stage_clock)
        self.landmarks = LandmarkRenderer(spec.height) if spec.landmarks else None
        self._buffers: dict[int, ClipBuffer] = {}
        self._segment = 0
        self._lock = threading.Lock()
        self.clock = None  # the source's FrameClock (frame rate, frames lost), set when attached
        self.frames = 0
        self.tracks_evicted = 0
        self.clips_invalidated = 0

    def feed(self, frame: DecodedFrame, boxes=None) -> None:
        """Take one frame; RejectedFrame (boxes that do not fit the face mode) leaves the
        stream's state untouched."""
        with self._lock:
            faces = self.faces.faces(frame, frame.time_s, boxes)
            self.frames += 1
            if frame.segment != self._segment:
                self._segment = frame.segment
                for buffer in self._buffers.values():
                    self._reset(buffer)
            for track, crop in faces:
                buffer = self._buffers.get(track)
                if buffer is None:
                    buffer = self._buffers[track] = ClipBuffer(self.spec.frames, self.stride, self.hop)
                if buffer.wants(frame.index):
                    with self.stage_clock.cpu(Stage.CROP):
                        image = crop()
                    if self.landmarks is not None:  # the sample and its rendering travel as one (2, H, W, 3)
                        with self.stage_clock.cpu(Stage.LANDMARKS):
                            image = np.stack([image, self.landmarks.render(*self.faces.mesh_view(track))])
                    self._sample(track, buffer, frame, image)
            for track in self.faces.evict(frame.time_s):
                self._retire(track)
                self.tracks_evicted += 1
            if self.annotator is not None:
                self._annotate(frame)

    @property
    def landmarks_missed(self) -> int:
        return 0 if self.landmarks is None else self.landmarks.missed

    def end(self) -> None:
        """End of stream: leftover samples too few for a clip are let go, not counted as faults;
        the annotated video is finished (playable up to the last frame)."""
        with self._lock:
            for track in self._buffers:
                self._end_track(self.stream_id, track)
            self._buffers.clear()
            if self.annotator is not None:
                self._annotate(None)

    def _annotate(self, frame: DecodedFrame | None) -> None:
        """Write a frame into the annotated video, or finish it (None). A video that cannot be
        written stops annotating, never the stream's inference."""
        boxes = None if self.options.faces == "full" else self.faces.boxes  # full: the frame is track 0's face
        try:
            if frame is None:
                self.annotator.close()
            else:
                self.annotator.write(frame, boxes, self.clock.fps if self.clock is not None else None)
        except (OSError, av.error.FFmpegError) as err:
            annotator, self.annotator = self.annotator, None
            annotator.abandon()
            self._emit_event(self.stream_id, EventKind.ANNOTATION_FAILED,
                             f"annotated video {annotator.path} stopped: {type(err).__name__}: {err}")

    def _sample(self, track: int, buffer: ClipBuffer, frame: DecodedFrame, image) -> None:
        before = buffer.clips_invalidated
        out = buffer.add(frame.index, frame.time_s, image, self._max_gap_s())
        if buffer.clips_invalidated > before:
            self.clips_invalidated += buffer.clips_invalidated - before
            self._emit_event(
                self.stream_id, EventKind.GAP,
                f"track {track}: {buffer.gap_s:.3f} s between samples before {frame.time_s:.3f} s "
                f"(limit {self._max_gap_s():.3f} s); partial clip discarded",
            )
        if out is not None:
            frames, start_s, end_s = out
            renderings = None
            if self.landmarks is not None:
                frames, renderings = frames[:, 0], frames[:, 1]
            with self.stage_clock.cpu(Stage.NORMALIZE):
                data = self.spec.model_input(frames)
                landmark_data = None if renderings is None else self.spec.model_input(renderings)
            static = None if self.static is None else self.static.inputs(frames, self._static_resizer, self.stage_clock)
            clip = Clip(stream_id=self.stream_id, track_id=track, index=buffer.clips_emitted - 1, start_s=start_s,
                        end_s=end_s, data=data, captured=frame.captured, ready=time.perf_counter(), static_data=static,
                        landmark_data=landmark_data)
            self._emit_clip(clip)

    def _max_gap_s(self) -> float:
        if self.options.max_gap_s is not None:
            return self.options.max_gap_s
        fps = self.clock.fps if self.clock is not None else None
        return 2.0 * self.stride / fps if fps else math.inf

    def _reset(self, buffer: ClipBuffer) -> None:
        before = buffer.clips_invalidated
        buffer.reset()
        self.clips_invalidated += buffer.clips_invalidated - before

    def _retire(self, track: int) -> None:
        self._reset(self._buffers.pop(track))
        self._end_track(self.stream_id, track)
