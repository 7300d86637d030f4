"""PlainTriggers: which requests it answers itself, and that a client sees what twisted.web answers."""

import json
import re
from urllib.parse import urlencode

from twisted.trial import unittest

from twisted.internet.defer import Deferred

from soketify import signing
from soketify.cluster.interfaces import ChannelStats
from soketify.plain_triggers import ABORT_TIMEOUT, MAX_HEAD, PlainTriggers, plain_trigger
from tests.support import APP, Rig, _Connection, make_config

MAX_BODY = 1024


def request_head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


# What the official SDKs send (Node: fetch; Python: requests), without the blank line.
NODE_SDK = ("POST /apps/app-id/events?auth_key=k&auth_timestamp=1 HTTP/1.1",
            "host: 127.0.0.1:6001", "connection: keep-alive", "content-type: application/json",
            "x-pusher-library: pusher-http-node 5.2.0", "accept: */*", "accept-language: *",
            "sec-fetch-mode: cors", "user-agent: node", "accept-encoding: gzip, deflate",
            "content-length: 42")
PYTHON_SDK = ("POST /apps/app-id/batch_events?auth_key=k HTTP/1.1", "Host: localhost:6001",
              "User-Agent: python-requests/2.32.3", "Accept-Encoding: gzip, deflate",
              "Accept: */*", "Connection: keep-alive", "X-Pusher-Library: pusher-http-python 3.3.2",
              "Content-Type: application/json", "Content-Length: 7")


def variant(lines, old: str, new: str | None):
    """``lines`` with the one line starting with ``old`` replaced by ``new`` (or removed)."""
    found = [line for line in lines if line.startswith(old)]
    assert len(found) == 1, old
    return tuple(new if line == found[0] else line for line in lines if new is not None
                 or line != found[0])


NOT_PLAIN = {
    "GET": variant(NODE_SDK, "POST", "GET /apps/app-id/events HTTP/1.1"),
    "another path": variant(NODE_SDK, "POST", "POST /apps/app-id/channels HTTP/1.1"),
    "escaped app id": variant(NODE_SDK, "POST", "POST /apps/app%2Did/events HTTP/1.1"),
    "absolute form": variant(NODE_SDK, "POST", "POST http://h/apps/app-id/events HTTP/1.1"),
    "HTTP/1.0": variant(NODE_SDK, "POST", "POST /apps/app-id/events HTTP/1.0"),
    "chunked": variant(NODE_SDK, "content-length", "transfer-encoding: chunked"),
    "no length": variant(NODE_SDK, "content-length", None),
    "two lengths": variant(NODE_SDK, "content-length", "content-length: 42\r\ncontent-length: 42"),
    "signed length": variant(NODE_SDK, "content-length", "content-length: +42"),
    "body over the limit": variant(NODE_SDK, "content-length", f"content-length: {MAX_BODY + 1}"),
    "Expect": variant(NODE_SDK, "accept:", "expect: 100-continue"),
    "Connection: close": variant(NODE_SDK, "connection", "connection: close"),
    "Upgrade": variant(NODE_SDK, "accept:", "upgrade: h2c"),
    "line without colon": variant(NODE_SDK, "accept:", "accept */*"),
    "bare LF": variant(NODE_SDK, "accept:", "accept: */*\nx: y"),
    "control character": variant(NODE_SDK, "accept:", "accept: \x01"),
    "header name not a token": variant(NODE_SDK, "accept:", "x-trace(id): 1"),
    "app id not a token": variant(NODE_SDK, "POST", "POST /apps/\x01/events HTTP/1.1"),
    "app id not ASCII": variant(NODE_SDK, "POST", "POST /apps/\u00e9/events HTTP/1.1"),
    "too many headers": NODE_SDK + ("a: b",) * 100,
}


class PlainTriggerTests(unittest.TestCase):
    def test_sdk_requests_are_plain(self):
        """The Node and Python SDKs' requests are read: path, app id, endpoint, query, length."""
        self.assertEqual(plain_trigger(request_head(*NODE_SDK), MAX_BODY),
                         (b"/apps/app-id/events", "app-id", b"events",
                          b"auth_key=k&auth_timestamp=1", 42))
        self.assertEqual(plain_trigger(request_head(*PYTHON_SDK), MAX_BODY),
                         (b"/apps/app-id/batch_events", "app-id", b"batch_events",
                          b"auth_key=k", 7))

    def test_anything_else_goes_to_twisted_web(self):
        """Each request that is not plain in one way gets None."""
        taken = [name for name, lines in NOT_PLAIN.items()
                 if plain_trigger(request_head(*lines), MAX_BODY) is not None]
        self.assertEqual(taken, [])


DATE = re.compile(rb"Date: [^\r]+")


