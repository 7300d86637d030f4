"""Private, encrypted and presence channels: signatures, members, limits."""

import json

from twisted.trial import unittest

from soketify import signing
from tests.support import APP, Rig, make_config


def presence_auth(client, channel, user_id, user_info=None, raw=None):
    channel_data = raw if raw is not None else json.dumps({"user_id": user_id, "user_info": user_info})
    return {"auth": signing.channel_auth("app-key", "app-secret", client.socket_id, channel, channel_data),
            "channel_data": channel_data}


def join(client, channel, user_id, user_info=None):
    return client.subscribe(channel, **presence_auth(client, channel, user_id, user_info))


def sign_in(client, user):
    user_data = json.dumps(user)
    client.send("pusher:signin", {"user_data": user_data,
                                  "auth": signing.user_auth("app-key", "app-secret", client.socket_id,
                                                            user_data)})
    return client.events()


class PrivateTests(unittest.TestCase):
    def test_auth_for_another_socket_or_app_key_is_refused(self):
        """A signature made for another socket or with another app's key is an AuthError, connection kept."""
        rig = Rig(self)
        client, other = rig.connect(), rig.connect()
        for auth in (signing.channel_auth("app-key", "app-secret", other.socket_id, "private-a"),
                     signing.channel_auth("other-key", "app-secret", client.socket_id, "private-a"),
                     signing.channel_auth("app-key", "wrong", client.socket_id, "private-a"), "", None):
            frame = client.subscribe("private-a", auth=auth)
            self.assertEqual(frame["event"], "pusher:subscription_error")
            self.assertEqual(frame["data"]["type"], "AuthError")
            self.assertEqual(frame["data"]["status"], 401)
        self.assertIsNone(client.close_code)

    def test_encrypted_and_private_cache_use_private_auth(self):
        """private-encrypted- and private-cache- channels accept the private signature."""
        rig = Rig(self)
        client = rig.connect()
        for name in ("private-encrypted-a", "private-cache-a", "private-encrypted-cache-a"):
            auth = signing.channel_auth("app-key", "app-secret", client.socket_id, name)
            self.assertEqual(client.subscribe(name, auth=auth)["event"],
                             "pusher_internal:subscription_succeeded", name)
            client.events()  # the cache miss of the cache channels


class PresenceTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)

    def test_succeeded_lists_members_including_self(self):
        """subscription_succeeded carries ids, hash and count, the subscriber included."""
        alice, bob = self.rig.connect(), self.rig.connect()
        join(alice, "presence-room", "alice", {"name": "Alice"})
        frame = join(bob, "presence-room", "bob", {"name": "Bob"})
        self.assertEqual(frame["event"], "pusher_internal:subscription_succeeded")
        presence = json.loads(frame["data"])["presence"]
        self.assertEqual(presence["count"], 2)
        self.assertEqual(sorted(presence["ids"]), ["alice", "bob"])
        self.assertEqual(presence["hash"], {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}})

    def test_member_added_and_removed_only_on_first_join_and_last_leave(self):
        """A user with two connections is announced once and removed once, to the others only."""
        alice, bob1, bob2 = self.rig.connect(), self.rig.connect(), self.rig.connect()
        join(alice, "presence-room", "alice")
        join(bob1, "presence-room", "bob", {"n": 1})
        self.assertEqual(alice.events(), [{"event": "pusher_internal:member_added", "channel": "presence-room",
                                           "data": json.dumps({"user_id": "bob", "user_info": {"n": 1}},
                                                              separators=(",", ":"))}])
        self.assertEqual(bob1.events(), [])
        join(bob2, "presence-room", "bob", {"n": 1})
        self.assertEqual(alice.events(), [])
        bob1.send("pusher:unsubscribe", {"channel": "presence-room"})
        self.assertEqual(alice.events(), [])
        bob2.close()
        self.rig.advance(2)
        self.assertEqual(alice.events(), [{"event": "pusher_internal:member_removed",
                                           "channel": "presence-room", "data": '{"user_id":"bob"}'}])

    def test_channel_data_is_verified_byte_for_byte(self):
        """The signature covers channel_data exactly as sent; re-serialized JSON does not match."""
        client = self.rig.connect()
        raw = '{"user_id": "1",  "user_info": {"a": 1}}'
        self.assertEqual(client.subscribe("presence-a", **presence_auth(client, "presence-a", None, raw=raw))["event"],
                         "pusher_internal:subscription_succeeded")
        data = presence_auth(client, "presence-b", None, raw=raw)
        data["channel_data"] = '{"user_id":"1","user_info":{"a":1}}'
        self.assertEqual(client.subscribe("presence-b", **data)["data"]["type"], "AuthError")

    def test_numeric_user_ids_become_strings(self):
        """user_id may be a number; it is stored and announced as a string."""
        client = self.rig.connect()
        frame = client.subscribe("presence-a", **presence_auth(client, "presence-a", None,
                                                               raw='{"user_id": 42}'))
        self.assertEqual(json.loads(frame["data"])["presence"]["ids"], ["42"])

    def test_limits_are_refused_with_the_limit_named(self):
        """user_id over 128 chars, user_info over 1 KB, bad channel_data: subscription_error saying which."""
        client = self.rig.connect()
        frame = join(client, "presence-a", "u" * 129)
        self.assertEqual(frame["data"]["type"], "LimitReached")
        self.assertIn("user_id", frame["data"]["error"])
        frame = join(client, "presence-a", "u", {"bio": "x" * 1100})
        self.assertEqual(frame["data"]["type"], "LimitReached")
        self.assertIn("user_info", frame["data"]["error"])
        for raw in ("not json", "[1]", '{"user_info":{}}', '{"user_id":true}'):
            frame = client.subscribe("presence-a", **presence_auth(client, "presence-a", None, raw=raw))
            self.assertEqual(frame["event"], "pusher:subscription_error", raw)
        self.assertIsNone(client.close_code)

    def test_member_limit_counts_distinct_users(self):
        """The member limit counts users: more connections of a present user are still let in."""
        rig = Rig(self, make_config(limits={"max_presence_members": 2}))
        a, b, c, b2 = (rig.connect() for _ in range(4))
        join(a, "presence-x", "a")
        join(b, "presence-x", "b")
        refused = join(c, "presence-x", "c")
        self.assertEqual(refused["event"], "pusher:subscription_error")
        self.assertEqual(refused["data"]["type"], "LimitReached")
        self.assertIn("2 members", refused["data"]["error"])
        self.assertEqual(join(b2, "presence-x", "b")["event"], "pusher_internal:subscription_succeeded")

    def test_presence_through_sign_in_without_channel_data(self):
        """A signed-in connection may join presence with socket:channel auth; the member is its user."""
        client = self.rig.connect()
        sign_in(client, {"id": "carol", "user_info": {"name": "Carol"}})
        auth = signing.channel_auth("app-key", "app-secret", client.socket_id, "presence-s")
        frame = client.subscribe("presence-s", auth=auth)
        self.assertEqual(json.loads(frame["data"])["presence"]["hash"], {"carol": {"name": "Carol"}})

    def test_presence_without_channel_data_or_sign_in_is_refused(self):
        """No channel_data and no sign-in: AuthError."""
        client = self.rig.connect()
        auth = signing.channel_auth("app-key", "app-secret", client.socket_id, "presence-s")
        self.assertEqual(client.subscribe("presence-s", auth=auth)["data"]["type"], "AuthError")

    def test_rest_users_and_user_count(self):
        """REST lists presence users and counts distinct users; non-presence channels are 400."""
        a, b, b2 = self.rig.connect(), self.rig.connect(), self.rig.connect()
        join(a, "presence-r", "a")
        join(b, "presence-r", "b")
        join(b2, "presence-r", "b")
        response = self.rig.signed("GET", "/apps/app-id/channels/presence-r/users")
        self.assertEqual(sorted(u["id"] for u in response.json()["users"]), ["a", "b"])
        self.assertEqual(self.rig.signed("GET", "/apps/app-id/channels/public/users").status, 400)
        response = self.rig.signed("GET", "/apps/app-id/channels/presence-r",
                                   params={"info": "user_count,subscription_count"})
        self.assertEqual(response.json(), {"occupied": True, "user_count": 2, "subscription_count": 3})
        response = self.rig.signed("GET", "/apps/app-id/channels",
                                   params={"filter_by_prefix": "presence-", "info": "user_count"})
        self.assertEqual(response.json(), {"channels": {"presence-r": {"user_count": 2}}})
        response = self.rig.signed("POST", "/apps/app-id/events", {
            "name": "e", "channels": ["presence-r", "other"], "data": "x",
            "info": "user_count,subscription_count"})
        self.assertEqual(response.json(), {"channels": {
            "presence-r": {"user_count": 2, "subscription_count": 3},
            "other": {"subscription_count": 0}}})

    def test_presence_members_are_per_app(self):
        """The same channel name in two apps has separate members."""
        other = {"id": "other-id", "key": "other-key", "secret": "other-secret"}
        rig = Rig(self, make_config(apps=[dict(APP), other]))
        mine = rig.connect()
        join(mine, "presence-r", "a")
        theirs = rig.connect("/app/other-key?protocol=7")
        channel_data = json.dumps({"user_id": "b"})
        frame = theirs.subscribe("presence-r", channel_data=channel_data, auth=signing.channel_auth(
            "other-key", "other-secret", theirs.socket_id, "presence-r", channel_data))
        self.assertEqual(json.loads(frame["data"])["presence"]["ids"], ["b"])
        self.assertEqual(mine.events(), [])
