"""A small Redis client: RESP3 on one connection, parsed by hiredis.

Command replies and pub/sub pushes come over the same connection, so their owner sees pushes caused by
other connections in the order Redis executed them relative to its own replies. (A push caused by the
connection's own command comes just before its reply up to Redis 7.0, just after it from 7.2 and in
Valkey.)
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import hiredis
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_URL_FORM = "redis://[[username]:password@]host[:port][/db] (or rediss:// for TLS)"
_SEEN_ERRORS_MAX = 100  # bounds the memory of "already logged" error replies


class RedisError(Exception):
    """Redis answered a command with an error reply."""


class RedisConnectionLost(Exception):
    """The connection closed before Redis answered."""


class _OutOfStep(Exception):
    """A reply came that no command waits for: nothing after it can be matched."""


@dataclass(frozen=True)
class RedisAddress:
    """Where and how to connect; the password stays out of repr (and so out of logs)."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def parse_redis_url(url: str) -> RedisAddress:
    """Parse redis:// or rediss:// URLs; error messages never repeat the URL, which may hold a password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # from None: the original message can quote the URL, password included
        raise ValueError(f"Redis URL is malformed; expected {_URL_FORM}, with special characters in the "
                         "user name or password percent-encoded") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"Redis URL must start with redis:// or rediss://; expected {_URL_FORM}")
    if not parts.hostname:
        raise ValueError(f"Redis URL has no host; expected {_URL_FORM}")
    if port == 0:
        raise ValueError("Redis URL port must be between 1 and 65535")
    if parts.query or parts.fragment:
        raise ValueError(f"Redis URL takes no query or fragment; expected {_URL_FORM}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if username is not None and password is None:
        raise ValueError("Redis URL has a user name but no password")
    return RedisAddress(parts.hostname, port or 6379, _database(parts.path), username, password,
                        parts.scheme == "rediss")


def _database(path: str) -> int:
    number = path[1:]
    if not number:
        return 0
    if not number.isascii() or not number.isdigit():
        raise ValueError(f"Redis URL path must be a database number, as in redis://host:6379/0, not {path!r}")
    return int(number)


class Script:
    """A Lua script, run by its SHA1 (RedisClient loads it on every connection)."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self):
        return f"<Script {self.sha}>"


# In RESP3 these commands are answered by one push per channel named, not by a reply.
_ANSWERED_BY_PUSHES = frozenset(
    b"subscribe unsubscribe psubscribe punsubscribe ssubscribe sunsubscribe".split())


def _push_kind(name) -> bytes | None:
    """The push kind that answers this command, or None for a command answered by a reply."""
    if isinstance(name, str):
        name = name.encode()
    name = bytes(name).lower()
    return name if name in _ANSWERED_BY_PUSHES else None


class _Confirmations:
    """A waiting (un)subscribe command: done after `remaining` pushes of its kind, or one error reply."""

    __slots__ = ("deferred", "kind", "remaining")

    def __init__(self, kind: bytes, remaining: int):
        self.deferred = defer.Deferred()
        self.kind = kind
        self.remaining = remaining


_INCOMPLETE = object()  # hiredis' default "no full reply yet" is False, which is also RESP3's boolean false
_Push = hiredis.PushNotification


def _ignore(*args):
    pass


