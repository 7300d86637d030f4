"""What the debug console shows: one entry per thing that happened on this node (a connection
opened, a subscription, an API message, a webhook attempt, a refusal ...), handed to each attached
viewer (a browser console or a script reading the NDJSON stream).

Nobody watching costs nothing: the places that report check ``feed.watching`` (a plain attribute)
before they build an entry, so no dict, string or timestamp is made while no viewer is attached.
Each viewer has a bounded queue; when it cannot keep up, entries are skipped and counted, never
waited for, so a slow viewer never slows the server.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Callable, Iterable

from twisted.internet.task import LoopingCall

# Entries a viewer may have waiting; past this they are skipped (and counted).
MAX_QUEUED = 2000
# In a cluster, a node with viewers says so at least this often; the others send it their
# entries until they have not heard it for REMOTE_WATCH_SECONDS.
REMOTE_WATCH_SECONDS = 3.0
# Entries one node sends the others per reactor turn at most, in one message; more are not sent:
# a console must not crowd out the cluster's own traffic on the connection they share.
SHARED_PER_TURN = 200

# Every entry type, for the console's checkboxes and the stream's documentation.
TYPES = ("connection_opened", "connection_closed", "subscribed", "unsubscribed",
         "channel_occupied", "channel_vacated", "member_added", "member_removed", "api_message",
         "client_event", "subscription_count", "cache_miss", "webhook", "refused")


class ConsoleFeed:
    def __init__(self, clock, node: str):
        self._clock = clock
        self.node = node
        self.watching = False  # a viewer here, or on another node of the cluster
        self._viewers: list[Viewer] = []
        # In a cluster: ``send(lines)`` sends one turn's entries (JSON lines) to the other nodes.
        self._send: Callable[[str], None] | None = None
        self._outgoing: list[str] = []
        self._remote_call = None  # while another node watches: when to stop sending it entries

    @property
    def has_viewers(self) -> bool:
        return bool(self._viewers)

    def attach(self, viewer: "Viewer") -> None:
        self._viewers.append(viewer)
        self.watching = True

    def detach(self, viewer: "Viewer") -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)
        self._update_watching()

    def _update_watching(self) -> None:
        self.watching = bool(self._viewers) or self._remote_call is not None

    def remote_watching(self) -> None:
        """Another node of the cluster has viewers: send it entries for a few seconds more."""
        if self._remote_call is not None and self._remote_call.active():
            self._remote_call.reset(REMOTE_WATCH_SECONDS)
        else:
            self._remote_call = self._clock.callLater(REMOTE_WATCH_SECONDS, self._remote_gone)
        self.watching = True

    def _remote_gone(self) -> None:
        self._remote_call = None
        self._update_watching()

    def share(self, send: Callable[[str], None]) -> None:
        """In a cluster: while another node watches, this node's entries of each reactor turn go
        to ``send`` as JSON lines (the engine carries them to the other nodes)."""
        self._send = send

    def _share(self, entry: dict) -> None:
        if len(self._outgoing) >= SHARED_PER_TURN:
            return
        if not self._outgoing:
            self._clock.callLater(0, self._send_outgoing)
        self._outgoing.append(json.dumps(entry, separators=(",", ":"), default=str))

    def _send_outgoing(self) -> None:
        lines, self._outgoing = "\n".join(self._outgoing), []
        if lines:
            self._send(lines)

    def remote_lines(self, lines: str) -> None:
        """Entries of another node (what its ``send`` sent), for the viewers here."""
        if not self._viewers:
            return
        for line in lines.split("\n"):
            entry = json.loads(line)
            if entry.get("node") != self.node:
                for viewer in self._viewers:
                    viewer.offer(entry)

    def member_changed(self, app_id: str, channel: str, user_id: str, present: bool) -> None:
        """A presence member joined or left (IClusterListener.member_changed), if watched."""
        if self.watching:
            self.add(app_id, "member_added" if present else "member_removed", channel=channel,
                     user_id=user_id)

    def add(self, app_id: str, type: str, **details) -> None:
        """One entry; callers check ``watching`` first."""
        entry = {"time": round(self._clock.seconds(), 3), "node": self.node, "app_id": app_id,
                 "type": type}
        entry.update(details)
        for viewer in self._viewers:
            viewer.offer(entry)
        if self._remote_call is not None and self._send is not None:
            self._share(entry)


class Viewer:
    """One attached console or stream: the apps it may see, and a bounded queue its ``flush``
    drains. ``write(entries, skipped)`` is called on the next reactor turn after entries arrive,
    unless ``paused`` (the reader is not reading); ``resume`` writes what waited."""

    def __init__(self, clock, write: Callable[[list[dict], int], None],
                 apps: Iterable[str] | None = None, max_queued: int = MAX_QUEUED, stalled=None):
        """``stalled``: (seconds, give_up()): a reader paused that long is given up on."""
        self._clock = clock
        self._stalled = stalled
        self._paused_at = None
        self._write = write
        self.apps = None if apps is None else frozenset(apps)
        self._queue: deque = deque()
        self._max_queued = max_queued
        self.skipped = 0  # entries dropped since the last write
        self.paused = False
        self._flush_call = None

    def offer(self, entry: dict) -> None:
        if self.apps is not None and entry["app_id"] not in self.apps:
            return
        if len(self._queue) >= self._max_queued:
            self.skipped += 1
            if (self._stalled is not None and self._paused_at is not None
                    and self._clock.seconds() - self._paused_at >= self._stalled[0]):
                self._stalled[1]()
            return
        self._queue.append(entry)
        if self._flush_call is None and not self.paused:
            self._flush_call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._flush_call = None
        if self.paused or not (self._queue or self.skipped):
            return
        entries, self._queue = list(self._queue), deque()
        skipped, self.skipped = self.skipped, 0
        self._write(entries, skipped)

    def pause(self) -> None:
        if not self.paused:
            self._paused_at = self._clock.seconds()
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._paused_at = None
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def close(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._queue.clear()


class Stats:
    """Connections and messages per second of each app over the last minutes, for the console's
    charts: the hub's own counters, read once a second (nothing is counted for this)."""

    def __init__(self, clock, hub, watched: Callable[[], bool], seconds: int = 300):
        """Samples only while ``watched()`` (a console is attached): charts begin when one does."""
        self._clock = clock
        self._hub = hub
        self._watched = watched
        self._samples: dict[str, deque] = {}
        self._seconds = seconds
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock

    def start(self) -> None:
        self._loop.start(1.0, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        if not self._watched():
            return
        now = round(self._clock.seconds())
        current = {app.id for app in self._hub.apps}
        for app_id in [a for a in self._samples if a not in current]:  # removed by a reload
            del self._samples[app_id]
        for app in self._hub.apps:
            traffic = self._hub.traffic.get(app.id)
            if traffic is None:
                continue
            samples = self._samples.setdefault(app.id, deque(maxlen=self._seconds + 1))
            samples.append((now, self._hub.connection_count(app.id), traffic.ws_sent_messages,
                            traffic.ws_received_messages, traffic.http_calls))

    def series(self, app_id: str) -> dict:
        """{"time": [...], "connections": [...], and per second: "sent", "received", "api_calls"}."""
        samples = list(self._samples.get(app_id, ()))
        pairs = list(zip(samples, samples[1:]))
        return {
            "time": [b[0] for _, b in pairs],
            "connections": [b[1] for _, b in pairs],
            "sent": [max(0, b[2] - a[2]) / max(1, b[0] - a[0]) for a, b in pairs],
            "received": [max(0, b[3] - a[3]) / max(1, b[0] - a[0]) for a, b in pairs],
            "api_calls": [max(0, b[4] - a[4]) / max(1, b[0] - a[0]) for a, b in pairs],
        }
