"""The WebSocket endpoint end to end in memory: switch, Autobahn protocol, hub, activity sweep."""

import json

from twisted.trial import unittest

from soketify import signing
from tests.support import APP, Rig, make_config


class ConnectTests(unittest.TestCase):
    def test_established_carries_string_data_with_socket_id_and_timeout(self):
        """The first frame is connection_established whose data is a JSON string."""
        rig = Rig(self)
        client = rig.connect(established=False)
        frame = client.next_event()
        self.assertEqual(frame["event"], "pusher:connection_established")
        self.assertIsInstance(frame["data"], str)
        data = json.loads(frame["data"])
        self.assertRegex(data["socket_id"], r"^\d+\.\d+$")
        self.assertEqual(data["activity_timeout"], 120)

    def test_socket_ids_are_unique_and_share_the_node_prefix(self):
        """Two connections on one node get different ids with the same node-specific first part."""
        rig = Rig(self)
        first, second = rig.connect(), rig.connect()
        self.assertNotEqual(first.socket_id, second.socket_id)
        self.assertEqual(first.socket_id.split(".")[0], second.socket_id.split(".")[0])

    def assertRefused(self, rig, path, code):
        client = rig.connect(path, established=False)
        frame = client.next_event()
        self.assertEqual(frame["event"], "pusher:error")
        self.assertEqual(frame["data"]["code"], code)
        client.events()
        self.assertEqual(client.close_code, code)
        return frame

    def test_unknown_key_is_refused_with_4001(self):
        """An unknown app key gets pusher:error 4001 then close 4001."""
        self.assertRefused(Rig(self), "/app/nope?protocol=7", 4001)

    def test_disabled_app_is_refused_with_4003(self):
        """A disabled app's clients get 4003."""
        rig = Rig(self, make_config(apps=[dict(APP, enabled=False)]))
        self.assertRefused(rig, "/app/app-key?protocol=7", 4003)

    def test_app_over_connection_quota_is_refused_with_4004(self):
        """max_connections is enforced per app with 4004; a freed place can be taken again."""
        rig = Rig(self, make_config(apps=[dict(APP, max_connections=1)]))
        first = rig.connect()
        self.assertRefused(rig, "/app/app-key?protocol=7", 4004)
        first.close()
        rig.advance(2)
        rig.connect()

    def test_unknown_path_is_refused_with_4005(self):
        """A WebSocket path other than /app/{key} gets 4005."""
        self.assertRefused(Rig(self), "/app/?protocol=7", 4005)
        self.assertRefused(Rig(self), "/app/app-key/extra?protocol=7", 4005)

    def test_missing_protocol_is_refused_with_4008(self):
        """No protocol parameter gets 4008."""
        self.assertRefused(Rig(self), "/app/app-key?client=js", 4008)

    def test_unsupported_protocol_is_refused_with_4007(self):
        """Protocols outside 5-7 (or not numbers) get 4007."""
        for version in ("4", "8", "seven"):
            self.assertRefused(Rig(self), f"/app/app-key?protocol={version}", 4007)

    def test_old_supported_protocols_are_accepted(self):
        """Protocols 5 and 6 are still spoken."""
        rig = Rig(self)
        rig.connect("/app/app-key?protocol=5")
        rig.connect("/app/app-key?protocol=6")


class FrameTests(unittest.TestCase):
    def test_ping_is_answered_with_pong(self):
        """pusher:ping gets pusher:pong."""
        client = Rig(self).connect()
        client.send("pusher:ping")
        self.assertEqual(client.next_event()["event"], "pusher:pong")

    def test_bad_frames_get_errors_and_keep_the_connection(self):
        """Malformed JSON, non-objects, unknown events and binary frames: pusher:error, still usable."""
        rig = Rig(self)
        client, bystander = rig.connect(), rig.connect()
        bystander.subscribe("news")
        for raw, binary in ((b"{nope", False), (b"[1,2]", False), (b'"text"', False),
                            (b'{"event":"pusher:whatever","data":{}}', False),
                            (b'{"data":{}}', False), (b"\x00\x01", True)):
            client.send_raw(raw, binary)
            frame = client.next_event()
            self.assertEqual(frame["event"], "pusher:error", raw)
            self.assertIsNone(client.close_code)
        self.assertEqual(client.subscribe("news")["event"], "pusher_internal:subscription_succeeded")
        rig.hub.publish("app-id", ["news"], "update", "1")
        self.assertEqual(bystander.events(), [{"event": "update", "channel": "news", "data": "1"}])
        self.assertEqual(client.events(), [{"event": "update", "channel": "news", "data": "1"}])

    def test_message_over_the_maximum_is_closed_with_1009(self):
        """A frame larger than server.max_message_size is refused with close code 1009."""
        rig = Rig(self, make_config(server={"max_message_size": 1024}))
        client = rig.connect()
        client.send("pusher:ping", {"pad": "x" * 2000})
        client.events()
        self.assertEqual(client.close_code, 1009)

    def test_subscribe_data_as_json_string_is_accepted(self):
        """Clients other than pusher-js send data as a JSON string; that works too."""
        client = Rig(self).connect()
        client.send_raw(json.dumps({"event": "pusher:subscribe",
                                    "data": json.dumps({"channel": "news"})}).encode())
        self.assertEqual(client.next_event(), {"event": "pusher_internal:subscription_succeeded",
                                               "channel": "news", "data": "{}"})


