"""The debug console's entries (issue 12): what a viewer sees of a node, its bounded queue, and
nothing built while nobody watches."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from soketify import protocol, signing
from soketify.console_feed import ConsoleFeed, Viewer
from tests.support import Rig, make_config


class Watcher:
    def __init__(self, rig, apps=None):
        self.entries = []
        self.skipped = 0
        self.viewer = Viewer(rig.reactor, self.write, apps)
        rig.hub.feed.attach(self.viewer)

    def write(self, entries, skipped):
        self.entries.extend(entries)
        self.skipped += skipped

    def types(self):
        return [entry["type"] for entry in self.entries]


def event(channel="news", data="hi"):
    return {"name": "e", "channels": [channel], "data": data}


class EntryTests(unittest.TestCase):
    def test_a_client_life_seen_from_the_console(self):
        rig = Rig(self)
        watcher = Watcher(rig)
        client = rig.connect()
        client.subscribe("news")
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event()).status, 200)
        client.send("pusher:unsubscribe", {"channel": "news"})
        client.close(1000)
        rig.advance(1)
        self.assertEqual(watcher.types(), [
            "connection_opened", "subscribed", "channel_occupied", "api_message", "unsubscribed",
            "channel_vacated", "connection_closed"])
        opened, subscribed, _, message, _, _, closed = watcher.entries
        self.assertEqual((opened["app_id"], opened["node"], opened["address"]),
                         ("app-id", rig.hub.feed.node, "127.0.0.1"))
        self.assertEqual((subscribed["channel"], subscribed["socket_id"]), ("news", client.socket_id))
        self.assertEqual((message["channels"], message["event"], message["data"]), (["news"], "e", "hi"))
        self.assertEqual((closed["code"], closed["socket_id"]), (1000, client.socket_id))
        self.assertIsInstance(opened["time"], float)

    def test_refusals_carry_their_reason(self):
        rig = Rig(self, make_config(apps=[{"id": "app-id", "key": "app-key", "secret": "app-secret",
                                           "max_event_payload_kb": 1}]))
        watcher = Watcher(rig)
        client = rig.connect()
        client.subscribe("private-x", auth="app-key:bad")
        client.subscribe("bad name!")
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event(data="x" * 2000)).status, 413)
        bad = rig.http("POST", "/apps/app-id/events?auth_key=app-key&auth_signature=x", b"{}")
        self.assertEqual(bad.status, 401)
        rig.advance(1)
        refused = [e for e in watcher.entries if e["type"] == "refused"]
        reasons = [(e["code"], e["limit"]) for e in refused]
        self.assertEqual(reasons, [(401, None), (400, None), (413, "event_payload"), (401, None)])
        self.assertIn("private-x", refused[0]["reason"])
        self.assertEqual(refused[0]["socket_id"], client.socket_id)

    def test_a_message_over_the_maximum_is_a_refusal_in_the_log(self):
        """Autobahn refuses it before the session sees it; the console still says why."""
        rig = Rig(self, make_config(server={"max_message_size": 1024}))
        watcher = Watcher(rig)
        client = rig.connect()
        client.send("pusher:ping", {"pad": "x" * 2000})
        client.events()
        client.close(client.close_code)  # the client echoes the close
        rig.advance(0.1)
        [refused] = [e for e in watcher.entries if e["type"] == "refused"]
        self.assertEqual((refused["code"], refused["limit"], refused["socket_id"]),
                         (1009, "message_size", client.socket_id))
        self.assertEqual(watcher.types()[-1], "connection_closed")

    def test_connections_refused_at_the_handshake_are_in_the_log(self):
        rig = Rig(self, make_config(apps=[{"id": "app-id", "key": "app-key", "secret": "app-secret",
                                           "max_connections": 1}]))
        watcher = Watcher(rig)
        rig.connect()
        refused = rig.connect(established=False)
        self.assertEqual(refused.next_event()["data"]["code"], protocol.APP_OVER_QUOTA)
        rig.advance(0.1)
        [entry] = [e for e in watcher.entries if e["type"] == "refused"]
        self.assertEqual((entry["code"], entry["app_id"]), (protocol.APP_OVER_QUOTA, "app-id"))
        self.assertIn("quota", entry["reason"])

    def test_client_events_and_presence_members(self):
        rig = Rig(self)
        watcher = Watcher(rig)
        a, b = rig.connect(), rig.connect()
        for client, user in ((a, "alice"), (b, "bob")):
            data = '{"user_id":"%s"}' % user
            client.subscribe("presence-room", channel_data=data, auth=signing.channel_auth(
                "app-key", "app-secret", client.socket_id, "presence-room", data))
        a.send("client-typing", {"x": 1}, channel="presence-room")
        b.close(1000)
        rig.advance(0.1)  # far less than the webhooks' grace: the console shows it as clients see it
        members = [(e["type"], e["user_id"]) for e in watcher.entries
                   if e["type"] in ("member_added", "member_removed")]
        self.assertEqual(members, [("member_added", "alice"), ("member_added", "bob"),
                                   ("member_removed", "bob")])
        [typing] = [e for e in watcher.entries if e["type"] == "client_event"]
        self.assertEqual((typing["event"], typing["user_id"], typing["data"]),
                         ("client-typing", "alice", {"x": 1}))

    def test_a_cache_miss_names_the_subscriber_that_found_nothing(self):
        """Whether or not any webhook takes cache_miss."""
        rig = Rig(self)
        watcher = Watcher(rig)
        a, b = rig.connect(), rig.connect()
        a.subscribe("cache-news")
        b.subscribe("cache-news")
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event("cache-news")).status, 200)
        c = rig.connect()
        c.subscribe("cache-news")  # the last event is replayed: no miss
        rig.advance(0.1)
        misses = [(e["channel"], e["socket_id"]) for e in watcher.entries if e["type"] == "cache_miss"]
        self.assertEqual(misses, [("cache-news", a.socket_id), ("cache-news", b.socket_id)])

    def test_a_viewer_of_some_apps_sees_only_them(self):
        rig = Rig(self)
        watcher = Watcher(rig, apps=["other"])
        rig.connect()
        rig.advance(1)
        self.assertEqual(watcher.entries, [])

    def test_a_terminated_user_is_closed_with_4009_in_the_log(self):
        """The close code and reason the server sent, not the client's echo."""
        rig = Rig(self)
        watcher = Watcher(rig)
        client = rig.connect()
        user_data = '{"id":"u1"}'
        client.send("pusher:signin", {"user_data": user_data, "auth": signing.user_auth(
            "app-key", "app-secret", client.socket_id, user_data)})
        client.subscribe("news")
        rig.advance(0.1)
        [subscribed] = [e for e in watcher.entries if e["type"] == "subscribed"]
        self.assertEqual(subscribed["user_id"], "u1")  # signed in, on a public channel
        answer = rig.signed("POST", "/apps/app-id/users/u1/terminate_connections", {})
        self.assertEqual(answer.status, 200)
        client.events()
        client.close(client.close_code)  # the client echoes the close
        rig.advance(1)
        [closed] = [e for e in watcher.entries if e["type"] == "connection_closed"]
        self.assertEqual((closed["type"], closed["code"], closed["user_id"]),
                         ("connection_closed", protocol.UNAUTHORIZED, "u1"))
        self.assertIn("terminated", closed["reason"])


