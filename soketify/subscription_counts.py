"""``pusher_internal:subscription_count`` announcements, throttled on busy channels.

When a channel's subscriber count changes, its subscribers are told the new count. Channels over
``busy_threshold`` subscribers hear at most once per ``busy_interval`` seconds, and the last count is
always sent once the interval has passed, so nobody is left with a stale number.
"""

from __future__ import annotations

from typing import Callable


class SubscriptionCountAnnouncer:
    def __init__(self, clock, announce: Callable[[str, str], None], busy_threshold: int = 100,
                 busy_interval: float = 5.0):
        """``announce(app_id, channel)`` sends the channel's current count to its subscribers."""
        self._clock = clock
        self._announce = announce
        self.busy_threshold = busy_threshold
        self.busy_interval = busy_interval
        self._last_sent: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], object] = {}

    def changed(self, app_id: str, channel: str, count: int) -> None:
        key = (app_id, channel)
        if count == 0:
            # Nobody left to tell; forget the channel.
            self._last_sent.pop(key, None)
            pending = self._pending.pop(key, None)
            if pending is not None:
                pending.cancel()
            return
        if key in self._pending:
            return  # the scheduled announcement will carry the latest count
        now = self._clock.seconds()
        last = self._last_sent.get(key)
        if count <= self.busy_threshold or last is None or now - last >= self.busy_interval:
            self._send(key)
        else:
            self._pending[key] = self._clock.callLater(last + self.busy_interval - now,
                                                       self._send_pending, key)

    def _send_pending(self, key) -> None:
        del self._pending[key]
        self._send(key)

    def _send(self, key) -> None:
        self._last_sent[key] = self._clock.seconds()
        self._announce(*key)

    def stop(self) -> None:
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
