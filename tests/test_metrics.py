"""/metrics of a host with several workers: each worker's samples added up into one answer."""

from twisted.trial import unittest

from soketify.metrics import Metrics, add_up


class FakeHub:
    def __init__(self, counts):
        self.apps = [type("App", (), {"id": app_id}) for app_id in counts]
        self._counts = counts

    def connection_count(self, app_id):
        return self._counts[app_id]


class AddUpTests(unittest.TestCase):
    def test_gauges_add_up_and_counters_stay_per_process(self):
        """Connections of two workers add up per app; webhook counters keep one series per process
        (a restarted worker's counters start from zero again); no creation-time samples."""
        first, second = Metrics(), Metrics()
        first.watch_hub(FakeHub({"a": 3, "b": 1}))
        second.watch_hub(FakeHub({"a": 4, "b": 0}))
        first.webhook_delivered("a", 5)
        second.webhook_delivered("a", 2)
        second.webhook_dropped("b", 1)
        text = add_up([("worker-0", first.render().decode()),
                       ("worker-1", second.render().decode()), ("worker-2", "")]).decode()
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        self.assertEqual(sorted(lines), sorted([
            'soketify_connections{app_id="a"} 7.0',
            'soketify_connections{app_id="b"} 1.0',
            'soketify_webhook_events_delivered_total{app_id="a",process="worker-0"} 5.0',
            'soketify_webhook_events_delivered_total{app_id="a",process="worker-1"} 2.0',
            'soketify_webhook_events_dropped_total{app_id="b",process="worker-1"} 1.0',
        ]))
        self.assertIn("# TYPE soketify_connections gauge", text)
        self.assertNotIn("_created", text)
