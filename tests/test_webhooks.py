"""Webhooks driven by a Clock: events from the hub, batching, filters, retries, the outbox."""

import json
import os
import tempfile

from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest

from soketify import config as config_module, signing
from soketify.outbox import Outbox
from tests.support import APP, Rig
from tests.test_presence import join


def synchronous_outbox(path=":memory:"):
    """The real SQLite outbox, with its file work run inline instead of on a thread."""
    return Outbox(path, lambda f, *a: succeed(f(*a)))


class Receiver:
    """Stands in for the HTTP client: records each POST and answers with the next status."""

    def __init__(self):
        self.requests = []
        self.statuses = []
        self.pending: list[Deferred] = []
        self.hold = False

    def post(self, url, body, headers, timeout):
        self.requests.append({"url": url, "body": body, "headers": headers,
                              "events": json.loads(body)["events"]})
        if self.hold:
            answer = Deferred()
            self.pending.append(answer)
            return answer
        status = self.statuses.pop(0) if self.statuses else 200
        if isinstance(status, Exception):
            answer = Deferred()
            answer.errback(status)
            return answer
        return succeed(status)

    def events(self, url=None):
        return [e for r in self.requests if url is None or r["url"] == url for e in r["events"]]


def webhook_config(webhooks, settings=None, **app):
    data = {"apps": [dict(APP, webhooks=webhooks, **app)], "webhooks": settings or {}}
    return config_module.parse(data, "<test>")


LIFECYCLE = ["channel_occupied", "channel_vacated"]


def settle(rig):
    """Let events reach the outbox (next reactor turn) and their batch window pass."""
    rig.advance(0.2, step=0.05)


def make_rig(test, webhooks=None, settings=None, outbox=None, start=True, **app):
    """A rig whose app posts webhooks to a Receiver; by default one target for occupied/vacated."""
    receiver = Receiver()
    webhooks = webhooks or [{"url": "http://hooks.test/a", "event_types": LIFECYCLE}]
    config = webhook_config(webhooks, settings, **app)
    outbox = outbox or synchronous_outbox()
    rig = Rig.__new__(Rig)
    Rig.__init__(rig, test, config, start=False,
                 service_kwargs={"webhook_post": receiver.post, "outbox": outbox})
    if start:
        rig.service.startService()
    return rig, receiver


class EventTests(unittest.TestCase):
    def test_occupied_and_vacated_after_the_grace(self):
        """The first subscriber occupies the channel; vacated waits out the grace, then is sent."""
        rig, receiver = make_rig(self)
        client = rig.connect()
        client.subscribe("news")
        settle(rig)
        self.assertEqual(receiver.events(), [{"name": "channel_occupied", "channel": "news"}])
        client.send("pusher:unsubscribe", {"channel": "news"})
        rig.advance(2.9, step=0.1)
        self.assertEqual(len(receiver.events()), 1)
        rig.advance(0.3, step=0.1)
        self.assertEqual(receiver.events()[-1], {"name": "channel_vacated", "channel": "news"})

    def test_returning_within_the_grace_sends_neither_event(self):
        """A channel re-occupied within the grace produces no vacated and no second occupied."""
        rig, receiver = make_rig(self)
        first = rig.connect()
        first.subscribe("news")
        settle(rig)
        first.close()
        rig.advance(1, step=0.05)
        rig.connect().subscribe("news")
        rig.advance(10, step=0.05)
        self.assertEqual(receiver.events(), [{"name": "channel_occupied", "channel": "news"}])

    def test_member_events_per_distinct_user(self):
        """member_added on a user's first connection, member_removed after the last one (+grace)."""
        rig, receiver = make_rig(self, [{"url": "http://hooks.test/a",
                                         "event_types": ["member_added", "member_removed"]}])
        a1, a2 = rig.connect(), rig.connect()
        join(a1, "presence-r", "alice")
        join(a2, "presence-r", "alice")
        a1.close()
        rig.advance(5)
        self.assertEqual(receiver.events(), [{"name": "member_added", "channel": "presence-r",
                                              "user_id": "alice"}])
        a2.close()
        rig.advance(5)
        self.assertEqual(receiver.events()[-1], {"name": "member_removed", "channel": "presence-r",
                                                 "user_id": "alice"})

    def test_client_event_carries_event_data_socket_and_user(self):
        """client_event has the event name, data as a string, the sender's socket_id and user_id."""
        rig, receiver = make_rig(self, [{"url": "http://hooks.test/a", "event_types": ["client_event"]}])
        a, b = rig.connect(), rig.connect()
        join(a, "presence-r", "alice")
        join(b, "presence-r", "bob")
        a.send("client-move", {"x": 1}, channel="presence-r")
        settle(rig)
        self.assertEqual(receiver.events(), [{
            "name": "client_event", "channel": "presence-r", "event": "client-move",
            "data": '{"x":1}', "socket_id": a.socket_id, "user_id": "alice"}])

    def test_cache_miss_once_per_empty_channel(self):
        """Many subscribers to an empty cache channel cause one cache_miss webhook; a fill resets it."""
        rig, receiver = make_rig(self, [{"url": "http://hooks.test/a", "event_types": ["cache_miss"]}])
        clients = [rig.connect() for _ in range(3)]
        for client in clients:
            client.subscribe("cache-x")
        settle(rig)
        self.assertEqual(receiver.events(), [{"name": "cache_miss", "channel": "cache-x"}])
        rig.hub.publish("app-id", ["cache-x"], "e", "1")
        rig.advance(rig.service.config.limits.cache_ttl + 61, step=30)
        rig.connect().subscribe("cache-x")
        settle(rig)
        self.assertEqual(len(receiver.events()), 2)

    def test_subscription_count_uses_the_client_throttle(self):
        """subscription_count webhooks follow the counts, even when clients do not get them."""
        rig, receiver = make_rig(self, [{"url": "http://hooks.test/a",
                                         "event_types": ["subscription_count"]}])
        rig.connect().subscribe("news")
        rig.connect().subscribe("news")
        settle(rig)
        self.assertEqual([e["subscription_count"] for e in receiver.events()], [1, 2])


