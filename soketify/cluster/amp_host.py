"""The supervisor's side of the ``amp`` engine: the cluster-wide state of the workers of one host.

The state is the one-process engine's (``LocalCluster``), kept in the supervisor; each worker asks
for every transition over its AMP link and hears what concerns it over the same link, so it sees
answers and notifications in the order the supervisor decided them. A worker's own events come back
to it like everyone else's: all workers write a channel's events in one order. When a worker's
process ends, its link closes and everything it held ends at once (``LocalCluster.remove_node``).
"""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from soketify import protocol
from soketify.cluster import amp_commands as cmd
from soketify.cluster.interfaces import IClusterListener, Joined
from soketify.cluster.local import LocalCluster
from soketify.console_feed import REMOTE_WATCH_SECONDS
from soketify.metrics import add_up

log = Logger()


class WorkerLink(cmd.QuietAMP):
    """The supervisor's end of one worker's link."""

    def __init__(self, host: "AmpHost"):
        super().__init__()
        self.host = host
        self.node_number: int | None = None
        self.index: int | None = None
        self.listening = False  # every listen endpoint open: the worker counts as up
        self.ping_sent_at: float | None = None  # a liveness round trip waiting for its answer
        self.connections: dict[str, int] = {}  # apps with max_connections: open on this worker

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.host.link_lost(self)

    @cmd.Hello.responder
    def hello(self, index):
        return self.host.hello(self, index)

    @cmd.Listening.responder
    def now_listening(self):
        self.listening = True
        self.host.update_serving()
        return {}

    @cmd.Join.responder
    def join(self, app_id, channel, socket_id, member):
        return self.host.join(self, app_id, channel, socket_id, member)

    @cmd.Leave.responder
    def leave(self, app_id, channel, socket_id):
        return self.host.leave(self, app_id, channel, socket_id)

    @cmd.SignIn.responder
    def sign_in(self, app_id, socket_id, user_id, watchlist):
        return self.host.sign_in(app_id, socket_id, user_id, watchlist)

    @cmd.SignOut.responder
    def sign_out(self, app_id, socket_id, user_id):
        self.host.state.sign_out(self.host.app(app_id), socket_id, user_id)
        return {}

    @cmd.Publish.responder
    def publish(self, app_id, channel, text, except_socket_id, cache_name, cache_data):
        cached = (cache_name, cache_data) if cache_name is not None else None
        self.host.state.publish(self.host.app(app_id), channel, text.decode(), except_socket_id,
                                cached)
        return {}

    @cmd.ConsoleWatching.responder
    def console_watching(self):
        self.host.console_watching(self)
        return {}

    @cmd.ConsoleEntries.responder
    def console_entries(self, lines):
        self.host.console_entries(self, lines)
        return {}

    @cmd.Connections.responder
    def connections_changed(self, app_id, count):
        self.connections[app_id] = count
        self.host.connections_changed(app_id)
        return {}

    @cmd.ChannelStatsQuery.responder
    def channel_stats(self, app_id, names):
        return self.host.state.channel_stats(app_id, names).addCallback(_stats_answer)

    @cmd.OccupiedQuery.responder
    def occupied(self, app_id, prefix):
        return self.host.state.occupied_channels(app_id, prefix).addCallback(_stats_answer)

    @cmd.UserSocketsQuery.responder
    def user_sockets(self, app_id, user_id):
        return self.host.state.user_sockets(app_id, user_id).addCallback(
            lambda ids: {"socket_ids": ids})

    @cmd.MembersQuery.responder
    def members(self, app_id, channel):
        return self.host.state.channel_members(app_id, channel).addCallback(
            lambda members: {"members": members})

    @cmd.CachedQuery.responder
    def cached(self, app_id, channel):
        def answer(event):
            if event is None:
                return {}
            return {"event": [event.text, event.name, event.data, event.ttl]}
        return self.host.state.cached_event(app_id, channel).addCallback(answer)

    @cmd.TerminateUser.responder
    def terminate_user(self, app_id, user_id):
        return self.host.state.terminate_user(app_id, user_id).addCallback(
            lambda count: {"count": count})

    @cmd.EmitWebhook.responder
    def emit_webhook(self, app_id, event):
        self.host.webhooks.emit(app_id, event)
        return {}

    @cmd.WebhooksStored.responder
    def webhooks_stored(self):
        return self.host.webhooks.stored().addCallback(lambda _: {})

    @cmd.Sync.responder
    def sync(self):
        return {}

    @cmd.HostMetrics.responder
    def host_metrics(self):
        return self.host.metrics().addCallback(lambda text: {"text": text.decode()})


def _stats_answer(stats) -> dict:
    return {"stats": {name: [s.subscription_count, s.user_count] for name, s in stats.items()}}


