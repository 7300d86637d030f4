"""The node: its connections, their subscriptions, publishing and queries.

Every cluster-wide decision (is this the channel's first subscriber anywhere, is this member new, is
this user online, is there room for one more connection) is asked of the cluster engine; the hub keeps
only what this node needs to deliver events: which local connections are subscribed to what.
Connections provide ``IConnection``. The hub never imports the WebSocket layer: ``frame`` (UTF-8 JSON
text -> wire bytes) is injected, so an event is framed once here, whatever the number of subscribers.
"""

from __future__ import annotations

import json
from itertools import count
from time import perf_counter
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from soketify import protocol
from soketify.apps import AppRegistry
from soketify.channels import AppChannels
from soketify.cluster.interfaces import IClusterListener, Joined
from soketify.console_feed import ConsoleFeed
from soketify.config import AppConfig, LimitsConfig
from soketify.subscription_counts import SubscriptionCountAnnouncer
from soketify.traffic import AppTraffic
from soketify.users import Users, watchlist_events

log = Logger()

TERMINATED = "Connections of this user terminated"


def write_frame_to_each(subscribers: dict, frame: bytes, except_socket_id: str | None) -> None:
    for socket_id, connection in subscribers.items():
        if socket_id != except_socket_id:
            connection.write_frame(frame)


