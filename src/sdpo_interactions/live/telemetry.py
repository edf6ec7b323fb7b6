"""The server's metrics in the Prometheus text format (served at /metrics, as vLLM serves its own): requests and
their latency, tokens, samples, updates and monitor trips. Each server has its own registry, so several servers in
one process (tests) never mix their counts. No label holds a user id or any text a user wrote.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

from sdpo_interactions.live.monitors import MONITORS, Reading
from sdpo_interactions.live.store import Store

disable_created_metrics()  # the *_created series (start times of each counter) say nothing here and triple the text
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class StoreCollector:
    """Gauges read from the store and the serving model at each scrape."""

    def __init__(self, store: Store, served_versions: Callable[[], dict[str, int]]):
        self.store, self.served_versions = store, served_versions

    def describe(self):
        return []

    def collect(self):
        samples = GaugeMetricFamily("sdpo_live_samples", "Samples by state", labels=["state"])
        for state, count in sorted(self.store.sample_counts().items()):
            samples.add_metric([state], count)
        yield samples
        versions = self.served_versions()
        yield GaugeMetricFamily("sdpo_live_shared_adapter_version", "Version of the shared adapter being served",
                                value=versions.get("shared", 0))
        yield GaugeMetricFamily("sdpo_live_adapters_served", "Adapters loaded for serving (shared and per user)",
                                value=len(versions))


class Telemetry:
    def __init__(self, store: Store, served_versions: Callable[[], dict[str, int]]):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("sdpo_live_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=registry)
        self.latency = Histogram("sdpo_live_request_duration_seconds", "Seconds from a request to its response's "
                                 "headers, by route", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.completion_seconds = Histogram("sdpo_live_chat_completion_duration_seconds", "Seconds from a chat "
                                            "request to its answer stored, streamed or not", buckets=LATENCY_BUCKETS,
                                            registry=registry)
        self.prompt_tokens = Counter("sdpo_live_prompt_tokens", "Prompt tokens of answered requests",
                                     registry=registry)
        self.generation_tokens = Counter("sdpo_live_generation_tokens", "Tokens generated", registry=registry)
        self.samples_created = Counter("sdpo_live_samples_created", "Samples made from users' follow-ups",
                                       registry=registry)
        self.updates = Counter("sdpo_live_updates", "Adapter updates by outcome (published, rejected, failed)",
                               ["outcome"], registry=registry)
        self.update_seconds = Histogram("sdpo_live_update_duration_seconds", "Seconds per update, monitors included",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.monitor_trips = Counter("sdpo_live_monitor_trips", "Updates a monitor stopped from being published",
                                     ["monitor"], registry=registry)
        self.monitor_value = Gauge("sdpo_live_monitor_value", "Each monitor's reading at the last update that "
                                   "measured it", ["monitor"], registry=registry)
        for outcome in ("published", "rejected", "failed"):
            self.updates.labels(outcome)
        for name in MONITORS:
            self.monitor_trips.labels(name)
        registry.register(StoreCollector(store, served_versions))

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def update_finished(self, outcome: str, seconds: float, readings: list[Reading]) -> None:
        self.updates.labels(outcome).inc()
        self.update_seconds.observe(seconds)
        for reading in readings:
            if reading.value is not None:
                self.monitor_value.labels(reading.name).set(reading.value)
            if reading.tripped:
                self.monitor_trips.labels(reading.name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
