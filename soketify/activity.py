"""One reactor-wide sweep instead of a timer per connection (PROTOCOL.md sections 2 and 6).

A connection silent for ``activity_timeout`` seconds gets a server ``pusher:ping``; if nothing at all
arrives within ``pong_timeout`` after that, it is closed with 4201 so the client reconnects. Connections
that must be authorized and are not by their deadline are closed with 4009.
"""

from __future__ import annotations

from twisted.internet.task import LoopingCall

from soketify import protocol


class ActivityMonitor:
    def __init__(self, clock, connections, activity_timeout: float, pong_timeout: float,
                 authorization_overdue=lambda connection, now: False, shortest_deadline=None):
        self._clock = clock
        self._authorization_overdue = authorization_overdue
        self._connections = connections
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = clock
        self.reconfigure(activity_timeout, pong_timeout, shortest_deadline)

    def reconfigure(self, activity_timeout: float, pong_timeout: float, shortest_deadline=None):
        """New timeouts (at start, and on a reload: the sweep then runs at its new interval)."""
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        # Often enough that a ping or close is at most a few seconds late.
        deadlines = [activity_timeout, pong_timeout]
        if shortest_deadline:
            deadlines.append(shortest_deadline)
        self.interval = max(0.5, min(deadlines) / 6)
        if self._loop.running:
            self._loop.stop()
            self.start()

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sweep(self) -> None:
        now = self._clock.seconds()
        ping = None
        for connection in list(self._connections):
            if self._authorization_overdue(connection, now):
                connection.send(protocol.error(protocol.UNAUTHORIZED, "Authorization timeout"))
                connection.close(protocol.UNAUTHORIZED, "Sign in or join a private or presence "
                                 "channel sooner")
                continue
            pinged = connection.ping_sent_at
            if pinged is not None and connection.last_activity >= pinged:
                connection.ping_sent_at = pinged = None
            if pinged is None:
                if now - connection.last_activity >= self.activity_timeout:
                    if ping is None:
                        ping = protocol.ping()
                    connection.send(ping)
                    connection.ping_sent_at = now
            elif now - pinged >= self.pong_timeout:
                connection.close(protocol.PONG_NOT_RECEIVED, "Pong reply not received")
