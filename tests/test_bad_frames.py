"""Bad frames: answered, logged once per address and minute with a count, and a connection past
limits.max_bad_frames_per_minute closed with 4100 (pusher-js backs off)."""

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from soketify import protocol
from soketify.bad_frames import WINDOW, BadFrames
from tests.support import Rig, make_config


class Connection:
    bad_frames_window = 0.0
    bad_frames_in_window = 0

    def __init__(self, address="10.0.0.7", socket_id="1.1"):
        self.remote_address = address
        self.socket_id = socket_id
        self.closed_with = None

    def close(self, code, reason):
        self.closed_with = code


class LogLines:
    def __init__(self, test_case):
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        test_case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if event.get("log_namespace") == "soketify.bad_frames":
            self.lines.append(formatEvent(event))


class BadFramesTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.log = LogLines(self)

    def test_one_line_per_address_and_minute_then_the_count(self):
        """Thousands of bad frames from one address in a minute are two log lines: the first frame,
        then once the minute is over, how many more there were."""
        bad = BadFrames(self.clock, 0)
        connection = Connection()
        for _ in range(4313):
            bad.seen(connection, "Invalid JSON")
        self.assertEqual(len(self.log.lines), 1)
        self.assertIn("Bad frame from 10.0.0.7 (1.1): Invalid JSON", self.log.lines[0])
        self.clock.advance(WINDOW)
        self.assertEqual(self.log.lines[1:],
                         ["... 4,312 more bad frames from 10.0.0.7 in the last 60 s"])
        bad.seen(connection, "Invalid JSON")
        self.assertEqual(len(self.log.lines), 3)

    def test_each_address_has_its_own_line(self):
        bad = BadFrames(self.clock, 0)
        bad.seen(Connection("10.0.0.7"), "x")
        bad.seen(Connection("10.0.0.8", "1.2"), "x")
        bad.seen(Connection("10.0.0.7", "1.3"), "x")
        self.assertEqual(len(self.log.lines), 2)

    def closed_after(self, limit: int, frames: int, every: float):
        """The close code a connection gets for ``frames`` bad frames ``every`` seconds apart."""
        bad = BadFrames(self.clock, limit)
        connection = Connection()
        for _ in range(frames):
            bad.seen(connection, "x")
            self.clock.advance(every)
        return connection.closed_with

    def test_a_connection_past_the_limit_is_closed_with_4100(self):
        """61 bad frames within a minute close the connection with 4100; 60 do not."""
        self.assertIsNone(self.closed_after(60, 60, 0.5))
        self.assertEqual(self.closed_after(60, 61, 0.5), protocol.OVER_CAPACITY)

    def test_a_steady_trickle_under_the_limit_is_never_closed(self):
        self.assertIsNone(self.closed_after(60, 600, 1.01))

    def test_zero_never_closes(self):
        self.assertIsNone(self.closed_after(0, 1000, 0))

class ThroughTheServiceTests(unittest.TestCase):
    def test_every_kind_of_bad_frame_counts_and_the_last_closes_4100(self):
        """Invalid JSON, an unknown event and a binary frame each get pusher:error and count; past
        the limit the connection is closed with 4100."""
        log = LogLines(self)
        rig = Rig(self, make_config(limits={"max_bad_frames_per_minute": 3}))
        client = rig.connect()
        client.send_raw(b"not json")
        client.send("pusher:nonsense")
        client.send_raw(b"\x00\x01", binary=True)
        self.assertEqual([e["event"] for e in client.events()], ["pusher:error"] * 3)
        self.assertIsNone(client.close_code)
        client.send_raw(b"{")
        client.events()
        self.assertEqual(client.close_code, protocol.OVER_CAPACITY)
        self.assertEqual(len(log.lines), 1)
        self.assertIn("Bad frame from 127.0.0.1", log.lines[0])
