"""Log lines as the place they go expects them: the journal, JSON lines, or plain text.

``twistd --logger soketify.logs.make_observer`` (the Debian unit does this) makes Soketify write:

- under systemd, when standard output is the journal ($JOURNAL_STREAM names it): one line per event
  with its priority as a ``<N>`` prefix (sd-daemon(3)) and no timestamp, which the journal adds;
- with ``[log] format = "json"``: one JSON object per line (time, level, namespace, message, and
  the traceback of a failure);
- otherwise text lines as twistd writes them, with a timestamp.

``[log] level`` drops events below it. The config is read after twistd has started logging, so the
format and level are set on the observer by ``configure`` when the service is made.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.logger import LogLevel, formatEvent, formatEventAsClassicLogText

# sd-daemon(3) priorities (syslog's).
_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
             LogLevel.critical: 2}
LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}


def stdout_is_the_journal(stream=None, environ=None) -> bool:
    """$JOURNAL_STREAM is "device:inode" of the journal's stream; true if it is our stdout's."""
    expected = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat((stream or sys.stdout).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


class Observer:
    def __init__(self, stream=None, journal: bool | None = None):
        self._stream = stream or sys.stdout
        self.journal = stdout_is_the_journal(self._stream) if journal is None else journal
        self.format = "text"
        self.level = LogLevel.info

    def configure(self, format: str, level: str) -> None:
        self.format = format
        self.level = LEVELS[level]

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < self.level:
            return
        if self.format == "json":
            line = self._json(event, level)
        elif self.journal:
            text = _text(event)
            prefix = f"<{_PRIORITY.get(level, 6)}>"
            line = "\n".join(prefix + part for part in text.splitlines() or [""]) + "\n"
        else:
            line = formatEventAsClassicLogText(event)
            if line is None:
                return
        self._stream.write(line)
        self._stream.flush()

    @staticmethod
    def _json(event: dict, level) -> str:
        entry = {"time": event.get("log_time"), "level": level.name,
                 "namespace": event.get("log_namespace"), "system": event.get("log_system"),
                 "message": formatEvent(event)}
        failure = event.get("log_failure")
        if failure is not None:
            entry["traceback"] = failure.getTraceback()
        return json.dumps(entry, default=str) + "\n"


def _text(event: dict) -> str:
    where = event.get("log_namespace", "-")
    system = event.get("log_system")
    if system and system != "-":
        where = f"{system}: {where}"
    text = f"[{where}] {formatEvent(event)}"
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text


observer = Observer()


def make_observer() -> Observer:
    """For ``twistd --logger``, which wants a factory."""
    return observer


def configure(format: str, level: str) -> None:
    """Apply [log] to the observer twistd was given (no effect when another one logs)."""
    observer.configure(format, level)