class DeliveryTests(unittest.TestCase):
    def test_request_is_signed_stamped_and_batched(self):
        """Events within the window share one POST, signed over the exact body, stamped at send."""
        rig, receiver = make_rig(self, [{"url": "http://hooks.test/a", "event_types": LIFECYCLE, "headers": {
            "X-Custom": "yes", "x-pusher-key": "forged", "Content-Type": "text/plain"}}])
        for name in ("a", "b", "c"):
            rig.connect().subscribe(name)
        settle(rig)
        self.assertEqual(len(receiver.requests), 1)
        request = receiver.requests[0]
        self.assertEqual([e["channel"] for e in request["events"]], ["a", "b", "c"])
        headers = {k.lower(): v for k, v in request["headers"].items()}
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["x-pusher-key"], "app-key")
        self.assertEqual(headers["x-custom"], "yes")
        self.assertEqual(headers["x-pusher-signature"],
                         signing.webhook_signature("app-secret", request["body"]))
        self.assertEqual(len([k for k in request["headers"] if k.lower() == "x-pusher-key"]), 1)
        stamp = json.loads(request["body"])["time_ms"]
        self.assertLess(abs(stamp / 1000 - rig.reactor.seconds()), 1)

    def test_max_events_per_request(self):
        """A burst larger than max_events_per_request is split into ordered POSTs."""
        rig, receiver = make_rig(self, settings={"max_events_per_request": 2})
        for name in "abcde":
            rig.connect().subscribe(name)
        settle(rig)
        self.assertEqual([len(r["events"]) for r in receiver.requests], [2, 2, 1])
        self.assertEqual([e["channel"] for e in receiver.events()], list("abcde"))

    def test_filters_select_events_per_target(self):
        """Each target gets only its event types and channel prefix/suffix."""
        rig, receiver = make_rig(self, [
            {"url": "http://hooks.test/all", "event_types": LIFECYCLE + ["member_added", "member_removed"]},
            {"url": "http://hooks.test/presence", "filter": {"channel_name_starts_with": "presence-"}},
            {"url": "http://hooks.test/vacated", "event_types": ["channel_vacated"],
             "filter": {"channel_name_ends_with": "-x"}}])
        client = rig.connect()
        client.subscribe("news-x")
        join(client, "presence-r", "u")
        client.close()
        rig.advance(5)
        self.assertEqual(len(receiver.events("http://hooks.test/all")), 6)
        self.assertEqual({e["channel"] for e in receiver.events("http://hooks.test/presence")},
                         {"presence-r"})
        self.assertEqual(receiver.events("http://hooks.test/vacated"),
                         [{"name": "channel_vacated", "channel": "news-x"}])

    def test_failures_are_retried_with_back_off_in_order_then_succeed(self):
        """500s and connection errors are retried with growing delays; order is kept."""
        rig, receiver = make_rig(self)
        receiver.statuses = [500, ConnectionError("refused"), 503]
        rig.connect().subscribe("one")
        settle(rig)
        rig.connect().subscribe("two")
        times = []
        for _ in range(200):
            count = len(receiver.requests)
            rig.advance(0.1, step=0.05)
            if len(receiver.requests) > count:
                times.append(rig.reactor.seconds())
        delivered = [e["channel"] for e in receiver.requests[-2]["events"] + receiver.requests[-1]["events"]]
        self.assertEqual(delivered, ["one", "two"])
        gaps = [b - a for a, b in zip(times, times[1:])]
        # Retry n waits 2**n seconds times a jitter factor between 0.5 and 1; the first attempt
        # and first retry came before the loop, so the gaps seen are those of retries 2 and 3.
        self.assertEqual(len(gaps), 2, gaps)
        for retry, gap in enumerate(gaps, start=1):
            self.assertGreaterEqual(gap, 0.5 * 2 ** retry - 0.11, gaps)
            self.assertLessEqual(gap, 2 ** retry + 0.11, gaps)
        self.assertEqual(rig.service.outbox._pending(), [])

    def test_a_target_back_after_an_outage_gets_the_backlog_at_once(self):
        """Down for five minutes: retries never wait more than 30 s apart; once the target answers
        2xx again, everything queued behind the retried batch goes out within 2 s, in order."""
        rig, receiver = make_rig(self, settings={"retry_for": 3600, "max_events_per_request": 5})
        receiver.statuses = [ConnectionError("refused")] * 10000
        times = []
        rig.connect().subscribe("first")
        for n in range(300):
            count = len(receiver.requests)
            rig.advance(1, step=0.5)
            if len(receiver.requests) > count:
                times.append(rig.reactor.seconds())
            if n % 10 == 0:
                rig.connect().subscribe(f"later-{n}")
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertLessEqual(max(gaps), 30.5, gaps)
        receiver.statuses = []  # the target is back
        back_at, attempts = rig.reactor.seconds(), len(receiver.requests)
        while len(receiver.requests) == attempts:
            rig.advance(0.5, step=0.5)
        self.assertLessEqual(rig.reactor.seconds() - back_at, 30.5)
        rig.advance(2, step=0.1)
        self.assertEqual(rig.service.outbox._pending(), [])
        # (The idle clients' connections time out meanwhile: channel_vacated events follow.)
        occupied = [e["channel"] for request in receiver.requests[attempts:]
                    for e in request["events"] if e["name"] == "channel_occupied"]
        self.assertEqual(occupied, ["first"] + [f"later-{n}" for n in range(0, 300, 10)])

    def test_gives_up_after_retry_for_and_moves_on(self):
        """After retry_for seconds of failures the batch is dropped and the next one is sent."""
        rig, receiver = make_rig(self, settings={"retry_for": 30})
        receiver.statuses = [500] * 100
        rig.connect().subscribe("lost")
        rig.advance(40, step=0.5)
        attempts = len(receiver.requests)
        self.assertGreater(attempts, 3)
        receiver.statuses = []
        rig.connect().subscribe("next")
        rig.advance(1, step=0.1)
        self.assertEqual(receiver.requests[-1]["events"], [{"name": "channel_occupied", "channel": "next"}])
        self.assertEqual(rig.service.outbox._pending(), [])

    def test_one_dead_target_does_not_delay_another(self):
        """A target that never answers does not hold back another target's deliveries."""
        rig, receiver = make_rig(self, [{"url": "http://hooks.test/dead", "event_types": LIFECYCLE},
                                        {"url": "http://hooks.test/ok", "event_types": LIFECYCLE}])
        original = receiver.post

        def post(url, body, headers, timeout):
            if url.endswith("/dead"):
                receiver.requests.append({"url": url, "events": json.loads(body)["events"]})
                return Deferred()
            return original(url, body, headers, timeout)
        receiver.post = post
        rig.service.webhooks._all["app-id http://hooks.test/dead"]._post = post
        rig.service.webhooks._all["app-id http://hooks.test/ok"]._post = post
        for name in "ab":
            rig.connect().subscribe(name)
            settle(rig)
        self.assertEqual(len(receiver.events("http://hooks.test/ok")), 2)
        self.assertEqual(len(receiver.events("http://hooks.test/dead")), 1)


