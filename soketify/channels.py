"""Per-app channel state on this node: who is subscribed to what.

Pure domain code: a connection is any object with a ``socket_id`` and a ``channels`` set (the names it is
subscribed to); this module never sends anything.
"""

from __future__ import annotations

from typing import Any, Iterator


class Channel:
    """One occupied channel: its subscribers by socket id, in subscription order."""

    __slots__ = ("name", "subscribers")

    def __init__(self, name: str):
        self.name = name
        self.subscribers: dict[str, Any] = {}

    @property
    def subscription_count(self) -> int:
        return len(self.subscribers)


class AppChannels:
    """The occupied channels of one app. A channel exists only while it has a subscriber."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def subscribe(self, connection: Any, name: str) -> tuple[Channel, bool]:
        """Add a subscriber; the flag says whether it was new (a repeat subscribe counts once)."""
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(name)
        if connection.socket_id in channel.subscribers:
            return channel, False
        channel.subscribers[connection.socket_id] = connection
        connection.channels.add(name)
        return channel, True

    def unsubscribe(self, connection: Any, name: str) -> Channel | None:
        """Remove a subscriber; returns the channel it left, or None if it was not subscribed."""
        channel = self._channels.get(name)
        if channel is None or channel.subscribers.pop(connection.socket_id, None) is None:
            return None
        connection.channels.discard(name)
        if not channel.subscribers:
            del self._channels[name]
        return channel

    def remove_connection(self, connection: Any) -> list[Channel]:
        """Unsubscribe a closing connection from everything; returns the channels it left."""
        left = [self.unsubscribe(connection, name) for name in list(connection.channels)]
        return [channel for channel in left if channel is not None]

    def occupied(self, prefix: str = "") -> Iterator[Channel]:
        for name, channel in self._channels.items():
            if name.startswith(prefix):
                yield channel

    def __len__(self) -> int:
        return len(self._channels)
