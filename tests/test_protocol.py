"""Wire format: decoding client frames, encoding server frames, channel rules."""

import json

from twisted.trial import unittest

from soketify import protocol


class DecodeTests(unittest.TestCase):
    def test_object_and_string_data_both_decode(self):
        """pusher:subscribe data may be an object (pusher-js) or a JSON string (other clients)."""
        for data in ({"channel": "a"}, json.dumps({"channel": "a"})):
            message = protocol.decode(json.dumps({"event": "pusher:subscribe", "data": data}))
            self.assertEqual(message, protocol.ClientMessage("pusher:subscribe", {"channel": "a"}, None))

    def test_client_event_data_is_kept_as_given(self):
        """Data of client events is not re-parsed: a string stays a string."""
        message = protocol.decode('{"event":"client-x","channel":"private-a","data":"{\\"a\\":1}"}')
        self.assertEqual(message.data, '{"a":1}')
        self.assertEqual(message.channel, "private-a")

    def test_malformed_frames_are_protocol_errors(self):
        """Invalid JSON, non-objects, a missing event or a non-string channel are errors."""
        for text in ("{", "[]", "1", '{"data":{}}', '{"event":5}', '{"event":"x","channel":5}'):
            self.assertIsInstance(protocol.decode(text), protocol.ProtocolError, text)

    def test_string_data_that_is_not_json_stays_a_string(self):
        """pysher pings with data "": that is a ping, not an error."""
        self.assertEqual(protocol.decode('{"event":"pusher:ping","data":""}'),
                         protocol.ClientMessage("pusher:ping", "", None))
        self.assertEqual(protocol.decode('{"event":"pusher:subscribe","data":"{bad"}').data, "{bad")


class EncodeTests(unittest.TestCase):
    def test_system_event_data_is_a_json_string(self):
        """connection_established carries its data double-encoded."""
        frame = json.loads(protocol.connection_established("1.2", 120))
        self.assertEqual(frame["event"], "pusher:connection_established")
        self.assertEqual(json.loads(frame["data"]), {"socket_id": "1.2", "activity_timeout": 120})

    def test_connection_established_is_the_same_text_for_any_socket_id(self):
        """The template gives the text the general encoder gives, and any other id is escaped."""
        for socket_id in ("1.2", "4021.1234567", 'not"a.number'):
            self.assertEqual(
                protocol.connection_established(socket_id, 30),
                protocol.encode(protocol.CONNECTION_ESTABLISHED,
                                {"socket_id": socket_id, "activity_timeout": 30}))

    def test_event_data_passes_through_untouched(self):
        """A triggered event's data string is sent exactly as given."""
        frame = json.loads(protocol.event("e", "c", '{"x": [1, 2]}'))
        self.assertEqual(frame, {"event": "e", "channel": "c", "data": '{"x": [1, 2]}'})

    def test_subscription_error_shape(self):
        """subscription_error carries type, error and status as pusher-js reads them."""
        frame = json.loads(protocol.subscription_error("private-a", "AuthError", "bad", 401))
        self.assertEqual(frame, {"event": "pusher:subscription_error", "channel": "private-a",
                                 "data": {"type": "AuthError", "error": "bad", "status": 401}})

    def test_pong_and_error(self):
        """pong has string data; error has code and message."""
        self.assertEqual(json.loads(protocol.pong()), {"event": "pusher:pong", "data": "{}"})
        self.assertEqual(json.loads(protocol.error(4001, "no")),
                         {"event": "pusher:error", "data": {"code": 4001, "message": "no"}})
        self.assertEqual(json.loads(protocol.error(None, "bad frame")),
                         {"event": "pusher:error", "data": {"message": "bad frame"}})


class ChannelRuleTests(unittest.TestCase):
    def test_types_by_most_specific_prefix(self):
        """The prefix decides the type, most specific first."""
        cases = {"a": "public", "private-a": "private", "private-encrypted-a": "private-encrypted",
                 "private-encrypted-cache-a": "private-encrypted-cache",
                 "private-cache-a": "private-cache", "presence-a": "presence",
                 "presence-cache-a": "presence-cache", "cache-a": "cache",
                 "privatex": "public", "#server-to-user-1": "server-to-user"}
        for name, kind in cases.items():
            self.assertEqual(protocol.channel_type(name), kind, name)

    def test_name_rules(self):
        """1-200 characters from A-Za-z0-9_-=@,.; are valid; anything else is not."""
        self.assertIsNone(protocol.channel_name_problem("a-Z_0=@,.;"))
        self.assertIsNone(protocol.channel_name_problem("x" * 200))
        for bad in ("", "x" * 201, "a b", "a/b", "é", "a:b", None, 5):
            self.assertIsNotNone(protocol.channel_name_problem(bad), bad)
