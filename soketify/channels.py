"""This node's subscribers per channel of one app: who gets an event when it arrives here.

Pure domain code: a connection is any object with a ``socket_id`` and a ``channels`` collection (the
names it is subscribed to; an empty frozenset until the first subscribe gives it a set of its own, so
idle connections carry no set). Cluster-wide facts (counts, presence members) live in the engine.
"""

from __future__ import annotations

from typing import Any

from soketify.protocol import channel_type


class Channel:
    """One channel with subscribers on this node, in subscription order.

    On presence channels ``user_of_socket`` says which user each socket joined as (client events
    carry it, and leaving tells the engine which member may be gone)."""

    __slots__ = ("name", "subscribers", "user_of_socket")

    def __init__(self, name: str):
        self.name = name
        self.subscribers: dict[str, Any] = {}
        self.user_of_socket: dict[str, str] | None = None


class AppChannels:
    """The channels of one app with subscribers on this node. A channel exists only while it has one."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def subscriptions_by_type(self) -> dict[str, int]:
        """Subscriptions on this node by channel type ('public', 'presence', 'private-cache'...)."""
        counts: dict[str, int] = {}
        for name, channel in self._channels.items():
            kind = channel_type(name)
            counts[kind] = counts.get(kind, 0) + len(channel.subscribers)
        return counts

    def add(self, connection: Any, name: str, user_id: str | None = None) -> bool:
        """Add a subscriber (on presence channels, as ``user_id``); False if it already was one."""
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(name)
        socket_id = connection.socket_id
        if socket_id in channel.subscribers:
            return False
        channel.subscribers[socket_id] = connection
        if type(connection.channels) is not set:
            connection.channels = set()
        connection.channels.add(name)
        if user_id is not None:
            if channel.user_of_socket is None:
                channel.user_of_socket = {}
            channel.user_of_socket[socket_id] = user_id
        return True

    def remove(self, connection: Any, name: str) -> tuple[bool, str | None]:
        """Remove a subscriber: (whether it was one, the user it had joined as)."""
        channel = self._channels.get(name)
        socket_id = connection.socket_id
        if channel is None or channel.subscribers.pop(socket_id, None) is None:
            return False, None
        connection.channels.discard(name)
        user_id = channel.user_of_socket.pop(socket_id, None) if channel.user_of_socket else None
        if not channel.subscribers:
            del self._channels[name]
        return True, user_id

    def remove_connection(self, connection: Any) -> list[tuple[str, str | None]]:
        """Unsubscribe a closing connection from everything: [(channel, user it had joined as)]."""
        left = []
        for name in list(connection.channels):
            removed, user_id = self.remove(connection, name)
            if removed:
                left.append((name, user_id))
        return left

    def user_of(self, name: str, socket_id: str) -> str | None:
        """The user a socket joined a presence channel as, else None."""
        channel = self._channels.get(name)
        if channel is None or channel.user_of_socket is None:
            return None
        return channel.user_of_socket.get(socket_id)

    def __len__(self) -> int:
        return len(self._channels)