def signed_request(path: str, body: bytes, timestamp: float, app=APP, extra="",
                   keep_alive=True) -> bytes:
    query = {"auth_key": app["key"], "auth_timestamp": str(int(timestamp)), "auth_version": "1.0"}
    if body:
        query["body_md5"] = signing.body_md5(body)
    query["auth_signature"] = signing.rest_signature(app["secret"], "POST", path, query)
    lines = [f"POST {path}?{urlencode(query)} HTTP/1.1", "Host: localhost",
             "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if keep_alive:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + extra + "\r\n\r\n").encode() + body


class SameAnswerTests(unittest.TestCase):
    """One keep-alive connection through the whole service in memory, answered by PlainTriggers or
    (with the switch's API taken away) by twisted.web: the client must see the same bytes."""

    def exchange(self, chunks, plain: bool, config=None, handed_over=False) -> bytes:
        """The bytes answered to ``chunks`` (bytes, or functions of the time giving bytes) on one
        connection; with ``plain``, through PlainTriggers, which must have handed the connection to
        twisted.web by the end exactly when ``handed_over`` says so."""
        rig = Rig(self, config)
        if not plain:
            rig.switch.api = None
        connection = _Connection(rig)
        connection.transport.protocol = connection.protocol
        for chunk in chunks:
            connection.feed(chunk(rig.reactor.seconds()) if callable(chunk) else chunk)
            rig.reactor.advance(0)
        if plain:
            self.assertEqual(not isinstance(connection.transport.protocol, PlainTriggers),
                             handed_over)
        self.rig, self.connection = rig, connection
        return DATE.sub(b"Date: D", connection.transport.value())

    def assertSameAnswers(self, chunks, config=None, handed_over=False) -> bytes:
        """Both ways give the same bytes and leave the connection open or closing alike."""
        plain = self.exchange(chunks, True, config, handed_over)
        plain_closing = self.connection.transport.disconnecting
        self.assertEqual(plain, self.exchange(chunks, False, config))
        self.assertEqual(plain_closing, self.connection.transport.disconnecting)
        return plain

    def event(self, path="/apps/app-id/events", **fields):
        body = json.dumps(dict({"name": "e", "channels": ["news"], "data": "{}"}, **fields)).encode()
        return lambda now: signed_request(path, body, now)

    def test_answers_are_twisted_webs_byte_for_byte(self):
        """Triggers, a batch, `info`, and every kind of refusal, one after another on one connection."""
        chunks = [
            self.event(),
            self.event(info="subscription_count"),
            lambda now: signed_request("/apps/app-id/batch_events", json.dumps(
                {"batch": [{"name": "e", "channel": "news", "data": "x"}]}).encode(), now),
            self.event(data=5),
            self.event(path="/apps/nope/events"),
            lambda now: signed_request("/apps/app-id/events", b"{}", now - 3600),
            lambda now: signed_request("/apps/app-id/events", b"not json", now),
        ]
        answers = self.assertSameAnswers(chunks)
        statuses = re.findall(rb"HTTP/1.1 (\d+)", answers)
        self.assertEqual(statuses, [b"200", b"200", b"200", b"400", b"404", b"401", b"400"])
        self.assertIn(b'{"channels":{"news":{"subscription_count":0}}}', answers)

    def test_pipelined_requests_are_answered_in_order(self):
        """Several requests in one read, and one split across reads, get their answers in order."""
        def three(now):
            one = self.event()(now)
            return one + self.event(info="subscription_count")(now) + one[:30]
        answers = self.assertSameAnswers([three, lambda now: self.event()(now)[30:]])
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK"), 3)

    def test_a_request_that_is_not_plain_goes_on_to_twisted_web(self):
        """After a plain trigger, a GET on the same connection (and all after it) is twisted.web's."""
        def get(now):
            query = {"auth_key": "app-key", "auth_timestamp": str(int(now)), "auth_version": "1.0"}
            query["auth_signature"] = signing.rest_signature(
                "app-secret", "GET", "/apps/app-id/channels", query)
            return f"GET /apps/app-id/channels?{urlencode(query)} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
        answers = self.assertSameAnswers([self.event(), get, self.event()], handed_over=True)
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK"), 3)
        self.assertIn(b'{"channels":{}}', answers)

    def test_connection_close_and_oversized_requests_are_twisted_webs(self):
        """Connection: close and a body over the limit are answered (and closed) as before."""
        small = make_config(limits={"max_request_body_bytes": 64})
        closing = [lambda now: signed_request(
            "/apps/app-id/events", b'{"name":"e","channels":["a"],"data":"x"}', now,
            extra="\r\nConnection: close", keep_alive=False)]
        self.assertIn(b"200 OK", self.assertSameAnswers(closing, handed_over=True))
        self.assertTrue(self.connection.transport.disconnecting)
        oversized = [self.event(data="x" * 100)]
        self.assertIn(b"413", self.assertSameAnswers(oversized, small, handed_over=True))

    def test_an_idle_connection_is_closed_after_the_sites_timeout(self):
        """A keep-alive connection that stays idle is closed as twisted.web's would be."""
        self.exchange([self.event()], True)
        timeout = self.rig.switch.site.timeOut
        self.rig.reactor.advance(timeout - 1)
        self.assertFalse(self.connection.transport.disconnecting)
        self.rig.reactor.advance(2)
        self.assertTrue(self.connection.transport.disconnecting)

    def test_a_client_that_never_lets_go_is_dropped(self):
        """If the close after the idle timeout does not end the connection, it is aborted."""
        self.exchange([self.event()], True)
        transport = self.connection.transport
        self.patch(transport, "loseConnection", lambda: None)  # the client does not read: no end
        aborted = []
        self.patch(transport, "abortConnection", lambda: aborted.append(True))
        self.rig.reactor.advance(self.rig.switch.site.timeOut + 1)
        self.assertEqual(aborted, [])
        self.rig.reactor.advance(ABORT_TIMEOUT)
        self.assertEqual(aborted, [True])


    def test_a_head_too_long_is_twisted_webs_to_refuse(self):
        """A request head longer than twisted.web takes (one long line, or many) goes to twisted.web,
        which drops the connection or refuses with 400."""
        huge = b"POST /apps/app-id/events HTTP/1.1\r\nX: " + b"x" * MAX_HEAD
        self.assertEqual(self.assertSameAnswers([huge], handed_over=True), b"")
        self.assertTrue(self.connection.transport.disconnecting)
        many_lines = b"POST /apps/app-id/events HTTP/1.1\r\n" + (b"X-Pad: " + b"x" * 60 + b"\r\n") * 300
        answer = self.assertSameAnswers([many_lines + b"Content-Length: 0\r\n\r\n"], handed_over=True)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)

