"""Telling systemd how the daemon is doing, for a unit of Type=notify (sd_notify(3)).

The protocol is a datagram of ``KEY=value`` lines to the Unix socket named in $NOTIFY_SOCKET (a
leading "@" names an abstract socket); a few lines, so no library is needed. Only the main process
speaks: the supervisor does not pass $NOTIFY_SOCKET on to its workers. Without $NOTIFY_SOCKET (not
under systemd, or another service type) nothing is sent at all.

What is sent: READY=1 once the daemon serves (every listener up, the cluster engine reachable, all
workers up), STATUS= lines a person can read in ``systemctl status`` while it runs, RELOADING=1
then READY=1 around a reload (SIGHUP), and STOPPING=1 as soon as a graceful stop begins.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

NOTIFY_SOCKET = "NOTIFY_SOCKET"
# How often the status line is refreshed (only sent when it changed).
STATUS_INTERVAL = 5.0


class Notifier:
    """Sends sd_notify messages to one socket; a failure is logged once, never raised."""

    def __init__(self, address: str):
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failed = False

    @classmethod
    def from_environment(cls, environ=None) -> "Notifier | None":
        address = (os.environ if environ is None else environ).get(NOTIFY_SOCKET)
        return cls(address) if address else None

    def send(self, *lines: str) -> None:
        try:
            self._socket.sendto("\n".join(lines).encode("utf-8"), self._address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warn("Cannot notify systemd at {address}: {error}", address=self._address,
                         error=e.strerror)

    def close(self) -> None:
        self._socket.close()


class SystemdStatus(service.Service):
    """READY=1 once ``status()`` says the daemon serves, STATUS= while it runs, STOPPING=1 when
    stopped. ``status()`` answers (serving, text for systemctl status)."""

    def __init__(self, notifier: Notifier, clock, status):
        self._notifier = notifier
        self._status = status
        self._ready_sent = False
        self._last_text = None
        self._clock = clock
        self._starting = None
        self._loop = LoopingCall(self._update)
        self._loop.clock = clock

    def startService(self):
        super().startService()
        # Not before the reactor runs: until then a SIGTERM (after READY=1, systemctl stop) would
        # find no handler and kill the process without a graceful stop. Timed calls run only once
        # the reactor runs, after it installed its signal handlers.
        self._starting = self._clock.callLater(0, self._loop.start, STATUS_INTERVAL, True)

    def _update(self) -> None:
        serving, text = self._status()
        if serving and not self._ready_sent:
            self._ready_sent = True
            self._last_text = text
            self._notifier.send("READY=1", f"STATUS={text}")
        elif text != self._last_text:
            self._last_text = text
            self._notifier.send(f"STATUS={text}")

    def reloading(self, text: str) -> None:
        """A reload (SIGHUP) begins. (``systemctl reload`` returns once ExecReload has sent the
        signal: systemd 252 has no Type=notify-reload. This shows the reload in systemctl status.)"""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._notifier.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={text}")
        self._last_text = text

    def reloaded(self) -> None:
        _, text = self._status()
        self._last_text = text
        if self._ready_sent:
            self._notifier.send("READY=1", f"STATUS={text}")
        else:  # reloaded while still starting: READY=1 waits until it serves
            self._notifier.send(f"STATUS={text}")

    def stopService(self):
        if self._starting is not None and self._starting.active():
            self._starting.cancel()
        if self._loop.running:
            self._loop.stop()
        self._notifier.send("STOPPING=1", "STATUS=Stopping: asking clients to reconnect elsewhere")
        return super().stopService()


def systemd_status(clock, status, environ=None) -> SystemdStatus | None:
    """A SystemdStatus reporting ``status()`` when $NOTIFY_SOCKET is set, else None. Put it in the
    service tree after the main service: it is stopped first, so STOPPING=1 goes out as soon as a
    stop begins."""
    notifier = Notifier.from_environment(environ)
    return None if notifier is None else SystemdStatus(notifier, clock, status)


def environment_for_children(environ=None) -> dict:
    """The environment for processes this one starts: without $NOTIFY_SOCKET (only the main
    process may notify)."""
    return {k: v for k, v in (os.environ if environ is None else environ).items()
            if k != NOTIFY_SOCKET}
