"""The node's view of all apps: connections, subscriptions, publishing and channel queries.

A connection, for the hub, is a small object with ``socket_id``, ``app`` (its AppConfig), ``channels``
(a set of names), ``send(text)`` for a frame meant for it alone, ``write_frame(frame)`` for an
already-framed shared event and ``close(code, reason)``. The hub never imports the WebSocket layer:
``frame`` (text -> wire bytes) is injected, so an event is encoded and framed once, whatever the number
of subscribers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import count
from typing import Any, Callable, Iterable

from twisted.logger import Logger

from soketify import protocol, signing
from soketify.apps import AppRegistry
from soketify.channels import AppChannels
from soketify.config import AppConfig, LimitsConfig
from soketify.subscription_counts import SubscriptionCountAnnouncer

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
                 limits: LimitsConfig, clock, node_number: int | None = None):
        self.apps = apps
        self.limits = limits
        self._frame = frame
        self._cluster = cluster
        cluster.attach(self)
        # The first part of every socket id names this node, so ids never collide across a cluster.
        self._node_number = node_number if node_number is not None else random.randrange(1, 2**31)
        self._socket_numbers = count(1)
        self._channels: dict[str, AppChannels] = {app.id: AppChannels() for app in apps}
        self._connection_counts: dict[str, int] = {app.id: 0 for app in apps}
        self._counts = SubscriptionCountAnnouncer(clock, self._announce_subscription_count)
        self._handlers: dict[str, Callable[[Any, protocol.ClientMessage], None]] = {
            protocol.PING: self._on_ping,
            protocol.PONG: self._on_pong,
            protocol.SUBSCRIBE: self._on_subscribe,
            protocol.UNSUBSCRIBE: self._on_unsubscribe,
        }

    # -- connections -------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel pending timers (the service is stopping)."""
        self._counts.stop()

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
        """Forget a closed connection: leave its channels and free its place in the quota."""
        app = connection.app
        self._connection_counts[app.id] -= 1
        for channel in self._channels[app.id].remove_connection(connection):
            self._subscribers_changed(app, channel.name, channel.subscription_count)

    def connection_count(self, app_id: str) -> int:
        return self._connection_counts.get(app_id, 0)

    # -- client frames -----------------------------------------------------------------------

    def handle(self, connection, message: protocol.ClientMessage | protocol.ProtocolError) -> None:
        """Act on one decoded client frame; every refusal is answered on that connection only."""
        if isinstance(message, protocol.ProtocolError):
            connection.send(protocol.error(message.code, message.message))
            return
        handler = self._handlers.get(message.event)
        if handler is not None:
            handler(connection, message)
        elif message.event.startswith("client-"):
            connection.send(protocol.error(
                protocol.CLIENT_EVENT_REJECTED, "Client events are not supported by this server yet"))
        else:
            connection.send(protocol.error(None, f"Unsupported event {message.event!r}"))

    def _on_ping(self, connection, message) -> None:
        connection.send(protocol.pong())

    def _on_pong(self, connection, message) -> None:
        """Answer to our own ping: receiving it already counted as activity."""

    def _on_subscribe(self, connection, message) -> None:
        data = message.data
        name = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(name, str):
            connection.send(protocol.error(None, "pusher:subscribe needs data.channel"))
            return
        problem = protocol.channel_name_problem(name, self.limits.max_channel_name_length)
        if problem is None:
            problem = self._auth_problem(connection, name, data)
            status = 401
        else:
            status = 400
        if problem is not None:
            connection.send(protocol.subscription_error(
                name, "AuthError" if status == 401 else "InvalidChannel", problem, status))
            return
        channel, new = self._channels[connection.app.id].subscribe(connection, name)
        # A repeated subscribe is answered again but counted once.
        connection.send(protocol.subscription_succeeded(name))
        if new:
            self._subscribers_changed(connection.app, name, channel.subscription_count)

    def _auth_problem(self, connection, name: str, data: dict) -> str | None:
        kind = protocol.channel_type(name)
        if kind in ("public", "cache"):
            return None
        if kind == "private" or kind == "private-encrypted":
            app = connection.app
            if signing.verify_channel_auth(app.key, app.secret, connection.socket_id, name,
                                           data.get("auth")):
                return None
            return f"Invalid signature for channel {name!r} and socket {connection.socket_id}"
        return f"Channels of type {kind!r} are not supported by this server yet"

    def _on_unsubscribe(self, connection, message) -> None:
        data = message.data
        name = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(name, str):
            connection.send(protocol.error(None, "pusher:unsubscribe needs data.channel"))
            return
        channel = self._channels[connection.app.id].unsubscribe(connection, name)
        if channel is not None:
            self._subscribers_changed(connection.app, name, channel.subscription_count)

    def _subscribers_changed(self, app: AppConfig, name: str, count: int) -> None:
        if app.subscription_count and not protocol.is_presence(name):
            self._counts.changed(app.id, name, count)

    def _announce_subscription_count(self, app_id: str, name: str) -> None:
        channel = self._channels[app_id].get(name)
        if channel is not None:
            text = protocol.encode(protocol.SUBSCRIPTION_COUNT,
                                   {"subscription_count": channel.subscription_count}, name)
            self.deliver(app_id, name, self._frame(text), None)

    # -- publishing --------------------------------------------------------------------------

    def publish(self, app_id: str, channels: Iterable[str], name: str, data: str,
                except_socket_id: str | None = None) -> None:
        """A server-triggered event: encoded and framed once per channel, then sent cluster-wide."""
        for channel in channels:
            frame = self._frame(protocol.event(name, channel, data))
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

    def local_channel_stats(self, app_id: str, names: Iterable[str]) -> dict[str, ChannelStats]:
        app_channels = self._channels[app_id]
        stats = {}
        for name in names:
            channel = app_channels.get(name)
            stats[name] = ChannelStats(channel.subscription_count if channel else 0)
        return stats

    def local_occupied_channels(self, app_id: str, prefix: str) -> dict[str, ChannelStats]:
        return {channel.name: ChannelStats(channel.subscription_count)
                for channel in self._channels[app_id].occupied(prefix)}
