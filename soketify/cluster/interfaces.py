"""What a connection offers the node, and what a cluster engine offers the node and asks of it.

The hub holds the connections of this node; an engine (``local``, ``redis``) holds the few facts that
are cluster-wide (who is subscribed where, presence members, signed-in users, cached events) and
decides every transition of them in one atomic step, so each one is announced exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class IConnection(Interface):
    """One client connection, as the session layer and the hub see it."""

    socket_id = Attribute("'<node>.<n>': unique in the cluster")
    app = Attribute("the AppConfig the connection belongs to")
    channels = Attribute("names of the channels it is subscribed to on this node")
    user_id = Attribute("the signed-in user id, or None")
    user_info = Attribute("the signed-in user's user_info, or None")
    watchlist = Attribute("user ids it watches (a tuple)")
    authorized = Attribute("signed in, or subscribed to a channel that needs auth")
    closing = Attribute("True once a close was started (by either side)")
    closed = Attribute("True once the hub has forgotten the connection")
    remote_address = Attribute("the client's IP address, for logs")

    def send(text: str) -> None:
        """Send one JSON text frame meant for this connection alone."""

    def write_frame(frame: bytes) -> None:
        """Write an already framed event shared with other subscribers; never closes synchronously."""

    def close(code: int, reason: str) -> None:
        """Start a WebSocket close with this code."""


class IClusterListener(Interface):
    """What an engine calls back on its node (the hub)."""

    def deliver(app_id: str, channel: str, payload, except_socket_id: str | None) -> None:
        """Write one event (its UTF-8 JSON text as bytes or a memoryview, framed once here) to this
        node's subscribers."""

    def subscription_count_changed(app_id: str, channel: str, count: int, here: bool) -> None:
        """The cluster-wide subscriber count of a channel changed (``here``: by this node). Engines
        report other nodes' changes; the node reports its own, from the answers to join and leave."""

    def user_online_changed(app_id: str, user_id: str, online: bool) -> None:
        """A user's first connection in the cluster signed in, or its last one closed."""

    def member_changed(app_id: str, channel: str, user_id: str, present: bool) -> None:
        """A user became a member of a presence channel (its first connection there in the cluster)
        or stopped being one (its last left, now, not after the webhook grace). Reported by one node
        only, the one whose step it was: for the debug console."""

    def terminate_user_here(app_id: str, user_id: str) -> int:
        """Close this node's connections of the user with 4009; returns how many."""

    def wants_webhook(app_id: str, name: str) -> bool:
        """Whether any webhook target of the app takes events of this type."""

    def emit_webhook(app_id: str, event: dict) -> None:
        """Hand one webhook event, decided once for the cluster, to this node's delivery."""

    def webhooks_stored():
        """Deferred that fires once every event handed over so far is in this node's outbox."""

    def state_lost(reason: str) -> None:
        """The engine lost this node's cluster state: every client must reconnect (4200)."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    subscription_count: int
    user_count: int | None = None

    @property
    def occupied(self) -> bool:
        return self.subscription_count > 0


@dataclass(frozen=True, slots=True)
class CachedEvent:
    """The last server-triggered event of a cache channel, as it was broadcast."""

    text: str  # the JSON frame text
    name: str
    data: str
    ttl: int  # whole seconds left


@dataclass(frozen=True, slots=True)
class Joined:
    """A subscription the cluster accepted."""

    new: bool  # False when the socket was already subscribed
    subscription_count: int  # subscribers in the cluster, this one included
    members: dict[str, Any] | None = None  # presence channels: user_id -> user_info, self included
    cached: str | None = None  # cache channels: the last event's frame text to replay (None: a miss)


@dataclass(frozen=True, slots=True)
class MemberLimitReached:
    """A presence subscription refused because the channel already has the most members allowed."""

    limit: int


class ClusterUnavailable(Exception):
    """The engine cannot reach the cluster state right now (e.g. Redis is down)."""


class ICluster(IService):
    """The cluster-wide operations of one node. Methods returning Deferreds may answer later, but an
    engine keeps one order per node: operations take effect and are answered in the order they were
    asked, and what the listener hears (deliveries, counts, users online) comes in that same order
    with the answers. So a subscriber registered when its join is answered gets exactly the events
    its answer (members, cached event) does not already hold."""

    ready = Attribute("True while the node serves as part of the cluster")
    node_number = Attribute("this node's number in the cluster: the first part of its socket ids")

    def attach(listener: IClusterListener) -> None:
        """The node to call back."""

    def share_console(feed, clock) -> None:
        """Carry the debug console's entries (a soketify.console_feed.ConsoleFeed) between the
        nodes: each node's to the others while a console watches there."""

    def draining() -> None:
        """The node is stopping and moving its clients to other nodes (4200): what they held may end
        with the node rather than one by one, so that members who reconnect elsewhere at once are
        never announced as gone."""

    def admit_connection(app) -> bool:
        """Whether one more connection fits the app's max_connections (and count it if so)."""

    def connection_closed(app_id: str) -> None:
        """An admitted connection has closed."""

    def join(app, channel: str, socket_id: str, member: tuple[str, Any] | None):
        """Deferred of Joined or MemberLimitReached. Joining twice is harmless and counted once.
        A new presence member is announced (member_added) to every other subscriber."""

    def leave(app, channel: str, socket_id: str, user_id: str | None):
        """The socket left the channel (``user_id``: the member it joined a presence channel as).
        Deferred of the subscribers left in the cluster, or None if it was not subscribed."""

    def sign_in(app, socket_id: str, user_id: str, watchlist: tuple[str, ...]):
        """Deferred of the set of ``watchlist`` ids online in the cluster."""

    def sign_out(app, socket_id: str, user_id: str) -> None:
        """A signed-in connection closed."""

    def publish(app, channel: str, text: str, except_socket_id: str | None,
                cached: tuple[str, str] | None = None) -> None:
        """Send one encoded event to every subscriber in the cluster; ``cached`` (name, data)
        also stores it as the cache channel's last event."""

    def channel_stats(app_id: str, names: list[str]):
        """Deferred of {name: ChannelStats}."""

    def occupied_channels(app_id: str, prefix: str):
        """Deferred of {name: ChannelStats} for every occupied channel whose name has the prefix."""

    def channel_members(app_id: str, channel: str):
        """Deferred of {user_id: user_info} of the members present on a presence channel."""

    def user_sockets(app_id: str, user_id: str):
        """Deferred of the ids of the sockets signed in as the user, cluster-wide."""

    def cached_event(app_id: str, channel: str):
        """Deferred of the cache channel's CachedEvent, or None."""

    def terminate_user(app_id: str, user_id: str):
        """Deferred: every connection of the user, on every node, closed with 4009."""
