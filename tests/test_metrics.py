"""/metrics of a host with several workers: each worker's samples added up into one answer."""

from twisted.trial import unittest

from soketify.metrics import Metrics, add_up


class FakeHub:
    def __init__(self, counts):
        self.apps = [type("App", (), {"id": app_id}) for app_id in counts]
        self._counts = counts

    traffic: dict = {}

    def connection_count(self, app_id):
        return self._counts[app_id]

    def subscriptions_by_type(self, app_id):
        return {"public": self._counts[app_id]}


class AddUpTests(unittest.TestCase):
    def test_gauges_add_up_and_counters_stay_per_process(self):
        """Connections of two workers add up per app; webhook counters keep one series per process
        (a restarted worker's counters start from zero again); no creation-time samples."""
        first, second = Metrics(), Metrics()
        first.watch_hub(FakeHub({"a": 3, "b": 1}))
        second.watch_hub(FakeHub({"a": 4, "b": 0}))
        first.webhook_delivered("a", [0.1] * 5)
        second.webhook_delivered("a", [0.1] * 2)
        second.webhook_dropped("b", 1)
        text = add_up([("worker-0", first.render().decode()),
                       ("worker-1", second.render().decode()), ("worker-2", "")]).decode()
        lines = [line for line in text.splitlines() if not line.startswith("#")
                 and line.startswith(("soketify_connected", "soketify_webhook_events"))]
        self.assertEqual(sorted(lines), sorted([
            'soketify_connected{app_id="a"} 7.0',
            'soketify_connected{app_id="b"} 1.0',
            'soketify_webhook_events_delivered_total{app_id="a",process="worker-0"} 5.0',
            'soketify_webhook_events_delivered_total{app_id="a",process="worker-1"} 2.0',
            'soketify_webhook_events_dropped_total{app_id="b",process="worker-1"} 1.0',
        ]))
        self.assertIn("# TYPE soketify_connected gauge", text)
        self.assertNotIn("_created", text)


class TrafficTests(unittest.TestCase):
    def test_soketi_names_after_the_prefix(self):
        """Every name a Soketi dashboard reads is there after the prefix, with app_id."""
        from tests.support import Rig, make_config
        rig = Rig(self, make_config(metrics={"prefix": "soketi_"}))
        client = rig.connect()
        client.subscribe("news")
        self.assertEqual(rig.signed("POST", "/apps/app-id/events",
                                    {"name": "e", "channels": ["news"], "data": "x"}).status, 200)
        client.events()
        client.close()
        rig.advance(2)
        text = rig.http("GET", "/metrics").body.decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("soketi_") and '{app_id="app-id"}' in line:
                name, _, value = line.partition('{app_id="app-id"} ')
                values[name] = float(value)
        expected = ["connected", "new_connections_total", "new_disconnections_total",
                    "socket_received_bytes", "socket_transmitted_bytes",
                    "ws_messages_received_total", "ws_messages_sent_total", "http_received_bytes",
                    "http_transmitted_bytes", "http_calls_received_total"]
        self.assertEqual(sorted(set(f"soketi_{name}" for name in expected) - set(values)), [])
        self.assertEqual(values["soketi_new_connections_total"], 1)
        self.assertEqual(values["soketi_new_disconnections_total"], 1)
        self.assertEqual(values["soketi_connected"], 0)
        # In: the subscribe (and the close). Out: subscription_succeeded and the event (the handshake
        # answer with connection_established is not counted as a message).
        self.assertGreaterEqual(values["soketi_ws_messages_received_total"], 1)
        self.assertEqual(values["soketi_ws_messages_sent_total"], 2)
        self.assertGreater(values["soketi_socket_transmitted_bytes"], 0)
        # The trigger; /metrics is no app's call.
        self.assertEqual(values["soketi_http_calls_received_total"], 1)
        self.assertGreater(values["soketi_http_transmitted_bytes"], 0)


def samples(text: str) -> dict:
    """{(name, labels): value} of a Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class OwnMetricsTests(unittest.TestCase):
    """What only Soketify counts: subscriptions by channel type, publish-to-write time, webhook
    events from queueing to delivery, cluster round trips."""

    def test_subscriptions_by_type_and_publish_to_write(self):
        from tests.support import Rig, make_config
        rig = Rig(self, make_config())
        clients = [rig.connect() for _ in range(3)]
        for client in clients:
            client.subscribe("news")
        clients[0].subscribe("cache-prices")
        for _ in range(4):
            self.assertEqual(rig.signed("POST", "/apps/app-id/events",
                                        {"name": "e", "channels": ["news"], "data": "x"}).status, 200)
        found = samples(rig.http("GET", "/metrics").body.decode())
        app = ("app_id", "app-id")
        self.assertEqual(found[("soketify_subscriptions", (app, ("channel_type", "public")))], 3)
        self.assertEqual(found[("soketify_subscriptions", (app, ("channel_type", "cache")))], 1)
        self.assertEqual(found[("soketify_publish_to_write_seconds_count", ())], 4)
        self.assertGreater(found[("soketify_publish_to_write_seconds_sum", ())], 0)
        self.assertEqual(found[("soketify_publish_to_write_seconds_bucket", (("le", "+Inf"),))], 4)
        # The engine's round trips, labelled with it (the local engine answers without one).
        self.assertEqual(found[("soketify_cluster_round_trip_seconds_count",
                                (("engine", "local"),))], 0)

    def test_webhook_events_queued_failed_delivered_and_their_wait(self):
        from tests.test_webhooks import make_rig, settle
        rig, receiver = make_rig(self)
        receiver.statuses = [500]
        client = rig.connect()
        client.subscribe("news")
        settle(rig)  # the first attempt fails
        rig.advance(2, step=0.1)  # the retry (after at most 1 s) is answered 2xx
        self.assertEqual(len(receiver.requests), 2)
        found = samples(rig.http("GET", "/metrics").body.decode())
        app = (("app_id", "app-id"),)
        self.assertEqual(found[("soketify_webhook_events_queued_total", app)], 1)
        self.assertEqual(found[("soketify_webhook_events_failed_total", app)], 1)
        self.assertEqual(found[("soketify_webhook_events_delivered_total", app)], 1)
        self.assertEqual(found[("soketify_webhook_delivery_seconds_count", app)], 1)
        waited = found[("soketify_webhook_delivery_seconds_sum", app)]
        self.assertTrue(0.5 <= waited <= 1.2, waited)
        self.assertEqual(found[("soketify_webhook_delivery_seconds_bucket", app + (("le", "0.25"),))], 0)
