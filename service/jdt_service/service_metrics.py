"""Prometheus metrics of one app instance (its own registry, so apps never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SIZE_BUCKETS = tuple(float(4**k) * 1024 for k in range(1, 12))  # 4 KiB .. 4 GiB


class ServiceMetrics:
    """The counters, histograms and gauges exposed at ``/metrics``.

    - ``jdt_requests_total{method, route, status}`` and ``jdt_request_duration_seconds{route}``
    - ``jdt_upload_bytes`` (histogram, one observation per uploaded file)
    - ``jdt_voxels_scored_total``, ``jdt_scoring_duration_seconds{device}``
    - ``jdt_errors_total{code}``: error responses by ``detail.code``
    - ``jdt_gpu_fallbacks_total``: jobs re-run on the CPU after CUDA ran out of memory
    - ``jdt_queue_depth``: admitted requests not yet scoring; ``jdt_jobs_running``
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "jdt_requests", "HTTP requests served.", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "jdt_request_duration_seconds",
            "Time from request start to response end.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upload_bytes = Histogram(
            "jdt_upload_bytes", "Size of each uploaded file.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.voxels = Counter("jdt_voxels_scored", "Voxels scored (per volume pair).", registry=r)
        self.scoring_seconds = Histogram(
            "jdt_scoring_duration_seconds",
            "Time spent in the scoring core per job.",
            ["device"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("jdt_errors", "Error responses by detail.code.", ["code"], registry=r)
        self.gpu_fallbacks = Counter(
            "jdt_gpu_fallbacks", "Jobs retried on the CPU after CUDA out of memory.", registry=r
        )
        self.queue_depth = Gauge(
            "jdt_queue_depth", "Admitted scoring requests not yet running.", registry=r
        )
        self.jobs_running = Gauge("jdt_jobs_running", "Scoring jobs running now.", registry=r)
