"""Webhook delivery: per-target filters, batching, signing, retries and the durable outbox.

Each configured URL of each app is one ``Target`` with its own queue, so a slow or dead receiver
never delays another, and a target's batches go out strictly in order: the next batch waits until
the current one is delivered or given up. Events are written to the outbox before their first
attempt and removed after a 2xx (at-least-once delivery).
"""

from __future__ import annotations

import json
import random
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, LogLevel

from soketify import signing
from soketify.config import WebhookSettings
from soketify.log_summary import Summarised

log = Logger()

# Headers that identify and sign the request; a target's custom headers may not replace them.
RESERVED_HEADERS = frozenset(("content-type", "x-pusher-key", "x-pusher-signature"))


# Retries wait 1 s, 2 s, 4 s ... times a jitter factor between 0.5 and 1, never more than 30 s: a
# target that comes back after an outage is tried again within 30 s, and once it answers 2xx what
# waited behind the retried batch is sent at once (one batch after another, in order).
FIRST_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 30.0


@dataclass
class _Pending:
    outbox_id: int
    event: str  # JSON text
    queued_at: float  # when it was stored (or resumed after a restart)


class NoCounts:
    """Where webhook events are counted (``metrics.Metrics`` in the daemon): nowhere."""

    def webhook_queued(self, app_id: str, count: int) -> None:
        pass

    def webhook_failed(self, app_id: str, count: int) -> None:
        pass

    def webhook_delivered(self, app_id: str, waited: list[float]) -> None:
        pass

    def webhook_dropped(self, app_id: str, count: int) -> None:
        pass


