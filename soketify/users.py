"""Signed-in users of this node: their connections and who watches them (PROTOCOL.md section 6).

A user is online while at least one of its connections is signed in. Watchers hear
``online`` when a watched user's first connection signs in and ``offline`` when its last one closes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable


class Users:
    def __init__(self, notify: Callable[[Any, list[dict]], None]):
        """``notify(connection, events)`` sends watchlist events to one watcher."""
        self._notify = notify
        self._connections: dict[str, dict[str, set]] = defaultdict(dict)
        self._watchers: dict[str, dict[str, set]] = defaultdict(dict)

    def sign_in(self, app_id: str, connection, user_id: str, watchlist: tuple[str, ...]) -> None:
        """Record a signed-in connection, tell it about its watchlist and its watchers about it."""
        connections = self._connections[app_id].setdefault(user_id, set())
        first = not connections
        connections.add(connection)
        watchers = self._watchers[app_id]
        for watched in watchlist:
            watchers.setdefault(watched, set()).add(connection)
        if watchlist:
            online = [w for w in watchlist if w in self._connections[app_id]]
            offline = [w for w in watchlist if w not in self._connections[app_id]]
            self._notify(connection, _events(online, offline))
        if first:
            self._tell_watchers(app_id, user_id, "online", exclude=connection)

    def sign_out(self, app_id: str, connection) -> None:
        """Forget a closing signed-in connection."""
        user_id = connection.user_id
        watchers = self._watchers[app_id]
        for watched in connection.watchlist:
            group = watchers.get(watched)
            if group is not None:
                group.discard(connection)
                if not group:
                    del watchers[watched]
        connections = self._connections[app_id].get(user_id)
        if connections is None:
            return
        connections.discard(connection)
        if not connections:
            del self._connections[app_id][user_id]
            self._tell_watchers(app_id, user_id, "offline")

    def connections_of(self, app_id: str, user_id: str) -> list:
        return list(self._connections[app_id].get(user_id, ()))

    def is_online(self, app_id: str, user_id: str) -> bool:
        return user_id in self._connections[app_id]

    def _tell_watchers(self, app_id: str, user_id: str, change: str, exclude=None) -> None:
        for watcher in list(self._watchers[app_id].get(user_id, ())):
            if watcher is not exclude:
                self._notify(watcher, [{"name": change, "user_ids": [user_id]}])


def _events(online: list[str], offline: list[str]) -> list[dict]:
    events = []
    if online:
        events.append({"name": "online", "user_ids": online})
    if offline:
        events.append({"name": "offline", "user_ids": offline})
    return events
