"""Every Prometheus object of the service, in one registry per app (so tests and several apps
in one process do not share counters)."""
from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files of this process
        r = self.registry
        self.requests = Counter("catface_requests_total", "HTTP requests by route template, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("catface_request_duration_seconds", "HTTP request latency, receipt to last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("catface_inflight_requests", "Analysis requests (/detect, /breeds) being served",
                              registry=r)
        self.rejections = Counter("catface_rejections_total",
                                  "Requests refused before or instead of inference, by reason", ["reason"], registry=r)
        self.queue_wait = Histogram("catface_queue_wait_seconds", "Time an item waited in a model queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("catface_inference_seconds", "onnxruntime time per batch", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("catface_batch_size", "Rows (photos or face crops) per onnxruntime call",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("catface_queue_depth", "Items waiting in a model queue", ["model"], registry=r)
        self.dropped = Counter("catface_dropped_total",
                               "Queued items removed before inference (caller gone or deadline passed)",
                               ["model", "reason"], registry=r)
        self.model_info = Gauge("catface_model_info", "Loaded models (value 1)", ["name", "version", "sha256"],
                                registry=r)

    def refused(self, reason: str) -> None:
        """A refusal before any route ran (service/http11.py: a late head, too many connections)."""
        self.rejections.labels(reason).inc()

    def for_model(self, name: str) -> ModelObserver:
        return ModelObserver(self, name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelObserver:
    """The batching engine's view of the metrics for one model (see batching.Observer)."""

    def __init__(self, metrics: Metrics, model: str):
        self._m = metrics
        self._model = model
        self._depth = metrics.queue_depth.labels(model)
        self._depth.set(0)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def dropped(self, reason: str) -> None:
        self._m.dropped.labels(self._model, reason).inc()

    def batch(self, rows: int, waits: list[float], seconds: float) -> None:
        self._m.batch_size.labels(self._model).observe(rows)
        self._m.inference.labels(self._model).observe(seconds)
        for wait in waits:
            self._m.queue_wait.labels(self._model).observe(wait)