class NobodyWatchingTests(unittest.TestCase):
    def test_no_entry_is_built_while_nobody_watches(self):
        """With no viewer, add() is never called (it would fail here)."""
        rig = Rig(self)
        rig.hub.feed.add = None  # calling it would raise
        client = rig.connect()
        client.subscribe("news")
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event()).status, 200)
        client.close()
        rig.advance(1)

    def test_watching_follows_attach_and_detach(self):
        feed = ConsoleFeed(Clock(), "n")
        viewer = Viewer(Clock(), lambda entries, skipped: None)
        self.assertFalse(feed.watching)
        feed.attach(viewer)
        self.assertTrue(feed.watching)
        feed.detach(viewer)
        self.assertFalse(feed.watching)


class ViewerTests(unittest.TestCase):
    def test_a_full_queue_skips_and_counts_instead_of_waiting(self):
        clock = Clock()
        written = []
        viewer = Viewer(clock, lambda entries, skipped: written.append((len(entries), skipped)),
                        max_queued=10)
        feed = ConsoleFeed(clock, "n")
        feed.attach(viewer)
        viewer.pause()  # the reader stopped reading
        for n in range(25):
            feed.add("a", "api_message", n=n)
        clock.advance(0)
        self.assertEqual(written, [])
        viewer.resume()
        clock.advance(0)
        self.assertEqual(written, [(10, 15)])
        feed.add("a", "api_message")
        clock.advance(0)
        self.assertEqual(written[-1], (1, 0))

    def test_entries_of_one_turn_are_written_together(self):
        clock = Clock()
        written = []
        viewer = Viewer(clock, lambda entries, skipped: written.append(len(entries)))
        feed = ConsoleFeed(clock, "n")
        feed.attach(viewer)
        for _ in range(5):
            feed.add("a", "subscribed")
        clock.advance(0)
        self.assertEqual(written, [5])
