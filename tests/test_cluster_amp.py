"""The cluster contract against the ``amp`` engine: worker engines linked to one supervisor state
over real socketpairs, as the processes of one host are; plus what only workers go through: a
worker whose process ends, and values beyond AMP's 65,535-byte limit."""

from __future__ import annotations

import json
import socket
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, succeed
from twisted.trial import unittest

from soketify import protocol
from soketify.cluster.amp_host import AmpHost
from soketify.cluster.amp_worker import AmpCluster, Supervision
from soketify.cluster.interfaces import ClusterUnavailable
from soketify.config import LimitsConfig
from soketify.console_feed import ConsoleFeed, Viewer
from tests.cluster_contract import (
    APP, GRACE, OTHER_APP, ClusterContract, Node, NodesOnTheReactor, all_webhooks, wait_until)


class RecordingSink:
    """The supervisor's webhook sink, writing into one node's record (all_webhooks reads them)."""

    def __init__(self):
        self.node = None

    def emit(self, app_id, event):
        self.node.listener.webhooks.append((app_id, event))

    def wants(self, app_id, name):
        return True

    def stored(self):
        return succeed(None)


def link(host: AmpHost, worker: AmpCluster) -> None:
    """Connect a worker to the host over a socketpair, as the supervisor does with a process."""
    ours, theirs = socket.socketpair()
    for end, factory in ((ours, host.factory()), (theirs, worker.supervision.factory())):
        end.setblocking(False)
        reactor.adoptStreamConnection(end.fileno(), socket.AF_UNIX, factory)
        end.close()


class AmpNodes(NodesOnTheReactor):
    timeout = 30

    async def _start_nodes(self, count, **limits):
        self.sink = RecordingSink()
        node_limits = replace(LimitsConfig(), **limits)
        # The supervisor's apps carry their limits, as a config read from a file gives them.
        self.host = AmpHost(reactor, [app.with_limits(node_limits) for app in (APP, OTHER_APP)],
                            node_limits, GRACE,
                            self.sink, workers_wanted=count)
        # Under workers the supervisor reports membership, to its console feed: watched here, its
        # member entries land in the first node's record (all_member_changes reads them).
        feed = ConsoleFeed(reactor, "supervisor")
        feed.attach(Viewer(reactor, lambda entries, skipped: self.sink.node.listener.members.extend(
            (e["app_id"], e["channel"], e["user_id"], e["type"] == "member_added") for e in entries)))
        self.host.share_console(feed)
        self.host.start()
        self.addCleanup(self.host.stop)
        nodes = [self.start_node(index) for index in range(count)]
        self.sink.node = nodes[0]
        for node in nodes:
            await self.until_ready(node)
        return nodes

    def make_nodes(self, count, **limits):
        return ensureDeferred(self._start_nodes(count, **limits))

    def start_node(self, index=0) -> Node:
        cluster = AmpCluster([APP, OTHER_APP], Supervision(index, on_lost=lambda: None))
        node = Node(cluster)
        cluster.attach(node.listener)
        cluster.startService()
        link(self.host, cluster)
        cluster.supervision.when_registered().addCallback(lambda s: s.report_listening())
        self.addCleanup(lambda: cluster.stopService() if cluster.running else None)
        return node

class AmpClusterContractTests(AmpNodes, ClusterContract, unittest.TestCase):
    """Every promise of the contract, with each worker an engine linked to one supervisor."""


