"""Clients that keep sending frames the server cannot use: logged without flooding the log, and
told to back off once past a limit.

A bad frame (not JSON, not a Pusher frame, an unknown event, a binary frame) is answered with
``pusher:error`` and the connection stays open, as pusher-js expects. The log gets one line for the
first bad frame from an address in a minute and, with the next one after that minute, one line saying
how many more there were; so a client sending thousands a second costs two lines a minute. A
connection sending more than ``limits.max_bad_frames_per_minute`` in one minute is closed with 4100,
which makes pusher-js back off before it reconnects.
"""

from __future__ import annotations

from twisted.logger import Logger

from soketify import protocol

log = Logger()

WINDOW = 60.0
# Addresses remembered for the log at most; past this the ones whose minute is over are forgotten.
MAX_ADDRESSES = 10000


class BadFrames:
    def __init__(self, clock, max_per_minute: int):
        """``max_per_minute`` 0: never close a connection for its bad frames."""
        self._clock = clock
        self.max_per_minute = max_per_minute
        self._windows: dict[str, list] = {}  # address -> [start of its minute, frames not logged]
        self._pruned_at = 0.0

    def seen(self, connection, problem: str) -> None:
        """Count one bad frame of ``connection`` (already answered with ``problem``); close the
        connection if it is over the limit."""
        now = self._clock.seconds()
        self._log(connection, problem, now)
        if not self.max_per_minute:
            return
        if not 0 <= now - connection.bad_frames_window < WINDOW:  # (a clock set back starts anew)
            connection.bad_frames_window = now
            connection.bad_frames_in_window = 0
        connection.bad_frames_in_window += 1
        if connection.bad_frames_in_window > self.max_per_minute:
            connection.close(protocol.OVER_CAPACITY,
                             f"More than {self.max_per_minute} bad frames in a minute; slow down")

    def _log(self, connection, problem: str, now: float) -> None:
        address = connection.remote_address
        window = self._windows.get(address)
        if window is not None and 0 <= now - window[0] < WINDOW:
            window[1] += 1
            return
        if window is not None and window[1]:
            log.info("... and {count} more bad frames from {address} in the {seconds:.0f} s after "
                     "that", count=window[1], address=address, seconds=WINDOW)
        if window is None and len(self._windows) >= MAX_ADDRESSES and now - self._pruned_at >= WINDOW:
            self._pruned_at = now  # at most once a minute
            self._forget_old(now)
        self._windows[address] = [now, 0]
        log.info("Bad frame from {address} ({socket_id}): {problem}", address=address,
                 socket_id=connection.socket_id, problem=problem)

    def _forget_old(self, now: float) -> None:
        for address in [a for a, (start, _) in self._windows.items() if not 0 <= now - start < WINDOW]:
            del self._windows[address]
