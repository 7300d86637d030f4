"""Warnings that can come in floods (bad frames from one client, a failing webhook target, slow
clients dropped) are written once per source and minute; the rest are counted and summed up when the
minute is over: "... 4,312 more bad frames from 10.0.0.7 in the last 60 s". A flood of any size
costs two lines a minute per source."""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

WINDOW = 60.0
# Sources followed at once at most; past this, lines from new sources share one count.
MAX_SOURCES = 10000
OTHER = object()


class Summarised:
    """One kind of line. ``log(source, **fields)`` writes ``format`` with the fields the first time
    a source is seen in a window; the others in that window are counted, and at its end
    ``"... {count} more {what} in the last 60 s"`` is written (``what`` may name ``{source}``)."""

    def __init__(self, clock, logger: Logger, level: LogLevel, format: str, what: str,
                 window: float = WINDOW, max_sources: int = MAX_SOURCES):
        self._clock = clock
        self._logger = logger
        self._level = level
        self._format = format
        self._what = what
        self._window = window
        self._max_sources = max_sources
        self._counts: dict = {}  # source -> lines not written in its window so far

    def log(self, source, **fields) -> None:
        counts = self._counts
        if source in counts:
            counts[source] += 1
            return
        if len(counts) >= self._max_sources:
            counts[OTHER] = counts.get(OTHER, 0) + 1
            if counts[OTHER] == 1:
                self._clock.callLater(self._window, self._end, OTHER)
            return
        counts[source] = 0
        self._logger.emit(self._level, self._format, **fields)
        self._clock.callLater(self._window, self._end, source)

    def _end(self, source) -> None:
        """The source's window is over: its count, if any, is written, and it is forgotten."""
        count = self._counts.pop(source, 0)
        if not count:
            return
        what = self._what.replace("{source}", "other sources" if source is OTHER else str(source))
        self._logger.emit(self._level, "... {count:,} more {what} in the last {seconds:.0f} s",
                          count=count, what=what, seconds=self._window)
