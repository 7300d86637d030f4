"""The contract every cluster engine passes (``local``, ``redis`` and later ones).

A test case mixes in ``ClusterContract`` and provides ``make_nodes(count, **settings)`` (a Deferred of
``Node``s sharing one cluster; an engine of one process may hand out the same node several times),
``elapse(seconds)`` and ``settle(nodes)`` (a Deferred that fires once every cluster notification sent
so far has reached every node). Each test states a promise a user can see through the hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults, inlineCallbacks, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from soketify import protocol
from soketify.cluster.interfaces import ICluster, IClusterListener, Joined, MemberLimitReached
from soketify.config import AppConfig, LimitsConfig

APP = AppConfig(id="100", key="contract-key", secret="contract-secret", subscription_count=True,
                max_connections=3)
OTHER_APP = AppConfig(id="200", key="other-key", secret="other-secret")
GRACE = 1


@implementer(IClusterListener)
class RecordingListener:
    """A node's hub, reduced to a record of what the engine told it."""

    def __init__(self):
        self.deliveries: list[tuple[str, str, str, str | None]] = []
        self.counts: list[tuple[str, str, int, bool]] = []
        self.online: list[tuple[str, str, bool]] = []
        self.members: list[tuple[str, str, str, bool]] = []  # (app, channel, user, present)
        self.terminated: list[tuple[str, str]] = []
        self.webhooks: list[tuple[str, dict]] = []
        self.lost: list[str] = []

    def deliver(self, app_id, channel, payload, except_socket_id):
        self.deliveries.append((app_id, channel, bytes(payload).decode(), except_socket_id))

    def subscription_count_changed(self, app_id, channel, count, here):
        self.counts.append((app_id, channel, count, here))

    def user_online_changed(self, app_id, user_id, online):
        self.online.append((app_id, user_id, online))

    def member_changed(self, app_id, channel, user_id, present):
        self.members.append((app_id, channel, user_id, present))

    def terminate_user_here(self, app_id, user_id):
        self.terminated.append((app_id, user_id))
        return 0

    def wants_webhook(self, app_id, name):
        return True

    def emit_webhook(self, app_id, event):
        self.webhooks.append((app_id, event))

    def webhooks_stored(self):
        return succeed(None)

    def state_lost(self, reason):
        self.lost.append(reason)

    def events_named(self, name: str) -> list[tuple[str, str, dict, str | None]]:
        """Deliveries of events with this name: (app, channel, data decoded, except socket)."""
        found = []
        for app_id, channel, text, except_socket_id in self.deliveries:
            frame = json.loads(text)
            if frame["event"] == name:
                found.append((app_id, channel, json.loads(frame["data"]), except_socket_id))
        return found


@dataclass
class Node:
    cluster: ICluster
    listener: RecordingListener = field(default_factory=RecordingListener)
    number: int = 1

    def socket(self, n: int) -> str:
        """A socket id of this node, as the hub makes them."""
        return f"{self.number}.{n}"


def distinct(nodes):
    return list({id(node.listener): node for node in nodes}.values())


def all_webhooks(nodes, name=None):
    """Webhook events emitted by any node, in no particular order between nodes."""
    return [event for node in distinct(nodes) for _, event in node.listener.webhooks
            if name is None or event["name"] == name]


def all_member_changes(nodes):
    """Membership changes reported by any node (for the console), in no order between nodes."""
    return [change for node in distinct(nodes) for change in node.listener.members]


