"""The worker's side of the supervisor link, and the ``amp`` engine it serves as.

Every worker links to its supervisor over AMP. With ``engine = "local"`` the link is also the
worker's cluster engine (``AmpCluster``): the state lives in the supervisor (``amp_host``). With
``engine = "redis"`` the worker is a Redis node of its own and the link only carries supervision:
whether the host serves (every worker up, no stop under way) and the host-wide metrics.
"""

from __future__ import annotations

from time import perf_counter

from twisted.application import service
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from soketify.cluster import amp_commands as cmd
from soketify.cluster.interfaces import (
    CachedEvent, ChannelStats, ClusterUnavailable, ICluster, Joined, MemberLimitReached)
from soketify.webhooks import wanted_event_types

log = Logger()


class SupervisorLink(cmd.QuietAMP):
    """The worker's end of its link: what the supervisor tells it."""

    def __init__(self, supervision: "Supervision"):
        super().__init__()
        self.supervision = supervision

    def connectionMade(self):
        super().connectionMade()
        self.supervision.link_made(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.supervision.link_lost()

    @property
    def _listener(self):
        return self.supervision.engine._listener

    @cmd.Deliver.responder
    def deliver(self, app_id, channel, payload, except_socket_id):
        self._listener.deliver(app_id, channel, payload, except_socket_id)
        return {}

    @cmd.CountChanged.responder
    def count_changed(self, app_id, channel, count):
        self._listener.subscription_count_changed(app_id, channel, count, False)
        return {}

    @cmd.UserOnline.responder
    def user_online(self, app_id, user_id, online):
        self._listener.user_online_changed(app_id, user_id, online)
        return {}

    @cmd.TerminateHere.responder
    def terminate_here(self, app_id, user_id):
        return {"count": self._listener.terminate_user_here(app_id, user_id)}

    @cmd.Elsewhere.responder
    def elsewhere(self, app_id, count):
        # Kept by the link: the first counts come with Hello, before the engine exists.
        self.supervision.elsewhere[app_id] = count
        return {}

    @cmd.Serving.responder
    def serving(self, serving):
        self.supervision.serving = serving
        return {}

    @cmd.Sync.responder
    def sync(self):
        return {}

    @cmd.WorkerMetrics.responder
    def worker_metrics(self):
        return {"text": self.supervision.local_metrics()}

    @cmd.ConsoleWatched.responder
    def console_watched(self):
        console = self.supervision.engine.console if self.supervision.engine else None
        if console is not None:
            console.remote_watching()
        return {}

    @cmd.ConsoleEntries.responder
    def console_entries(self, lines):
        console = self.supervision.engine.console if self.supervision.engine else None
        if console is not None:
            console.remote_lines(lines)
        return {}

    @cmd.Reload.responder
    def reload(self, config):
        self.supervision.config = config
        return maybeDeferred(self.supervision.apply_config, config).addCallback(lambda _: {})


class Supervision:
    """What a worker knows of its supervisor: the link, whether the host serves, its metrics."""

    def __init__(self, index: int, on_lost):
        """``on_lost()`` runs when the supervisor is gone (the worker then stops)."""
        self.index = index
        self.engine: AmpCluster | None = None  # set by the amp engine
        self.config = None  # the supervisor's config, as Hello answers it
        # Connections of apps with max_connections open on the other workers (the amp engine's;
        # a Redis node counts through Redis).
        self.elsewhere: dict[str, int] = {}
        self.link: SupervisorLink | None = None
        self.serving = False
        self.registered = False
        self.closing = False  # this worker closes the link itself (it is stopping)
        self.node_number: int | None = None
        self.local_metrics = lambda: ""
        # Told how long each answered call took (metrics: cluster_round_trip_seconds).
        self.round_trip = lambda seconds: None
        # Serves a config sent by Reload (set by the worker once it serves).
        self.apply_config = lambda config: None
        self._on_lost = on_lost
        self._ready_waiters: list[Deferred] = []

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: SupervisorLink(self))

    def link_made(self, link: SupervisorLink) -> None:
        self.link = link
        link.callRemote(cmd.Hello, index=self.index).addCallbacks(self._registered, self._refused)

    def _registered(self, answer) -> None:
        self.node_number = answer["node_number"]
        self.serving = self.serving or answer["serving"]
        self.config = answer["config"]
        self.registered = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def _refused(self, failure) -> None:
        if failure.check(error.ConnectionLost, error.ConnectionDone):
            return  # the supervisor went away: link_lost stops the worker
        log.failure("The supervisor refused this worker", failure)
        if self.link is not None:
            self.link.transport.loseConnection()

    def when_registered(self) -> Deferred:
        if self.registered:
            return succeed(self)
        waiter = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def report_listening(self) -> None:
        """Every listen endpoint of this worker is open."""
        if self.registered:
            self.link.callRemote(cmd.Listening)

    def link_lost(self) -> None:
        self.link = None
        self.registered = self.serving = False
        if not self.closing:
            self._on_lost()

    def call(self, command, **arguments) -> Deferred:
        if self.link is None or not self.registered:
            return fail(ClusterUnavailable("no link to the supervisor"))
        started = perf_counter()
        asked = self.link.callRemote(command, **arguments)
        if asked is not None:
            asked.addCallbacks(self._answered, _unavailable, callbackArgs=(started,))
        return asked

    def _answered(self, answer, started: float):
        self.round_trip(perf_counter() - started)
        return answer

    def host_metrics(self) -> Deferred:
        """Deferred of the Prometheus text of every worker of the host."""
        return self.call(cmd.HostMetrics).addCallback(lambda answer: answer["text"].encode())