def shown_url(url: str) -> str:
    """A target's URL as the console and the log show it: without user:password@ or a ?query
    (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def failures_log(clock) -> Summarised:
    """Failed attempts, written once per URL and minute, then counted."""
    return Summarised(clock, log, LogLevel.warn,
                      "Webhook to {url} failed ({why}); retrying in {delay:.1f} s",
                      "failed attempts to {source}")


class Target:
    """One webhook URL of one app."""

    def __init__(self, app, webhook, settings: WebhookSettings, clock, outbox, post,
                 counts=None, jitter=random.random, failures: Summarised | None = None,
                 feed=None):
        """``counts`` counts events queued, failed, delivered (with the seconds each waited
        since it was queued) and dropped (see NoCounts)."""
        self.app = app
        self.webhook = webhook
        self.key = f"{app.id} {webhook.url}"
        self.settings = settings
        self._clock = clock
        self._outbox = outbox
        self._post = post
        self._counts = counts or NoCounts()
        self._feed = feed  # the debug console's (soketify.console_feed), or None
        self._jitter = jitter
        self._failures = failures or failures_log(clock)
        self._ready: list[_Pending] = []
        self._writes: Deferred = succeed(None)  # the chain of outbox writes, in order
        self._flush_call = None
        self._retry_call = None
        self._in_flight: list[_Pending] | None = None
        self._stopped = False
        self.removed = False  # by a reload: nothing more is sent, retried or counted

    def wants(self, event: dict) -> bool:
        webhook = self.webhook
        if event["name"] not in webhook.event_types:
            return False
        channel = event.get("channel", "")
        return (channel.startswith(webhook.channel_name_starts_with)
                and channel.endswith(webhook.channel_name_ends_with))

    def restore(self, stored: list[tuple[int, str]]) -> None:
        """Queue events that are in the outbox (new ones, or left over from a previous run)."""
        now = self._clock.seconds()
        self._ready.extend(_Pending(i, e, now) for i, e in stored)
        if self._in_flight is None and self._retry_call is None and self._flush_call is None:
            self._flush_call = self._clock.callLater(self.settings.batch_window_ms / 1000, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._stopped or self._in_flight is not None or not self._ready:
            return
        size = self.settings.max_events_per_request
        batch, self._ready = self._ready[:size], self._ready[size:]
        self._in_flight = batch
        self._attempt(batch, first_attempt_at=self._clock.seconds(), attempt=0)

    def _attempt(self, batch: list[_Pending], first_attempt_at: float, attempt: int) -> None:
        self._retry_call = None
        # Stamped and signed at send time: receivers reject stamps older than 300 s.
        body = ('{"time_ms":%d,"events":[%s]}' % (
            int(self._clock.seconds() * 1000), ",".join(p.event for p in batch))).encode()
        headers = {name: value for name, value in self.webhook.headers.items()
                   if name.lower() not in RESERVED_HEADERS}
        headers.update({
            "Content-Type": "application/json",
            "X-Pusher-Key": self.app.key,
            "X-Pusher-Signature": signing.webhook_signature(self.app.secret, body),
        })
        sent = self._post(self.webhook.url, body, headers, self.settings.request_timeout)
        sent.addCallbacks(self._answered, self._failed_with,
                          callbackArgs=(batch, first_attempt_at, attempt),
                          errbackArgs=(batch, first_attempt_at, attempt))

    def _answered(self, status: int, batch, first_attempt_at, attempt) -> None:
        if self.removed:
            return
        self._report("sent" if 200 <= status < 300 else "failed", batch, attempt, status=status)
        if 200 <= status < 300:
            now = self._clock.seconds()
            self._counts.webhook_delivered(self.app.id, [now - p.queued_at for p in batch])
            self._done(batch)
        else:
            self._retry(batch, first_attempt_at, attempt, f"HTTP {status}")

    def _failed_with(self, failure, batch, first_attempt_at, attempt) -> None:
        if self.removed:
            return
        self._report("failed", batch, attempt, error=failure.getErrorMessage())
        self._retry(batch, first_attempt_at, attempt, failure.getErrorMessage() or
                    failure.type.__name__)

    def _retry(self, batch, first_attempt_at: float, attempt: int, why: str) -> None:
        self._counts.webhook_failed(self.app.id, len(batch))
        settings = self.settings
        now = self._clock.seconds()
        # Jitter: receivers coming back are not hit by every server at once.
        delay = min(FIRST_RETRY_DELAY * 2 ** min(attempt, 16), MAX_RETRY_DELAY)
        delay *= 0.5 + self._jitter() / 2
        if now + delay - first_attempt_at > settings.retry_for:
            log.error("Dropping {count} webhook events for {url} after {seconds:.0f} s of failed "
                      "attempts (last: {why})", count=len(batch), url=shown_url(self.webhook.url),
                      seconds=now - first_attempt_at, why=why)
            self._counts.webhook_dropped(self.app.id, len(batch))
            self._report("dropped", batch, attempt)
            self._done(batch)
            return
        shown = shown_url(self.webhook.url)
        self._failures.log(shown, url=shown, why=why, delay=delay)
        self._report("retrying", batch, attempt, retry_in=round(delay, 1))
        if not self._stopped:
            self._retry_call = self._clock.callLater(delay, self._attempt, batch, first_attempt_at,
                                                     attempt + 1)

    def _report(self, outcome: str, batch, attempt: int, **details) -> None:
        if self._feed is not None and self._feed.watching:
            self._feed.add(self.app.id, "webhook", outcome=outcome, target=shown_url(self.webhook.url),
                           attempt=attempt + 1, events=len(batch), **details)

    def _done(self, batch) -> None:
        self._outbox.remove([p.outbox_id for p in batch])
        self._in_flight = None
        if self._ready and not self._stopped:
            self._flush_call = self._clock.callLater(0, self._flush)

    def stop_for_good(self) -> list[int]:
        """Stop sending (the target was removed); the outbox ids of every event still waiting.
        The answer to a batch in flight is then ignored."""
        self.removed = True
        self.stop()
        waiting = self._ready + (self._in_flight or [])
        self._ready = []
        return [p.outbox_id for p in waiting]

    def stop(self) -> None:
        """Stop sending; what is not delivered stays in the outbox for the next start."""
        self._stopped = True
        for call in (self._flush_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._retry_call = None


def wanted_event_types(apps) -> dict[str, set[str]]:
    """The webhook event types some target of each app takes."""
    return {app.id: {kind for webhook in app.webhooks for kind in webhook.event_types}
            for app in apps}


class Webhooks:
    """Routes each app's webhook events to the targets whose filters select them."""

    def __init__(self, apps, settings: WebhookSettings, clock, outbox, post, counts=None,
                 feed=None):
        """``counts`` and ``feed``: see Target."""
        self._clock = clock
        self._outbox = outbox
        # Events of this reactor turn, written to the outbox together in one transaction.
        self._unstored: list[tuple[Target, str]] = []
        self._store_call = None
        self._last_store: Deferred = succeed(None)  # outbox writes run in order: the last one
        self._post = post
        self._failures = failures_log(clock)
        self._counts = counts or NoCounts()
        self._feed = feed
        self._targets: dict[str, list[Target]] = {}
        self._all: dict[str, Target] = {}
        self.reconfigure(apps, settings)

    def reconfigure(self, apps, settings: WebhookSettings) -> None:
        """Targets for these apps (at start, and on a reload). A target whose app and URL stay keeps
        its queue and takes the new secret, key, filters, headers and settings; a removed target
        stops, and the events waiting for it leave the outbox."""
        previous, self._targets, self._all = self._all, {}, {}
        for app in apps:
            targets = self._targets[app.id] = []
            for webhook in app.webhooks:
                target = previous.pop(f"{app.id} {webhook.url}", None)
                if target is None:
                    target = Target(app, webhook, settings, self._clock, self._outbox, self._post,
                                    self._counts, failures=self._failures, feed=self._feed)
                else:
                    target.app, target.webhook, target.settings = app, webhook, settings
                targets.append(target)
                self._all[target.key] = target
        if previous:
            # Events of this turn not yet stored for a removed target are not stored at all.
            self._unstored = [(t, text) for t, text in self._unstored if t.key in self._all]
        for target in previous.values():
            waiting = target.stop_for_good()
            if waiting:
                log.warn("Dropping {count} webhook events waiting for {target}: no longer "
                         "configured", count=len(waiting), target=target.key)
                self._outbox.remove(waiting)
        self._wanted = wanted_event_types(apps)

    def wants(self, app_id: str, name: str) -> bool:
        """Whether any target of the app takes this event type (so the hub can skip building it)."""
        return name in self._wanted.get(app_id, ())

    def emit(self, app_id: str, event: dict) -> None:
        """Hand one event to every target of the app that wants it, by way of the outbox."""
        targets = [target for target in self._targets.get(app_id, ()) if target.wants(event)]
        if not targets:
            return
        text = json.dumps(event, separators=(",", ":"))
        self._unstored.extend((target, text) for target in targets)
        if self._store_call is None:
            self._store_call = self._clock.callLater(0, self._store)

    def _store(self) -> Deferred:
        """Write this turn's events to the outbox, then queue each on its target, in order."""
        self._store_call = None
        rows, self._unstored = self._unstored, []

        def queue(ids):
            by_target: dict[Target, list[tuple[int, str]]] = {}
            for (target, text), outbox_id in zip(rows, ids):
                by_target.setdefault(target, []).append((outbox_id, text))
            for target, stored in by_target.items():
                if self._all.get(target.key) is not target:  # removed by a reload meanwhile
                    self._outbox.remove([i for i, _ in stored])
                    continue
                self._counts.webhook_queued(target.app.id, len(stored))
                target.restore(stored)

        stored = self._outbox.add([(target.key, text) for target, text in rows])
        stored.addCallbacks(queue, lambda f: log.failure(
            "Could not store {count} webhook events", f, count=len(rows)))
        self._last_store = stored
        return stored

    def stored(self) -> Deferred:
        """Fires once every event emitted so far is in the outbox (written now if still waiting)."""
        if self._store_call is not None:
            self._store_call.cancel()
            self._store()
        done = Deferred()

        def fire(result):
            done.callback(None)
            return result
        self._last_store.addBoth(fire)
        return done

    def start(self) -> Deferred:
        """Open the outbox, then queue what a previous run left in it."""
        opened = self._outbox.open()
        opened.addCallback(lambda _: self.resume())
        return opened.addErrback(lambda f: log.failure("The webhook outbox could not be opened", f))

    def resume(self) -> Deferred:
        """Queue what a previous run left in the outbox; events of removed targets are dropped."""
        def queue(rows):
            by_target: dict[str, list[tuple[int, str]]] = {}
            for outbox_id, target, event in rows:
                by_target.setdefault(target, []).append((outbox_id, event))
            for key, stored in by_target.items():
                target = self._all.get(key)
                if target is None:
                    log.warn("Dropping {count} stored webhook events for {target}: no longer "
                             "configured", count=len(stored), target=key)
                    self._outbox.remove([i for i, _ in stored])
                else:
                    log.info("Resuming {count} stored webhook events for {target}",
                             count=len(stored), target=key)
                    self._counts.webhook_queued(target.app.id, len(stored))
                    target.restore(stored)
        return self._outbox.pending().addCallback(queue)

    def stop(self) -> Deferred:
        """Stop sending; every event handed over so far is written to the outbox, then it closes."""
        if self._store_call is not None:
            self._store_call.cancel()
            self._store()
        for target in self._all.values():
            target.stop()
        return self._outbox.close()


def treq_post(reactor):
    """``post(url, body, headers, timeout)``: Deferred of the response status, through treq.

    HTTPS certificates are verified (service_identity checks the host name); a bad certificate is a
    failed delivery like any other.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    client = HTTPClient(Agent(reactor, pool=pool))

    def post(url: str, body: bytes, headers: dict, timeout: float) -> Deferred:
        sent = client.post(url, data=body, headers={k: [v] for k, v in headers.items()},
                           timeout=timeout)
        # Read the body so the connection can be reused, then answer with the status.
        sent.addCallback(lambda response: response.content().addCallback(lambda _: response.code))
        return sent

    post.pool = pool
    return post
