"""Prometheus metrics of one server, served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ConnectionsCollector:
    """Open connections per app, read from the hub when scraped (no work per connection)."""

    def __init__(self, hub):
        self._hub = hub

    def collect(self):
        gauge = GaugeMetricFamily("soketify_connections", "Open WebSocket connections",
                                  labels=["app_id"])
        for app in self._hub.apps:
            gauge.add_metric([app.id], self._hub.connection_count(app.id))
        yield gauge


class Metrics:
    def __init__(self, host_metrics=None):
        """``host_metrics()``: Deferred of the whole host's text, when this process is one of
        several workers; /metrics then answers for the host."""
        self.host_metrics = host_metrics
        self.registry = CollectorRegistry()
        self.webhook_events_delivered = Counter(
            "soketify_webhook_events_delivered", "Webhook events acknowledged with a 2xx",
            ["app_id"], registry=self.registry)
        self.webhook_events_dropped = Counter(
            "soketify_webhook_events_dropped",
            "Webhook events given up after retrying for webhooks.retry_for seconds",
            ["app_id"], registry=self.registry)
        self.refusals = Counter(
            "soketify_limit_refusals",
            "Requests and frames refused over an app limit, by the limit (the [[apps]] key)",
            ["app_id", "limit"], registry=self.registry)

    def refused(self, app_id: str, limit: str) -> None:
        self.refusals.labels(app_id, limit).inc()

    def watch_hub(self, hub) -> None:
        self.registry.register(_ConnectionsCollector(hub))

    def webhook_delivered(self, app_id: str, count: int) -> None:
        self.webhook_events_delivered.labels(app_id).inc(count)

    def webhook_dropped(self, app_id: str, count: int) -> None:
        self.webhook_events_dropped.labels(app_id).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Families:
    """Already added-up metric families, for generate_latest."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def add_up(texts: list[tuple[str, str]]) -> bytes:
    """The Prometheus text of several processes (``(process name, text)`` pairs) as one. Gauges
    (connections) are added up; counters keep one series per process (a ``process`` label), since a
    restarted worker starts its counters again from zero and a sum would seem to go backwards.
    Creation times are left out."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for process, text in texts:
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type)
                values[family.name] = {}
            for sample in family.samples:
                labels = dict(sample.labels)
                if family.type == "counter":
                    labels["process"] = process
                key = (sample.name, tuple(sorted(labels.items())))
                values[family.name][key] = values[family.name].get(key, 0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