class RedisProtocol(protocol.Protocol):
    """Pipelined commands, replies matched in order; pushes go to on_push, in stream order with replies."""

    def __init__(self):
        self.on_push = _ignore  # on_push(push): set by the owner, called synchronously
        self.on_lost = _ignore  # on_lost(reason): set by the owner
        self._reader = hiredis.Reader(replyError=RedisError, notEnoughData=_INCOMPLETE)
        self._waiting = deque()  # per command sent: a Deferred, None (send) or _Confirmations
        self._confirmations = 0  # pushes still expected by waiting (un)subscribe commands
        self._seen_errors = set()

    def execute(self, *args) -> defer.Deferred:
        """Send a command; the Deferred fires with its reply, or fails with RedisError."""
        if not self.connected:
            return defer.fail(RedisConnectionLost("not connected to Redis"))
        kind = _push_kind(args[0])
        if kind is None:
            waiter = d = defer.Deferred()
        elif len(args) < 2:
            # Without channels, Redis answers with as many pushes as there were subscriptions: unknowable.
            return defer.fail(ValueError(f"{args[0]!r}: name the channels"))
        else:
            waiter = _Confirmations(kind, len(args) - 1)
            self._confirmations += waiter.remaining
            d = waiter.deferred  # fires with the subscription count Redis reports after the last push
        self._waiting.append(waiter)
        self.transport.write(hiredis.pack_command(args))
        return d

    def send(self, *args) -> None:
        """Send a command without waiting: its reply is dropped, an error reply logged once per message."""
        if not self.connected:
            return
        if _push_kind(args[0]) is not None:
            raise ValueError(f"{args[0]!r} is answered by pushes: use execute()")
        self._waiting.append(None)
        self.transport.write(hiredis.pack_command(args))

    def evalsha(self, script: Script, keys=(), args=()) -> defer.Deferred:
        """Run a loaded Script with KEYS and ARGV."""
        return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def dataReceived(self, data):
        # The pub/sub receive path: keep the common case (a message push) to a few checks.
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not _INCOMPLETE:
                if reply.__class__ is not _Push:
                    self._reply(reply)
                elif self._confirmations and self._confirms(reply):
                    pass
                else:
                    try:
                        self.on_push(reply)
                    except Exception:
                        log.failure("on_push failed for a push from Redis")
                reply = reader.gets()
        except (hiredis.ProtocolError, _OutOfStep) as error:
            log.error("unreadable data from Redis ({error}); closing the connection", error=error)
            self.transport.abortConnection()

    def _reply(self, reply):
        if not self._waiting:
            raise _OutOfStep(f"a reply with no command waiting: {reply!r:.100}")
        waiter = self._waiting.popleft()
        if waiter is None:
            if reply.__class__ is RedisError:
                self._log_dropped_error(reply)
            return
        if waiter.__class__ is _Confirmations:  # refused as a whole: no pushes will come
            self._confirmations -= waiter.remaining
            waiter = waiter.deferred
        if reply.__class__ is RedisError:
            waiter.errback(reply)
        else:
            waiter.callback(reply)

    def _confirms(self, push) -> bool:
        """Count a push that answers the (un)subscribe command at the head of the queue."""
        waiter = self._waiting[0]  # not empty: a command waits for confirmations
        if waiter.__class__ is not _Confirmations or push[0] != waiter.kind:
            return False
        self._confirmations -= 1
        waiter.remaining -= 1
        if not waiter.remaining:
            self._waiting.popleft()
            waiter.deferred.callback(push[-1])
        return True

    def _log_dropped_error(self, error):
        message = str(error)
        if message in self._seen_errors:
            return
        if len(self._seen_errors) >= _SEEN_ERRORS_MAX:
            self._seen_errors.clear()
        self._seen_errors.add(message)
        log.warn("Redis refused a command sent without waiting: {error}", error=message)

    def connectionLost(self, reason=protocol.connectionDone):
        self.connected = False
        waiting, self._waiting = self._waiting, deque()
        self._confirmations = 0
        # The owner hears of the loss first, so errback handlers find it already knows.
        try:
            self.on_lost(reason)
        except Exception:
            log.failure("on_lost failed")
        message = reason.getErrorMessage()
        for waiter in waiting:
            if waiter is not None:
                if waiter.__class__ is _Confirmations:
                    waiter = waiter.deferred
                waiter.errback(Failure(RedisConnectionLost(message)))


class _ClientProtocol(RedisProtocol):
    def connectionMade(self):
        self.factory.client._handshake(self)


class _ClientFactory(protocol.Factory):
    protocol = _ClientProtocol

    def __init__(self, client):
        self.client = client


HANDSHAKE_TIMEOUT = 10.0  # seconds for HELLO, AUTH, SELECT, SCRIPT LOAD and on_connected


def _cancelling(result, call):
    if call.active():
        call.cancel()
    return result