async def wait_until(check, what: str, timeout: float = 10.0):
    """Poll a condition on the real reactor (cluster state arrives over the network), bounded."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


class NodesOnTheReactor:
    """For engines whose nodes talk over real connections: time is the reactor's, and each node's
    ``sync()`` is a round trip that ends after everything sent to it before."""

    async def until_ready(self, node: Node):
        await wait_until(lambda: node.cluster.ready, "the node to join the cluster")
        node.number = node.cluster.node_number

    def elapse(self, seconds):
        return task.deferLater(reactor, seconds, lambda: None)

    @inlineCallbacks
    def settle(self, nodes):
        # Twice, so that what one node's round does (claiming webhooks, reaping) reaches the
        # others too.
        for _ in range(2):
            for node in {id(n): n for n in nodes}.values():
                yield node.cluster.sync()

    async def _console_across_nodes(self):
        """Entries of every node reach a console on any node, marked with their node; a node
        stops sending once nobody watches anywhere."""
        from soketify.console_feed import ConsoleFeed, Viewer
        a, b = await self._start_nodes(2)
        feeds = {}
        for name, node in (("a", a), ("b", b)):
            feeds[name] = ConsoleFeed(reactor, name)
            node.cluster.share_console(feeds[name], reactor)
        self.assertFalse(feeds["b"].watching)
        seen = []
        viewer = Viewer(reactor, lambda entries, skipped: seen.extend(entries))
        feeds["a"].attach(viewer)
        await wait_until(lambda: feeds["b"].watching, "b to learn a console watches", 5)
        self.assertFalse(feeds["a"]._remote_call, "a does not answer its own watching")
        feeds["b"].add(APP.id, "api_message", event="on-b")
        feeds["a"].add(APP.id, "api_message", event="on-a")
        await wait_until(lambda: len(seen) == 2, "both entries at a's viewer", 5)
        self.assertEqual(sorted((e["node"], e["event"]) for e in seen), [("a", "on-a"), ("b", "on-b")])
        feeds["a"].detach(viewer)
        await wait_until(lambda: not feeds["b"].watching, "b to stop sending", 6)

    async def _round_trips_timed(self):
        """Each call the engine gets an answer to is timed (cluster_round_trip_seconds)."""
        [node] = await self._start_nodes(1)
        timed = []
        node.cluster.round_trip = timed.append
        await node.cluster.join(APP, "news", node.socket(1), None)
        await node.cluster.channel_stats(APP.id, ["news"])
        self.assertEqual(len(timed), 2)
        self.assertTrue(all(0 < seconds < 5 for seconds in timed), timed)


class ClusterContract:
    """Mixed into a trial TestCase together with an engine's make_nodes/elapse/settle."""

    @inlineCallbacks
    def test_engine_provides_the_interface(self):
        """Every engine provides ICluster."""
        (a,) = yield self.make_nodes(1)
        self.assertTrue(verifyObject(ICluster, a.cluster))
        self.assertTrue(a.cluster.ready)

    @inlineCallbacks
    def test_join_counts_each_socket_once_and_occupies_once(self):
        """A repeated join is harmless; the count and occupied state are cluster-wide."""
        a, b = yield self.make_nodes(2)
        first = yield a.cluster.join(APP, "news", a.socket(1), None)
        again = yield a.cluster.join(APP, "news", a.socket(1), None)
        other = yield b.cluster.join(APP, "news", b.socket(2), None)
        self.assertEqual((first.new, first.subscription_count), (True, 1))
        self.assertEqual((again.new, again.subscription_count), (False, 1))
        self.assertEqual((other.new, other.subscription_count), (True, 2))
        for node in (a, b):
            stats = yield node.cluster.channel_stats(APP.id, ["news", "empty"])
            self.assertEqual((stats["news"].subscription_count, stats["news"].occupied), (2, True))
            self.assertFalse(stats["empty"].occupied)
        yield self.settle([a, b])
        self.assertEqual(all_webhooks([a, b]), [{"name": "channel_occupied", "channel": "news"}])

    @inlineCallbacks
    def test_vacated_after_the_grace_unless_the_channel_returns(self):
        """Leaving and joining again on another node within the grace sends no webhook at all."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.join(APP, "room", a.socket(1), None)
        a.cluster.leave(APP, "room", a.socket(1), None)
        yield b.cluster.join(APP, "room", b.socket(2), None)
        yield self.elapse(GRACE + 1.5)
        yield self.settle([a, b])
        self.assertEqual(all_webhooks([a, b]), [{"name": "channel_occupied", "channel": "room"}])
        b.cluster.leave(APP, "room", b.socket(2), None)
        yield self.settle([a, b])
        self.assertEqual(len(all_webhooks([a, b])), 1, "vacated waits for the grace")
        yield self.elapse(GRACE + 1.5)
        yield self.settle([a, b])
        self.assertEqual(all_webhooks([a, b], "channel_vacated"), [{"name": "channel_vacated",
                                                                     "channel": "room"}])
        stats = yield a.cluster.occupied_channels(APP.id, "")
        self.assertEqual(stats, {})

    @inlineCallbacks
    def test_presence_snapshot_includes_self_and_others_hear_member_added_once(self):
        """subscription_succeeded's members include the joiner; member_added reaches each node once,
        never the joining socket."""
        a, b = yield self.make_nodes(2)
        first = yield a.cluster.join(APP, "presence-r", a.socket(1), ("alice", {"n": "A"}))
        second = yield b.cluster.join(APP, "presence-r", b.socket(2), ("bob", None))
        self.assertEqual(first.members, {"alice": {"n": "A"}})
        self.assertEqual(second.members, {"alice": {"n": "A"}, "bob": None})
        yield self.settle([a, b])
        alice = (APP.id, "presence-r", {"user_id": "alice", "user_info": {"n": "A"}}, a.socket(1))
        bob = (APP.id, "presence-r", {"user_id": "bob", "user_info": None}, b.socket(2))
        # Each node with subscribers hears each member_added once (b had none when alice joined).
        self.assertEqual(a.listener.events_named(protocol.MEMBER_ADDED), [alice, bob])
        self.assertEqual(b.listener.events_named(protocol.MEMBER_ADDED)[-1:], [bob])
        stats = yield a.cluster.channel_stats(APP.id, ["presence-r"])
        self.assertEqual((stats["presence-r"].user_count, stats["presence-r"].subscription_count),
                         (2, 2))
        # Any node lists every member with its user_info (the console's inspector shows them).
        members = yield b.cluster.channel_members(APP.id, "presence-r")
        self.assertEqual(members, {"alice": {"n": "A"}, "bob": None})
        self.assertEqual(sorted(all_webhooks([a, b], "member_added"), key=str), [
            {"name": "member_added", "channel": "presence-r", "user_id": "alice"},
            {"name": "member_added", "channel": "presence-r", "user_id": "bob"}])

    @inlineCallbacks
    def test_same_user_on_two_nodes_is_one_member_removed_after_its_last_leave(self):
        """A user connected through two nodes is added once and removed once, after its last leave."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.join(APP, "presence-r", a.socket(1), ("u", None))
        joined = yield b.cluster.join(APP, "presence-r", b.socket(2), ("u", None))
        self.assertEqual(joined.members, {"u": None})
        members = yield b.cluster.channel_members(APP.id, "presence-r")
        self.assertEqual(members, {"u": None})
        a.cluster.leave(APP, "presence-r", a.socket(1), "u")
        yield self.settle([a, b])
        self.assertEqual(len(a.listener.events_named(protocol.MEMBER_ADDED)), 1)
        for node in distinct([a, b]):
            self.assertEqual(node.listener.events_named(protocol.MEMBER_REMOVED), [])
        # The console hears of the membership once, from the node whose step it was.
        self.assertEqual(all_member_changes([a, b]), [(APP.id, "presence-r", "u", True)])
        b.cluster.leave(APP, "presence-r", b.socket(2), "u")
        yield self.settle([a, b])
        self.assertEqual(b.listener.events_named(protocol.MEMBER_REMOVED),
                         [(APP.id, "presence-r", {"user_id": "u"}, None)])
        # At once, not after the webhooks' grace.
        self.assertEqual(all_member_changes([a, b]), [(APP.id, "presence-r", "u", True),
                                                      (APP.id, "presence-r", "u", False)])
        yield self.elapse(GRACE + 1.5)
        yield self.settle([a, b])
        self.assertEqual(all_webhooks([a, b], "member_removed"),
                         [{"name": "member_removed", "channel": "presence-r", "user_id": "u"}])

    @inlineCallbacks
    def test_simultaneous_first_joins_of_one_user_add_one_member(self):
        """Two nodes joining the same new user at the same moment give exactly one member_added."""
        a, b = yield self.make_nodes(2)
        yield gatherResults([a.cluster.join(APP, "presence-s", a.socket(1), ("u", None)),
                             b.cluster.join(APP, "presence-s", b.socket(2), ("u", None))])
        yield self.settle([a, b])
        heard = [len(node.listener.events_named(protocol.MEMBER_ADDED)) for node in distinct([a, b])]
        self.assertEqual(max(heard), 1, heard)  # each node subscribed before it hears it once
        self.assertEqual(len(all_webhooks([a, b], "member_added")), 1)
        self.assertEqual(all_member_changes([a, b]), [(APP.id, "presence-s", "u", True)])
        self.assertEqual(len(all_webhooks([a, b], "channel_occupied")), 1)

    @inlineCallbacks
    def test_member_limit_counts_distinct_users_in_the_cluster(self):
        """The app's presence limit refuses a new user when the channel is full; a member may add
        sockets."""
        a, b = yield self.make_nodes(2, max_presence_members=2)
        app = APP.with_limits(replace(LimitsConfig(), max_presence_members=2))
        yield a.cluster.join(app, "presence-f", a.socket(1), ("u1", None))
        yield b.cluster.join(app, "presence-f", b.socket(2), ("u2", None))
        refused = yield a.cluster.join(app, "presence-f", a.socket(3), ("u3", None))
        self.assertEqual(refused, MemberLimitReached(2))
        again = yield b.cluster.join(app, "presence-f", b.socket(4), ("u1", None))
        self.assertIsInstance(again, Joined)
        stats = yield a.cluster.channel_stats(APP.id, ["presence-f"])
        self.assertEqual((stats["presence-f"].subscription_count, stats["presence-f"].user_count),
                         (3, 2))

    @inlineCallbacks
    def test_publish_reaches_every_node_once_without_the_excluded_socket(self):
        """An event published through one node is delivered once per node, naming the excluded socket."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.join(APP, "news", a.socket(1), None)
        yield b.cluster.join(APP, "news", b.socket(2), None)
        text = protocol.event("headline", "news", '{"x":1}')
        a.cluster.publish(APP, "news", text, a.socket(1))
        yield self.settle([a, b])
        for node in distinct([a, b]):
            self.assertEqual([d for d in node.listener.deliveries if d[1] == "news"],
                             [(APP.id, "news", text, a.socket(1))])

    @inlineCallbacks
    def test_apps_do_not_share_channels(self):
        """The same channel name in two apps is two channels."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.join(APP, "news", a.socket(1), None)
        b.cluster.publish(OTHER_APP, "news", protocol.event("e", "news", "1"), None)
        yield self.settle([a, b])
        stats = yield b.cluster.channel_stats(OTHER_APP.id, ["news"])
        self.assertFalse(stats["news"].occupied)
        for node in distinct([a, b]):
            self.assertEqual([d for d in node.listener.deliveries if d[0] == APP.id], [])

    @inlineCallbacks
    def test_cache_filled_through_one_node_is_replayed_through_another(self):
        """The last event of a cache channel is kept cluster-wide with its TTL; one miss webhook."""
        a, b = yield self.make_nodes(2)
        missed = yield b.cluster.join(APP, "cache-loc", b.socket(1), None)
        self.assertIsNone(missed.cached)
        yield b.cluster.join(APP, "cache-loc", b.socket(2), None)
        yield self.settle([a, b])
        self.assertEqual(all_webhooks([a, b], "cache_miss"),
                         [{"name": "cache_miss", "channel": "cache-loc"}])
        text = protocol.event("pos", "cache-loc", "7")
        a.cluster.publish(APP, "cache-loc", text, None, ("pos", "7"))
        yield self.settle([a, b])
        joined = yield b.cluster.join(APP, "cache-loc", b.socket(3), None)
        self.assertEqual(joined.cached, text)
        cached = yield a.cluster.cached_event(APP.id, "cache-loc")
        self.assertEqual((cached.name, cached.data), ("pos", "7"))
        self.assertTrue(0 < cached.ttl <= 1800, cached.ttl)
        self.assertIsNone((yield a.cluster.cached_event(APP.id, "cache-other")))

    @inlineCallbacks
    def test_users_online_and_offline_across_nodes(self):
        """A user is online from its first sign-in anywhere to its last sign-out; every node hears it."""
        a, b = yield self.make_nodes(2)
        online = yield a.cluster.sign_in(APP, a.socket(1), "u1", ("u2", "u3"))
        self.assertEqual(set(online), set())
        yield b.cluster.sign_in(APP, b.socket(2), "u2", ())
        yield b.cluster.sign_in(APP, b.socket(3), "u2", ())
        online = yield b.cluster.sign_in(APP, b.socket(4), "u3", ("u1", "u2", "u9"))
        self.assertEqual(set(online), {"u1", "u2"})
        b.cluster.sign_out(APP, b.socket(2), "u2")
        yield self.settle([a, b])
        b.cluster.sign_out(APP, b.socket(3), "u2")
        yield self.settle([a, b])
        for node in distinct([a, b]):
            self.assertEqual([c for c in node.listener.online if c[1] == "u2"],
                             [(APP.id, "u2", True), (APP.id, "u2", False)])

    @inlineCallbacks
    def test_any_node_lists_the_sockets_of_a_user_in_the_cluster(self):
        """For the console's inspector: every signed-in socket of the user, wherever it is."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.sign_in(APP, a.socket(1), "u1", ())
        yield b.cluster.sign_in(APP, b.socket(2), "u1", ())
        yield b.cluster.sign_in(APP, b.socket(3), "u2", ())
        yield a.cluster.sign_in(APP, a.socket(4), "u1", ())
        listed = yield a.cluster.user_sockets(APP.id, "u1")
        expected = sorted({a.socket(1), b.socket(2), a.socket(4)})
        self.assertEqual(listed, expected)
        other_app = yield b.cluster.user_sockets(OTHER_APP.id, "u1")
        self.assertEqual(other_app, [])
        b.cluster.sign_out(APP, b.socket(2), "u1")
        yield self.settle([a, b])
        listed = yield b.cluster.user_sockets(APP.id, "u1")
        self.assertEqual(listed, sorted({a.socket(1), a.socket(4)}))
        for socket_id in (a.socket(1), a.socket(4)):
            a.cluster.sign_out(APP, socket_id, "u1")
        yield self.settle([a, b])
        listed = yield b.cluster.user_sockets(APP.id, "u1")
        self.assertEqual(listed, [])

    @inlineCallbacks
    def test_terminate_reaches_every_node(self):
        """Terminating a user asks every node to close its connections."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.terminate_user(APP.id, "u1")
        yield self.settle([a, b])
        for node in distinct([a, b]):
            self.assertEqual(node.listener.terminated, [(APP.id, "u1")])

    @inlineCallbacks
    def test_join_and_leave_answer_the_new_count_and_other_nodes_hear_it(self):
        """Join and leave answer the cluster-wide count; the other nodes hear each change."""
        a, b = yield self.make_nodes(2)
        first = yield a.cluster.join(APP, "news", a.socket(1), None)
        second = yield b.cluster.join(APP, "news", b.socket(2), None)
        left = yield b.cluster.leave(APP, "news", b.socket(2), None)
        again = yield b.cluster.leave(APP, "news", b.socket(2), None)
        self.assertEqual((first.subscription_count, second.subscription_count, left, again),
                         (1, 2, 1, None))
        yield self.settle([a, b])
        if a is b:
            self.assertEqual(a.listener.counts, [], "one node: every change is its own")
        else:
            self.assertEqual(a.listener.counts, [(APP.id, "news", 2, False),
                                                 (APP.id, "news", 1, False)])
            self.assertEqual(b.listener.counts, [])

    @inlineCallbacks
    def test_occupied_channels_by_prefix_with_counts(self):
        """The occupied channels of an app, filtered by prefix, with subscriber and user counts."""
        a, b = yield self.make_nodes(2)
        yield a.cluster.join(APP, "presence-a", a.socket(1), ("u1", None))
        yield b.cluster.join(APP, "presence-a", b.socket(2), ("u1", None))
        yield b.cluster.join(APP, "presence-b", b.socket(2), ("u2", None))
        yield a.cluster.join(APP, "public", a.socket(1), None)
        listed = yield b.cluster.occupied_channels(APP.id, "presence-")
        self.assertEqual({name: (s.subscription_count, s.user_count) for name, s in listed.items()},
                         {"presence-a": (2, 1), "presence-b": (1, 1)})
        everything = yield a.cluster.occupied_channels(APP.id, "")
        self.assertEqual(sorted(everything), ["presence-a", "presence-b", "public"])

    @inlineCallbacks
    def test_connection_quota_is_cluster_wide(self):
        """max_connections admits that many connections; a closed one frees its place."""
        a, b = yield self.make_nodes(2)
        admitted = [a.cluster.admit_connection(APP), a.cluster.admit_connection(APP)]
        yield self.settle([a, b])
        admitted += [b.cluster.admit_connection(APP), b.cluster.admit_connection(APP)]
        self.assertEqual(admitted, [True, True, True, False])
        a.cluster.connection_closed(APP.id)
        yield self.settle([a, b])
        self.assertTrue(b.cluster.admit_connection(APP))
