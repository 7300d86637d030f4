"""Signed-in connections of this node: each user's connections and who watches whom (PROTOCOL.md 6).

Whether a user is online is a cluster-wide fact decided by the engine; this module only knows which
local connections to tell, and which to close when a user is terminated.
"""

from __future__ import annotations

from collections import defaultdict


class Users:
    def __init__(self) -> None:
        self._connections: dict[str, dict[str, set]] = defaultdict(dict)
        self._watchers: dict[str, dict[str, set]] = defaultdict(dict)

    def add(self, app_id: str, connection) -> None:
        """Record a signed-in connection (``user_id`` and ``watchlist`` set) and what it watches."""
        self._connections[app_id].setdefault(connection.user_id, set()).add(connection)
        watchers = self._watchers[app_id]
        for watched in connection.watchlist:
            watchers.setdefault(watched, set()).add(connection)

    def remove(self, app_id: str, connection) -> None:
        """Forget a closing signed-in connection."""
        watchers = self._watchers[app_id]
        for watched in connection.watchlist:
            group = watchers.get(watched)
            if group is not None:
                group.discard(connection)
                if not group:
                    del watchers[watched]
        connections = self._connections[app_id]
        group = connections.get(connection.user_id)
        if group is not None:
            group.discard(connection)
            if not group:
                del connections[connection.user_id]

    def connections_of(self, app_id: str, user_id: str) -> list:
        return list(self._connections[app_id].get(user_id, ()))

    def watchers_of(self, app_id: str, user_id: str) -> list:
        return list(self._watchers[app_id].get(user_id, ()))


def watchlist_events(online, offline) -> list[dict]:
    """The ``pusher_internal:watchlist_events`` list for these online and offline user ids."""
    events = []
    if online:
        events.append({"name": "online", "user_ids": list(online)})
    if offline:
        events.append({"name": "offline", "user_ids": list(offline)})
    return events
