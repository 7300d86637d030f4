"""The cluster contract against the Redis engine on a real redis-server, plus what only a cluster of
processes can go through: a node that dies, a Redis that restarts empty, a node declared dead."""

from __future__ import annotations

import itertools
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial import unittest

from soketify import protocol
from soketify.cluster import redis as redis_engine
from soketify.cluster.interfaces import MemberLimitReached
from soketify.cluster.redis import RedisCluster
from soketify.config import ClusterConfig, LimitsConfig
from tests.cluster_contract import (
    APP, GRACE, OTHER_APP, ClusterContract, Node, NodesOnTheReactor, all_member_changes, all_webhooks,
    wait_until)
from tests.redis_server import start_redis

NODE_TIMEOUT = 2
_prefixes = itertools.count(1)


class RedisNodes(NodesOnTheReactor):
    """Starts a redis-server for the test and engines (nodes) on it."""

    timeout = 60

    async def _start_nodes(self, count, **limits):
        if getattr(self, "redis", None) is None:
            self.redis = await start_redis(self, reactor)
            self.prefix = f"test{next(_prefixes)}"
        nodes = [self.start_node(**limits) for _ in range(count)]
        for node in nodes:
            await self.until_ready(node)
        return nodes

    def make_nodes(self, count, **limits):
        return ensureDeferred(self._start_nodes(count, **limits))

    def start_node(self, **limits) -> Node:
        settings = ClusterConfig(engine="redis", redis_url=self.redis.url, prefix=self.prefix,
                                 node_timeout=NODE_TIMEOUT)
        cluster = RedisCluster(reactor, [APP, OTHER_APP], replace(LimitsConfig(), **limits), settings,
                               GRACE)
        node = Node(cluster)
        cluster.attach(node.listener)
        cluster.startService()
        self.addCleanup(lambda: cluster.stopService() if cluster.running else None)
        return node


class RedisClusterContractTests(RedisNodes, ClusterContract, unittest.TestCase):
    """Every promise of the contract, with each node a separate engine on one Redis."""


def kill(node: Node):
    """What kill -9 leaves behind: no heartbeat, no goodbye, the connection gone."""
    cluster = node.cluster
    for loop in (cluster._heartbeat, cluster._claims):
        if loop.running:
            loop.stop()
    cluster._redis = None
    return cluster._client.stopService()


