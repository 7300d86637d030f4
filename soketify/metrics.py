"""Prometheus metrics of one server, served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

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
    def __init__(self):
        self.registry = CollectorRegistry()
        self.webhook_events_delivered = Counter(
            "soketify_webhook_events_delivered", "Webhook events acknowledged with a 2xx",
            ["app_id"], registry=self.registry)
        self.webhook_events_dropped = Counter(
            "soketify_webhook_events_dropped",
            "Webhook events given up after retrying for webhooks.retry_for seconds",
            ["app_id"], registry=self.registry)

    def watch_hub(self, hub) -> None:
        self.registry.register(_ConnectionsCollector(hub))

    def webhook_delivered(self, app_id: str, count: int) -> None:
        self.webhook_events_delivered.labels(app_id).inc(count)

    def webhook_dropped(self, app_id: str, count: int) -> None:
        self.webhook_events_dropped.labels(app_id).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