@implementer(IClusterListener)
class Hub:
    def __init__(self, apps: AppRegistry, cluster, frame: Callable[[bytes], bytes],
                 limits: LimitsConfig, clock, webhooks=None, write_each=None, on_refusal=None,
                 feed: ConsoleFeed | None = None):
        """``write_each(subscribers, frame, except_socket_id)`` writes one frame to a channel's
        subscribers (socket id -> connection); by default ``write_frame`` on each.
        ``on_refusal(app_id, limit)`` counts a request or frame refused over an app limit.
        ``feed``: the debug console's entries (soketify.console_feed), built only while watched."""
        self.apps = apps
        self.limits = limits
        self.clock = clock
        self.cluster = cluster
        self._frame = frame
        self._write_each = write_each or write_frame_to_each
        self._on_refusal = on_refusal
        self._socket_numbers = count(1)
        self.connections: set = set()
        self._waiting_for_no_connections: list[Deferred] = []
        self._channels: dict[str, AppChannels] = {app.id: AppChannels() for app in apps}
        self._connection_counts: dict[str, int] = {app.id: 0 for app in apps}
        self.traffic: dict[str, AppTraffic] = {app.id: AppTraffic() for app in apps}
        self._counts = SubscriptionCountAnnouncer(clock, self._announce_subscription_count)
        # Latest cluster-wide count of each announced channel, and whether it changed here since
        # the last announcement (only the node where a change happened sends its webhook).
        self._latest_counts: dict[tuple[str, str], int] = {}
        self._counts_changed_here: set[tuple[str, str]] = set()
        self.users = Users()
        # Webhooks: `emit(app_id, event)` and `wants(app_id, event_name)`; none by default.
        self.webhooks = webhooks if webhooks is not None else NoWebhooks()
        self.feed = feed if feed is not None else ConsoleFeed(clock, "node")
        # Told how long each event took from reaching deliver() to written to every subscriber.
        self.delivered_in: Callable[[float], None] = lambda seconds: None
        cluster.attach(self)

    def stop(self) -> None:
        """Cancel timers (the service is stopping)."""
        self._counts.stop()

    def reconfigure(self, limits: LimitsConfig) -> None:
        """A reload changed the apps (``self.apps``) or the limits: a connection of an app that is
        gone or disabled is closed as its handshake would now be refused (4001, 4003); every other
        connection serves its app's new settings from now on (secret, limits, client events...)."""
        self.limits = limits
        for app in self.apps:
            self._channels.setdefault(app.id, AppChannels())
            self._connection_counts.setdefault(app.id, 0)
            self.traffic.setdefault(app.id, AppTraffic())
        for connection in list(self.connections):
            app = self.apps.by_id(connection.app.id)
            if app is None:
                refusal = protocol.APP_NOT_FOUND, "App no longer exists"
            elif not app.enabled:
                refusal = protocol.APP_DISABLED, "App is disabled"
            else:
                if app.authorized_connections and not connection.app.authorized_connections:
                    # Its deadline to authorize counts from now, not from the class default.
                    connection.connected_at = self.clock.seconds()
                connection.app = app
                continue
            connection.send(protocol.error(*refusal))
            connection.close(*refusal)

    # -- connections -------------------------------------------------------------------------

    def new_socket_id(self) -> str:
        # The first part names this node (its incarnation), so ids never collide across a cluster.
        return f"{self.cluster.node_number}.{next(self._socket_numbers)}"

    def admit(self, app: AppConfig) -> tuple[int, str] | None:
        """Count a new connection of this app, or say why it is refused: (close code, message)."""
        if not app.enabled:
            return protocol.APP_DISABLED, "App is disabled"
        if not self.cluster.ready:
            return protocol.OVER_CAPACITY, "Server is not connected to its cluster; try again"
        if not self.cluster.admit_connection(app):
            return protocol.APP_OVER_QUOTA, "App is over its connection quota"
        return None

    def connect(self, connection) -> None:
        """Register an admitted connection."""
        self._connection_counts[connection.app.id] += 1
        self.traffic[connection.app.id].new_connections += 1
        self.connections.add(connection)
        if self.feed.watching:
            self.feed.add(connection.app.id, "connection_opened", socket_id=connection.socket_id,
                          address=connection.remote_address)

    def disconnect(self, connection) -> None:
        """Forget a closed connection: leave its channels, sign it out, free its quota place."""
        if connection.closed:
            return
        connection.closed = True
        self.connections.discard(connection)
        app = connection.app
        if self.feed.watching:
            self.feed.add(app.id, "connection_closed", socket_id=connection.socket_id,
                          user_id=connection.user_id, code=connection.close_code,
                          reason=connection.close_reason)
        self._connection_counts[app.id] -= 1
        self.traffic[app.id].disconnections += 1
        self.cluster.connection_closed(app.id)
        for name, user_id in self._channels[app.id].remove_connection(connection):
            self._leave(connection, name, user_id)
        if connection.user_id is not None:
            self.users.remove(app.id, connection)
            self.cluster.sign_out(app, connection.socket_id, connection.user_id)
        if not self.connections and self._waiting_for_no_connections:
            waiting, self._waiting_for_no_connections = self._waiting_for_no_connections, []
            for waiter in waiting:
                waiter.callback(None)

    def when_no_connections(self) -> Deferred:
        """Fires once this node has no connection left (at once if it has none)."""
        if not self.connections:
            return succeed(None)
        waiter = Deferred()
        self._waiting_for_no_connections.append(waiter)
        return waiter

    def subscriptions_by_type(self, app_id: str) -> dict[str, int]:
        channels = self._channels.get(app_id)
        return channels.subscriptions_by_type() if channels is not None else {}

    def connection_count(self, app_id: str) -> int:
        """Open connections of the app on this node."""
        return self._connection_counts.get(app_id, 0)

    def authorization_overdue(self, connection, now: float) -> bool:
        """An app requiring authorized connections closes those not authorized in time."""
        app = connection.app
        return (app.authorized_connections and not connection.authorized
                and now - connection.connected_at >= app.authorization_timeout)

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, connection, name: str, member: tuple[str, Any] | None) -> Deferred:
        """Deferred of Joined or MemberLimitReached; once joined the connection receives events."""
        joined = self.cluster.join(connection.app, name, connection.socket_id, member)
        joined.addCallback(self._joined, connection, name, member)
        return joined

    def _joined(self, result, connection, name: str, member):
        if isinstance(result, Joined):
            user_id = member[0] if member is not None else None
            if connection.closed:
                # Closed while the cluster was answering: undo what it recorded (leave is idempotent).
                self.cluster.leave(connection.app, name, connection.socket_id, user_id)
            else:
                self._channels[connection.app.id].add(connection, name, user_id)
                if self.feed.watching:
                    self.feed.add(connection.app.id, "subscribed", channel=name,
                                  socket_id=connection.socket_id,
                                  user_id=user_id or connection.user_id)
                    if result.new and result.subscription_count == 1:
                        self.feed.add(connection.app.id, "channel_occupied", channel=name)
                    if result.cached is None and protocol.is_cache(name):
                        self.feed.add(connection.app.id, "cache_miss", channel=name,
                                      socket_id=connection.socket_id)
        return result

    def subscribed(self, connection, name: str, joined: Joined) -> None:
        """The new subscriber has its reply: now everyone here hears the new count."""
        if joined.new:
            self._count_changed_here(connection.app, name, joined.subscription_count)

    def unsubscribe(self, connection, name: str) -> None:
        removed, user_id = self._channels[connection.app.id].remove(connection, name)
        if removed:
            self._leave(connection, name, user_id)

    def _leave(self, connection, name: str, user_id: str | None) -> None:
        """``user_id``: the presence member it was on this channel, if any."""
        app = connection.app
        if self.feed.watching:
            self.feed.add(app.id, "unsubscribed", channel=name, socket_id=connection.socket_id,
                          user_id=user_id or connection.user_id)
        left = self.cluster.leave(app, name, connection.socket_id, user_id)
        left.addCallback(self._left, app, name)
        left.addErrback(lambda f: log.failure("Counting subscribers after a leave failed", f))

    def _left(self, count: int | None, app: AppConfig, name: str) -> None:
        if count == 0 and self.feed.watching:
            self.feed.add(app.id, "channel_vacated", channel=name)
        self._count_changed_here(app, name, count)

    def _count_changed_here(self, app: AppConfig, name: str, count: int | None) -> None:
        if count is None or protocol.is_presence(name):
            return
        if app.subscription_count or self.webhooks.wants(app.id, "subscription_count"):
            self.subscription_count_changed(app.id, name, count, True)

    # -- users -------------------------------------------------------------------------------

    def sign_in(self, connection, user_id: str, user_info, watchlist: tuple[str, ...]) -> Deferred:
        """Deferred of the watched ids online in the cluster; then the connection is signed in."""
        app = connection.app
        online = self.cluster.sign_in(app, connection.socket_id, user_id, watchlist)

        def signed_in(online_ids):
            if connection.closed:
                self.cluster.sign_out(app, connection.socket_id, user_id)
                return online_ids
            connection.user_id = user_id
            connection.user_info = user_info
            connection.watchlist = watchlist
            connection.authorized = True
            self.users.add(app.id, connection)
            return online_ids
        return online.addCallback(signed_in)

    def user_online_changed(self, app_id: str, user_id: str, online: bool) -> None:
        # The user's own connection, watching itself, learns its state from its sign-in answer.
        watchers = [w for w in self.users.watchers_of(app_id, user_id) if w.user_id != user_id]
        if not watchers:
            return
        events = watchlist_events([user_id], ()) if online else watchlist_events((), [user_id])
        frame = self._frame(protocol.encode(protocol.WATCHLIST_EVENTS, {"events": events}).encode())
        for watcher in watchers:
            watcher.write_frame(frame)

    def terminate_user(self, app_id: str, user_id: str) -> Deferred:
        """Deferred: every connection of this user, on every node, closed with 4009."""
        return self.cluster.terminate_user(app_id, user_id)

    def terminate_user_here(self, app_id: str, user_id: str) -> int:
        connections = self.users.connections_of(app_id, user_id)
        for connection in connections:
            connection.send(protocol.error(protocol.UNAUTHORIZED, TERMINATED))
            connection.close(protocol.UNAUTHORIZED, TERMINATED)
        return len(connections)

    def state_lost(self, reason: str) -> None:
        """Every client reconnects (to any node) and so rebuilds its state in the cluster."""
        if self.connections:
            log.warn("Asking {count} clients to reconnect: {reason}", count=len(self.connections),
                     reason=reason)
        error = protocol.error(protocol.RECONNECT_NOW, reason)
        for connection in list(self.connections):
            connection.send(error)
            connection.close(protocol.RECONNECT_NOW, reason)

    # -- subscription counts -----------------------------------------------------------------

    def subscription_count_changed(self, app_id: str, name: str, count: int, here: bool) -> None:
        key = (app_id, name)
        if self._channels[app_id].get(name) is None:
            # Nobody here to tell, now or later: forget the channel (the announcer too). A change
            # made here still gets its webhook, at once.
            self._latest_counts.pop(key, None)
            self._counts_changed_here.discard(key)
            self._counts.changed(app_id, name, 0)
            if here and count:
                self.webhooks.emit(app_id, {"name": "subscription_count", "channel": name,
                                            "subscription_count": count})
            return
        self._latest_counts[key] = count
        if here:
            self._counts_changed_here.add(key)
        self._counts.changed(app_id, name, count)

    def _announce_subscription_count(self, app_id: str, name: str) -> None:
        key = (app_id, name)
        count = self._latest_counts.get(key)
        if count is None:
            return
        app = self.apps.by_id(app_id)
        if app is not None and app.subscription_count:
            self.deliver(app_id, name, protocol.subscription_count(name, count).encode(), None)
            if self.feed.watching:
                self.feed.add(app_id, "subscription_count", channel=name, count=count)
        if key in self._counts_changed_here:
            self._counts_changed_here.discard(key)
            self.webhooks.emit(app_id, {"name": "subscription_count", "channel": name,
                                        "subscription_count": count})

    def refused(self, app_id: str, limit: str | None, reason: str = "",
                socket_id: str | None = None, code: int | None = None) -> None:
        """Something of this app was refused: over ``limit`` (its [[apps]] key without "max_" and
        "_kb": event_payload, presence_members, backend_events_per_second...; message_size for
        [server] max_message_size), counted in
        /metrics; or for another ``reason`` (a bad signature, an invalid channel name)."""
        if limit is not None and self._on_refusal is not None:
            self._on_refusal(app_id, limit)
        if self.feed.watching:
            self.feed.add(app_id, "refused", reason=reason, limit=limit, socket_id=socket_id,
                          code=code)

    # -- publishing --------------------------------------------------------------------------

    def publish(self, app_id: str, channels: Iterable[str], name: str, data: str,
                except_socket_id: str | None = None) -> None:
        """A server-triggered event: encoded once per channel, then sent cluster-wide."""
        app = self.apps.by_id(app_id)
        if self.feed.watching:
            channels = list(channels)
            self.feed.add(app_id, "api_message", channels=channels, event=name, data=data,
                          socket_id=except_socket_id)
        for channel in channels:
            text = protocol.event(name, channel, data)
            cached = (name, data) if protocol.is_cache(channel) else None
            self.cluster.publish(app, channel, text, except_socket_id, cached)

    def client_event(self, connection, name: str, channel: str, data) -> None:
        """Relay an accepted client event to the channel's other subscribers in the cluster."""
        app = connection.app
        user_id = self._channels[app.id].user_of(channel, connection.socket_id)
        self.cluster.publish(app, channel, protocol.event(name, channel, data, user_id),
                             connection.socket_id)
        if self.feed.watching:
            self.feed.add(app.id, "client_event", channel=channel, event=name, data=data,
                          socket_id=connection.socket_id, user_id=user_id)
        if self.webhooks.wants(app.id, "client_event"):
            event = {"name": "client_event", "channel": channel, "event": name,
                     "data": data if isinstance(data, str) else json.dumps(data, separators=(",", ":")),
                     "socket_id": connection.socket_id}
            if user_id is not None:
                event["user_id"] = user_id
            self.webhooks.emit(app.id, event)

    def deliver(self, app_id: str, channel_name: str, payload: bytes,
                except_socket_id: str | None) -> None:
        """Write one event to this node's subscribers: the hot path. Framed once, whatever the
        number of subscribers."""
        app_channels = self._channels.get(app_id)
        channel = app_channels.get(channel_name) if app_channels is not None else None
        if channel is None:
            return
        started = perf_counter()
        subscribers = channel.subscribers
        frame = self._frame(payload)
        # Writing never closes a connection synchronously, so the subscribers cannot change under us.
        self._write_each(subscribers, frame, except_socket_id)
        self.traffic[app_id].sent(len(subscribers) - (except_socket_id in subscribers), len(frame))
        # Once per event, whatever the number of subscribers.
        self.delivered_in(perf_counter() - started)

    # -- webhooks ----------------------------------------------------------------------------

    def wants_webhook(self, app_id: str, name: str) -> bool:
        return self.webhooks.wants(app_id, name)

    def emit_webhook(self, app_id: str, event: dict) -> None:
        self.webhooks.emit(app_id, event)

    def member_changed(self, app_id: str, channel: str, user_id: str, present: bool) -> None:
        self.feed.member_changed(app_id, channel, user_id, present)

    def webhooks_stored(self) -> Deferred:
        return self.webhooks.stored()

    # -- queries -----------------------------------------------------------------------------

    def channel_stats(self, app_id: str, names: Iterable[str]) -> Deferred:
        """Deferred of {name: ChannelStats} across the cluster."""
        return self.cluster.channel_stats(app_id, list(names))

    def occupied_channels(self, app_id: str, prefix: str = "") -> Deferred:
        """Deferred of {name: ChannelStats} for every occupied channel with the prefix."""
        return self.cluster.occupied_channels(app_id, prefix)

    def channel_members(self, app_id: str, name: str) -> Deferred:
        """Deferred of {user_id: user_info} of a presence channel's members, cluster-wide."""
        return self.cluster.channel_members(app_id, name)

    def user_sockets(self, app_id: str, user_id: str) -> Deferred:
        """Deferred of the ids of the user's signed-in sockets, cluster-wide."""
        return self.cluster.user_sockets(app_id, user_id)

    def cached_event(self, app_id: str, name: str) -> Deferred:
        """Deferred of the cache channel's last event (CachedEvent) or None."""
        return self.cluster.cached_event(app_id, name)


class NoWebhooks:
    """The webhook sink of a hub without webhook targets."""

    def emit(self, app_id: str, event: dict) -> None:
        pass

    def wants(self, app_id: str, name: str) -> bool:
        return False

    def stored(self) -> Deferred:
        return succeed(None)
