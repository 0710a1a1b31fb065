"""Delivery: one thread handing results to the host, through its on_result callback or the
``results()`` iterator, in the order the dispatcher made them.

It stamps each result's ``emitted`` time, records its latencies, and only then settles its
clip in the ledger: once wait() returns, every result has reached the host. A host callback's
exception is logged and delivery goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from runtime.latency import LatencyBook
from runtime.ledger import ClipLedger
from runtime.records import Result

log = logging.getLogger("runtime")
_END = object()


class Delivery:
    def __init__(self, on_result: Callable[[Result], None] | None, ledger: ClipLedger, latency: LatencyBook):
        self._on_result, self._ledger, self._latency = on_result, ledger, latency
        self._outbox: queue.Queue = queue.Queue()  # unbounded: the dispatcher never waits on a slow host
        self._results: queue.Queue = queue.Queue()  # for results(), without a callback
        self._thread = threading.Thread(target=self._loop, name="runtime delivery", daemon=True)
        self._thread.start()

    def put(self, result: Result) -> None:
        self._outbox.put(result)

    def close(self) -> None:
        """Deliver every result put so far, then end the results() iterators."""
        self._outbox.put(_END)
        self._thread.join()
        self._results.put(_END)

    def results(self, timeout: float | None = None) -> Iterator[Result]:
        """Results as they come; ends after close(), or when none came for timeout seconds."""
        if self._on_result is not None:
            raise ValueError("results go to the on_result callback; create the Runtime without it to iterate")
        while True:
            try:
                item = self._results.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                self._results.put(_END)  # for any other iterator
                return
            yield item

    def _loop(self) -> None:
        while (result := self._outbox.get()) is not _END:
            result = replace(result, emitted=time.perf_counter())
            self._latency.record(result)
            if self._on_result is None:
                self._results.put(result)
            else:
                try:
                    self._on_result(result)
                except Exception:  # a host callback's bug must not stop delivery
                    log.exception("on_result callback failed")
            self._ledger.delivered(result)
