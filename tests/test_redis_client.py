"""The RESP3 Redis client: parsing on a StringTransport, URLs, and a real redis-server."""

import hashlib
import importlib.util
import os
import shutil
import tempfile

from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest

from soketify.cluster import redis_client
from soketify.cluster.redis_client import (RedisAddress, RedisClient, RedisConnectionLost, RedisError,
                                           RedisProtocol, Script, parse_redis_url)
from tests import redis_server
from tests.redis_server import require_redis_server, start_redis

WAIT = 10  # seconds any single real-server step may take
HERE = os.path.dirname(os.path.abspath(__file__))


def connected_protocol():
    """A RedisProtocol on a StringTransport, recording pushes and replies in one list."""
    transport = StringTransport()
    redis = RedisProtocol()
    redis.makeConnection(transport)
    redis.events = []
    redis.on_push = lambda push: redis.events.append(("push", list(push)))
    return redis, transport


def record(redis, d, name):
    d.addBoth(lambda result: redis.events.append((name, result)))


# A stream with pushes between replies: what Redis sends for PUBLISH/EVALSHA to a subscribed connection.
INTERLEAVED = (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nfirst\r\n"
               b":1\r\n"
               b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$6\r\nsecond\r\n"
               b"%1\r\n+k\r\n#f\r\n"
               b"-ERR boom\r\n"
               b"_\r\n")
INTERLEAVED_EVENTS = [
    ("push", [b"message", b"ch", b"first"]),
    ("a", 1),
    ("push", [b"message", b"ch", b"second"]),
    ("b", {b"k": False}),
    ("c", "ERR boom"),
    ("d", None),
]


def send_four(redis):
    for name in "abcd":
        d = redis.execute("PING")
        d.addErrback(lambda failure: failure.trap(RedisError) and str(failure.value))
        record(redis, d, name)