_backoff = backoffPolicy(initialDelay=0.05, factor=2.0, maxDelay=2.0, jitter=lambda: random.uniform(0, 0.05))


class RedisClient(Service):
    """Keeps one ready RedisProtocol connected: HELLO 3 (+AUTH), SELECT, SCRIPT LOAD, then on_connected."""

    def __init__(self, reactor, address: RedisAddress, on_connected, on_push, on_lost, scripts=()):
        self.protocol = None  # the connected protocol, set once ready and just before on_connected
        self._reactor = reactor
        self._address = address
        self._on_connected = on_connected
        self._on_push = on_push
        self._on_lost = on_lost
        self._scripts = tuple(scripts)
        self._announced = None  # the protocol handed to on_connected: only its loss reaches on_lost
        self._refusals = 0  # handshakes failed in a row
        self._last_refusal = None
        # ClientService resets its attempt count on every TCP connection, so handshakes that fail (wrong
        # password) would be retried every 0.1 s; counting them ourselves keeps the back-off growing.
        # (Not prepareConnection: ClientService cannot handle a rejected connection being closed.)
        self._connector = ClientService(
            _endpoint(reactor, address), _ClientFactory(self),
            retryPolicy=lambda attempt: _backoff(max(attempt, self._refusals)), clock=reactor)

    def startService(self):
        super().startService()
        self._connector.startService()

    def stopService(self) -> defer.Deferred:
        """Close the connection and stop retrying; fires once the connection is closed."""
        super().stopService()
        return self._connector.stopService()

    def _handshake(self, protocol):
        protocol.on_push = self._on_push
        protocol.on_lost = lambda reason: self._lost(protocol, reason)
        # A server that accepts the connection and then says nothing is given up on, and retried.
        stalled = self._reactor.callLater(HANDSHAKE_TIMEOUT, protocol.transport.abortConnection)
        d = defer.ensureDeferred(self._prepare(protocol))
        d.addBoth(_cancelling, stalled)
        d.addErrback(self._refused, protocol)

    async def _prepare(self, protocol):
        address = self._address
        try:
            if address.password is None:
                await protocol.execute("HELLO", 3)
            else:
                await protocol.execute("HELLO", 3, "AUTH", address.username or "default", address.password)
        except RedisError as error:
            if "unknown command" in str(error):
                raise RedisError(f"{error} (RESP3 needs Redis 6 or newer)") from None
            raise
        if address.db:
            await protocol.execute("SELECT", address.db)
        for script in self._scripts:
            await protocol.execute("SCRIPT", "LOAD", script.source)
        log.info("connected to Redis at {host}:{port}", host=address.host, port=address.port)
        self.protocol = self._announced = protocol
        await defer.maybeDeferred(self._on_connected, protocol)
        self._refusals = 0  # only now: an on_connected that keeps failing is retried with back-off too
        self._last_refusal = None

    def _refused(self, failure, protocol):
        announced = protocol is self._announced
        protocol.transport.loseConnection()
        if not self.running:
            return  # stopping: the handshake was cut short on purpose
        self._refusals += 1
        reason = failure.getErrorMessage()
        if reason == self._last_refusal:
            return
        self._last_refusal = reason
        if announced:
            log.failure("on_connected failed; reconnecting to Redis", failure)
        else:
            log.warn("Redis at {host}:{port} refused the connection: {reason}; retrying with back-off",
                     host=self._address.host, port=self._address.port, reason=reason)

    def _lost(self, protocol, reason):
        if self.protocol is protocol:
            self.protocol = None
        if self._announced is protocol:
            self._announced = None
            if self.running:
                log.warn("lost the connection to Redis: {reason}", reason=reason.getErrorMessage())
            self._on_lost(reason)


def _endpoint(reactor, address: RedisAddress):
    tcp = endpoints.HostnameEndpoint(reactor, address.host, address.port, timeout=5)
    if address.tls:
        return endpoints.wrapClientTLS(_tls_options(address.host), tcp)
    return tcp


def _tls_options(host: str):
    """Verify the server's certificate against the system's trust roots (tests patch this)."""
    return ssl.optionsForClientTLS(host)