class SubscribeTests(unittest.TestCase):
    def test_public_subscribe_succeeds_and_receives_events(self):
        """A public subscribe is answered with subscription_succeeded and events arrive as given."""
        rig = Rig(self)
        client = rig.connect()
        self.assertEqual(client.subscribe("news", auth=""),
                         {"event": "pusher_internal:subscription_succeeded", "channel": "news",
                          "data": "{}"})
        rig.hub.publish("app-id", ["news"], "headline", '{"a":1}')
        self.assertEqual(client.events(), [{"event": "headline", "channel": "news",
                                            "data": '{"a":1}'}])

    def test_bad_channel_name_gets_subscription_error_and_keeps_connection(self):
        """An invalid name is refused with pusher:subscription_error; the connection stays open."""
        rig = Rig(self)
        client = rig.connect()
        for name in ("has space", "x" * 201, "ünïcode"):
            frame = client.subscribe(name)
            self.assertEqual(frame["event"], "pusher:subscription_error")
            self.assertEqual(frame["channel"], name)
            self.assertEqual(frame["data"]["status"], 400)
        self.assertIsNone(client.close_code)
        self.assertEqual(client.subscribe("ok")["event"], "pusher_internal:subscription_succeeded")

    def test_double_subscribe_is_counted_and_delivered_once(self):
        """Subscribing twice answers success twice but the event arrives once."""
        rig = Rig(self)
        client = rig.connect()
        client.subscribe("news")
        self.assertEqual(client.subscribe("news")["event"], "pusher_internal:subscription_succeeded")
        rig.hub.publish("app-id", ["news"], "e", "x")
        self.assertEqual(len(client.events()), 1)
        stats = self.successResultOf(rig.hub.channel_stats("app-id", ["news"]))
        self.assertEqual(stats["news"].subscription_count, 1)

    def test_unsubscribe_stops_delivery(self):
        """After pusher:unsubscribe no more events arrive on that channel."""
        rig = Rig(self)
        client = rig.connect()
        client.subscribe("news")
        client.send("pusher:unsubscribe", {"channel": "news"})
        rig.hub.publish("app-id", ["news"], "e", "x")
        self.assertEqual(client.events(), [])

    def test_private_channel_needs_a_valid_signature(self):
        """private- channels accept the HMAC of socket_id:channel and refuse others with 401."""
        rig = Rig(self)
        client = rig.connect()
        refused = client.subscribe("private-a", auth="app-key:" + "0" * 64)
        self.assertEqual(refused["event"], "pusher:subscription_error")
        self.assertEqual(refused["data"]["type"], "AuthError")
        self.assertEqual(refused["data"]["status"], 401)
        auth = signing.channel_auth("app-key", "app-secret", client.socket_id, "private-a")
        self.assertEqual(client.subscribe("private-a", auth=auth)["event"],
                         "pusher_internal:subscription_succeeded")

    def test_close_unsubscribes_everything(self):
        """A closed connection leaves its channels, which become unoccupied."""
        rig = Rig(self)
        client = rig.connect()
        client.subscribe("news")
        client.close()
        rig.advance(2)
        self.assertEqual(self.successResultOf(rig.hub.occupied_channels("app-id")), {})
        self.assertEqual(rig.hub.connection_count("app-id"), 0)

    def test_socket_id_exclusion(self):
        """publish with except_socket_id skips that one connection only."""
        rig = Rig(self)
        sender, other = rig.connect(), rig.connect()
        sender.subscribe("news")
        other.subscribe("news")
        rig.hub.publish("app-id", ["news"], "e", "x", except_socket_id=sender.socket_id)
        self.assertEqual(sender.events(), [])
        self.assertEqual(len(other.events()), 1)


