"""Prometheus metrics of a running Runtime, on an HTTP port (prometheus_client, imported only
when metrics are asked for: pip install prometheus-client).

    metrics = RuntimeMetrics()
    metrics.serve(port=9400)                   # http://127.0.0.1:9400/metrics
    runtime = Runtime(model, options, on_result=metrics.observing(callback))
    metrics.attach(runtime)
    python -m runtime MODEL --stream ... --metrics-port 9400

Counters are read from the runtime at each scrape (Runtime.stats, batch_sizes, backend_seconds),
so they cost nothing between scrapes and always agree with the summary table: per stream
``dfer_frames_total``, ``dfer_clips_total``, ``dfer_results_total``, ``dfer_clips_dropped_total``,
``dfer_clips_failed_total``, ``dfer_faults_total``; ``dfer_batch_size`` (a histogram rebuilt
from the exact batch counts), ``dfer_backend_seconds_total`` and ``dfer_dispatch_seconds_total``.
``dfer_latency_seconds{stage}`` is a histogram observed per result, one series per stage
(runtime.latency.STAGES), over all streams: per-stream series would grow with every camera.
"""

from __future__ import annotations

from collections.abc import Callable

from runtime.latency import STAGES
from runtime.records import Result

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STREAM_COUNTERS = (  # (metric, StreamStats field, help)
    ("dfer_frames", "frames", "frames decoded or pushed"),
    ("dfer_clips", "clips_ready", "clips ready for the model"),
    ("dfer_results", "results", "results delivered"),
    ("dfer_clips_dropped", "clips_dropped", "clips dropped from a full queue"),
    ("dfer_clips_failed", "clips_failed", "clips lost in a failed batch"),
    ("dfer_faults", "faults", "fault events"),
)


def import_prometheus():
    try:
        import prometheus_client
    except ImportError as err:
        raise ImportError(f"metrics need prometheus_client ({err}): pip install prometheus-client") from err
    return prometheus_client


class RuntimeMetrics:
    """One registry per runtime (never the process-global one), so several runtimes or tests
    in one process do not collide."""

    def __init__(self):
        prometheus = import_prometheus()
        self.registry = prometheus.CollectorRegistry()
        self._latency = prometheus.Histogram("dfer_latency_seconds", "seconds per stage of a clip's way to its result",
                                             ["stage"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self._server = None

    def observe(self, result: Result) -> None:
        for stage, seconds in result.latencies().items():
            if stage in STAGES:
                self._latency.labels(stage=stage).observe(seconds)

    def observing(self, on_result: Callable[[Result], None] | None) -> Callable[[Result], None]:
        """An on_result callback that records the result's latencies, then calls on_result."""
        def record(result: Result) -> None:
            self.observe(result)
            if on_result is not None:
                on_result(result)

        return record

    def attach(self, runtime) -> None:
        """Read the runtime's counters at each scrape."""
        self.registry.register(_RuntimeCollector(runtime))

    def serve(self, port: int, address: str = "127.0.0.1") -> str:
        """Serve /metrics (before attach, so a port in use fails before the runtime opens);
        returns its URL, with the system's port for port 0."""
        server, _thread = import_prometheus().start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        return f"http://{address}:{server.server_address[1]}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _RuntimeCollector:
    """A prometheus_client custom collector: families built from the runtime's own counters."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        stats = self.runtime.stats()
        for name, field, text in _STREAM_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["stream"])
            for stream_id, s in stats.items():
                family.add_metric([stream_id], getattr(s, field))
            yield family
        for name, value, text in (("dfer_backend_seconds", self.runtime.backend_seconds, "seconds inside backend.run"),
                                  ("dfer_dispatch_seconds", self.runtime.dispatch_seconds, "seconds per batch in the dispatcher")):
            yield CounterMetricFamily(name, text, value=value)
        yield _batch_histogram(self.runtime.batch_sizes, HistogramMetricFamily)


def _batch_histogram(sizes, family_type):
    """The exact batch-size counts as a histogram with a bucket at every power of two."""
    largest = max(sizes, default=1)
    bounds = [2**k for k in range(largest.bit_length() + 1)]
    buckets = [(str(b), sum(n for size, n in sizes.items() if size <= b)) for b in bounds]
    buckets.append(("+Inf", sum(sizes.values())))
    total = sum(size * n for size, n in sizes.items())
    return family_type("dfer_batch_size", "clips per batch run", buckets=buckets, sum_value=total)
