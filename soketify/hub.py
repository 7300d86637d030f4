"""The node's view of all apps: connections, subscriptions, users, publishing and channel queries.

A connection, for the hub, is a small object with ``socket_id``, ``app`` (its AppConfig), ``channels``
(a set of names), ``user_id``/``user_info``/``watchlist`` once signed in, ``send(text)`` for a frame meant
for it alone, ``write_frame(frame)`` for an already-framed shared event and ``close(code, reason)``.
The hub never imports the WebSocket layer: ``frame`` (text -> wire bytes) is injected, so an event is
encoded and framed once, whatever the number of subscribers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from itertools import count
from typing import Any, Callable, Iterable

from twisted.logger import Logger

from soketify import client_events, protocol, signing, subscriptions
from soketify.apps import AppRegistry
from soketify.cache import ChannelCache
from soketify.channels import AppChannels
from soketify.config import AppConfig, LimitsConfig
from soketify.subscription_counts import SubscriptionCountAnnouncer
from soketify.users import Users
from soketify.webhook_events import LifecycleEvents

log = Logger()


@dataclass(frozen=True, slots=True)
class ChannelStats:
    subscription_count: int
    user_count: int | None = None

    @property
    def occupied(self) -> bool:
        return self.subscription_count > 0


class Hub:
    def __init__(self, apps: AppRegistry, cluster, frame: Callable[[str], bytes],
                 limits: LimitsConfig, clock, node_number: int | None = None,
                 webhooks=None, webhook_grace: float = 3.0):
        self.apps = apps
        self.limits = limits
        self.clock = clock
        self._frame = frame
        self._cluster = cluster
        cluster.attach(self)
        # The first part of every socket id names this node, so ids never collide across a cluster.
        self._node_number = node_number if node_number is not None else random.randrange(1, 2**31)
        self._socket_numbers = count(1)
        self._channels: dict[str, AppChannels] = {app.id: AppChannels() for app in apps}
        self._connection_counts: dict[str, int] = {app.id: 0 for app in apps}
        self._counts = SubscriptionCountAnnouncer(clock, self._announce_subscription_count)
        self.cache = ChannelCache(clock, limits.cache_ttl)
        self.users = Users(self._send_watchlist_events)
        # Webhooks: `emit(app_id, event)` and `wants(app_id, event_name)`; none by default.
        self.webhooks = webhooks if webhooks is not None else NoWebhooks()
        self.lifecycle = LifecycleEvents(clock, self.webhooks.emit, webhook_grace)
        self._cache_misses_reported: set[tuple[str, str]] = set()
        self._handlers: dict[str, Callable[[Any, protocol.ClientMessage], None]] = {
            protocol.PING: self._on_ping,
            protocol.PONG: self._on_pong,
            protocol.SUBSCRIBE: self._on_subscribe,
            protocol.UNSUBSCRIBE: self._on_unsubscribe,
            protocol.SIGNIN: self._on_signin,
        }

    def start(self) -> None:
        self.cache.start()

    def stop(self) -> None:
        """Cancel timers and send pending webhook events (the service is stopping)."""
        self._counts.stop()
        self.cache.stop()
        self.lifecycle.flush()

    # -- connections -------------------------------------------------------------------------

    def new_socket_id(self) -> str:
        return f"{self._node_number}.{next(self._socket_numbers)}"

    def admission_error(self, app: AppConfig | None) -> tuple[int, str] | None:
        """Why a new connection to this app must be refused, as (close code, message), or None."""
        if app is None:
            return protocol.APP_NOT_FOUND, "App key not in this cluster"
        if not app.enabled:
            return protocol.APP_DISABLED, "App is disabled"
        if app.max_connections and self._connection_counts[app.id] >= app.max_connections:
            return protocol.APP_OVER_QUOTA, "App is over its connection quota"
        return None

    def connect(self, connection) -> None:
        """Count an admitted connection (call admission_error first)."""
        self._connection_counts[connection.app.id] += 1

    def disconnect(self, connection) -> None:
        """Forget a closed connection: leave its channels, sign it out, free its quota place."""
        app = connection.app
        self._connection_counts[app.id] -= 1
        for left in self._channels[app.id].remove_connection(connection):
            self._left(app, left)
        if connection.user_id is not None:
            self.users.sign_out(app.id, connection)

    def connection_count(self, app_id: str) -> int:
        return self._connection_counts.get(app_id, 0)

    def authorization_overdue(self, connection, now: float) -> bool:
        """An app requiring authorized connections closes those not authorized in time."""
        app = connection.app
        return (app.authorized_connections and not connection.authorized
                and now - connection.connected_at >= app.authorization_timeout)

    # -- client frames -----------------------------------------------------------------------

    def handle(self, connection, message: protocol.ClientMessage | protocol.ProtocolError) -> None:
        """Act on one decoded client frame; every refusal is answered on that connection only."""
        if isinstance(message, protocol.ProtocolError):
            connection.send(protocol.error(message.code, message.message))
            return
        handler = self._handlers.get(message.event)
        if handler is not None:
            handler(connection, message)
        elif message.event.startswith(client_events.CLIENT_EVENT_PREFIX):
            self._on_client_event(connection, message)
        else:
            connection.send(protocol.error(None, f"Unsupported event {message.event!r}"))

    def _on_ping(self, connection, message) -> None:
        connection.send(protocol.pong())

    def _on_pong(self, connection, message) -> None:
        """Answer to our own ping: receiving it already counted as activity."""

    @staticmethod
    def _requested_channel(connection, message) -> str | None:
        """data.channel of a (un)subscribe; a frame without one is answered with pusher:error."""
        data = message.data
        name = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(name, str):
            connection.send(protocol.error(None, f"{message.event} needs data.channel"))
            return None
        return name

    def _on_subscribe(self, connection, message) -> None:
        name = self._requested_channel(connection, message)
        if name is None:
            return
        data = message.data
        problem = protocol.channel_name_problem(name, self.limits.max_channel_name_length)
        if problem is not None:
            connection.send(protocol.subscription_error(name, "InvalidChannel", problem, 400))
            return
        app = connection.app
        decision = subscriptions.authorize(app, self.limits, connection, name, data)
        app_channels = self._channels[app.id]
        if isinstance(decision, subscriptions.Grant) and decision.member is not None:
            user_id = decision.member[0]
            limit = self.limits.max_presence_members
            if (app_channels.would_add_member(name, user_id)
                    and app_channels.member_count(name) >= limit):
                decision = subscriptions.Refusal(
                    "LimitReached", f"Presence channel {name!r} already has {limit} members",
                    protocol.OVER_CAPACITY)
        if isinstance(decision, subscriptions.Refusal):
            connection.send(protocol.subscription_error(name, decision.kind, decision.message,
                                                        decision.status))
            return
        if protocol.needs_auth(name):
            connection.authorized = True
        presence = protocol.is_presence(name)
        result = app_channels.subscribe(connection, name, decision.member, presence)
        channel = result.channel
        # A repeated subscribe is answered again but counted once.
        connection.send(protocol.subscription_succeeded(
            name, channel.presence_data() if presence else None))
        if result.new and channel.subscription_count == 1:
            self.lifecycle.channel_occupied(app.id, name)
        if result.member_added is not None:
            member = result.member_added
            frame = self._frame(protocol.encode(
                protocol.MEMBER_ADDED, {"user_id": member.user_id, "user_info": member.user_info},
                name))
            self.deliver(app.id, name, frame, connection.socket_id)
            self.lifecycle.member_added(app.id, name, member.user_id)
        if protocol.is_cache(name):
            self._replay_cache(connection, app, name)
        if result.new:
            self._subscribers_changed(app, name, channel.subscription_count)

    def _replay_cache(self, connection, app: AppConfig, name: str) -> None:
        cached = self.cache.get(app.id, name)
        if cached is not None:
            connection.write_frame(cached.frame)
            return
        connection.send(protocol.encode(protocol.CACHE_MISS, channel=name))
        # One cache_miss webhook per channel while it stays empty, not one per subscriber.
        key = (app.id, name)
        if key not in self._cache_misses_reported:
            self._cache_misses_reported.add(key)
            self.webhooks.emit(app.id, {"name": "cache_miss", "channel": name})

    def _on_unsubscribe(self, connection, message) -> None:
        name = self._requested_channel(connection, message)
        if name is None:
            return
        left = self._channels[connection.app.id].unsubscribe(connection, name)
        if left is not None:
            self._left(connection.app, left)

    def _left(self, app: AppConfig, left) -> None:
        """After a connection left a channel: tell the remaining members and counters."""
        name = left.channel.name
        if left.member_removed is not None:
            frame = self._frame(protocol.encode(
                protocol.MEMBER_REMOVED, {"user_id": left.member_removed.user_id}, name))
            self.deliver(app.id, name, frame, None)
            self.lifecycle.member_removed(app.id, name, left.member_removed.user_id)
        if left.channel.subscription_count == 0:
            self.lifecycle.channel_vacated(app.id, name)
            self._cache_misses_reported.discard((app.id, name))
        self._subscribers_changed(app, name, left.channel.subscription_count)

    def _on_client_event(self, connection, message) -> None:
        app = connection.app
        name, channel, data = message.event, message.channel, message.data
        why = client_events.refusal(app, self.limits, connection, name, channel, data,
                                    self.clock.seconds())
        if why is not None:
            connection.send(protocol.error(protocol.CLIENT_EVENT_REJECTED, why))
            return
        user_id = connection_user_id_on(self._channels[app.id], channel, connection)
        frame = self._frame(protocol.event(name, channel, data, user_id))
        self._cluster.publish(app.id, channel, frame, connection.socket_id)
        if self.webhooks.wants(app.id, "client_event"):
            event = {"name": "client_event", "channel": channel, "event": name,
                     "data": data if isinstance(data, str) else json.dumps(data, separators=(",", ":")),
                     "socket_id": connection.socket_id}
            if user_id is not None:
                event["user_id"] = user_id
            self.webhooks.emit(app.id, event)

    # -- users -------------------------------------------------------------------------------

    def _on_signin(self, connection, message) -> None:
        app = connection.app
        data = message.data if isinstance(message.data, dict) else {}
        user_data, auth = data.get("user_data"), data.get("auth")
        if not isinstance(user_data, str) or not signing.verify_user_auth(
                app.key, app.secret, connection.socket_id, user_data, auth):
            self._refuse_signin(connection, "Invalid signature for user_data and this socket")
            return
        try:
            user = json.loads(user_data)
        except ValueError:
            user = None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id:
            self._refuse_signin(connection, "user_data must be a JSON object with a non-empty string id")
            return
        if len(user_id) > self.limits.max_user_id_length:
            self._refuse_signin(connection, f"user id is longer than {self.limits.max_user_id_length}")
            return
        if connection.user_id is not None:
            if connection.user_id != user_id:
                self._refuse_signin(connection, "This connection is already signed in as another user")
            else:
                connection.send(protocol.encode(protocol.SIGNIN_SUCCESS, {"user_data": user_data}))
            return
        watchlist = user.get("watchlist") or []
        if not isinstance(watchlist, list) or not all(isinstance(w, str) and w for w in watchlist):
            self._refuse_signin(connection, "user_data.watchlist must be a list of user ids")
            return
        connection.user_id = user_id
        connection.user_info = user.get("user_info")
        connection.authorized = True
        connection.send(protocol.encode(protocol.SIGNIN_SUCCESS, {"user_data": user_data}))
        limit = self.limits.max_watchlist_size
        if len(watchlist) > limit:
            # Sign-in still succeeds; the watchlist is refused.
            connection.send(protocol.error(protocol.WATCHLIST_TOO_LONG,
                                           f"The watchlist has more than {limit} user ids"))
            watchlist = []
        connection.watchlist = tuple(dict.fromkeys(watchlist))
        self.users.sign_in(app.id, connection, user_id, connection.watchlist)

    def _refuse_signin(self, connection, why: str) -> None:
        connection.send(protocol.error(protocol.UNAUTHORIZED, why))
        connection.close(protocol.UNAUTHORIZED, why)

    def _send_watchlist_events(self, connection, events: list[dict]) -> None:
        connection.send(protocol.encode(protocol.WATCHLIST_EVENTS, {"events": events}))

    def terminate_user(self, app_id: str, user_id: str):
        """Deferred: every connection of this user, on every node, closed with 4009."""
        return self._cluster.terminate_user(app_id, user_id)

    def local_terminate_user(self, app_id: str, user_id: str) -> int:
        """Close every connection of this user on this node with 4009; returns how many."""
        connections = self.users.connections_of(app_id, user_id)
        for connection in connections:
            connection.send(protocol.error(protocol.UNAUTHORIZED, "Connections of this user terminated"))
            connection.close(protocol.UNAUTHORIZED, "Connections of this user terminated")
        return len(connections)

    # -- subscription counts -----------------------------------------------------------------

    def _subscribers_changed(self, app: AppConfig, name: str, count: int) -> None:
        if protocol.is_presence(name):
            return
        if app.subscription_count or self.webhooks.wants(app.id, "subscription_count"):
            self._counts.changed(app.id, name, count)

    def _announce_subscription_count(self, app_id: str, name: str) -> None:
        channel = self._channels[app_id].get(name)
        if channel is None:
            return
        count = channel.subscription_count
        if self.apps.by_id(app_id).subscription_count:
            text = protocol.encode(protocol.SUBSCRIPTION_COUNT, {"subscription_count": count}, name)
            self.deliver(app_id, name, self._frame(text), None)
        self.webhooks.emit(app_id, {"name": "subscription_count", "channel": name,
                                    "subscription_count": count})

    # -- publishing --------------------------------------------------------------------------

    def publish(self, app_id: str, channels: Iterable[str], name: str, data: str,
                except_socket_id: str | None = None) -> None:
        """A server-triggered event: encoded and framed once per channel, then sent cluster-wide."""
        for channel in channels:
            frame = self._frame(protocol.event(name, channel, data))
            if protocol.is_cache(channel):
                self.cache.put(app_id, channel, name, data, frame)
                self._cache_misses_reported.discard((app_id, channel))
            self._cluster.publish(app_id, channel, frame, except_socket_id)

    def deliver(self, app_id: str, channel_name: str, frame: bytes,
                except_socket_id: str | None) -> None:
        """Write one framed event to this node's subscribers: the hot path."""
        app_channels = self._channels.get(app_id)
        channel = app_channels.get(channel_name) if app_channels is not None else None
        if channel is None:
            return
        # write_frame never closes synchronously, so the subscribers cannot change under us.
        for socket_id, connection in channel.subscribers.items():
            if socket_id != except_socket_id:
                connection.write_frame(frame)

    # -- queries -----------------------------------------------------------------------------

    def channel_stats(self, app_id: str, names: Iterable[str]):
        """Deferred of {name: ChannelStats} across the cluster."""
        return self._cluster.channel_stats(app_id, list(names))

    def occupied_channels(self, app_id: str, prefix: str = ""):
        """Deferred of {name: ChannelStats} for every occupied channel with the prefix."""
        return self._cluster.occupied_channels(app_id, prefix)

    def channel_members(self, app_id: str, name: str):
        """Deferred of the user ids present on a presence channel, cluster-wide."""
        return self._cluster.channel_members(app_id, name)

    def local_channel_stats(self, app_id: str, names: Iterable[str]) -> dict[str, ChannelStats]:
        app_channels = self._channels[app_id]
        stats = {}
        for name in names:
            channel = app_channels.get(name)
            stats[name] = (ChannelStats(channel.subscription_count, channel.user_count)
                           if channel else ChannelStats(0, 0))
        return stats

    def local_occupied_channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        return {channel.name: ChannelStats(channel.subscription_count, channel.user_count)
                for channel in self._channels[app_id].occupied(prefix)}

    def local_channel_members(self, app_id: str, name: str) -> list[str]:
        channel = self._channels[app_id].get(name)
        return list(channel.members) if channel is not None and channel.members else []


class NoWebhooks:
    """The webhook sink of a hub without webhook targets."""

    def emit(self, app_id: str, event: dict) -> None:
        pass

    def wants(self, app_id: str, name: str) -> bool:
        return False


def connection_user_id_on(app_channels: AppChannels, name: str, connection) -> str | None:
    """The user a connection joined a presence channel as (client events carry it), else None."""
    channel = app_channels.get(name)
    if channel is None or channel.user_of_socket is None:
        return None
    return channel.user_of_socket.get(connection.socket_id)
