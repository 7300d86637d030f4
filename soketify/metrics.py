"""Prometheus metrics of one server, served at /metrics."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric, UnknownMetricFamily)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# Per-app traffic as Soketi names it (so its Grafana dashboards work with only the prefix changed):
# name after the prefix, kind, help, and the AppTraffic field it reads. Soketi's byte counters have
# no _total suffix, which prometheus_client would add to a counter: they are written untyped.
TRAFFIC = (
    ("new_connections_total", "counter", "WebSocket connections opened", "new_connections"),
    ("new_disconnections_total", "counter", "WebSocket connections closed", "disconnections"),
    ("socket_received_bytes", "untyped", "Bytes of WebSocket messages received", "ws_received_bytes"),
    ("socket_transmitted_bytes", "untyped", "Bytes of WebSocket frames sent", "ws_sent_bytes"),
    ("ws_messages_received_total", "counter", "WebSocket messages received", "ws_received_messages"),
    ("ws_messages_sent_total", "counter", "WebSocket messages sent", "ws_sent_messages"),
    ("http_received_bytes", "untyped", "Bytes of REST requests received", "http_received_bytes"),
    ("http_transmitted_bytes", "untyped", "Bytes of REST answers sent", "http_sent_bytes"),
    ("http_calls_received_total", "counter", "REST calls received", "http_calls"),
)


class _HubCollector:
    """Open connections and traffic per app, read from the hub when scraped (no work per
    connection or per message)."""

    def __init__(self, hub, prefix: str):
        self._hub = hub
        self._prefix = prefix

    def collect(self):
        hub, prefix = self._hub, self._prefix
        gauge = GaugeMetricFamily(prefix + "connected", "Open WebSocket connections",
                                  labels=["app_id"])
        for app in hub.apps:
            gauge.add_metric([app.id], hub.connection_count(app.id))
        yield gauge
        subscriptions = GaugeMetricFamily(prefix + "subscriptions",
                                          "Channel subscriptions on this node, by channel type",
                                          labels=["app_id", "channel_type"])
        for app in hub.apps:
            for kind, count in sorted(hub.subscriptions_by_type(app.id).items()):
                subscriptions.add_metric([app.id, kind], count)
        yield subscriptions
        for name, kind, documentation, field in TRAFFIC:
            family_type = CounterMetricFamily if kind == "counter" else UnknownMetricFamily
            family = family_type(prefix + name, documentation, labels=["app_id"])
            for app in hub.apps:
                traffic = hub.traffic.get(app.id)
                family.add_metric([app.id], getattr(traffic, field) if traffic else 0)
            yield family


class Timings:
    """A histogram for the hot path: observed by the reactor thread alone, so counted without the
    locks of prometheus_client's Histogram (about 0.8 us an observation, five times this), and
    rendered when scraped."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...],
                 labels: dict[str, str] | None = None):
        """``labels``: fixed label values of its one series."""
        self._name = name
        self._documentation = documentation
        self._labels = labels or {}
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1  # le: bound >= seconds
        self._sum += seconds

    def collect(self):
        family = HistogramMetricFamily(self._name, self._documentation, labels=list(self._labels))
        buckets, total = [], 0
        for bound, count in zip(self._bounds + (float("inf"),), self._counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        family.add_metric(list(self._labels.values()), buckets, self._sum)
        yield family


class Metrics:
    def __init__(self, host_metrics=None, prefix: str = "soketify_"):
        """``host_metrics()``: Deferred of the whole host's text, when this process is one of
        several workers; /metrics then answers for the host. Every name starts with ``prefix``."""
        self.host_metrics = host_metrics
        self.prefix = prefix
        self.registry = CollectorRegistry()
        self.webhook_events_queued = Counter(
            prefix + "webhook_events_queued",
            "Webhook events written to the outbox for one target (or resumed from it at start)",
            ["app_id"], registry=self.registry)
        self.webhook_events_failed = Counter(
            prefix + "webhook_events_failed",
            "Webhook events in a failed attempt (not 2xx, or no answer); each retry counts again",
            ["app_id"], registry=self.registry)
        self.webhook_events_delivered = Counter(
            prefix + "webhook_events_delivered", "Webhook events acknowledged with a 2xx",
            ["app_id"], registry=self.registry)
        self.webhook_events_dropped = Counter(
            prefix + "webhook_events_dropped",
            "Webhook events given up after retrying for webhooks.retry_for seconds",
            ["app_id"], registry=self.registry)
        self.webhook_delivery_seconds = Histogram(
            prefix + "webhook_delivery_seconds",
            "From a webhook event's queueing to its target's 2xx", ["app_id"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=self.registry)
        # Observed once per event delivered here, not per subscriber.
        self.publish_to_write = Timings(
            prefix + "publish_to_write_seconds",
            "From an event reaching this node's hub (a REST trigger or client event accepted here, "
            "or one relayed by the cluster engine) to its frame written to every subscriber here",
            (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.registry.register(self.publish_to_write)
        self.refusals = Counter(
            prefix + "limit_refusals",
            "Requests and frames refused over an app limit, by the limit (the [[apps]] key)",
            ["app_id", "limit"], registry=self.registry)

    def refused(self, app_id: str, limit: str) -> None:
        self.refusals.labels(app_id, limit).inc()

    def watch_hub(self, hub) -> None:
        self.registry.register(_HubCollector(hub, self.prefix))

    def webhook_queued(self, app_id: str, count: int) -> None:
        self.webhook_events_queued.labels(app_id).inc(count)

    def webhook_failed(self, app_id: str, count: int) -> None:
        self.webhook_events_failed.labels(app_id).inc(count)

    def webhook_delivered(self, app_id: str, waited: list[float]) -> None:
        self.webhook_events_delivered.labels(app_id).inc(len(waited))
        histogram = self.webhook_delivery_seconds.labels(app_id)
        for seconds in waited:
            histogram.observe(seconds)

    def round_trips(self, engine: str):
        """``observe(seconds)`` for the answered calls of this process's one engine: every publish
        and subscription makes one, so it is a lock-free Timings."""
        timings = Timings(
            self.prefix + "cluster_round_trip_seconds",
            "Calls to the cluster engine answered: Redis scripts and queries, or the supervisor's "
            "state over AMP",
            (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
             2.5), {"engine": engine})
        self.registry.register(timings)
        return timings.observe

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
    (connections) are added up; counters and histograms keep one series per process (a ``process``
    label), since a restarted worker starts them again from zero and a sum would seem to go
    backwards.
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
                if family.type in ("counter", "histogram"):
                    labels["process"] = process
                key = (sample.name, tuple(sorted(labels.items())))
                values[family.name][key] = values[family.name].get(key, 0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry()
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
