"""Clients that keep sending frames the server cannot use: logged without flooding the log, and
told to back off once past a limit.

A bad frame (not JSON, not a Pusher frame, an unknown event, a binary frame) is answered with
``pusher:error`` and the connection stays open, as pusher-js expects. The log gets one line for the
first bad frame from an address in a minute and, once the minute is over, one line saying how many
more there were (soketify.log_summary); so a client sending thousands a second costs two lines a
minute. A
connection sending more than ``limits.max_bad_frames_per_minute`` in one minute is closed with 4100,
which makes pusher-js back off before it reconnects.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

from soketify import protocol
from soketify.log_summary import Summarised

log = Logger()

WINDOW = 60.0


class BadFrames:
    def __init__(self, clock, max_per_minute: int):
        """``max_per_minute`` 0: never close a connection for its bad frames."""
        self._clock = clock
        self.max_per_minute = max_per_minute
        self._log = Summarised(clock, log, LogLevel.info,
                               "Bad frame from {address} ({socket_id}): {problem}",
                               "bad frames from {source}")

    def seen(self, connection, problem: str) -> None:
        """Count one bad frame of ``connection`` (already answered with ``problem``); close the
        connection if it is over the limit."""
        now = self._clock.seconds()
        self._log.log(connection.remote_address, address=connection.remote_address,
                      socket_id=connection.socket_id, problem=problem)
        if not self.max_per_minute:
            return
        if not 0 <= now - connection.bad_frames_window < WINDOW:  # (a clock set back starts anew)
            connection.bad_frames_window = now
            connection.bad_frames_in_window = 0
        connection.bad_frames_in_window += 1
        if connection.bad_frames_in_window > self.max_per_minute:
            connection.close(protocol.OVER_CAPACITY,
                             f"More than {self.max_per_minute} bad frames in a minute; slow down")
