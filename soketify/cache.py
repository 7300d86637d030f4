"""The last server-triggered event of each cache channel, replayed to new subscribers.

Entries live at most ``ttl`` seconds. They are checked on every read and swept periodically, so a
channel nobody reads again does not hold its event in memory for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.task import LoopingCall


@dataclass(frozen=True, slots=True)
class CachedEvent:
    name: str
    data: str
    frame: bytes  # the event exactly as it was broadcast
    expires_at: float


class ChannelCache:
    def __init__(self, clock, ttl: float, sweep_interval: float = 60.0):
        self._clock = clock
        self.ttl = ttl
        self._events: dict[tuple[str, str], CachedEvent] = {}
        self._sweep = LoopingCall(self.purge_expired)
        self._sweep.clock = clock
        self._sweep_interval = sweep_interval

    def start(self) -> None:
        self._sweep.start(self._sweep_interval, now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()

    def put(self, app_id: str, channel: str, name: str, data: str, frame: bytes) -> None:
        self._events[(app_id, channel)] = CachedEvent(name, data, frame,
                                                      self._clock.seconds() + self.ttl)

    def get(self, app_id: str, channel: str) -> CachedEvent | None:
        key = (app_id, channel)
        event = self._events.get(key)
        if event is not None and event.expires_at <= self._clock.seconds():
            del self._events[key]
            return None
        return event

    def seconds_left(self, event: CachedEvent) -> int:
        return max(0, int(event.expires_at - self._clock.seconds()))

    def purge_expired(self) -> None:
        now = self._clock.seconds()
        for key in [k for k, e in self._events.items() if e.expires_at <= now]:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)