class WaitingTests(unittest.TestCase):
    """Answers that wait: for the cluster (`info`), or for a client that reads slowly."""

    def setUp(self):
        self.rig = Rig(self)
        self.connection = _Connection(self.rig)
        self.connection.transport.protocol = self.connection.protocol
        self.event = SameAnswerTests.event.__get__(self)

    def feed(self, *requests):
        now = self.rig.reactor.seconds()
        self.connection.feed(b"".join(request(now) for request in requests))

    def answers(self) -> list:
        return re.findall(rb"HTTP/1.1 (\d+)[^{]*(\{[^\r]*?\})(?=HTTP|$)",
                          self.connection.transport.value())

    def test_later_requests_wait_for_an_answer_from_the_cluster(self):
        """While `info` waits for the cluster, the next trigger is not answered before it; both are
        answered in order once the cluster answers. The idle timeout does not run meanwhile."""
        pending = Deferred()
        self.patch(self.rig.hub, "channel_stats", lambda app_id, names: pending)
        self.feed(self.event(info="subscription_count"), self.event())
        self.assertEqual(self.answers(), [])
        self.rig.reactor.advance(self.rig.switch.site.timeOut + 1)
        self.assertFalse(self.connection.transport.disconnecting)
        pending.callback({"news": ChannelStats(subscription_count=0)})
        self.assertEqual(self.answers(), [
            (b"200", b'{"channels":{"news":{"subscription_count":0}}}'), (b"200", b"{}")])

    def test_a_connection_lost_while_waiting_gets_nothing_written(self):
        """The client going away while its answer waits: the answer is dropped, nothing raised."""
        pending = Deferred()
        self.patch(self.rig.hub, "channel_stats", lambda app_id, names: pending)
        self.feed(self.event(info="subscription_count"))
        self.connection.connection_lost()
        pending.callback({"news": ChannelStats(subscription_count=0)})
        self.assertEqual(self.answers(), [])

    def test_a_client_that_does_not_read_is_not_read_from(self):
        """When the transport's buffer is full (the client does not read), pipelined requests wait
        and the transport stops reading; they are answered in order when it drains."""
        self.feed(self.event())
        plain = self.connection.transport.protocol
        self.assertIsInstance(plain, PlainTriggers)
        self.assertEqual(len(self.answers()), 1)
        plain.pauseProducing()
        self.assertEqual(self.connection.transport.producerState, "paused")
        self.feed(self.event(), self.event())
        self.assertEqual(len(self.answers()), 1)
        plain.resumeProducing()
        self.assertEqual(self.connection.transport.producerState, "producing")
        self.assertEqual(len(self.answers()), 3)

    def test_many_answers_at_once_do_not_recurse(self):
        """Hundreds of pipelined `info` triggers in one read, answered at once by the local
        cluster, are all answered (no recursion per request)."""
        self.feed(*[self.event(info="subscription_count")] * 400)
        self.assertEqual(len(self.answers()), 400)