class RedisProtocolTests(unittest.TestCase):
    def test_commands_are_pipelined_and_replies_matched_in_order(self):
        """Commands are written at once, before any reply; replies fire their Deferreds in order."""
        redis, transport = connected_protocol()
        record(redis, redis.execute("GET", "a"), "a")
        record(redis, redis.execute("INCR", b"n"), "n")
        record(redis, redis.execute("GET", "b"), "b")
        self.assertEqual(transport.value(), b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"
                                            b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n")
        redis.dataReceived(b"$1\r\n1\r\n:7\r\n$-1\r\n")
        self.assertEqual(redis.events, [("a", b"1"), ("n", 7), ("b", None)])

    def test_error_reply_fails_only_its_command(self):
        """An error reply fails its own Deferred with RedisError; the next command still gets its reply."""
        redis, transport = connected_protocol()
        failed = redis.execute("INCR", "text")
        succeeded = redis.execute("PING")
        redis.dataReceived(b"-ERR value is not an integer\r\n+PONG\r\n")
        failure = self.failureResultOf(failed, RedisError)
        self.assertEqual(str(failure.value), "ERR value is not an integer")
        self.assertEqual(self.successResultOf(succeeded), b"PONG")

    def test_pushes_reach_on_push_in_stream_order_with_replies(self):
        """Pushes between replies reach on_push exactly where they were in the stream."""
        redis, transport = connected_protocol()
        send_four(redis)
        redis.dataReceived(INTERLEAVED)
        self.assertEqual(redis.events, INTERLEAVED_EVENTS)

    def test_data_split_at_every_byte_still_parses(self):
        """The same stream cut in two at every byte boundary, or fed a byte at a time, gives the same events."""
        for cut in range(1, len(INTERLEAVED)):
            redis, transport = connected_protocol()
            send_four(redis)
            redis.dataReceived(INTERLEAVED[:cut])
            redis.dataReceived(INTERLEAVED[cut:])
            self.assertEqual(redis.events, INTERLEAVED_EVENTS, f"cut at {cut}")
        redis, transport = connected_protocol()
        send_four(redis)
        for i in range(len(INTERLEAVED)):
            redis.dataReceived(INTERLEAVED[i:i + 1])
        self.assertEqual(redis.events, INTERLEAVED_EVENTS)

    def test_boolean_false_is_a_reply(self):
        """RESP3 false is a reply, not hiredis' default 'nothing yet' marker."""
        redis, transport = connected_protocol()
        d = redis.execute("EXISTS", "k")
        redis.dataReceived(b"#f\r\n")
        self.assertIs(self.successResultOf(d), False)

    def test_subscribe_fires_after_one_push_per_channel(self):
        """SUBSCRIBE is answered by one push per channel; they fire its Deferred and skip on_push."""
        redis, transport = connected_protocol()
        record(redis, redis.execute("PING"), "ping")
        record(redis, redis.execute("subscribe", "a", "b"), "subscribed")
        record(redis, redis.execute("GET", "k"), "get")
        redis.dataReceived(b">3\r\n$7\r\nmessage\r\n$1\r\nz\r\n$3\r\nold\r\n"  # from an earlier SUBSCRIBE
                           b"+PONG\r\n"
                           b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
                           b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n"  # cannot happen here; still a push
                           b">3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
                           b"$1\r\nv\r\n")
        self.assertEqual(redis.events, [("push", [b"message", b"z", b"old"]), ("ping", b"PONG"),
                                        ("push", [b"message", b"a", b"hi"]), ("subscribed", 2), ("get", b"v")])

    def test_refused_subscribe_fails_and_keeps_order(self):
        """A SUBSCRIBE refused with an error reply fails its Deferred; later replies still match."""
        redis, transport = connected_protocol()
        refused = redis.execute("SUBSCRIBE", "secret")
        after = redis.execute("PING")
        redis.dataReceived(b"-NOPERM no permissions\r\n+PONG\r\n")
        self.failureResultOf(refused, RedisError)
        self.assertEqual(self.successResultOf(after), b"PONG")

    def test_unsubscribe_without_channels_is_refused(self):
        """UNSUBSCRIBE with no channels gets an unknowable number of pushes, so it is refused."""
        redis, transport = connected_protocol()
        self.failureResultOf(redis.execute("UNSUBSCRIBE"), ValueError)
        self.assertEqual(transport.value(), b"")

    def test_send_drops_replies_and_logs_each_error_once(self):
        """send() makes no Deferred; its error replies are logged once per distinct message."""
        redis, transport = connected_protocol()
        self.assertIsNone(redis.send("PUBLISH", "ch", b"x"))
        for _ in range(3):
            redis.send("PUBLISH", "ch")
        waited = redis.execute("PING")
        with capturedLogs() as events:
            redis.dataReceived(b":0\r\n" + b"-ERR wrong number of arguments\r\n" * 3 + b"+PONG\r\n")
        self.assertEqual(self.successResultOf(waited), b"PONG")
        warnings = [e for e in events if "refused a command" in e["log_format"]]
        self.assertEqual([e["error"] for e in warnings], ["ERR wrong number of arguments"])

    def test_send_refuses_subscribe(self):
        """send() refuses commands answered by pushes, which would put replies out of step."""
        redis, transport = connected_protocol()
        self.assertRaises(ValueError, redis.send, b"Subscribe", "ch")

    def test_connection_loss_fails_waiting_commands_and_calls_on_lost(self):
        """On loss every waiting Deferred fails with RedisConnectionLost, after on_lost was told."""
        redis, transport = connected_protocol()
        order = []
        redis.on_lost = lambda reason: order.append("on_lost")
        first = redis.execute("GET", "a")
        subscribing = redis.execute("SUBSCRIBE", "c")
        first.addErrback(lambda failure: order.append("errback") or failure)
        redis.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(first, RedisConnectionLost)
        self.failureResultOf(subscribing, RedisConnectionLost)
        self.assertEqual(order, ["on_lost", "errback"])
        self.failureResultOf(redis.execute("PING"), RedisConnectionLost)
        redis.send("PUBLISH", "c", "m")  # dropped without error

    def test_unreadable_data_closes_the_connection(self):
        """A protocol error from the parser aborts the connection."""
        redis, transport = connected_protocol()
        with capturedLogs():
            redis.dataReceived(b"?what\r\n")
        self.assertTrue(transport.disconnecting)

    def test_reply_with_nothing_waiting_closes_the_connection(self):
        """A reply no command waits for means the stream is out of step: the connection is aborted."""
        redis, transport = connected_protocol()
        with capturedLogs():
            redis.dataReceived(b"+OK\r\n")
        self.assertTrue(transport.disconnecting)

    def test_on_push_exception_is_logged_and_later_replies_still_arrive(self):
        """An exception in on_push is logged; the rest of the data is still read."""
        redis, transport = connected_protocol()
        redis.on_push = lambda push: 1 / 0
        d = redis.execute("PING")
        redis.dataReceived(b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n+PONG\r\n")
        self.assertEqual(self.successResultOf(d), b"PONG")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_evalsha_sends_sha_keys_and_args(self):
        """evalsha writes EVALSHA sha numkeys keys... args..."""
        redis, transport = connected_protocol()
        script = Script("return 1")
        self.assertEqual(script.sha, hashlib.sha1(b"return 1").hexdigest())
        redis.evalsha(script, ["k1", "k2"], [3])
        self.assertEqual(transport.value(), b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n" + script.sha.encode() +
                         b"\r\n$1\r\n2\r\n$2\r\nk1\r\n$2\r\nk2\r\n$1\r\n3\r\n")


class ParseRedisUrlTests(unittest.TestCase):
    def test_defaults(self):
        """A bare redis:// URL means port 6379, database 0, no credentials, no TLS."""
        self.assertEqual(parse_redis_url("redis://localhost"), RedisAddress("localhost", 6379, 0, None, None, False))

    def test_every_part(self):
        """rediss:// with user, percent-encoded password, port and database."""
        self.assertEqual(parse_redis_url("rediss://app:p%40ss%2Fw@redis.example:6380/2"),
                         RedisAddress("redis.example", 6380, 2, "app", "p@ss/w", True))

    def test_password_only_and_ipv6(self):
        """A password without user name, an IPv6 host and a trailing slash are accepted."""
        self.assertEqual(parse_redis_url("redis://:secret@[::1]:7000/"),
                         RedisAddress("::1", 7000, 0, None, "secret", False))

    def test_refused_urls_say_why_without_the_password(self):
        """Bad URLs raise ValueError whose message never contains the password."""
        for url in ["http://:hunter2@host", "redis://:hunter2@", "redis://:hunter2@host:port",
                    "redis://:hunter2@host:0", "redis://:hunter2@host:70000", "redis://:hunter2@host/db",
                    "redis://:hunter2@host/1/2", "redis://:hunter2@host?db=1", "redis://:hunter2#@host",
                    "redis://hunter2@host", "hunter2", "redis://:hunter2@host/-1"]:
            with self.assertRaises(ValueError, msg=url) as caught:
                parse_redis_url(url)
            self.assertNotIn("hunter2", str(caught.exception), url)
            self.assertIsNone(caught.exception.__cause__, url)

    def test_repr_hides_the_password(self):
        """repr(address), which may end up in logs, leaves the password out."""
        self.assertNotIn("hunter2", repr(parse_redis_url("redis://:hunter2@host")))


def within(d, seconds=WAIT):
    """Bound a wait on the real reactor."""
    return d.addTimeout(seconds, reactor)


class Owner:
    """The callbacks a RedisClient's owner gives it, as queues a test can wait on."""

    def __init__(self):
        self.connected = defer.DeferredQueue()
        self.pushes = defer.DeferredQueue()
        self.lost = defer.DeferredQueue()

    def client(self, url, scripts=()):
        # The reason is a Failure: queued as is, it would fail the Deferred that waits for it.
        return RedisClient(reactor, parse_redis_url(url), self.connected.put, self.pushes.put,
                           lambda reason: self.lost.put(reason.value), scripts)


async def connections_received(redis):
    stats = await within(redis.execute("INFO", "stats"))
    return int(stats.split(b"total_connections_received:")[1].split(b"\r")[0])


class RedisServerHelperTests(unittest.TestCase):
    def test_missing_redis_server_fails_the_test(self):
        """Without redis-server, tests that need it fail instead of being skipped."""
        self.patch(redis_server, "redis_server_path", lambda: None)
        self.assertRaises(self.failureException, require_redis_server, self)


class RealRedisTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        require_redis_server(self)

    def start_client(self, owner, url, scripts=()):
        client = owner.client(url, scripts)
        client.startService()
        self.addCleanup(lambda: within(client.stopService()) if client.running else None)
        return client

    async def test_hello_3_then_set_and_get(self):
        """The client says HELLO 3 (maps come back as dicts), then SET/GET round-trip."""
        server = await start_redis(self, reactor)
        owner = Owner()
        client = self.start_client(owner, server.url)
        redis = await within(owner.connected.get())
        self.assertIs(client.protocol, redis)
        self.assertEqual(await within(redis.execute("HSET", "h", "f", "v")), 1)
        self.assertEqual(await within(redis.execute("HGETALL", "h")), {b"f": b"v"})
        self.assertEqual(await within(redis.execute("SET", "k", b"\x00\xff")), b"OK")
        self.assertEqual(await within(redis.execute("GET", "k")), b"\x00\xff")
        hello = await within(redis.execute("HELLO"))
        self.assertEqual(hello[b"proto"], 3)

    async def test_select_database_from_url(self):
        """A database number in the URL is selected on connect."""
        server = await start_redis(self, reactor)
        owner = Owner()
        self.start_client(owner, server.url + "/3")
        redis = await within(owner.connected.get())
        info = await within(redis.execute("CLIENT", "INFO"))
        self.assertIn(b" db=3 ", info)

    async def test_publish_pushes_interleave_with_replies_in_order(self):
        """Messages published to the connection's own subscription arrive next to their PUBLISH's
        reply: after the one before it, before the one after it. (Redis before 7.2 sends a command's
        own pushes before its reply, 7.2 and Valkey after it; the engine needs only this.)"""
        server = await start_redis(self, reactor)
        owner = Owner()
        self.start_client(owner, server.url)
        redis = await within(owner.connected.get())
        self.assertEqual(await within(redis.execute("SUBSCRIBE", "ch", "other")), 2)
        events = []
        redis.on_push = lambda push: events.append(list(push))
        replies = []
        for i in range(5):
            redis.send("PUBLISH", "ch", f"m{i}")
            d = redis.execute("PUBLISH", "other", f"n{i}")
            d.addCallback(lambda count, i=i: events.append(("reply", i, count)))
            replies.append(d)
        await within(defer.gatherResults(replies))
        await within(redis.execute("PING"))  # the last PUBLISH's own pushes may follow its reply
        position = {("reply", i): events.index(("reply", i, 1)) for i in range(5)}
        for i in range(5):
            for message in ([b"message", b"ch", f"m{i}".encode()], [b"message", b"other", f"n{i}".encode()]):
                where = events.index(message)
                self.assertTrue(position.get(("reply", i - 1), -1) < where < position.get(("reply", i + 1), 99),
                                (message, events))
        self.assertEqual(len(events), 15)

    async def test_pushes_caused_by_other_connections_come_in_redis_order_with_replies(self):
        """A push from another connection's script that ran before our command arrives before our
        reply; one caused by our own script arrives either just before or just after its reply."""
        server = await start_redis(self, reactor)
        script = Script("redis.call('PUBLISH', KEYS[1], ARGV[1]); return 42")
        publisher, subscriber = Owner(), Owner()
        self.start_client(publisher, server.url, [script])
        self.start_client(subscriber, server.url, [script])
        other = await within(publisher.connected.get())
        redis = await within(subscriber.connected.get())
        await within(redis.execute("SUBSCRIBE", "events"))
        events = []
        redis.on_push = lambda push: events.append(list(push))
        await within(other.evalsha(script, ["events"], ["theirs"]))
        events.append(await within(redis.execute("PING")))
        self.assertEqual(events, [[b"message", b"events", b"theirs"], b"PONG"])
        events.clear()
        events.append(await within(redis.evalsha(script, ["events"], ["mine"])))
        events.append(await within(redis.execute("PING")))
        self.assertIn(events, ([42, [b"message", b"events", b"mine"], b"PONG"],
                               [[b"message", b"events", b"mine"], 42, b"PONG"]))

    async def test_script_error_fails_with_redis_error(self):
        """A script that raises fails its Deferred with RedisError."""
        server = await start_redis(self, reactor)
        owner = Owner()
        script = Script("return redis.error_reply('no way')")
        self.start_client(owner, server.url, [script])
        redis = await within(owner.connected.get())
        with self.assertRaises(RedisError) as caught:
            await within(redis.evalsha(script))
        self.assertIn("no way", str(caught.exception))

    async def test_wrong_password_is_refused_logged_once_and_retried(self):
        """A wrong password is logged once, retried with back-off, and connects once Redis lets it."""
        server = await start_redis(self, reactor, password="right")
        owner = Owner()
        checker = Owner()
        with capturedLogs() as events:
            self.start_client(owner, server.url.replace("right", "wrong"))
            self.start_client(checker, server.url)
            check = await within(checker.connected.get())
            baseline = await connections_received(check)
            while await connections_received(check) < baseline + 2:  # two more attempts at least
                await task.deferLater(reactor, 0.05, lambda: None)
        refusals = [e for e in events if "refused the connection" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        self.assertIn("WRONGPASS", refusals[0]["reason"])
        self.assertEqual(owner.connected.pending, [])
        await server.restart(password=None)
        redis = await within(owner.connected.get())
        self.assertEqual(await within(redis.execute("PING")), b"PONG")

    async def test_reconnects_after_redis_restarts_and_reloads_scripts(self):
        """After Redis restarts the client reconnects by itself, runs on_connected again, reloads scripts."""
        server = await start_redis(self, reactor)
        owner = Owner()
        script = Script("return ARGV[1]")
        client = self.start_client(owner, server.url, [script])
        first = await within(owner.connected.get())
        self.assertEqual(await within(first.evalsha(script, [], ["one"])), b"one")
        await server.restart()
        await within(owner.lost.get())
        second = await within(owner.connected.get())
        self.assertIsNot(second, first)
        self.assertIs(client.protocol, second)
        self.assertEqual(await within(second.evalsha(script, [], ["two"])), b"two")

    async def test_failing_on_connected_is_logged_and_retried(self):
        """An on_connected that fails is logged, its connection closed (on_lost called) and a new one made."""
        server = await start_redis(self, reactor)
        owner = Owner()
        calls = []

        def on_connected(redis):
            calls.append(redis)
            if len(calls) == 1:
                raise RuntimeError("not ready yet")
            owner.connected.put(redis)

        client = RedisClient(reactor, parse_redis_url(server.url), on_connected, owner.pushes.put,
                             lambda reason: owner.lost.put(reason.value))
        client.startService()
        self.addCleanup(lambda: within(client.stopService()))
        second = await within(owner.connected.get())
        await within(owner.lost.get())
        self.assertEqual(calls, [calls[0], second])
        self.assertFalse(calls[0].connected)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_stop_service_closes_the_connection(self):
        """stopService fires once the connection is closed; on_lost is called and protocol is None."""
        server = await start_redis(self, reactor)
        owner = Owner()
        client = self.start_client(owner, server.url)
        redis = await within(owner.connected.get())
        await within(client.stopService())
        self.assertFalse(redis.connected)
        self.assertIsNone(client.protocol)
        self.assertEqual(len(owner.lost.pending), 1)


def make_cert(directory):
    """A self-signed certificate for 127.0.0.1: (key path, certificate path)."""
    spec = importlib.util.spec_from_file_location("make_cert", os.path.join(HERE, "interop", "make_cert.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    module.main(*paths)
    return paths


class RealRedisTlsTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        require_redis_server(self)
        directory = tempfile.mkdtemp(prefix="soketify-redis-tls-")  # absolute: redis-server runs elsewhere
        self.addCleanup(shutil.rmtree, directory, True)
        self.tls_files = make_cert(directory)

    async def test_rediss_connects_when_the_certificate_is_trusted(self):
        """rediss:// speaks TLS; with the server's certificate trusted, commands work."""
        with open(self.tls_files[1]) as f:
            trusted = ssl.Certificate.loadPEM(f.read())
        self.patch(redis_client, "_tls_options", lambda host: ssl.optionsForClientTLS(host, trustRoot=trusted))
        server = await start_redis(self, reactor, tls_files=self.tls_files)
        owner = Owner()
        client = owner.client(server.url)
        client.startService()
        self.addCleanup(lambda: within(client.stopService()))
        redis = await within(owner.connected.get())
        self.assertEqual(await within(redis.execute("PING")), b"PONG")

    async def test_rediss_refuses_an_untrusted_certificate(self):
        """A certificate the system does not trust is refused, logged once, and nothing connects."""
        server = await start_redis(self, reactor, tls_files=self.tls_files)
        owner = Owner()
        client = owner.client(server.url)
        with capturedLogs() as events:
            client.startService()
            while not any("refused the connection" in e.get("log_format", "") for e in events):
                await task.deferLater(reactor, 0.02, lambda: None)
            await within(client.stopService())
        refusal = next(e for e in events if "refused the connection" in e.get("log_format", ""))
        self.assertIn("certificate verify failed", refusal["reason"])
        self.assertEqual(owner.connected.pending, [])


class OldRedis(protocol.Protocol):
    """A server that knows no HELLO, like Redis 5."""

    def dataReceived(self, data):
        self.factory.connections += data.count(b"HELLO")
        self.transport.write(b"-ERR unknown command 'HELLO'\r\n")


def fake_server(test, protocol_class):
    """A loopback server speaking ``protocol_class`` that counts its connections: (factory, URL)."""
    factory = protocol.Factory.forProtocol(protocol_class)
    factory.connections = 0
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return factory, f"redis://127.0.0.1:{port.getHost().port}"


class HandshakeRefusalTests(unittest.TestCase):
    timeout = 30

    async def test_server_without_hello_is_logged_once_and_retried_with_back_off(self):
        """A server that refuses HELLO is logged once with the reason, and retried with growing delays."""
        factory, url = fake_server(self, OldRedis)
        owner = Owner()
        client = owner.client(url)
        with capturedLogs() as events:
            client.startService()
            started = reactor.seconds()
            while factory.connections < 4:
                await task.deferLater(reactor, 0.02, lambda: None)
                self.assertLess(reactor.seconds() - started, WAIT)
            elapsed = reactor.seconds() - started
            await within(client.stopService())
        refusals = [e for e in events if "refused the connection" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        self.assertIn("Redis 6 or newer", refusals[0]["reason"])
        self.assertGreaterEqual(elapsed, 0.69)  # three retries after 0.1, 0.2, 0.4 s (+ jitter)
        self.assertEqual(owner.connected.pending, [])
        self.assertEqual(owner.lost.pending, [])


class SilentServer(protocol.Protocol):
    """A server that accepts connections and never answers."""

    def connectionMade(self):
        self.factory.connections += 1


class HandshakeTimeoutTests(unittest.TestCase):
    timeout = 30

    async def test_a_server_that_never_answers_is_given_up_and_retried(self):
        """A connection whose handshake gets no answer is closed after the timeout and tried again."""
        from soketify.cluster import redis_client
        self.patch(redis_client, "HANDSHAKE_TIMEOUT", 0.2)
        factory, url = fake_server(self, SilentServer)
        owner = Owner()
        client = owner.client(url)
        client.startService()
        started = reactor.seconds()
        while factory.connections < 3:
            await task.deferLater(reactor, 0.02, lambda: None)
            self.assertLess(reactor.seconds() - started, WAIT)
        await within(client.stopService())
        self.assertEqual(owner.connected.pending, [])
