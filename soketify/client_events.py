"""Whether a client event may be relayed (PROTOCOL.md section 5); every refusal says why."""

from __future__ import annotations

import json
from typing import Any

from soketify import protocol
from soketify.config import AppConfig, LimitsConfig

CLIENT_EVENT_PREFIX = "client-"


def refusal(app: AppConfig, connection, name: str, channel: Any, data: Any, now: float
            ) -> tuple[str, str | None] | None:
    """Why this client event is refused, and the app limit it is over if any (as /metrics names
    it), or None to relay it. Counts it against the rate limit."""
    why = _refusal(app, app.limits, connection, name, channel, data, now)
    if why is None or isinstance(why, tuple):
        return why
    return why, None


def _refusal(app: AppConfig, limits: LimitsConfig, connection, name: str, channel: Any, data: Any,
             now: float) -> str | tuple[str, str] | None:
    if not app.client_events:
        return "Client events are not enabled for this app"
    if len(name) > limits.max_event_name_length:
        return f"Event name is longer than {limits.max_event_name_length} characters"
    if not isinstance(channel, str) or not channel:
        return "A client event needs a channel"
    kind = protocol.channel_type(channel)
    if kind.startswith("private-encrypted"):
        return "Client events are not allowed on encrypted channels"
    if not (kind.startswith("private") or kind.startswith("presence")):
        return "Client events are only allowed on private and presence channels"
    if channel not in connection.channels:
        return f"Subscribe to {channel!r} before sending client events on it"
    size = len(data.encode() if isinstance(data, str)
               else json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_event_data_bytes:
        return f"Event data is {size} bytes; at most {limits.max_event_data_bytes} allowed", "event_payload"
    # A fixed one-second window per connection: two attributes, no timer.
    if not 0 <= now - connection.client_event_window < 1.0:  # (a clock set back starts anew)
        connection.client_event_window = now
        connection.client_events_in_window = 0
    if connection.client_events_in_window >= limits.max_client_events_per_second:
        return (f"Rate limit: at most {limits.max_client_events_per_second} client events "
                "per second per connection", "client_events_per_second")
    connection.client_events_in_window += 1
    return None