class ActivityTests(unittest.TestCase):
    def test_silent_connection_is_pinged_then_closed_with_4201(self):
        """After activity_timeout of silence the server pings; no answer in 30 s closes with 4201."""
        rig = Rig(self, make_config(server={"activity_timeout": 60}))
        client = rig.connect()
        rig.advance(55)
        self.assertEqual(client.events(), [])
        rig.advance(10)
        self.assertEqual(client.next_event()["event"], "pusher:ping")
        rig.advance(25)
        self.assertIsNone(client.close_code)
        rig.advance(10)
        client.events()
        self.assertEqual(client.close_code, 4201)

    def test_answering_the_ping_keeps_the_connection(self):
        """A pusher:pong (any frame) after the server ping keeps the connection open."""
        rig = Rig(self, make_config(server={"activity_timeout": 60}))
        client = rig.connect()
        rig.advance(65)
        self.assertEqual(client.next_event()["event"], "pusher:ping")
        client.send("pusher:pong")
        rig.advance(50)
        client.events()
        self.assertIsNone(client.close_code)

    def test_regular_client_pings_prevent_server_pings(self):
        """A client that pings on its own never gets a server ping."""
        rig = Rig(self, make_config(server={"activity_timeout": 60}))
        client = rig.connect()
        for _ in range(5):
            rig.advance(40)
            client.send("pusher:ping")
            self.assertEqual([f["event"] for f in client.events()], ["pusher:pong"])


class SlowClientTests(unittest.TestCase):
    def test_client_that_stops_reading_is_dropped_past_the_buffer_limit(self):
        """When the transport reports pressure, unsent data past max_send_buffer drops that client only."""
        rig = Rig(self, make_config(server={"max_send_buffer": 10000}))
        slow, fast = rig.connect(), rig.connect()
        slow.subscribe("news")
        fast.subscribe("news")
        slow.transport.protocol.pauseProducing()
        for _ in range(20):
            rig.hub.publish("app-id", ["news"], "e", "x" * 1000)
        rig.advance(1)
        self.assertTrue(slow.transport.lost)
        self.assertFalse(fast.transport.lost)
        self.assertEqual(len(fast.events()), 20)
        stats = self.successResultOf(rig.hub.channel_stats("app-id", ["news"]))
        self.assertEqual(stats["news"].subscription_count, 1)

    def test_pressure_reported_on_every_write_still_adds_up(self):
        """Twisted calls pauseProducing on every write while its buffer is over the mark; the
        unsent bytes still add up from the first pause, so the client is dropped."""
        rig = Rig(self, make_config(server={"max_send_buffer": 10000}))
        slow = rig.connect()
        slow.subscribe("news")
        for _ in range(20):
            slow.transport.protocol.pauseProducing()
            rig.hub.publish("app-id", ["news"], "e", "x" * 1000)
        rig.advance(1)
        self.assertTrue(slow.transport.lost)


class GracefulStopTests(unittest.TestCase):
    def test_stop_moves_every_client_with_4200_and_finishes(self):
        """stopService sends pusher:error 4200 and close 4200 to each client, then completes."""
        rig = Rig(self)
        clients = [rig.connect(), rig.connect()]
        stopped = rig.service.stopService()
        self.assertFalse(rig.service.ready)
        for client in clients:
            frame = client.next_event()
            self.assertEqual((frame["event"], frame["data"]["code"]), ("pusher:error", 4200))
            client.events()
            self.assertEqual(client.close_code, 4200)
            client.close(4200)
        rig.advance(2, step=0.05)
        self.successResultOf(stopped)

    def test_stop_aborts_clients_that_never_close(self):
        """Clients that ignore the close are cut off after shutdown_timeout."""
        rig = Rig(self, make_config(server={"shutdown_timeout": 3}))
        client = rig.connect()
        stopped = rig.service.stopService()
        rig.advance(3.1, step=0.05)
        self.successResultOf(stopped)
        self.assertTrue(client.transport.lost)

    def test_connections_during_stop_are_sent_elsewhere(self):
        """A handshake that completes while stopping is answered with 4200."""
        rig = Rig(self)
        rig.service.stopService()
        client = rig.connect(established=False)
        self.assertEqual(client.next_event()["data"]["code"], 4200)


class FailureIsolationTests(unittest.TestCase):
    def test_an_internal_error_closes_only_the_connection_concerned(self):
        """A bug hit while handling one client's frame is logged and closes that client alone."""
        rig = Rig(self)
        victim, bystander = rig.connect(), rig.connect()
        bystander.subscribe("news")
        sessions = rig.service.websocket.sessions
        original = sessions._dispatch

        def dispatch(connection, message):
            if connection.socket_id == victim.socket_id:
                raise RuntimeError("boom")
            return original(connection, message)
        self.patch(sessions, "_dispatch", dispatch)
        victim.send("pusher:ping")
        victim.events()
        self.assertEqual(victim.close_code, 4200)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        rig.hub.publish("app-id", ["news"], "e", "x")
        self.assertEqual(bystander.events(), [{"event": "e", "channel": "news", "data": "x"}])
        bystander.send("pusher:ping")
        self.assertEqual(bystander.next_event()["event"], "pusher:pong")