def _unavailable(failure):
    """The link closed, or the supervisor failed to handle the call (it logged why): to the node,
    both mean that the cluster cannot answer now."""
    failure.trap(error.ConnectionLost, error.ConnectionDone, amp.UnknownRemoteError)
    raise ClusterUnavailable(failure.getErrorMessage())


@implementer(ICluster)
class AmpCluster(service.Service):
    """A worker's cluster engine: each operation is a call to the supervisor's state."""

    name = "cluster"

    # The debug console's entries, shared with the other workers (share_console).
    console = None

    def __init__(self, apps, supervision: Supervision):
        self.supervision = supervision
        supervision.engine = self
        self._console_beat = None
        self._listener = None
        # Open connections of every app here (so that a reload adding max_connections starts
        # from the truth); only apps with max_connections report theirs to the supervisor.
        self._counted = {app.id for app in apps if app.max_connections}
        self._connections: dict[str, int] = {}

    @property
    def ready(self) -> bool:
        """Linked to the state. Whether every worker is up only matters to /ready: while one is
        being restarted, the others go on admitting clients (its own among them)."""
        return self.supervision.registered

    @property
    def node_number(self) -> int | None:
        return self.supervision.node_number

    def attach(self, listener) -> None:
        self._listener = listener

    @property
    def round_trip(self):
        return self.supervision.round_trip

    @round_trip.setter
    def round_trip(self, observe) -> None:
        self.supervision.round_trip = observe

    def reconfigure(self, apps, limits, grace: float) -> None:
        """A reload: the supervisor holds the limits and grace; apps with max_connections count,
        and an app that just got one reports how many it has open here."""
        counted = {app.id for app in apps if app.max_connections}
        for app_id in counted - self._counted:
            self._counted.add(app_id)
            self._connections_changed(app_id, self._connections.get(app_id, 0))
        self._counted = counted

    def draining(self) -> None:
        """Workers stop together with their host: clients leave one by one, as they close."""

    def share_console(self, feed, clock) -> None:
        """Console entries of this worker go to the others while a console watches there, and
        theirs reach the viewers here (through the supervisor)."""
        self.console = feed

        def send(lines: str) -> None:
            if self.supervision.registered:
                self.supervision.link.callRemote(cmd.ConsoleEntries, lines=lines)
        feed.share(send)

        def beat() -> None:
            if feed.has_viewers and self.supervision.registered:
                self.supervision.link.callRemote(cmd.ConsoleWatching)
        self._console_beat = LoopingCall(beat)
        self._console_beat.clock = clock
        if self.running:
            self._console_beat.start(1.0, now=True)

    def startService(self):
        super().startService()
        if self._console_beat is not None and not self._console_beat.running:
            self._console_beat.start(1.0, now=True)

    def stopService(self):
        """Close the link once every call sent so far is answered (the last clients' leaves)."""
        if self._console_beat is not None and self._console_beat.running:
            self._console_beat.stop()
        super().stopService()
        if self.supervision.link is None:
            return succeed(None)
        self.supervision.closing = True

        def close(_):
            link = self.supervision.link
            if link is not None:
                link.transport.loseConnection()
        return self.sync().addBoth(close)

    def sync(self) -> Deferred:
        """A round trip through the supervisor (tests use it to let notifications arrive)."""
        return self.supervision.call(cmd.Sync)

    # -- connections ---------------------------------------------------------------------------

    def admit_connection(self, app) -> bool:
        here = self._connections.get(app.id, 0)
        if app.id in self._counted and (
                here + self.supervision.elsewhere.get(app.id, 0) >= app.max_connections):
            return False
        self._connections_changed(app.id, here + 1)
        return True

    def connection_closed(self, app_id: str) -> None:
        self._connections_changed(app_id, self._connections[app_id] - 1)

    def _connections_changed(self, app_id: str, count: int) -> None:
        self._connections[app_id] = count
        if app_id in self._counted and self.supervision.registered:
            self.supervision.call(cmd.Connections, app_id=app_id, count=count)

    # -- channels ------------------------------------------------------------------------------

    def join(self, app, channel, socket_id, member):
        asked = self.supervision.call(cmd.Join, app_id=app.id, channel=channel, socket_id=socket_id,
                                      member=list(member) if member is not None else None)
        return asked.addCallback(_joined)

    def leave(self, app, channel, socket_id, user_id=None):
        if self.supervision.link is None:
            return succeed(None)  # the supervisor already ended everything this worker held
        return self.supervision.call(cmd.Leave, app_id=app.id, channel=channel, socket_id=socket_id
                                     ).addCallback(lambda answer: answer["count"])

    def sign_in(self, app, socket_id, user_id, watchlist):
        return self.supervision.call(cmd.SignIn, app_id=app.id, socket_id=socket_id, user_id=user_id,
                                     watchlist=list(watchlist)).addCallback(
            lambda answer: set(answer["online"]))

    def sign_out(self, app, socket_id, user_id) -> None:
        if self.supervision.registered:
            self.supervision.call(cmd.SignOut, app_id=app.id, socket_id=socket_id, user_id=user_id)

    def publish(self, app, channel, text, except_socket_id, cached=None) -> None:
        if not self.supervision.registered:
            return
        name, data = cached if cached is not None else (None, None)
        self.supervision.call(cmd.Publish, app_id=app.id, channel=channel, text=text.encode(),
                              except_socket_id=except_socket_id, cache_name=name, cache_data=data)

    # -- queries -------------------------------------------------------------------------------

    def channel_stats(self, app_id, names):
        return self.supervision.call(cmd.ChannelStatsQuery, app_id=app_id, names=list(names)
                                     ).addCallback(_stats)

    def occupied_channels(self, app_id, prefix):
        return self.supervision.call(cmd.OccupiedQuery, app_id=app_id, prefix=prefix
                                     ).addCallback(_stats)

    def channel_members(self, app_id, channel):
        return self.supervision.call(cmd.MembersQuery, app_id=app_id, channel=channel
                                     ).addCallback(lambda answer: answer["members"])

    def user_sockets(self, app_id, user_id):
        return self.supervision.call(cmd.UserSocketsQuery, app_id=app_id, user_id=user_id
                                     ).addCallback(lambda answer: answer["socket_ids"])

    def cached_event(self, app_id, channel):
        def event(answer):
            found = answer["event"]
            return CachedEvent(*found) if found is not None else None
        return self.supervision.call(cmd.CachedQuery, app_id=app_id, channel=channel
                                     ).addCallback(event)

    def terminate_user(self, app_id, user_id):
        return self.supervision.call(cmd.TerminateUser, app_id=app_id, user_id=user_id
                                     ).addCallback(lambda answer: answer["count"])


