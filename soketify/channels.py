"""Per-app channel state on this node: who is subscribed to what, and presence members.

Pure domain code: a connection is any object with a ``socket_id`` and a ``channels`` collection (the
names it is subscribed to; an empty frozenset until the first subscribe gives it a set of its own, so
idle connections carry no set); this module never sends anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(slots=True)
class Member:
    """A presence member: one user, however many of its connections are subscribed."""

    user_id: str
    user_info: Any
    connections: int = 0


class Channel:
    """One occupied channel: its subscribers by socket id, in subscription order.

    Presence channels also track ``members`` by user id and which user each socket joined as.
    """

    __slots__ = ("name", "subscribers", "members", "user_of_socket")

    def __init__(self, name: str, presence: bool = False):
        self.name = name
        self.subscribers: dict[str, Any] = {}
        self.members: dict[str, Member] | None = {} if presence else None
        self.user_of_socket: dict[str, str] | None = {} if presence else None

    @property
    def subscription_count(self) -> int:
        return len(self.subscribers)

    @property
    def user_count(self) -> int:
        return len(self.members) if self.members is not None else 0

    def presence_data(self) -> dict:
        """The members as ``subscription_succeeded`` carries them on presence channels."""
        members = self.members or {}
        return {"presence": {"ids": list(members), "count": len(members),
                             "hash": {uid: m.user_info for uid, m in members.items()}}}


@dataclass(slots=True)
class Subscribed:
    channel: Channel
    new: bool  # False for a repeated subscribe on the same connection
    member_added: Member | None = None  # the user's first connection joined


@dataclass(slots=True)
class Unsubscribed:
    channel: Channel
    member_removed: Member | None = None  # the user's last connection left


class AppChannels:
    """The occupied channels of one app. A channel exists only while it has a subscriber."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def subscribe(self, connection: Any, name: str, member: tuple[str, Any] | None = None,
                  presence: bool = False) -> Subscribed:
        """Add a subscriber; on presence channels ``member`` is its (user_id, user_info)."""
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(name, presence)
        socket_id = connection.socket_id
        if socket_id in channel.subscribers:
            return Subscribed(channel, False)
        channel.subscribers[socket_id] = connection
        if type(connection.channels) is not set:
            connection.channels = set()
        connection.channels.add(name)
        added = None
        if channel.members is not None and member is not None:
            user_id, user_info = member
            existing = channel.members.get(user_id)
            if existing is None:
                existing = added = channel.members[user_id] = Member(user_id, user_info)
            existing.connections += 1
            channel.user_of_socket[socket_id] = user_id
        return Subscribed(channel, True, added)

    def would_add_member(self, name: str, user_id: str) -> bool:
        channel = self._channels.get(name)
        return channel is None or channel.members is None or user_id not in channel.members

    def member_count(self, name: str) -> int:
        channel = self._channels.get(name)
        return channel.user_count if channel is not None else 0

    def unsubscribe(self, connection: Any, name: str) -> Unsubscribed | None:
        """Remove a subscriber; None if it was not subscribed."""
        channel = self._channels.get(name)
        socket_id = connection.socket_id
        if channel is None or channel.subscribers.pop(socket_id, None) is None:
            return None
        connection.channels.discard(name)
        removed = None
        if channel.user_of_socket is not None:
            user_id = channel.user_of_socket.pop(socket_id, None)
            member = channel.members.get(user_id) if user_id is not None else None
            if member is not None:
                member.connections -= 1
                if member.connections == 0:
                    removed = channel.members.pop(user_id)
        if not channel.subscribers:
            del self._channels[name]
        return Unsubscribed(channel, removed)

    def remove_connection(self, connection: Any) -> list[Unsubscribed]:
        """Unsubscribe a closing connection from everything; returns what it left."""
        left = [self.unsubscribe(connection, name) for name in list(connection.channels)]
        return [result for result in left if result is not None]

    def occupied(self, prefix: str = "") -> Iterator[Channel]:
        for name, channel in self._channels.items():
            if name.startswith(prefix):
                yield channel

    def __len__(self) -> int:
        return len(self._channels)
