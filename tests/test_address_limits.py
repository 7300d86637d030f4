"""Connection floods and origins (issue 10): connections and handshakes per client address, and an
app's allowed_origins, on both handshake paths."""

import json
import struct

from twisted.internet.task import Clock
from twisted.trial import unittest

from soketify import protocol
from soketify.address_limits import AddressLimits
from soketify.apps import origin_allowed
from tests.support import APP, Rig, _Connection, make_config
from tests.test_handshake import NODE, changed


class AddressLimitsTests(unittest.TestCase):
    def test_open_connections_per_address(self):
        limits = AddressLimits(Clock(), 2, 0)
        self.assertEqual([limits.admit("10.0.0.7") for _ in range(2)], [None, None])
        self.assertIn("More than 2 connections", limits.admit("10.0.0.7"))
        self.assertIsNone(limits.admit("10.0.0.8"))
        limits.release("10.0.0.7")
        self.assertIsNone(limits.admit("10.0.0.7"))
        self.assertEqual(limits.connections_from("10.0.0.7"), 2)

    def test_handshakes_per_second_per_address(self):
        clock = Clock()
        limits = AddressLimits(clock, 0, 3)
        self.assertEqual([limits.admit("10.0.0.7") is None for _ in range(4)],
                         [True, True, True, False])
        clock.advance(1)
        self.assertIsNone(limits.admit("10.0.0.7"))

    def test_off_by_default(self):
        self.assertFalse(AddressLimits(Clock(), 0, 0).enabled)


class OriginTests(unittest.TestCase):
    def test_patterns(self):
        allowed = ("https://example.com", "https://*.example.org")
        self.assertTrue(origin_allowed(allowed, "https://EXAMPLE.com"))
        self.assertTrue(origin_allowed(allowed, "https://a.b.example.org"))
        self.assertFalse(origin_allowed(allowed, "https://example.org.evil.com"))
        self.assertFalse(origin_allowed(allowed, "http://example.com"))
        self.assertTrue(origin_allowed(allowed, None))  # not a browser
        self.assertTrue(origin_allowed((), "https://anything"))


def open_with(test_case, rig, request: str, through_autobahn: bool):
    """Frames and close code a client gets for this upgrade request."""
    if through_autobahn:
        test_case.patch(rig.service.websocket, "open_upgraded", lambda transport, head: None)
    connection = _Connection(rig)
    connection.transport.protocol = connection.protocol
    connection.feed(request.encode())
    rig.reactor.advance(0)
    raw = connection.transport.value().partition(b"\r\n\r\n")[2]
    frames, closing = [], False
    while len(raw) >= 2:
        opcode, length, offset = raw[0] & 0x0F, raw[1] & 0x7F, 2
        if length == 126:
            length, offset = struct.unpack("!H", raw[2:4])[0], 4
        payload, raw = raw[offset:offset + length], raw[offset + length:]
        if opcode == 1:
            frames.append(json.loads(payload))
        closing = closing or opcode == 8
    return [frame["event"] for frame in frames], frames, closing, connection


class ThroughTheServiceTests(unittest.TestCase):
    def test_connections_per_ip_refused_with_4100_and_freed_on_close(self):
        rig = Rig(self, make_config(server={"max_connections_per_ip": 2}))
        first, second = rig.connect(), rig.connect()
        third = rig.connect(established=False)
        error = third.next_event()
        self.assertEqual((error["event"], error["data"]["code"]), ("pusher:error", 4100))
        third.events()
        self.assertEqual(third.close_code, protocol.OVER_CAPACITY)
        first.close()
        rig.advance(2)
        rig.connect()
        del second

    def test_allowed_origins_on_both_handshake_paths(self):
        """A listed origin connects, another gets 4009 (frame and close), none at all connects:
        the same through the fast path and through Autobahn's handshake."""
        config = make_config(apps=[dict(APP, allowed_origins=["https://*.example.com"])])
        with_origin = changed(NODE, "Host: 127.0.0.1:6001", "Host: 127.0.0.1:6001\r\nOrigin: {}")
        for through_autobahn in (False, True):
            events, _, closing, _ = open_with(self, Rig(self, config),
                                              with_origin.format("https://app.example.com"),
                                              through_autobahn)
            self.assertEqual((events, closing), (["pusher:connection_established"], False))
            events, frames, closing, _ = open_with(self, Rig(self, config),
                                                   with_origin.format("https://evil.com"),
                                                   through_autobahn)
            self.assertEqual((events, closing), (["pusher:error"], True))
            self.assertEqual(frames[0]["data"]["code"], protocol.UNAUTHORIZED)
            self.assertIn("evil.com", frames[0]["data"]["message"])
            events, _, closing, _ = open_with(self, Rig(self, config), NODE, through_autobahn)
            self.assertEqual((events, closing), (["pusher:connection_established"], False))