class RedisFailureTests(RedisNodes, unittest.TestCase):
    async def _killed_node_is_cleaned_up_once(self):
        a, b, c = await self._start_nodes(3)
        await a.cluster.join(APP, "presence-room", a.socket(1), ("alice", None))
        await b.cluster.join(APP, "presence-room", b.socket(1), ("bob", None))
        await b.cluster.join(APP, "news", b.socket(1), None)
        await a.cluster.sign_in(APP, a.socket(1), "alice", ("bob",))
        await b.cluster.sign_in(APP, b.socket(1), "bob", ())
        await self.settle([a, b, c])
        killed_at = reactor.seconds()
        await kill(b)
        await wait_until(lambda: a.listener.events_named(protocol.MEMBER_REMOVED),
                         "member_removed for the dead node's user", NODE_TIMEOUT + 3)
        self.assertLess(reactor.seconds() - killed_at, NODE_TIMEOUT + 2)
        await self.settle([a, c])
        self.assertEqual(a.listener.events_named(protocol.MEMBER_REMOVED),
                         [(APP.id, "presence-room", {"user_id": "bob"}, None)])
        # The survivor that removed it tells its console, once in the cluster.
        self.assertEqual([change for change in all_member_changes([a, c]) if not change[3]],
                         [(APP.id, "presence-room", "bob", False)])
        self.assertIn((APP.id, "bob", False), a.listener.online)
        self.assertEqual(await a.cluster.user_sockets(APP.id, "bob"), [])
        stats = await a.cluster.channel_stats(APP.id, ["presence-room", "news"])
        self.assertEqual(stats["presence-room"].user_count, 1)
        self.assertFalse(stats["news"].occupied)
        await wait_until(lambda: len(all_webhooks([a, c], "member_removed")) == 1,
                         "the member_removed webhook", NODE_TIMEOUT + GRACE + 3)
        self.assertLess(reactor.seconds() - killed_at, NODE_TIMEOUT + GRACE + 1)
        await wait_until(lambda: all_webhooks([a, c], "channel_vacated"), "channel_vacated", 3)
        await self.settle([a, c])
        self.assertEqual(all_webhooks([a, c], "member_removed"),
                         [{"name": "member_removed", "channel": "presence-room", "user_id": "bob"}])
        self.assertEqual(all_webhooks([a, c], "channel_vacated"),
                         [{"name": "channel_vacated", "channel": "news"}])

    def test_killed_node_is_cleaned_up_once_by_the_survivors(self):
        """kill -9 of a node: within node_timeout + 2 s its members are removed and its users are
        offline, once; member_removed and channel_vacated webhooks follow after the grace."""
        return ensureDeferred(self._killed_node_is_cleaned_up_once())

    async def _member_back_through_another_node(self):
        a, b = await self._start_nodes(2)
        await a.cluster.join(APP, "presence-room", a.socket(1), ("alice", None))
        await b.cluster.join(APP, "presence-room", b.socket(1), ("bob", None))
        await kill(b)
        c = self.start_node()
        await self.until_ready(c)
        await c.cluster.join(APP, "presence-room", c.socket(1), ("bob", None))
        await self.elapse(NODE_TIMEOUT + GRACE + 1.5)
        await self.settle([a, c])
        self.assertEqual(a.listener.events_named(protocol.MEMBER_REMOVED), [])
        self.assertEqual(all_webhooks([a, c], "member_removed"), [])
        members = await a.cluster.channel_members(APP.id, "presence-room")
        self.assertEqual(sorted(members), ["alice", "bob"])

    def test_member_back_through_another_node_is_never_removed(self):
        """A user whose node died and who reconnects through another node before the clean-up is
        never announced as gone, to members or webhooks."""
        return ensureDeferred(self._member_back_through_another_node())

    async def _graceful_stop_hands_members_over(self):
        a, b = await self._start_nodes(2)
        await a.cluster.join(APP, "presence-room", a.socket(1), ("alice", None))
        await b.cluster.join(APP, "presence-room", b.socket(1), ("bob", None))
        await b.cluster.join(APP, "presence-room", b.socket(2), ("carol", None))
        app = replace(APP, max_connections=2)
        self.assertEqual([b.cluster.admit_connection(app), b.cluster.admit_connection(app)],
                         [True, True])
        await self.settle([a, b])
        self.assertFalse(a.cluster.admit_connection(app))
        b.cluster.draining()
        await self.settle([a, b])
        self.assertTrue(a.cluster.admit_connection(app), "the moving clients no longer count")
        # The node moves its clients: they close there (bob also reconnects through a)...
        b.cluster.leave(APP, "presence-room", b.socket(1), "bob")
        b.cluster.leave(APP, "presence-room", b.socket(2), "carol")
        await b.cluster.stopService()
        await a.cluster.join(APP, "presence-room", a.socket(2), ("bob", None))
        members = await a.cluster.channel_members(APP.id, "presence-room")
        self.assertEqual(sorted(members), ["alice", "bob", "carol"])
        # ...and once b's deadline passes, only carol, who did not come back, is gone.
        await wait_until(lambda: a.listener.events_named(protocol.MEMBER_REMOVED),
                         "carol's member_removed", NODE_TIMEOUT + 3)
        await self.elapse(GRACE + 1.5)
        await self.settle([a])
        self.assertEqual(a.listener.events_named(protocol.MEMBER_REMOVED),
                         [(APP.id, "presence-room", {"user_id": "carol"}, None)])
        self.assertEqual(all_webhooks([a], "member_removed"),
                         [{"name": "member_removed", "channel": "presence-room", "user_id": "carol"}])
        members = await a.cluster.channel_members(APP.id, "presence-room")
        self.assertEqual(sorted(members), ["alice", "bob"])

    def test_graceful_stop_hands_members_over_without_removing_them(self):
        """A node stopping gracefully lets what it held expire with it: members who reconnect through
        another node are never announced as gone; the others are removed after node_timeout."""
        return ensureDeferred(self._graceful_stop_hands_members_over())

    async def _redis_restarted_empty(self):
        a, b = await self._start_nodes(2)
        await a.cluster.join(APP, "presence-room", a.socket(1), ("alice", None))
        numbers = (a.number, b.number)
        await self.redis.restart()
        await wait_until(lambda: a.listener.lost and b.listener.lost and a.cluster.ready
                         and b.cluster.ready, "both nodes to rejoin the restarted Redis", 10)
        self.assertNotIn(a.cluster.node_number, numbers)
        self.assertNotEqual(a.cluster.node_number, b.cluster.node_number)
        a.number, b.number = a.cluster.node_number, b.cluster.node_number
        await b.cluster.join(APP, "news", b.socket(1), None)
        await a.cluster.join(APP, "news", a.socket(1), None)
        a.cluster.publish(APP, "news", protocol.event("e", "news", "1"), None)
        await self.settle([a, b])
        for node in (a, b):
            self.assertEqual([d[2] for d in node.listener.deliveries if d[1] == "news"],
                             [protocol.event("e", "news", "1")])

    def test_redis_restarted_empty_every_node_rejoins_and_moves_its_clients(self):
        """Redis back empty: each node reconnects by itself, joins as a new node, asks its clients to
        reconnect (4200), and delivery between nodes works again, once."""
        return ensureDeferred(self._redis_restarted_empty())

    async def _slow_node_cut_off(self):
        self.redis = await start_redis(self, reactor, extra_args=(
            "--client-output-buffer-limit", "pubsub 256kb 128kb 1"))
        self.prefix = f"test{next(_prefixes)}"
        a, b = await self._start_nodes(2)
        await a.cluster.join(APP, "news", a.socket(1), None)
        await b.cluster.join(APP, "news", b.socket(1), None)
        old = b.number
        b.cluster._redis.transport.pauseProducing()  # b stops reading, as a node too busy would
        big = protocol.event("e", "news", "x" * 2000)
        for _ in range(250):  # 10 MB in all: more than the kernel's buffers and the 256 KB limit
            for _ in range(20):
                a.cluster.publish(APP, "news", big, None)
            await a.cluster.sync()  # a reads as it goes: only b falls behind
        b.cluster._redis.transport.resumeProducing()
        await wait_until(lambda: b.listener.lost and b.cluster.ready, "b cut off and back", 10)
        self.assertNotEqual(b.cluster.node_number, old)
        self.assertTrue(a.cluster.ready)
        self.assertEqual(a.listener.lost, [])
        a.cluster.publish(APP, "news", protocol.event("after", "news", "1"), None)
        await self.settle([a])
        self.assertEqual(a.listener.deliveries[-1][2], protocol.event("after", "news", "1"))
        self.assertEqual(sum(1 for d in a.listener.deliveries if d[1] == "news"), 5001)

    def test_slow_node_is_cut_off_by_redis_and_rejoins_without_harming_others(self):
        """A node that stops reading is disconnected by Redis' pub/sub output limit, then reconnects
        as a new node and moves its clients; the other node keeps every event, once."""
        return ensureDeferred(self._slow_node_cut_off())

    async def _declared_dead_rejoins(self):
        a, b = await self._start_nodes(2)
        old = b.number
        await b.cluster.join(APP, "presence-room", b.socket(1), ("bob", None))
        redis = a.cluster._redis
        await redis.execute("ZADD", f"{self.prefix}:nodes", 0, str(old))
        await a.cluster.sync()
        await wait_until(lambda: b.listener.lost and b.cluster.ready, "b to join again", 5)
        self.assertNotEqual(b.cluster.node_number, old)
        members = await a.cluster.channel_members(APP.id, "presence-room")
        self.assertEqual(members, {})
        channel = f"{b.cluster._app_keys[APP.id]}:e:presence-room"
        self.assertEqual(await redis.execute("PUBSUB", "NUMSUB", channel), [channel.encode(), 0],
                         "the old incarnation's subscriptions went with its connection")

    async def _refused_join_leaves_nothing(self):
        (a,) = await self._start_nodes(1)
        app = APP.with_limits(replace(LimitsConfig(), max_presence_members=1))
        await a.cluster.join(app, "presence-full", a.socket(1), ("u1", None))
        for n in range(2, 6):
            refused = await a.cluster.join(app, "presence-full", a.socket(n), (f"u{n}", None))
            self.assertEqual(refused, MemberLimitReached(1))
        await a.cluster.leave(APP, "presence-full", a.socket(1), "u1")
        await self.settle([a])
        channel = f"{a.cluster._app_keys[APP.id]}:e:presence-full"
        self.assertEqual(await a.cluster._redis.execute("PUBSUB", "NUMSUB", channel),
                         [channel.encode(), 0])
        self.assertNotIn(channel.encode(), a.cluster._subscribed)

    def test_refused_presence_joins_leave_no_subscription_behind(self):
        """Joins refused at the member limit keep nothing: once the last member leaves, the node
        no longer receives the channel's traffic."""
        return ensureDeferred(self._refused_join_leaves_nothing())

    async def _large_node_reaped_in_chunks(self):
        self.patch(redis_engine, "REAP_BATCH", 7)
        a, b = await self._start_nodes(2)
        for n in range(40):
            await b.cluster.join(APP, f"room-{n % 5}", b.socket(n), None)
            await b.cluster.join(APP, "presence-big", b.socket(n), (f"u{n}", None))
            await b.cluster.sign_in(APP, b.socket(n), f"u{n}", ())
        await a.cluster.join(APP, "presence-big", a.socket(1), ("watcher", None))
        await a.cluster.sign_in(APP, a.socket(1), "watcher", tuple(f"u{n}" for n in range(40)))
        await kill(b)
        await wait_until(lambda: len(a.listener.events_named(protocol.MEMBER_REMOVED)) == 40,
                         "40 member_removed", NODE_TIMEOUT + 5)
        await self.settle([a])
        stats = await a.cluster.occupied_channels(APP.id, "")
        self.assertEqual(list(stats), ["presence-big"])
        self.assertEqual(stats["presence-big"].subscription_count, 1)
        self.assertEqual(sorted(c[1] for c in a.listener.online if not c[2]),
                         sorted(f"u{n}" for n in range(40)))
        keys = await a.cluster._redis.execute("KEYS", f"{self.prefix}:n:{b.number}:*")
        self.assertEqual(keys, [])
        self.assertEqual(await a.cluster._redis.execute("SMEMBERS", f"{self.prefix}:reaping"), [])

    def test_a_console_on_one_node_shows_entries_of_every_node(self):
        """Issue 12: entries from every node of a Redis cluster reach a console on any node,
        marked with their node; nodes build none once nobody watches anywhere."""
        return ensureDeferred(self._console_across_nodes())

    def test_each_answered_script_is_timed_for_metrics(self):
        """cluster_round_trip_seconds{engine="redis"} is told of every answered script."""
        return ensureDeferred(self._round_trips_timed())

    def test_a_large_dead_node_is_removed_in_bounded_chunks(self):
        """A dead node's 120 entries are removed a few at a time (Redis is never blocked long), all
        of them, each once, and nothing of it is left in Redis."""
        return ensureDeferred(self._large_node_reaped_in_chunks())

    async def _claimed_webhooks_survive_their_node(self):
        a, b = await self._start_nodes(2)
        for node in (a, b):
            node.cluster._claims.stop()  # b alone takes the event, once
        never = Deferred()
        b.listener.webhooks_stored = lambda: never  # b takes events but never gets them stored
        await b.cluster.join(APP, "news", b.socket(1), None)
        b.cluster.claim_webhooks()
        await wait_until(lambda: all_webhooks([b], "channel_occupied"), "b to take the event")
        await kill(b)
        a.cluster._claims.start(redis_engine.CLAIM_INTERVAL)
        await wait_until(lambda: all_webhooks([a], "channel_occupied"),
                         "the occupied event back in the queue", NODE_TIMEOUT + 5)
        self.assertEqual(all_webhooks([a], "channel_occupied"),
                         [{"name": "channel_occupied", "channel": "news"}])

    def test_webhook_events_a_dead_node_never_stored_are_sent_by_another(self):
        """A node that took webhook events and died before writing them to its outbox does not lose
        them: its removal puts them back, and a surviving node sends them."""
        return ensureDeferred(self._claimed_webhooks_survive_their_node())

    async def _cut_off_node_moves_its_clients(self):
        (a,) = await self._start_nodes(1)
        await self.redis.stop()
        lost_at = reactor.seconds()
        await wait_until(lambda: a.listener.lost, "the clients to be moved", NODE_TIMEOUT + 3)
        self.assertGreaterEqual(reactor.seconds() - lost_at, NODE_TIMEOUT - 0.5)
        self.assertFalse(a.cluster.ready)

    def test_a_node_cut_off_from_redis_moves_its_clients_after_node_timeout(self):
        """A node that cannot reach Redis for node_timeout (the others are removing its members by
        then) asks its clients to reconnect, so that a load balancer can send them elsewhere."""
        return ensureDeferred(self._cut_off_node_moves_its_clients())

    def test_node_declared_dead_joins_again_as_a_new_node(self):
        """A node the others reaped (a pause longer than node_timeout) finds out at its next
        heartbeat, moves its clients and joins as a new node; its old members stay gone."""
        return ensureDeferred(self._declared_dead_rejoins())