class OutboxTests(unittest.TestCase):
    def mktemp(self):
        """A path in a temporary directory removed after the test (not in the checkout)."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return os.path.join(directory.name, "outbox")
    def test_events_stay_in_the_outbox_until_acknowledged_and_resume_on_start(self):
        """Undelivered events survive a restart and are sent by the next process."""
        path = self.mktemp() + ".sqlite3"
        rig, receiver = make_rig(self, outbox=synchronous_outbox(path))
        receiver.hold = True
        rig.connect().subscribe("a")
        rig.connect().subscribe("b")
        settle(rig)
        self.assertEqual(len(rig.service.outbox._pending()), 2)
        # The process dies here: nothing was acknowledged. A new one starts on the same file.
        rig2, receiver2 = make_rig(self, outbox=synchronous_outbox(path))
        settle(rig2)
        self.assertEqual([e["channel"] for e in receiver2.events()], ["a", "b"])
        self.assertEqual(rig2.service.outbox._pending(), [])

    def test_stored_fires_once_emitted_events_are_in_the_outbox(self):
        """stored() answers only after everything emitted so far is written to the outbox."""
        writes: list[Deferred] = []

        def run_later(function, *args):
            written = Deferred()
            writes.append(written)
            return written.addCallback(lambda _: function(*args))
        outbox = Outbox(":memory:", run_later)
        rig, receiver = make_rig(self, outbox=outbox)
        while writes:  # the outbox opens, and finds nothing left from before
            writes.pop(0).callback(None)
        rig.service.webhooks.emit("app-id", {"name": "channel_occupied", "channel": "x"})
        stored = rig.service.webhooks.stored()
        self.assertNoResult(stored)
        writes.pop(0).callback(None)
        self.successResultOf(stored)
        self.assertEqual(len(outbox._pending()), 1)

    def test_graceful_stop_sends_pending_removals_to_the_outbox(self):
        """Stopping flushes vacated events still in their grace period into the outbox."""
        path = self.mktemp() + ".sqlite3"
        rig, receiver = make_rig(self, outbox=synchronous_outbox(path))
        receiver.hold = True
        client = rig.connect()
        client.subscribe("a")
        settle(rig)
        stopped = rig.service.stopService()
        client.close(4200)
        rig.advance(1, step=0.05)
        self.successResultOf(stopped)
        rows = synchronous_outbox(path)
        rows._open()
        self.assertEqual([json.loads(e)["name"] for _, _, e in rows._pending()],
                         ["channel_occupied", "channel_vacated"])


class ConfigTests(unittest.TestCase):
    def test_invalid_webhook_settings_are_config_errors(self):
        """Bad URLs, unknown event types and unknown keys stop start-up with one line each."""
        with self.assertRaises(config_module.ConfigError) as caught:
            webhook_config([{"url": "ftp://x"}, {"url": "http://ok", "event_types": ["nope"]},
                            {"url": "not a url"}, {"url": "http://ok", "colour": 1},
                            {"url": "http://ok", "filter": {"starts": "x"}},
                            {"url": "http://ok", "headers": {"Content-Length": "5", "X-Ok": "1"}}])
        problems = "\n".join(caught.exception.problems)
        for expected in ("apps[0].webhooks[0].url", "apps[0].webhooks[1].event_types",
                         "apps[0].webhooks[2].url", "apps[0].webhooks[3].colour: unknown key",
                         "apps[0].webhooks[4].filter.starts: unknown key",
                         "apps[0].webhooks[5].headers.Content-Length: is set by the HTTP client"):
            self.assertIn(expected, problems)


class MetricsTests(unittest.TestCase):
    def test_metrics_count_connections_and_webhook_outcomes(self):
        """/metrics shows open connections per app and delivered/dropped webhook events."""
        rig, receiver = make_rig(self, settings={"retry_for": 5})
        rig.connect().subscribe("a")
        rig.advance(1, step=0.1)
        receiver.statuses = [500] * 50
        rig.connect().subscribe("b")
        rig.advance(20, step=0.5)
        body = rig.http("GET", "/metrics").body.decode()
        self.assertIn('soketify_connected{app_id="app-id"} 2.0', body)
        self.assertIn('soketify_webhook_events_delivered_total{app_id="app-id"} 1.0', body)
        self.assertIn('soketify_webhook_events_dropped_total{app_id="app-id"} 1.0', body)


class StrayOutboxTests(unittest.TestCase):
    def test_events_of_outbox_files_no_longer_used_move_to_the_one_in_use(self):
        """After a change of `workers` or engine, events waiting in the old files are moved, in
        order, into the file that will send them, and the old files are gone."""
        from soketify.outbox import adopt_strays
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        state = directory.name
        for name, events in (("webhooks-worker-0.sqlite3", ["a1", "a2"]),
                             ("webhooks-worker-3.sqlite3", ["b1"]),
                             ("webhooks.sqlite3", ["c1"])):
            outbox = synchronous_outbox(os.path.join(state, name))
            outbox.open()
            outbox.add([("100 http://x/h", event) for event in events])
            outbox.close()
        with open(os.path.join(state, "unrelated.sqlite3"), "w") as f:
            f.write("not an outbox")
        moved = adopt_strays(state, "webhooks.sqlite3", {"webhooks.sqlite3"})
        self.assertEqual(moved, 3)
        self.assertEqual(sorted(os.listdir(state)), ["unrelated.sqlite3", "webhooks.sqlite3"])
        outbox = synchronous_outbox(os.path.join(state, "webhooks.sqlite3"))
        outbox.open()
        pending = []
        outbox.pending().addCallback(pending.extend)
        outbox.close()
        self.assertEqual([event for _, _, event in pending], ["c1", "a1", "a2", "b1"])
        self.assertEqual(adopt_strays(state, "webhooks.sqlite3", {"webhooks.sqlite3"}), 0)