@implementer(IClusterListener)
class AmpHost:
    """Holds the state, answers the workers and tells them what they must hear."""

    def __init__(self, clock, apps, limits, grace: float, webhooks, workers_wanted: int = 1,
                 metrics=None, worker_config: dict | None = None):
        """``webhooks``: the supervisor's sink (emit, wants, stored); ``metrics()``: Deferred of this
        process's own Prometheus text, added to the workers'; ``worker_config``: what Hello answers
        each worker (the config it serves)."""
        self.state = LocalCluster(clock, limits, grace)
        self.worker_config = worker_config
        self.webhooks = webhooks
        self.workers_wanted = workers_wanted
        self._own_metrics = metrics
        self._apps = {app.id: app for app in apps}
        self._removed: dict = {}  # apps a reload removed
        self._clock = clock
        self._console_watchers: dict[WorkerLink, float] = {}  # -> when it last said it watches
        self.console_feed = None  # the supervisor's own entries (share_console)
        # Apps whose subscriber counts are announced, and which workers have subscribers of each
        # of their (non-presence) channels: only those hear the channel's count.
        self._announced = {app.id for app in apps
                           if app.subscription_count or webhooks.wants(app.id, "subscription_count")}
        self._subscribed: dict[tuple[str, str], dict[WorkerLink, int]] = {}
        self.links: list[WorkerLink] = []
        self._stopping = False
        self.serving = False
        self.ever_served = False
        self.state.attach(self)

    # -- the debug console: entries of every worker for the viewers on any ------------------------

    def share_console(self, feed) -> None:
        """The supervisor's own entries (its webhook attempts, under the local engine) go to the
        workers whose consoles watch."""
        self.console_feed = feed
        feed.share(lambda lines: self.console_entries(None, lines))

    def console_watching(self, link: WorkerLink) -> None:
        self._console_watchers[link] = self._clock.seconds()
        if self.console_feed is not None:
            self.console_feed.remote_watching()
        for other in self.links:
            if other is not link:
                other.callRemote(cmd.ConsoleWatched)

    def console_entries(self, sender: WorkerLink, lines: str) -> None:
        now = self._clock.seconds()
        for link, heard in list(self._console_watchers.items()):
            if now - heard > REMOTE_WATCH_SECONDS or link not in self.links:
                del self._console_watchers[link]
            elif link is not sender:
                link.callRemote(cmd.ConsoleEntries, lines=lines)

    def app(self, app_id: str):
        # A removed app is still known: its workers' last leaves arrive after the reload.
        return self._apps.get(app_id) or self._removed[app_id]

    def reconfigure(self, apps, limits, grace: float, worker_config: dict) -> Deferred:
        """A reload: the state takes the new apps and limits, and every worker the new config
        (as does a worker started later). Fires once every linked worker applied it."""
        self._removed.update(self._apps)
        self._apps = {app.id: app for app in apps}
        self._announced = {app.id for app in apps
                           if app.subscription_count or self.webhooks.wants(app.id, "subscription_count")}
        self.state.reconfigure(apps, limits, grace)
        self.worker_config = worker_config
        for app_id in self._counted_apps():
            self.connections_changed(app_id)
        return DeferredList([link.callRemote(cmd.Reload, config=worker_config).addErrback(
            lambda f, index=link.index: log.warn("Worker {index} did not take the reloaded "
                                                 "config: {why}", index=index,
                                                 why=f.getErrorMessage()))
            for link in self.links])

    def factory(self):
        """A server factory: each protocol it builds is one worker's link."""
        return Factory.forProtocol(lambda: WorkerLink(self))

    def start(self) -> None:
        self.state.startService()

    def stop(self) -> None:
        """The host is going away: end what the workers still linked hold, then send what waits
        for the grace (vacated, member_removed) now."""
        for link in list(self.links):
            self.link_lost(link)
            link.transport.abortConnection()
        self.state.stopService()

    def stopping(self) -> None:
        self._stopping = True
        self.update_serving()

    # -- workers -------------------------------------------------------------------------------

    def hello(self, link: WorkerLink, index: int) -> dict:
        numbers = {other.node_number for other in self.links}
        number = random.randrange(1, 2**31)
        while number in numbers:
            number = random.randrange(1, 2**31)
        link.node_number, link.index = number, index
        self.links.append(link)
        for app_id in self._counted_apps():
            link.callRemote(cmd.Elsewhere, app_id=app_id, count=self._connections(app_id))
        return {"node_number": number, "serving": self.serving, "config": self.worker_config}

    def link_lost(self, link: WorkerLink) -> None:
        if link not in self.links:
            return
        self.links.remove(link)
        try:
            changed = self.state.remove_node(link.node_number)
            for (app_id, channel), count in changed.items():
                self._count_changed(link, app_id, channel, count, None)
                if count and not protocol.is_presence(channel) and self.webhooks.wants(
                        app_id, "subscription_count"):
                    # Each count change has its webhook from where it happened: here.
                    self.webhooks.emit(app_id, {"name": "subscription_count", "channel": channel,
                                                "subscription_count": count})
        finally:
            for app_id in link.connections:
                self.connections_changed(app_id)
            self.update_serving()

    def update_serving(self) -> None:
        """The host serves while every wanted worker listens and no stop is under way."""
        up = sum(1 for link in self.links if link.listening)
        serving = up >= self.workers_wanted and not self._stopping
        if serving != self.serving:
            self.serving = serving
            self.ever_served = self.ever_served or serving
            for link in self.links:
                link.callRemote(cmd.Serving, serving=serving)

    # -- connections ---------------------------------------------------------------------------

    def _counted_apps(self):
        return [app_id for app_id, app in self._apps.items() if app.max_connections]

    def _connections(self, app_id: str, but: WorkerLink | None = None) -> int:
        return sum(link.connections.get(app_id, 0) for link in self.links if link is not but)

    def connections_changed(self, app_id: str) -> None:
        for link in self.links:
            link.callRemote(cmd.Elsewhere, app_id=app_id, count=self._connections(app_id, link))

    # -- channels ------------------------------------------------------------------------------

    def join(self, link, app_id, channel, socket_id, member):
        joined = self.state.join(self.app(app_id), channel, socket_id,
                                 tuple(member) if member is not None else None)

        def answer(result):
            if not isinstance(result, Joined):
                return {"new": False, "count": 0, "refused_limit": result.limit}
            if result.new:
                self._count_changed(link, app_id, channel, result.subscription_count, 1)
            return {"new": result.new, "count": result.subscription_count,
                    "members": result.members, "cached": result.cached}
        return joined.addCallback(answer)

    def leave(self, link, app_id, channel, socket_id):
        def answer(count):
            if count is not None:
                self._count_changed(link, app_id, channel, count, -1)
            return {"count": count}
        return self.state.leave(self.app(app_id), channel, socket_id).addCallback(answer)

    def _count_changed(self, origin: WorkerLink, app_id: str, channel: str, count: int,
                       change: int | None) -> None:
        """``origin`` gained or lost a subscriber of the channel (``change`` None: all of them, it
        is gone); the other workers with subscribers there hear the new count, if it is announced."""
        if app_id not in self._announced or protocol.is_presence(channel):
            return
        key = (app_id, channel)
        present = self._subscribed.setdefault(key, {})
        left = present.get(origin, 0) + change if change is not None else 0
        if left > 0:
            present[origin] = left
        else:
            present.pop(origin, None)
        if not present:
            del self._subscribed[key]
            return
        box = cmd.one_way_box(cmd.CountChanged, app_id=app_id, channel=channel, count=count)
        for link in present:
            if link is not origin:
                link.transport.write(box)

    def sign_in(self, app_id, socket_id, user_id, watchlist) -> dict:
        online = self.state.sign_in(self.app(app_id), socket_id, user_id, tuple(watchlist))
        return online.addCallback(lambda ids: {"online": sorted(ids)})

    # -- IClusterListener: what the state tells the workers ------------------------------------

    def deliver(self, app_id, channel, payload, except_socket_id) -> None:
        box = cmd.one_way_box(cmd.Deliver, app_id=app_id, channel=channel, payload=bytes(payload),
                              except_socket_id=except_socket_id)
        for link in self.links:
            link.transport.write(box)

    def subscription_count_changed(self, app_id, channel, count, here) -> None:
        """The state never reports counts: the host does (``_count_changed``)."""

    def user_online_changed(self, app_id, user_id, online) -> None:
        box = cmd.one_way_box(cmd.UserOnline, app_id=app_id, user_id=user_id, online=online)
        for link in self.links:
            link.transport.write(box)

    def member_changed(self, app_id, channel, user_id, present) -> None:
        """Membership lives here: the supervisor's console entry goes to the watching workers."""
        if self.console_feed is not None:
            self.console_feed.member_changed(app_id, channel, user_id, present)

    def terminate_user_here(self, app_id, user_id):
        asked = [link.callRemote(cmd.TerminateHere, app_id=app_id, user_id=user_id)
                 .addCallbacks(lambda answer: answer["count"], lambda _: 0)
                 for link in self.links]
        return gatherResults(asked).addCallback(sum)

    def wants_webhook(self, app_id, name) -> bool:
        return self.webhooks.wants(app_id, name)

    def emit_webhook(self, app_id, event) -> None:
        self.webhooks.emit(app_id, event)

    def webhooks_stored(self):
        return self.webhooks.stored()

    def state_lost(self, reason) -> None:
        """The state lives in this process: it is never lost while the host runs."""

    # -- metrics -------------------------------------------------------------------------------

    def metrics(self):
        """Deferred of the host's Prometheus text: every worker's samples and the supervisor's."""
        def named(text, process):
            return (process, text)
        texts = [link.callRemote(cmd.WorkerMetrics).addCallbacks(
            lambda answer: answer["text"], lambda _: "").addCallback(named, f"worker-{link.index}")
            for link in self.links]
        if self._own_metrics is not None:
            texts.append(self._own_metrics().addCallback(named, "supervisor"))
        return gatherResults(texts).addCallback(add_up)
