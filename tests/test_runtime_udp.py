"""A live MPEG-TS stream over UDP on 127.0.0.1, sent by PyAV at its frame rate, stopped and
restarted mid-test: the runtime reports the stall, keeps reconnecting while the sender is
down, and delivers the clips of both halves. Every wait is bounded; the test takes ~10 s.

UDP has no connection: a sender that stops just goes silent, so the stall shows up as the
source's read timeout (a DISCONNECTED event, "no data for ..."), then as failed opens until
packets come again. The sender starts only once the runtime's socket is bound (read from
/proc/net/udp, which touches no socket), so nothing is sent into the void.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import av
import pytest

from runtime.api import Runtime, RuntimeOptions
from runtime.clips import clip_count
from runtime.records import EventKind
from runtime.sources import SourceOptions
from runtime.streams import StreamOptions
from runtime.synthetic import synthetic_face_frames
from tests.test_runtime_live import wait_for
from tests.test_runtime_units import TINY, write_tiny_model

FPS, FRAMES, GOP = 25, 50, 5  # two seconds per half; a keyframe every 0.2 s
TIMEOUT_S = 1.5


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    """Whether some socket listens on 127.0.0.1:port (Linux's socket table; binds nothing)."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(line.split()[1] == wanted for line in lines)


def send_mpegts(url: str, frames) -> None:
    """Encode frames as H.264 in MPEG-TS and send them to url, paced at FPS (a camera's pace)."""
    with av.open(url, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(GOP), "tune": "zerolatency"}  # no B-frames: each frame leaves at once
        started = time.perf_counter()
        for i, frame in enumerate(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            delay = started + (i + 1) / FPS - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        container.mux(stream.encode())


@pytest.mark.skipif(not Path("/proc/net/udp").is_file(), reason="needs Linux's /proc/net/udp to see when the runtime listens")
def test_udp_stream_survives_a_sender_restart(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.onnx", **TINY)
    port = free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    frames = synthetic_face_frames(FRAMES, 64, 64, seed=4)
    results, events = [], []

    def count(kind):
        return sum(e.kind is kind for e in events)

    started = time.monotonic()
    live = StreamOptions(source=SourceOptions(timeout_s=TIMEOUT_S, backoff_s=(0.1, 0.2)))
    with Runtime(model, RuntimeOptions(max_delay_ms=1), on_result=results.append, on_event=events.append) as runtime:
        runtime.add_stream(url, stream_id="camera", options=live)
        wait_for(lambda: udp_port_bound(port), timeout=5)
        send_mpegts(url + "?pkt_size=1316", frames)
        wait_for(lambda: count(EventKind.DISCONNECTED) == 1, timeout=5)  # the stall is reported
        first_frames = runtime.stats()["camera"].frames
        wait_for(lambda: count(EventKind.OPEN_FAILED) >= 1, timeout=5)  # still silent: it keeps trying
        wait_for(lambda: udp_port_bound(port), timeout=5)
        restarted = time.perf_counter()
        send_mpegts(url + "?pkt_size=1316", frames)
        wait_for(lambda: count(EventKind.DISCONNECTED) == 2, timeout=5)
        runtime.remove_stream("camera")
    elapsed = time.monotonic() - started

    stall = [e.cause for e in events if e.kind is EventKind.DISCONNECTED]
    assert all(f"no data for {TIMEOUT_S:g} s; reconnecting" in cause for cause in stall), stall
    assert all(f"no data for {TIMEOUT_S:g} s" in e.cause for e in events if e.kind is EventKind.OPEN_FAILED)
    assert count(EventKind.OPENED) == 2  # one connection per sender run
    stats = runtime.stats()["camera"]
    second_frames = stats.frames - first_frames
    # A listener bound before the first packet loses nothing on loopback; at most the first
    # GOP may go (the decoder waits for a keyframe), never a frame in the middle.
    for received in (first_frames, second_frames):
        assert FRAMES - GOP <= received <= FRAMES, (first_frames, second_frames)
    assert stats.frames_lost == 0 and stats.decode_errors == 0
    # Every clip of each half becomes a result, and each half's clips come from its own frames.
    first = [r for r in results if r.captured < restarted]
    second = [r for r in results if r.captured > restarted]
    assert len(first) == clip_count(first_frames, TINY["frames"], TINY["stride"], TINY["frames"]) > 0
    assert len(second) == clip_count(second_frames, TINY["frames"], TINY["stride"], TINY["frames"]) > 0
    assert stats.results == len(results) == len(first) + len(second) == stats.clips_ready
    assert stats.clips_dropped == stats.clips_failed == 0
    assert elapsed < 30