class AmpWorkerTests(AmpNodes, unittest.TestCase):
    def test_a_console_on_one_worker_shows_entries_of_every_worker(self):
        """Issue 12: through the supervisor, marked with their worker."""
        return ensureDeferred(self._console_across_nodes())

    def test_each_answered_call_is_timed_for_metrics(self):
        """cluster_round_trip_seconds{engine="amp"} is told of every call the supervisor answers."""
        return ensureDeferred(self._round_trips_timed())

    def test_a_worker_that_ends_is_removed_at_once(self):
        """When a worker's link closes (its process ended), its members are removed and its users
        are offline at once, without waiting for a timeout; webhooks follow after the grace."""
        return ensureDeferred(self._worker_ends())

    async def _worker_ends(self):
        a, b = await self._start_nodes(2)
        await a.cluster.join(APP, "presence-room", a.socket(1), ("alice", None))
        await b.cluster.join(APP, "presence-room", b.socket(1), ("bob", None))
        await b.cluster.join(APP, "news", b.socket(1), None)
        await a.cluster.join(APP, "news", a.socket(2), None)
        await a.cluster.sign_in(APP, a.socket(1), "alice", ("bob",))
        await b.cluster.sign_in(APP, b.socket(1), "bob", ())
        self.assertTrue(b.cluster.admit_connection(APP))
        await self.settle([a, b])
        b.cluster.supervision.link.transport.abortConnection()
        await wait_until(lambda: a.listener.events_named(protocol.MEMBER_REMOVED),
                         "member_removed", 2)
        self.assertEqual(a.listener.events_named(protocol.MEMBER_REMOVED),
                         [(APP.id, "presence-room", {"user_id": "bob"}, None)])
        # The supervisor's console entry, at once (its webhook waits for the grace).
        await wait_until(lambda: len(a.listener.members) == 3, "the member_removed console entry", 2)
        self.assertEqual(a.listener.members[2], (APP.id, "presence-room", "bob", False))
        self.assertIn((APP.id, "bob", False), a.listener.online)
        self.assertEqual(a.listener.counts[-1], (APP.id, "news", 1, False))
        self.assertEqual(a.cluster.supervision.elsewhere[APP.id], 0, "its connections no longer count")
        stats = await a.cluster.channel_stats(APP.id, ["presence-room", "news"])
        self.assertEqual((stats["presence-room"].user_count, stats["news"].subscription_count),
                         (1, 1))
        self.assertTrue(a.cluster.ready, "the other workers go on admitting clients")
        self.assertFalse(a.cluster.supervision.serving, "but /ready says fewer workers are up")
        await self.elapse(GRACE + 1)
        self.assertEqual(all_webhooks([a], "member_removed"),
                         [{"name": "member_removed", "channel": "presence-room", "user_id": "bob"}])
        c = self.start_node(1)
        await self.until_ready(c)
        self.assertTrue(a.cluster.supervision.serving, "the replacement is up: the host serves")
        self.assertNotEqual(c.number, b.number, "a new process gets new socket ids")

    def test_values_beyond_the_amp_limit_pass(self):
        """The largest event (10 KB of data that doubles when escaped) and a presence snapshot of
        100 members with 1 KB user_info each pass the 65,535-byte AMP value limit intact."""
        return ensureDeferred(self._big_values())

    async def _big_values(self):
        a, b = await self._start_nodes(2)
        info = {"bio": "é\"" * 340}  # about 1 KB of JSON, escapes included
        for n in range(100):
            await a.cluster.join(APP, "presence-big", a.socket(n + 1), (f"user-{n}", info))
        joined = await b.cluster.join(APP, "presence-big", b.socket(1), ("user-0", info))
        self.assertEqual(len(joined.members), 100)
        self.assertEqual(joined.members["user-99"], info)
        data = '"\\' * 5000 + "x" * 5000  # 10 KB of data, about 25 KB once JSON-encoded twice
        text = protocol.event("big", "cache-big", data)
        self.assertGreater(len(text) * 3, 65535)
        a.cluster.publish(APP, "cache-big", text * 3, None, ("big", data * 3))
        await self.settle([a, b])
        delivered = [d for d in b.listener.deliveries if d[1] == "cache-big"]
        self.assertEqual(delivered, [(APP.id, "cache-big", text * 3, None)])
        cached = await b.cluster.cached_event(APP.id, "cache-big")
        self.assertEqual((cached.text, cached.data), (text * 3, data * 3))
        stats = await b.cluster.channel_stats(APP.id, [f"c-{n:0200d}" for n in range(400)])
        self.assertEqual(len(stats), 400)
        self.assertEqual(json.loads(json.dumps(joined.members))["user-5"], info)

    def test_a_failing_command_is_an_error_for_its_caller_not_for_the_link(self):
        """A command the supervisor fails to handle (a member id that cannot be encoded) is refused
        as 'cluster unavailable' to that one caller; it leaves no state behind and the worker's
        link, and everything else on it, carries on."""
        return ensureDeferred(self._failing_command())

    async def _failing_command(self):
        a, b = await self._start_nodes(2)
        self.flushLoggedErrors()
        failed = a.cluster.join(APP, "presence-x", a.socket(1), ("bad\ud800", None))
        await self.assertFailure(failed, ClusterUnavailable)
        self.assertEqual(len(self.flushLoggedErrors(UnicodeEncodeError)), 1, "logged once, there")
        stats = await b.cluster.channel_stats(APP.id, ["presence-x"])
        self.assertFalse(stats["presence-x"].occupied, "the refused member left nothing behind")
        joined = await a.cluster.join(APP, "presence-x", a.socket(2), ("good", None))
        self.assertEqual(joined.members, {"good": None})
        self.assertTrue(a.cluster.ready)

    def test_an_unknown_app_is_refused_without_dropping_the_link(self):
        """An app the supervisor does not know (a worker out of step with it) is refused per call."""
        return ensureDeferred(self._unknown_app())

    async def _unknown_app(self):
        (a,) = await self._start_nodes(1)
        stranger = replace(APP, id="999")
        await self.assertFailure(a.cluster.join(stranger, "news", a.socket(1), None),
                                 ClusterUnavailable)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        joined = await a.cluster.join(APP, "news", a.socket(1), None)
        self.assertTrue(joined.new)

    def test_a_new_worker_knows_the_others_connections_from_the_start(self):
        """A worker (re)started while others hold connections of an app with max_connections counts
        them from its first client on: its engine is built after Hello, as in a worker process."""
        return ensureDeferred(self._new_worker_counts())

    async def _new_worker_counts(self):
        (a,) = await self._start_nodes(1)
        self.assertEqual([a.cluster.admit_connection(APP) for _ in range(2)], [True, True])
        await self.settle([a])
        supervision = Supervision(1, on_lost=lambda: None)
        link(self.host, _Bare(supervision))
        await wait_until(lambda: supervision.registered, "the new worker to register")
        late = AmpCluster([APP, OTHER_APP], supervision)
        self.assertEqual([late.admit_connection(APP), late.admit_connection(APP)], [True, False])
        late.supervision.link.transport.loseConnection()


class AmpReloadTests(AmpNodes, unittest.TestCase):
    def test_max_connections_added_by_a_reload_counts_what_is_open(self):
        """An app gets max_connections = 3 while 2 of its connections are open on a worker: one
        more is admitted, not three; closing them never counts below zero."""
        return ensureDeferred(self._max_connections_added())

    async def _max_connections_added(self):
        (a,) = await self._start_nodes(1)
        free = replace(OTHER_APP, max_connections=0)
        self.assertEqual([a.cluster.admit_connection(free) for _ in range(2)], [True, True])
        limited = replace(OTHER_APP, max_connections=3)
        a.cluster.reconfigure([APP, limited], LimitsConfig(), GRACE)
        await self.settle([a])
        self.assertEqual([a.cluster.admit_connection(limited) for _ in range(2)], [True, False])
        for _ in range(3):
            a.cluster.connection_closed(limited.id)
        await self.settle([a])
        self.assertEqual(a.cluster._connections[limited.id], 0)
        self.assertEqual(self.host._connections(limited.id), 0)


class _Bare:
    """Just a link, as a worker process has before it builds its engine."""

    def __init__(self, supervision):
        self.supervision = supervision
