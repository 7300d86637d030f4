"""The one-process engine: the cluster is this node, so every fact is kept here, in the reactor."""

from __future__ import annotations

import random
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from soketify import protocol
from soketify.cache import ChannelCache
from soketify.cluster.interfaces import ChannelStats, ICluster, Joined, MemberLimitReached
from soketify.config import LimitsConfig
from soketify.webhook_events import LifecycleEvents


class _Channel:
    """Who is subscribed to one channel; presence channels also count each member's connections."""

    __slots__ = ("sockets", "members")

    def __init__(self, presence: bool):
        self.sockets: dict[str, str | None] = {}  # socket id -> user id on presence channels
        self.members: dict[str, list] | None = {} if presence else None  # user -> [connections, info]

    def stats(self) -> ChannelStats:
        members = self.members
        return ChannelStats(len(self.sockets), len(members) if members is not None else None)

    def snapshot(self) -> dict[str, Any]:
        return {user_id: member[1] for user_id, member in self.members.items()}


@implementer(ICluster)
class LocalCluster(service.Service):
    name = "cluster"
    ready = True

    def __init__(self, clock, limits: LimitsConfig, grace: float = 3.0):
        self._clock = clock
        self.node_number = random.randrange(1, 2**31)
        self._limits = limits
        self._grace = grace
        self._listener = None
        self._lifecycle: LifecycleEvents | None = None
        self._channels: dict[str, dict[str, _Channel]] = {}
        self._users: dict[str, dict[str, set[str]]] = {}
        self._connections: dict[str, int] = {}
        self._misses_reported: set[tuple[str, str]] = set()
        self.cache = ChannelCache(clock, limits.cache_ttl)

    def attach(self, listener) -> None:
        self._listener = listener
        self._lifecycle = LifecycleEvents(self._clock, listener.emit_webhook, self._grace)

    def share_console(self, feed, clock) -> None:
        """One process is the whole cluster: its console sees every entry already."""

    def reconfigure(self, apps, limits: LimitsConfig, grace: float) -> None:
        """A reload: apps come with every call; the node limits and the grace apply from now on."""
        self._limits = limits
        self.cache.ttl = limits.cache_ttl
        self._grace = grace
        if self._lifecycle is not None:
            self._lifecycle.grace = grace

    def startService(self) -> None:
        super().startService()
        self.cache.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self.cache.stop()
        self._lifecycle.flush()
        return succeed(None)

    def draining(self) -> None:
        """One process is the whole cluster: its clients leave one by one, as they close."""

    # -- connections ---------------------------------------------------------------------------

    def admit_connection(self, app) -> bool:
        count = self._connections.get(app.id, 0)
        if app.max_connections and count >= app.max_connections:
            return False
        self._connections[app.id] = count + 1
        return True

    def connection_closed(self, app_id: str) -> None:
        self._connections[app_id] -= 1

    # -- channels ------------------------------------------------------------------------------

    def join(self, app, channel: str, socket_id: str, member: tuple[str, Any] | None):
        channels = self._channels.setdefault(app.id, {})
        state = channels.get(channel) or _Channel(protocol.is_presence(channel))
        new = socket_id not in state.sockets
        if new:
            refused = self._add(app, channel, channels, state, socket_id, member)
            if refused is not None:
                return succeed(refused)
        members = state.snapshot() if state.members is not None else None
        cached = self._cached_or_miss(app, channel) if protocol.is_cache(channel) else None
        return succeed(Joined(new, len(state.sockets), members, cached and cached.text))

    def _add(self, app, channel, channels, state: _Channel, socket_id, member):
        user_id = None
        if state.members is not None and member is not None:
            user_id, user_info = member
            limit = app.limits.max_presence_members
            if user_id not in state.members and len(state.members) >= limit:
                return MemberLimitReached(limit)
        added = None
        if user_id is not None and user_id not in state.members:
            # Encoded before anything changes: a member that cannot be announced is not added.
            added = protocol.member_added(channel, user_id, user_info).encode()
        first = not state.sockets
        channels[channel] = state
        state.sockets[socket_id] = user_id
        if first:
            self._lifecycle.channel_occupied(app.id, channel)
        if user_id is not None:
            existing = state.members.get(user_id)
            if existing is None:
                state.members[user_id] = [1, user_info]
                self._listener.deliver(app.id, channel, added, socket_id)
                self._listener.member_changed(app.id, channel, user_id, True)
                self._lifecycle.member_added(app.id, channel, user_id)
            else:
                existing[0] += 1
        return None

    def _cached_or_miss(self, app, channel: str):
        cached = self.cache.get(app.id, channel)
        if cached is None and (app.id, channel) not in self._misses_reported:
            # One cache_miss webhook per channel while it stays empty, not one per subscriber.
            self._misses_reported.add((app.id, channel))
            self._listener.emit_webhook(app.id, {"name": "cache_miss", "channel": channel})
        return cached

    def leave(self, app, channel: str, socket_id: str, user_id: str | None = None):
        return succeed(self._leave(app.id, channel, socket_id))

    def _leave(self, app_id: str, channel: str, socket_id: str) -> int | None:
        channels = self._channels.get(app_id)
        state = channels.get(channel) if channels is not None else None
        if state is None or socket_id not in state.sockets:
            return None
        user_id = state.sockets.pop(socket_id)
        if user_id is not None:
            member = state.members[user_id]
            member[0] -= 1
            if member[0] == 0:
                del state.members[user_id]
                self._listener.deliver(app_id, channel,
                                       protocol.member_removed(channel, user_id).encode(), None)
                self._listener.member_changed(app_id, channel, user_id, False)
                self._lifecycle.member_removed(app_id, channel, user_id)
        if not state.sockets:
            del channels[channel]
            self._lifecycle.channel_vacated(app_id, channel)
            self._misses_reported.discard((app_id, channel))
        return len(state.sockets)

    def remove_node(self, node_number: int) -> dict[tuple[str, str], int]:
        """Every socket of a node that is gone (a worker process that ended): its subscriptions
        and sign-ins end as if each had closed. Returns the new count of each channel it left."""
        prefix = f"{node_number}."
        counts = {}
        for app_id, channels in list(self._channels.items()):
            for name, state in list(channels.items()):
                for socket_id in [s for s in state.sockets if s.startswith(prefix)]:
                    counts[app_id, name] = self._leave(app_id, name, socket_id)
        for app_id, users in list(self._users.items()):
            for user_id, sockets in list(users.items()):
                for socket_id in [s for s in sockets if s.startswith(prefix)]:
                    self._sign_out(app_id, socket_id, user_id)
        return counts

    # -- users ---------------------------------------------------------------------------------

    def sign_in(self, app, socket_id: str, user_id: str, watchlist: tuple[str, ...]):
        users = self._users.setdefault(app.id, {})
        sockets = users.setdefault(user_id, set())
        sockets.add(socket_id)
        if len(sockets) == 1:
            self._listener.user_online_changed(app.id, user_id, True)
        return succeed({watched for watched in watchlist if watched in users})

    def sign_out(self, app, socket_id: str, user_id: str) -> None:
        self._sign_out(app.id, socket_id, user_id)

    def _sign_out(self, app_id: str, socket_id: str, user_id: str) -> None:
        users = self._users.get(app_id, {})
        sockets = users.get(user_id)
        if sockets is None:
            return
        sockets.discard(socket_id)
        if not sockets:
            del users[user_id]
            self._listener.user_online_changed(app_id, user_id, False)

    def user_sockets(self, app_id: str, user_id: str):
        return succeed(sorted(self._users.get(app_id, {}).get(user_id, ())))

    def terminate_user(self, app_id: str, user_id: str):
        # A listener standing for many processes (the supervisor's) answers later.
        return maybeDeferred(self._listener.terminate_user_here, app_id, user_id)

    # -- events --------------------------------------------------------------------------------

    def publish(self, app, channel: str, text: str, except_socket_id: str | None,
                cached: tuple[str, str] | None = None) -> None:
        if cached is not None:
            self.cache.put(app.id, channel, text, *cached)
            self._misses_reported.discard((app.id, channel))
        self._listener.deliver(app.id, channel, text.encode(), except_socket_id)

    # -- queries -------------------------------------------------------------------------------

    def channel_stats(self, app_id: str, names):
        channels = self._channels.get(app_id, {})
        return succeed({name: channels[name].stats() if name in channels else ChannelStats(0)
                        for name in names})

    def occupied_channels(self, app_id: str, prefix: str):
        return succeed({name: state.stats() for name, state in self._channels.get(app_id, {}).items()
                        if name.startswith(prefix)})

    def channel_members(self, app_id: str, channel: str):
        state = self._channels.get(app_id, {}).get(channel)
        return succeed(state.snapshot() if state is not None and state.members else {})

    def cached_event(self, app_id: str, channel: str):
        return succeed(self.cache.get(app_id, channel))
