"""The last server-triggered event of each cache channel, replayed to new subscribers.

Entries live at most ``ttl`` seconds. They are checked on every read and swept periodically, so a
channel nobody reads again does not hold its event in memory for ever.
"""

from __future__ import annotations

import math

from twisted.internet.task import LoopingCall

from soketify.cluster.interfaces import CachedEvent


class ChannelCache:
    def __init__(self, clock, ttl: float, sweep_interval: float = 60.0):
        self._clock = clock
        self.ttl = ttl
        # (app id, channel) -> (frame text, event name, data, expiry time)
        self._events: dict[tuple[str, str], tuple[str, str, str, float]] = {}
        self._sweep = LoopingCall(self.purge_expired)
        self._sweep.clock = clock
        self._sweep_interval = sweep_interval

    def start(self) -> None:
        self._sweep.start(self._sweep_interval, now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()

    def put(self, app_id: str, channel: str, text: str, name: str, data: str) -> None:
        """Keep ``text``, the event exactly as it was broadcast."""
        self._events[(app_id, channel)] = (text, name, data, self._clock.seconds() + self.ttl)

    def get(self, app_id: str, channel: str) -> CachedEvent | None:
        key = (app_id, channel)
        entry = self._events.get(key)
        if entry is None:
            return None
        text, name, data, expires_at = entry
        left = expires_at - self._clock.seconds()
        if left <= 0:
            del self._events[key]
            return None
        return CachedEvent(text, name, data, math.ceil(left))

    def purge_expired(self) -> None:
        now = self._clock.seconds()
        for key in [k for k, entry in self._events.items() if entry[3] <= now]:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)