def _joined(answer) -> Joined | MemberLimitReached:
    if answer["refused_limit"] is not None:
        return MemberLimitReached(answer["refused_limit"])
    return Joined(answer["new"], answer["count"], answer["members"], answer["cached"])


def _stats(answer) -> dict[str, ChannelStats]:
    return {name: ChannelStats(count, users) for name, (count, users) in answer["stats"].items()}


class ForwardedWebhooks:
    """A worker's webhook sink under the ``amp`` engine: every event goes to the supervisor's one
    durable outbox; which types are wanted is known from the config, without asking."""

    def __init__(self, supervision: Supervision, apps):
        self._supervision = supervision
        self._wanted = wanted_event_types(apps)

    def reconfigure(self, apps, settings=None) -> None:
        """A reload (the supervisor's outbox applies the webhook settings)."""
        self._wanted = wanted_event_types(apps)

    def wants(self, app_id: str, name: str) -> bool:
        return name in self._wanted.get(app_id, ())

    def emit(self, app_id: str, event: dict) -> None:
        if self._supervision.registered:
            self._supervision.call(cmd.EmitWebhook, app_id=app_id, event=event)
        else:
            log.warn("Webhook event {name} of app {app_id} lost: no link to the supervisor",
                     name=event.get("name"), app_id=app_id)

    def stored(self) -> Deferred:
        return self._supervision.call(cmd.WebhooksStored).addCallback(lambda _: None)
