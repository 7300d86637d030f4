"""Client events and cache channels."""

import json

from twisted.trial import unittest

from soketify import signing
from tests.support import APP, Rig, make_config
from tests.test_presence import join


def private(client, name="private-chat"):
    auth = signing.channel_auth("app-key", "app-secret", client.socket_id, name)
    frame = client.subscribe(name, auth=auth)
    assert frame["event"] == "pusher_internal:subscription_succeeded", frame
    client.events()


def refusal(client):
    frames = client.events()
    assert len(frames) == 1 and frames[0]["event"] == "pusher:error", frames
    assert frames[0]["data"]["code"] == 4301, frames
    return frames[0]["data"]["message"]


class ClientEventTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)
        self.sender, self.receiver = self.rig.connect(), self.rig.connect()

    def test_relayed_to_others_never_the_sender(self):
        """A client event reaches the other subscribers with its data as sent, not the sender."""
        private(self.sender)
        private(self.receiver)
        self.sender.send("client-typing", {"who": "me"}, channel="private-chat")
        self.assertEqual(self.receiver.events(), [{"event": "client-typing", "channel": "private-chat",
                                                   "data": {"who": "me"}}])
        self.assertEqual(self.sender.events(), [])

    def test_presence_adds_the_sender_user_id(self):
        """On presence channels the relayed event carries the sender's user_id."""
        join(self.sender, "presence-room", "alice")
        join(self.receiver, "presence-room", "bob")
        self.sender.events()
        self.receiver.events()
        self.sender.send("client-hi", "text", channel="presence-room")
        self.assertEqual(self.receiver.events(), [{"event": "client-hi", "channel": "presence-room",
                                                   "data": "text", "user_id": "alice"}])

    def test_each_refusal_is_4301_with_a_reason_and_keeps_the_connection(self):
        """Public, encrypted, unsubscribed, oversized: each refused with 4301 saying why."""
        private(self.sender)
        self.sender.subscribe("public")
        self.sender.events()
        encrypted = "private-encrypted-x"
        self.sender.subscribe(encrypted, auth=signing.channel_auth(
            "app-key", "app-secret", self.sender.socket_id, encrypted))
        cases = [("public", {}, "private and presence"), (encrypted, {}, "encrypted"),
                 ("private-other", {}, "Subscribe"), (None, {}, "channel"),
                 ("private-chat", {"x": "y" * 10300}, "bytes")]
        for channel, data, reason in cases:
            self.sender.send("client-x", data, channel=channel)
            self.assertIn(reason, refusal(self.sender))
        self.assertIsNone(self.sender.close_code)

    def test_disabled_for_the_app(self):
        """With client_events = false every client event is refused."""
        rig = Rig(self, make_config(apps=[dict(APP, client_events=False)]))
        client = rig.connect()
        private(client)
        client.send("client-x", {}, channel="private-chat")
        self.assertIn("not enabled", refusal(client))

    def test_rate_limit_per_connection_per_second(self):
        """The 11th event within a second is refused; the next second allows 10 again."""
        private(self.sender)
        private(self.receiver)
        for _ in range(10):
            self.sender.send("client-x", {}, channel="private-chat")
        self.assertEqual(self.sender.events(), [])
        self.sender.send("client-x", {}, channel="private-chat")
        self.assertIn("Rate limit", refusal(self.sender))
        self.assertEqual(len(self.receiver.events()), 10)
        self.rig.reactor.advance(1)
        self.sender.send("client-x", {}, channel="private-chat")
        self.assertEqual(self.sender.events(), [])
        self.assertEqual(len(self.receiver.events()), 1)


class CacheChannelTests(unittest.TestCase):
    def test_new_subscriber_gets_the_last_event_or_a_miss(self):
        """A cache channel replays the last triggered event right after success, else cache_miss."""
        rig = Rig(self)
        first = rig.connect()
        first.subscribe("cache-loc")
        self.assertEqual(first.events(), [{"event": "pusher:cache_miss", "channel": "cache-loc"}])
        rig.hub.publish("app-id", ["cache-loc"], "pos", "1")
        rig.hub.publish("app-id", ["cache-loc"], "pos", "2")
        first.events()
        late = rig.connect()
        self.assertEqual(late.subscribe("cache-loc")["event"], "pusher_internal:subscription_succeeded")
        self.assertEqual(late.events(), [{"event": "pos", "channel": "cache-loc", "data": "2"}])

    def test_cache_expires_after_its_ttl(self):
        """After cache_ttl seconds the event is gone and new subscribers get cache_miss."""
        rig = Rig(self, make_config(limits={"cache_ttl": 60}))
        rig.hub.publish("app-id", ["cache-x"], "e", "1")
        response = rig.signed("GET", "/apps/app-id/channels/cache-x", params={"info": "cache"})
        self.assertEqual(response.json()["cache"], {"event": "e", "data": "1", "ttl": 60})
        rig.advance(61)
        client = rig.connect()
        client.subscribe("cache-x")
        self.assertEqual(client.events(), [{"event": "pusher:cache_miss", "channel": "cache-x"}])
        response = rig.signed("GET", "/apps/app-id/channels/cache-x", params={"info": "cache"})
        self.assertEqual(response.json(), {"occupied": True, "cache": None})

    def test_client_events_are_not_cached(self):
        """Client events on private-cache channels are relayed but never replayed."""
        rig = Rig(self)
        a, b = rig.connect(), rig.connect()
        private(a, "private-cache-c")
        private(b, "private-cache-c")
        a.send("client-x", {"n": 1}, channel="private-cache-c")
        self.assertEqual(len(b.events()), 1)
        late = rig.connect()
        auth = signing.channel_auth("app-key", "app-secret", late.socket_id, "private-cache-c")
        late.subscribe("private-cache-c", auth=auth)
        self.assertEqual(late.events(), [{"event": "pusher:cache_miss", "channel": "private-cache-c"}])

    def test_presence_cache_replays_after_the_member_list(self):
        """presence-cache- channels send the presence data first, then the cached event."""
        rig = Rig(self)
        rig.hub.publish("app-id", ["presence-cache-p"], "state", json.dumps({"v": 1}))
        client = rig.connect()
        frame = join(client, "presence-cache-p", "u")
        self.assertIn("presence", json.loads(frame["data"]))
        self.assertEqual(client.events(), [{"event": "state", "channel": "presence-cache-p",
                                            "data": '{"v": 1}'}])
