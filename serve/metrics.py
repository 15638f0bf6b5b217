"""Prometheus metrics of the app, exported through Ray's metrics agent (`ray.serve.metrics`
adds deployment/replica/application tags on its own).

Decode rate is `rate(vljepa_stream_decodes_total) / rate(vljepa_stream_clips_total)`: the share
of stream clips that cost a Decoder call (1.0 = decoding every clip, lower = selective decoding
saving work); `vljepa_decoder_items_total` counts every caption the Decoder generated.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

LATENCY_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "vljepa_requests_total",
            description="HTTP requests answered by the ingress, by route and status code",
            tag_keys=("route", "code"),
        )
        self.latency = Histogram(
            "vljepa_request_latency_ms",
            description="Ingress request latency in ms, by route",
            boundaries=LATENCY_MS,
            tag_keys=("route",),
        )
        self.stream_clips = Counter(
            "vljepa_stream_clips_total", description="Clips appended to live streams"
        )
        self.stream_decodes = Counter(
            "vljepa_stream_decodes_total",
            description="Captions selective decoding asked for on live streams",
        )
        self.decode_retries = Counter(
            "vljepa_decoder_retries_total",
            description="Decoder calls retried by the ingress after a replica failure",
        )

    def observe(self, route: str, code: int, ms: float) -> None:
        self.requests.inc(tags={"route": route, "code": str(code)})
        self.latency.observe(ms, tags={"route": route})


class ModelMetrics:
    """Per model deployment: items processed, batch sizes, batch latency."""

    def __init__(self, prefix: str) -> None:
        self.items = Counter(
            f"vljepa_{prefix}_items_total", description=f"Items processed by the {prefix}"
        )
        self.batches = Counter(
            f"vljepa_{prefix}_batches_total", description=f"Batched calls of the {prefix}"
        )
        self.batch_size = Histogram(
            f"vljepa_{prefix}_batch_size",
            description=f"Dynamic batch sizes of the {prefix}",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )
        self.batch_ms = Histogram(
            f"vljepa_{prefix}_batch_latency_ms",
            description=f"Model time per batch of the {prefix} in ms",
            boundaries=LATENCY_MS,
        )

    def batch(self, n: int, ms: float) -> None:
        self.items.inc(n)
        self.batches.inc()
        self.batch_size.observe(n)
        self.batch_ms.observe(ms)
