"""User sign-in, server-to-user channels, watchlists, termination and authorized connections."""

import json

from twisted.trial import unittest

from soketify import signing
from tests.support import APP, Rig, make_config
from tests.test_presence import sign_in


def watch_events(frames):
    return [json.loads(f["data"])["events"] for f in frames
            if f["event"] == "pusher_internal:watchlist_events"]


class SignInTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)

    def test_valid_sign_in_echoes_user_data(self):
        """signin_success carries the user_data string exactly as sent."""
        client = self.rig.connect()
        frames = sign_in(client, {"id": "u1", "user_info": {"name": "U"}})
        self.assertEqual(frames[0]["event"], "pusher:signin_success")
        self.assertEqual(json.loads(frames[0]["data"])["user_data"],
                         json.dumps({"id": "u1", "user_info": {"name": "U"}}))

    def test_bad_signature_or_user_data_closes_with_4009(self):
        """A wrong signature, or user_data without a string id, is pusher:error 4009 then close 4009."""
        for user_data, auth in (('{"id":"u"}', "app-key:" + "0" * 64), ('{"name":"x"}', None),
                                ('{"id":5}', None), ("not json", None)):
            client = self.rig.connect()
            if auth is None:
                auth = signing.user_auth("app-key", "app-secret", client.socket_id, user_data)
            client.send("pusher:signin", {"user_data": user_data, "auth": auth})
            frame = client.next_event()
            self.assertEqual((frame["event"], frame["data"]["code"]), ("pusher:error", 4009), user_data)
            client.events()
            self.assertEqual(client.close_code, 4009)

    def test_signing_in_again_as_another_user_fails(self):
        """A connection signed in as one user cannot become another one."""
        client = self.rig.connect()
        sign_in(client, {"id": "a"})
        frames = sign_in(client, {"id": "b"})
        self.assertEqual(frames[0]["data"]["code"], 4009)
        self.assertEqual(client.close_code, 4009)

    def test_server_to_user_channel_only_for_the_signed_in_user(self):
        """#server-to-user-{id} is accepted for one's own id only, and REST events reach it."""
        client, stranger = self.rig.connect(), self.rig.connect()
        self.assertEqual(client.subscribe("#server-to-user-u1", auth="")["data"]["type"], "AuthError")
        sign_in(client, {"id": "u1"})
        sign_in(stranger, {"id": "u2"})
        self.assertEqual(client.subscribe("#server-to-user-u1")["event"],
                         "pusher_internal:subscription_succeeded")
        self.assertEqual(stranger.subscribe("#server-to-user-u1")["data"]["type"], "AuthError")
        response = self.rig.signed("POST", "/apps/app-id/events",
                                   {"name": "note", "channels": ["#server-to-user-u1"], "data": "hi"})
        self.assertEqual(response.status, 200)
        self.assertEqual(client.events(), [{"event": "note", "channel": "#server-to-user-u1", "data": "hi"}])


class WatchlistTests(unittest.TestCase):
    def test_watchers_hear_online_on_first_and_offline_on_last_connection(self):
        """The watcher gets its list's state at sign-in, then each user's first-on and last-off."""
        rig = Rig(self)
        watcher = rig.connect()
        frames = sign_in(watcher, {"id": "w", "watchlist": ["a", "b"]})
        self.assertEqual(watch_events(frames), [[{"name": "offline", "user_ids": ["a", "b"]}]])
        a1, a2 = rig.connect(), rig.connect()
        sign_in(a1, {"id": "a"})
        self.assertEqual(watch_events(watcher.events()), [[{"name": "online", "user_ids": ["a"]}]])
        sign_in(a2, {"id": "a"})
        self.assertEqual(watch_events(watcher.events()), [])
        a1.close()
        rig.advance(2)
        self.assertEqual(watch_events(watcher.events()), [])
        a2.close()
        rig.advance(2)
        self.assertEqual(watch_events(watcher.events()), [[{"name": "offline", "user_ids": ["a"]}]])

    def test_initial_state_lists_online_users(self):
        """Users already online when the watcher signs in are reported online."""
        rig = Rig(self)
        sign_in(rig.connect(), {"id": "a"})
        frames = sign_in(rig.connect(), {"id": "w", "watchlist": ["a", "b"]})
        self.assertEqual(watch_events(frames), [[{"name": "online", "user_ids": ["a"]},
                                                 {"name": "offline", "user_ids": ["b"]}]])

    def test_watchlist_over_100_is_4302_but_sign_in_succeeds(self):
        """More than 100 watched ids: pusher:error 4302, the sign-in itself still succeeds."""
        client = Rig(self).connect()
        frames = sign_in(client, {"id": "w", "watchlist": [str(i) for i in range(101)]})
        self.assertEqual(frames[0]["event"], "pusher:signin_success")
        self.assertEqual(frames[1]["data"]["code"], 4302)
        self.assertIsNone(client.close_code)


class TerminateTests(unittest.TestCase):
    def test_terminate_closes_every_connection_of_the_user_with_4009(self):
        """Both REST paths close all of that user's connections and no one else's."""
        for path in ("/apps/app-id/users/u1/terminate_connections", "/users/u1/terminate_connections"):
            rig = Rig(self)
            mine = [rig.connect(), rig.connect()]
            other = rig.connect()
            for client in mine:
                sign_in(client, {"id": "u1"})
            sign_in(other, {"id": "u2"})
            response = rig.signed("POST", path, {})
            self.assertEqual((response.status, response.json()), (200, {}), path)
            for client in mine:
                client.events()
                self.assertEqual(client.close_code, 4009, path)
            other.events()
            self.assertIsNone(other.close_code)

    def test_unprefixed_path_needs_a_known_key(self):
        """/users/{id}/terminate_connections with an unknown auth_key is 401."""
        rig = Rig(self)
        response = rig.signed("POST", "/users/u1/terminate_connections", {},
                              app=dict(APP, key="nobody"))
        self.assertEqual(response.status, 401)


class AuthorizedConnectionTests(unittest.TestCase):
    def config(self):
        return make_config(apps=[dict(APP, authorized_connections=True, authorization_timeout=10)])

    def test_unauthorized_connection_is_closed_with_4009_after_the_timeout(self):
        """Neither signed in nor in a private channel after the timeout: closed with 4009."""
        rig = Rig(self, self.config())
        client = rig.connect()
        client.subscribe("public")
        rig.advance(8)
        self.assertIsNone(client.close_code)
        rig.advance(4)
        client.events()
        self.assertEqual(client.close_code, 4009)

    def test_sign_in_or_private_subscription_in_time_keeps_the_connection(self):
        """Signing in, or joining a private channel, in time keeps the connection open."""
        rig = Rig(self, self.config())
        signed, joined = rig.connect(), rig.connect()
        sign_in(signed, {"id": "u"})
        joined.subscribe("private-a", auth=signing.channel_auth("app-key", "app-secret",
                                                                joined.socket_id, "private-a"))
        rig.advance(30)
        for client in (signed, joined):
            client.events()
            self.assertIsNone(client.close_code)

    def test_sign_in_always_works_without_the_requirement(self):
        """Apps without authorized_connections never close idle unauthenticated connections."""
        rig = Rig(self)
        client = rig.connect()
        rig.advance(60)
        client.events()
        self.assertIsNone(client.close_code)
