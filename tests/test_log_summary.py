"""Floods of one warning are summarised: one line per source and minute, then the count."""

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from soketify.config import WebhookSettings, parse
from soketify.log_summary import WINDOW, Summarised
from soketify.webhooks import Target
from tests.test_webhooks import Receiver, synchronous_outbox


class Lines:
    def __init__(self, test_case, namespace):
        self.lines = []
        self._namespace = namespace
        globalLogPublisher.addObserver(self._observe)
        test_case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_namespace") == self._namespace:
            self.lines.append((event["log_level"], formatEvent(event)))


class SummarisedTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.log = Lines(self, "test.summary")
        self.logger = Logger(namespace="test.summary")

    def summarised(self, **kwargs):
        return Summarised(self.clock, self.logger, LogLevel.warn, "Trouble at {place}",
                          "troubles at {source}", **kwargs)

    def test_the_first_line_then_the_count_at_the_end_of_the_minute(self):
        lines = self.summarised()
        for _ in range(4313):
            lines.log("a", place="a")
        self.clock.advance(WINDOW - 1)
        self.assertEqual(self.log.lines, [(LogLevel.warn, "Trouble at a")])
        self.clock.advance(1)
        self.assertEqual(self.log.lines[1], (LogLevel.warn, "... 4,312 more troubles at a in the last 60 s"))
        lines.log("a", place="a")  # a new minute: written in full again
        self.assertEqual(self.log.lines[2], (LogLevel.warn, "Trouble at a"))

    def test_a_lone_line_has_no_summary_and_sources_are_apart(self):
        lines = self.summarised()
        lines.log("a", place="a")
        lines.log("b", place="b")
        self.clock.advance(WINDOW * 2)
        self.assertEqual([text for _, text in self.log.lines], ["Trouble at a", "Trouble at b"])

    def test_sources_past_the_bound_share_one_count(self):
        lines = self.summarised(max_sources=2)
        for source in "abcde":
            lines.log(source, place=source)
        self.clock.advance(WINDOW)
        self.assertEqual([text for _, text in self.log.lines],
                         ["Trouble at a", "Trouble at b",
                          "... 3 more troubles at other sources in the last 60 s"])


class FailingWebhookTargetTests(unittest.TestCase):
    def test_a_failing_target_is_two_lines_a_minute(self):
        """A target that keeps failing (retries every second here) is written once, then counted,
        named without the credentials or query its URL may hold."""
        clock = Clock()
        log = Lines(self, "soketify.webhooks")
        receiver = Receiver()
        receiver.statuses = [500] * 1000
        app = parse({"apps": [{"id": "a", "key": "k", "secret": "s",
                               "webhooks": [{"url": "http://user:pw@hooks.test/x?token=t"}]}]}).apps[0]
        target = Target(app, app.webhooks[0], WebhookSettings(retry_for=3600), clock,
                        synchronous_outbox(), receiver.post, jitter=lambda: 0.0)
        target.restore([(1, '{"name":"channel_occupied","channel":"c"}')])
        for _ in range(120):
            clock.advance(1)
        texts = [text for _, text in log.lines]
        self.assertGreater(len(receiver.requests), 10)
        self.assertTrue(texts[0].startswith("Webhook to http://hooks.test/x failed (HTTP 500)"), texts)
        self.assertRegex(texts[1], r"^\.\.\. \d+ more failed attempts to http://hooks.test/x in the last 60 s$")
        self.assertLessEqual(len(texts), 4)
