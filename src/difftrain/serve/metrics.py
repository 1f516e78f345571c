"""Prometheus metrics of one server (its own registry, so tests can run several servers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTES = ("/", "/health", "/metrics", "/v1/generate", "/v1/models", "/page.js", "/page.css")


class Metrics:
    """Requests by route and status, latency, queue depth, images, batches, model in use."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "difftrain_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "difftrain_request_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.queue_depth = Gauge(
            "difftrain_queue_depth", "Generation requests waiting or running", registry=r
        )
        self.images = Counter("difftrain_images_generated", "Images generated", registry=r)
        self.batches = Counter(
            "difftrain_batches", "Forward batches run (one per micro-batch)", registry=r
        )
        self.batch_requests = Histogram(
            "difftrain_batch_requests",
            "Requests merged into one batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.rejected = Counter(
            "difftrain_rejected",
            "Requests refused before running, by reason",
            ["reason"],
            registry=r,
        )
        self.model = Gauge(
            "difftrain_model_info", "The model in use (value 1)", ["model"], registry=r
        )
        self.swaps = Counter("difftrain_model_swaps", "Models swapped in by --watch", registry=r)

    def set_model(self, name: str) -> None:
        self.model.clear()
        self.model.labels(model=name).set(1)

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"  # unknown paths share one label
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
