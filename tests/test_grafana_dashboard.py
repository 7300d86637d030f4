"""etc/grafana/soketify.json: every query of the shipped dashboard reads metrics a running twistd
soketify really serves at /metrics."""

import json
import os
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.test_systemd import ROOT, Listener, start_daemon

DASHBOARD = os.path.join(ROOT, "etc", "grafana", "soketify.json")

# The series a family of each type is queried by.
SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
          "unknown": ("",)}


def queries(node):
    """Every PromQL expression in the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


class DashboardTests(unittest.TestCase):
    def test_every_query_uses_a_metric_the_server_serves(self):
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
        expressions = list(queries(dashboard))
        used = {name for expr in expressions for name in re.findall(r"\bsoketify_[a-z_]+", expr)}
        self.assertGreater(len(used), 15)

        listener = Listener(self)
        port = start_daemon(self, listener)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        served = {family.name + suffix for family in text_string_to_metric_families(text)
                  for suffix in SERIES.get(family.type, ("",))}
        self.assertEqual(sorted(used - served), [], "queried but not served")
        # And what the server counts is on the dashboard (the Python runtime's own aside).
        own = {name for name in served if name.startswith("soketify_")}
        self.assertEqual(sorted(name for name in own - used if not name.endswith(("_sum", "_count", "_created"))),
                         [], "served but on no panel")
