"""A live source against a real HTTP server on 127.0.0.1 that cuts a stream off mid-way, goes
down, and comes back: the runtime reconnects with back-off and delivers every clip of every
connection. Each wait is bounded; the whole test takes a few seconds.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import pytest

from runtime.api import Runtime, RuntimeOptions
from runtime.clips import clip_count
from runtime.records import EventKind
from runtime.sources import SourceOptions
from runtime.streams import StreamOptions
from runtime.demo_videos import write_face_video
from tests.test_runtime_units import TINY, write_tiny_model

NUM_FRAMES = 60


class StreamServer:
    """Serves one MPEG-TS file on a fixed loopback port; request 2 is cut off half-way (the
    server "crashes" mid-stream). stop() closes the listening socket, so connects are refused."""

    def __init__(self, payload: bytes):
        self.payload, self.port, self.requests = payload, 0, 0
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                body = server.payload if server.requests != 2 else server.payload[: len(server.payload) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/camera.ts"


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s")
        time.sleep(0.02)


def frames_in(data: bytes, path) -> int:
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_http_source_reconnects_after_a_cut_and_an_outage(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.onnx", **TINY)
    payload = write_face_video(tmp_path / "camera.ts", NUM_FRAMES, seed=6).read_bytes()
    half_frames = frames_in(payload[: len(payload) // 2], tmp_path / "half.ts")
    server = StreamServer(payload)
    server.start()
    results, events = [], []

    def on_event(event):
        events.append(event)
        # Down after the cut-off connection (2) and after the one that follows the outage (3),
        # from inside the source's thread: before its back-off, so it cannot reconnect first.
        if event.kind is EventKind.DISCONNECTED and sum(e.kind is EventKind.DISCONNECTED for e in events) in (2, 3):
            server.stop()

    def count(kind):
        return sum(e.kind is kind for e in events)

    live = StreamOptions(source=SourceOptions(backoff_s=(0.1, 0.2), timeout_s=3))
    with Runtime(model, RuntimeOptions(max_delay_ms=1), on_result=results.append, on_event=on_event) as runtime:
        stream = runtime.add_stream(server.url, stream_id="camera", options=live)
        wait_for(lambda: count(EventKind.OPEN_FAILED) >= 2)  # the outage: connects refused
        server.start()  # back, on the same port
        wait_for(lambda: count(EventKind.DISCONNECTED) == 3)
        runtime.remove_stream(stream)

    assert server.requests == 3
    assert count(EventKind.OPENED) == 3
    assert all("Connection refused" in e.cause for e in events if e.kind is EventKind.OPEN_FAILED)
    expected = 2 * clip_count(NUM_FRAMES, 4, 2, 4) + clip_count(half_frames, 4, 2, 4)
    assert 0 < half_frames < NUM_FRAMES and len(results) == expected
    stats = runtime.stats()["camera"]
    assert stats.state == "removed" and stats.frames == 2 * NUM_FRAMES + half_frames
