"""Channel and member lifecycle as webhook events, with a grace period against flapping.

``channel_vacated`` and ``member_removed`` wait ``grace`` seconds. If the channel is occupied again (or
the member comes back) within that time, the pending removal and the new occupied/added event are
both dropped: a client reconnecting does not produce a vacated/occupied pair.
"""

from __future__ import annotations

from typing import Callable


class LifecycleEvents:
    def __init__(self, clock, emit: Callable[[str, dict], None], grace: float):
        """``emit(app_id, event)`` hands one webhook event on for delivery."""
        self._clock = clock
        self._emit = emit
        self.grace = grace
        self._pending: dict[tuple, tuple] = {}  # key -> (delayed call, app_id, event)

    def channel_occupied(self, app_id: str, channel: str) -> None:
        self._arrived(("channel", app_id, channel), app_id,
                      {"name": "channel_occupied", "channel": channel})

    def channel_vacated(self, app_id: str, channel: str) -> None:
        self._left(("channel", app_id, channel), app_id,
                   {"name": "channel_vacated", "channel": channel})

    def member_added(self, app_id: str, channel: str, user_id: str) -> None:
        self._arrived(("member", app_id, channel, user_id), app_id,
                      {"name": "member_added", "channel": channel, "user_id": user_id})

    def member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        self._left(("member", app_id, channel, user_id), app_id,
                   {"name": "member_removed", "channel": channel, "user_id": user_id})

    def _arrived(self, key, app_id: str, event: dict) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending[0].cancel()  # back within the grace period: neither event is sent
            return
        self._emit(app_id, event)

    def _left(self, key, app_id: str, event: dict) -> None:
        if self.grace <= 0:
            self._emit(app_id, event)
            return
        call = self._clock.callLater(self.grace, self._expired, key)
        self._pending[key] = (call, app_id, event)

    def _expired(self, key) -> None:
        _, app_id, event = self._pending.pop(key)
        self._emit(app_id, event)

    def flush(self) -> None:
        """Send every pending removal now (the server is stopping)."""
        for key in list(self._pending):
            call, _, _ = self._pending[key]
            call.cancel()
            self._expired(key)
