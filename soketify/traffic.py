"""Traffic counts per app, kept as plain integers where they happen and read when /metrics is
scraped: the names Soketi's metrics have (so that its dashboards work), without a Prometheus call on
the hot path (one event fanned out to a channel counts once, not once per subscriber)."""

from __future__ import annotations


class AppTraffic:
    __slots__ = ("new_connections", "disconnections", "ws_received_bytes", "ws_received_messages",
                 "ws_sent_bytes", "ws_sent_messages", "http_received_bytes", "http_sent_bytes",
                 "http_calls")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def sent(self, messages: int, size: int) -> None:
        """``messages`` WebSocket messages of ``size`` bytes each (frames as written)."""
        self.ws_sent_messages += messages
        self.ws_sent_bytes += messages * size

    def http_call(self, received: int, sent: int) -> None:
        self.http_calls += 1
        self.http_received_bytes += received
        self.http_sent_bytes += sent
