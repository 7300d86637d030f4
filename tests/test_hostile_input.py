"""Hostile and careless input, as a class (issue 10): whatever a client sends, the answer is a
documented error (pusher:error, an HTTP 4xx with a JSON body, a ConfigError), never an exception,
a traceback in the log or a 5xx.

Property-based (Hypothesis) with a fixed derandomized seed and bounded example counts, so the suite
stays deterministic and quick; the cases seen in the wild are spelled out as well.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from soketify import config, protocol, signing
from tests.support import HttpResponse, Rig, _Connection

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# As deep as fits in one WebSocket message (64 KB by default); the decoder gives up near 1,000.
NESTED_ARRAYS = "[" * 30000 + "]" * 30000
NESTED_OBJECTS = '{"a":' * 10000 + "1" + "}" * 10000
LONE_SURROGATE = "\ud800"

# Strings clients send, and strings that make trouble.
STRINGS = st.one_of(
    st.text(max_size=12),
    st.sampled_from([
        "pusher:subscribe", "pusher:unsubscribe", "pusher:ping", "pusher:signin", "client-x",
        "news", "private-a", "presence-a", "private-encrypted-a", "cache-a", "#server-to-user-1",
        "1.2", "", LONE_SURROGATE, "a\udfffb", "\ud83d\ude00", "x" * 300, "e" * 201,
    ]))
KEYS = st.one_of(st.sampled_from([
    "event", "data", "channel", "channels", "name", "socket_id", "info", "batch", "auth",
    "channel_data", "user_data", "user_id", "user_info", "id", "watchlist"]), st.text(max_size=4))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), STRINGS)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(KEYS, children, max_size=5)),
    max_leaves=20)
EVENT_NAMES = st.one_of(st.sampled_from([
    "pusher:subscribe", "pusher:unsubscribe", "pusher:ping", "pusher:signin", "client-x",
    "pusher:unknown"]), STRINGS)


@st.composite
def client_frames(draw) -> str:
    """A frame as a client may send it: mostly the right shape, with any values inside; sometimes
    data as a JSON string (as some clients send it), sometimes not JSON at all."""
    frame = {"event": draw(EVENT_NAMES)}
    if draw(st.booleans()):
        data = draw(JSON_VALUES)
        frame["data"] = json.dumps(data) if draw(st.booleans()) else data
    if draw(st.booleans()):
        frame["channel"] = draw(st.one_of(STRINGS, JSON_VALUES))
    text = json.dumps(frame)  # ensure_ascii: a lone surrogate goes out as a \ud800 escape
    return draw(st.sampled_from([text, text[:-1], text + "x"])) if draw(st.booleans()) else text


class Tracebacks:
    """Every failure logged while it watches."""

    def __init__(self, test_case):
        self.failures: list = []
        globalLogPublisher.addObserver(self._observe)
        test_case.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event):
        if "log_failure" in event:
            self.failures.append(event)


def assert_encodable(test_case, value) -> None:
    """Every string the decoder hands on can be sent back as UTF-8."""
    json.dumps(value, ensure_ascii=False).encode("utf-8")


class DecodeTests(unittest.TestCase):
    @FUZZ
    @given(st.one_of(client_frames(), st.text(max_size=50)))
    def test_decode_never_raises_and_keeps_nothing_unsendable(self, text):
        """protocol.decode answers any text with a message or a ProtocolError; what it keeps can be
        encoded back to UTF-8."""
        decoded = protocol.decode(text)
        self.assertIsInstance(decoded, (protocol.ClientMessage, protocol.ProtocolError))
        if isinstance(decoded, protocol.ClientMessage):
            assert_encodable(self, [decoded.event, decoded.channel, decoded.data])

    def test_nested_and_surrogate_frames_are_protocol_errors(self):
        """30,000 levels of nesting and a lone surrogate are refused as invalid JSON, with why."""
        for text, why in ((NESTED_ARRAYS, "nested too deeply"), (NESTED_OBJECTS, "nested too deeply"),
                          (json.dumps({"event": "client-x", "data": LONE_SURROGATE}), "surrogate"),
                          (json.dumps({"event": LONE_SURROGATE}), "surrogate")):
            decoded = protocol.decode(text)
            self.assertIsInstance(decoded, protocol.ProtocolError)
            self.assertIn(why, decoded.message)

    def test_depth_limit_and_numbers_that_are_not_json(self):
        """100 levels are fine, 101 are refused (well before the recursion limit, so that encoding
        a relayed value again cannot fail); NaN, Infinity and overflowing numbers are refused."""
        self.assertEqual(protocol.loads("[" * 100 + "]" * 100), eval("[" * 99 + "[]" + "]" * 99))
        for text in ("[" * 101 + "]" * 101, '{"a":' * 101 + "1" + "}" * 101):
            with self.assertRaisesRegex(ValueError, "nested too deeply"):
                protocol.loads(text)
        for text in ('{"a":NaN}', "[Infinity]", "-Infinity", "1e999"):
            self.assertRaises(ValueError, protocol.loads, text)

    def test_loads_refuses_invalid_utf8_and_keeps_surrogate_pairs(self):
        """Bytes must be UTF-8; an escaped surrogate pair is one character and is fine."""
        self.assertRaises(ValueError, protocol.loads, b'{"a":"\xff"}')
        self.assertRaises(ValueError, protocol.loads, b'{"a":"\xed\xa0\x80"}')  # encoded surrogate
        self.assertEqual(protocol.loads('"\\ud83d\\ude00"'), "\U0001F600")


class WebSocketTests(unittest.TestCase):
    """Frames through the whole service: each is answered, the connection stays open, and nothing
    is logged as a failure."""

    def setUp(self):
        self.tracebacks = Tracebacks(self)
        self.rig = Rig(self)

    def send_and_check(self, client, text: str):
        client.send_raw(text.encode("utf-8", "surrogatepass"))
        self.rig.reactor.advance(0)
        client.events()
        self.assertIsNone(client.close_code, text[:200])
        self.assertEqual(self.tracebacks.failures, [], text[:200])

    @FUZZ
    @given(st.lists(client_frames(), min_size=1, max_size=4))
    def test_any_frames_get_answers_not_tracebacks(self, frames):
        """Any sequence of frames: no traceback, no 4200, the connection still answers a ping."""
        client = self.rig.connect()
        for text in frames:
            if '"event": "pusher:signin"' in text:
                continue  # a refused sign-in closes the connection (4009), as documented
            self.send_and_check(client, text)
        client.send("pusher:ping")
        self.assertIn("pusher:pong", [e["event"] for e in client.events()])

    def test_frames_seen_in_fuzzing(self):
        """Nested JSON and lone surrogates in a channel name or event data: pusher:error or a
        subscription error, and the connection stays open."""
        client = self.rig.connect()
        for text in (NESTED_ARRAYS, NESTED_OBJECTS,
                     json.dumps({"event": "pusher:subscribe", "data": {"channel": LONE_SURROGATE}}),
                     json.dumps({"event": "pusher:subscribe", "data": {"channel": "a" + LONE_SURROGATE}}),
                     json.dumps({"event": "client-x", "channel": "private-a", "data": LONE_SURROGATE}),
                     json.dumps({"event": "pusher:subscribe",
                                 "data": json.dumps({"channel": LONE_SURROGATE})})):
            client.send_raw(text.encode())
            self.rig.reactor.advance(0)
            events = client.events()
            self.assertIsNone(client.close_code)
            self.assertEqual([e["event"] for e in events], ["pusher:error"], text[:80])
        self.assertEqual(self.tracebacks.failures, [])


class RelayTests(unittest.TestCase):
    def test_deep_and_odd_client_events_are_relayed_or_refused_without_a_traceback(self):
        """A client event 100 levels deep is relayed as it came; NaN in one is a pusher:error;
        neither leaves a traceback or closes anyone."""
        tracebacks = Tracebacks(self)
        rig = Rig(self)
        sender, receiver = rig.connect(), rig.connect()
        for client in (sender, receiver):
            client.subscribe("private-r", auth=signing.channel_auth(
                "app-key", "app-secret", client.socket_id, "private-r"))
        deep = "[" * 99 + "1" + "]" * 99
        sender.send_raw(('{"event":"client-x","channel":"private-r","data":%s}' % deep).encode())
        sender.send_raw(b'{"event":"client-x","channel":"private-r","data":{"x":NaN}}')
        rig.reactor.advance(0)
        self.assertEqual([e["event"] for e in sender.events()], ["pusher:error"])
        relayed = receiver.events()
        self.assertEqual([e["event"] for e in relayed], ["client-x"])
        self.assertEqual(json.dumps(relayed[0]["data"], separators=(",", ":")), deep)
        self.assertEqual((sender.close_code, receiver.close_code), (None, None))
        self.assertEqual(tracebacks.failures, [])


class RestTests(unittest.TestCase):
    """Signed REST requests with any body: a 2xx or a 4xx with a JSON error, never a 5xx."""

    def setUp(self):
        self.tracebacks = Tracebacks(self)
        self.rig = Rig(self)

    def check(self, response, what):
        self.assertLess(response.status, 500, what)
        body = response.json()
        if response.status >= 400:
            self.assertIsInstance(body.get("error"), str, what)
        self.assertEqual(self.tracebacks.failures, [], what)

    @FUZZ
    @given(st.one_of(
        st.fixed_dictionaries({}, optional={"name": STRINGS, "data": st.one_of(STRINGS, JSON_VALUES),
                                            "channels": JSON_VALUES, "channel": JSON_VALUES,
                                            "socket_id": JSON_VALUES, "info": JSON_VALUES}),
        JSON_VALUES))
    def test_events_with_any_body(self, body):
        self.check(self.rig.signed("POST", "/apps/app-id/events", json.dumps(body).encode()), body)

    @FUZZ
    @given(st.one_of(st.fixed_dictionaries({"batch": st.lists(st.one_of(
        st.fixed_dictionaries({}, optional={"name": STRINGS, "data": JSON_VALUES,
                                            "channel": JSON_VALUES, "socket_id": JSON_VALUES,
                                            "info": JSON_VALUES}),
        JSON_VALUES), max_size=4)}), JSON_VALUES))
    def test_batch_events_with_any_body(self, body):
        self.check(self.rig.signed("POST", "/apps/app-id/batch_events", json.dumps(body).encode()),
                   body)

    @FUZZ
    @given(st.binary(max_size=40), st.sampled_from(["/apps/app-id/events", "/apps/app-id/channels",
                                                    "/apps/app-id/channels/news",
                                                    "/apps/app-id/channels/presence-a/users"]),
           st.dictionaries(st.sampled_from(["info", "filter_by_prefix", "x", "auth_key"]),
                           st.text(max_size=8), max_size=3))
    def test_any_bytes_and_query(self, raw, path, extra):
        """Raw bytes as a body (invalid UTF-8 included), any extra query fields, GET or POST."""
        method = "POST" if path.endswith("/events") else "GET"
        if method == "POST":
            response = self.rig.signed(method, path, raw, params=extra)
        else:
            response = self.rig.signed(method, path, params=extra)
        self.check(response, (raw, path, extra))

    def test_bodies_seen_in_fuzzing(self):
        """Nested JSON, lone surrogates in data or a channel, invalid UTF-8, null batch items and
        wrong types: each a 400 naming the problem."""
        cases = [
            ("/apps/app-id/events", NESTED_ARRAYS.encode(), "nested too deeply"),
            ("/apps/app-id/events", NESTED_OBJECTS.encode(), "nested too deeply"),
            ("/apps/app-id/events", json.dumps({"name": "e", "channels": ["a"],
                                                "data": LONE_SURROGATE}).encode(), "surrogate"),
            ("/apps/app-id/events", json.dumps({"name": "e", "channel": LONE_SURROGATE,
                                                "data": "x"}).encode(), "surrogate"),
            ("/apps/app-id/events", b'{"name":"e","channels":["a"],"data":"\xff"}', "JSON"),
            ("/apps/app-id/events", json.dumps({"name": 5, "channels": ["a"], "data": "x"}).encode(),
             "name"),
            ("/apps/app-id/events", json.dumps({"name": "e", "channels": [5], "data": "x"}).encode(),
             "channel"),
            ("/apps/app-id/events", json.dumps({"name": "e", "channels": ["a"], "data": [1]}).encode(),
             "data"),
            ("/apps/app-id/batch_events", json.dumps({"batch": [None]}).encode(), "object"),
            ("/apps/app-id/batch_events", json.dumps({"batch": "x"}).encode(), "batch"),
        ]
        for path, body, why in cases:
            response = self.rig.signed("POST", path, body)
            self.assertEqual(response.status, 400, (path, body[:60]))
            self.assertIn(why, response.json()["error"], (path, body[:60]))
        self.assertEqual(self.tracebacks.failures, [])

    def test_odd_headers_and_timestamps(self):
        """A Host that is not UTF-8, and an auth_timestamp of 400 digits: 4xx, not 5xx."""
        connection = _Connection(self.rig)
        connection.transport.protocol = connection.protocol
        connection.feed(b"GET /apps/app-id/channels HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n")
        self.rig.reactor.advance(0)
        self.check(HttpResponse(connection.transport.value()), "Host")
        for target in ("/apps/app-id/channels?auth_key=app-key&auth_version=1.0&auth_timestamp=1"
                       + "0" * 400,):
            self.check(self.rig.http("GET", target), target)

    def test_invalid_utf8_in_the_query_and_path(self):
        """Percent-escapes that are not UTF-8, in the query or in the path: 4xx, not 5xx."""
        for target in ("/apps/app-id/channels?auth_key=%FF", "/apps/app-id/channels/%FF?auth_key=k",
                       "/apps/%FF/channels?auth_key=app-key", "/apps/app-id/events?%FF=1"):
            method = "POST" if "/events" in target else "GET"
            response = self.rig.http(method, target, b"{}" if method == "POST" else b"")
            self.check(response, target)


def config_documents():
    tables = st.dictionaries(st.sampled_from([
        "listen", "activity_timeout", "workers", "max_message_size", "engine", "url", "prefix",
        "enabled", "max_request_body_bytes", "state_dir", "level", "x"]), JSON_VALUES, max_size=4)
    apps = st.lists(st.one_of(st.fixed_dictionaries(
        {"id": STRINGS, "key": STRINGS, "secret": STRINGS},
        optional={"webhooks": JSON_VALUES, "max_connections": JSON_VALUES,
                  "enabled": JSON_VALUES, "x": JSON_VALUES}), JSON_VALUES), max_size=2)
    return st.fixed_dictionaries({}, optional={
        "server": tables, "limits": tables, "webhooks": tables, "cluster": tables,
        "metrics": tables, "log": tables, "apps": st.one_of(apps, JSON_VALUES), "x": JSON_VALUES})


class ConfigTests(unittest.TestCase):
    @FUZZ
    @given(config_documents())
    def test_any_document_is_a_config_or_a_config_error(self, document):
        """The config reader answers any parsed document with a Config or a ConfigError listing the
        problems, never another exception."""
        try:
            config.parse(document, "<fuzz>")
        except config.ConfigError as error:
            self.assertTrue(str(error))
