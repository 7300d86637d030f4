"""The Redis engine: any number of nodes on one Redis 7 / Valkey behave as one server.

Every cluster-wide fact lives in Redis and every transition of it is one Lua script
(``redis_scripts``), which also PUBLISHes what the other nodes must hear. Commands and pushes share
one RESP3 connection, so a node sees the answer to its subscribe and the events of the channel in
the order Redis executed them: a new subscriber gets exactly the events its snapshot (members,
cached event) does not already hold. A node delivers even its own events when Redis echoes them
back, so every node writes a channel's events in the same order.

Each start, and each reconnection to Redis, makes the node a new incarnation with a fresh number
(the first part of its socket ids). The old incarnation is no longer renewed; the nodes reap it once
its deadline passes, as they reap a node that died. After a reconnection the node asks its clients
to reconnect (4200): their subscriptions are rebuilt under the new incarnation, and members who come
back within ``node_timeout`` are never announced as gone.
"""

from __future__ import annotations

import json
import random
from time import perf_counter

from twisted.application import service
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from soketify import protocol
from soketify.cluster import redis_scripts as scripts
from soketify.cluster.interfaces import (
    CachedEvent, ChannelStats, ClusterUnavailable, ICluster, Joined, MemberLimitReached)
from soketify.cluster.redis_client import RedisClient, RedisConnectionLost, RedisError, parse_redis_url
from soketify.config import ClusterConfig, LimitsConfig

log = Logger()

# Webhook events claimed per round, and how often a node looks for due ones.
CLAIM_BATCH = 200
CLAIM_INTERVAL = 0.25
# Entries of a dead node removed per script call: about 15 ms of Redis time at most.
REAP_BATCH = 1000
_EVENT, _COUNT = ord("E"), ord("C")


class _LocalChannel:
    """A channel this node is subscribed to in Redis: which of its sockets joined it."""

    __slots__ = ("app_id", "name", "sockets", "unsubscribing")

    def __init__(self, app_id: str, name: str):
        self.app_id = app_id
        self.name = name
        self.sockets: set[str] = set()
        # UNSUBSCRIBE sent: pushes sent before it still arrive and are still this channel's.
        self.unsubscribing = False


def app_key(prefix: str, app_id: str) -> str:
    """Where an app's keys start; the length keeps app ids from running into each other."""
    return f"{prefix}:a{len(app_id)}:{app_id}"


@implementer(ICluster)
class RedisCluster(service.Service):
    name = "cluster"

    # Told how long each answered script took (metrics: cluster_round_trip_seconds).
    round_trip = staticmethod(lambda seconds: None)
    # The debug console's entries (soketify.console_feed), shared with the other nodes through
    # the control channel while a console anywhere watches; set by the service.
    console = None

    def __init__(self, reactor, apps, limits: LimitsConfig, settings: ClusterConfig, grace: float):
        self._reactor = reactor
        self._apps = {app.id: app for app in apps}
        self._limits = limits
        self._prefix = settings.prefix
        self._timeout_ms = settings.node_timeout * 1000
        self._grace_ms = int(grace * 1000)
        self._control = f"{settings.prefix}:ctl".encode()
        self._app_keys = {app.id: app_key(settings.prefix, app.id) for app in apps}
        self._client = RedisClient(reactor, parse_redis_url(settings.redis_url), self._connected,
                                   self._push, self._lost, scripts=scripts.ALL)
        self._redis = None  # the connection while this node is registered
        self._listener = None
        self.ready = False
        self.node_number: int | None = None
        self._socket_prefix = ""
        self._number = b""
        self._subscribed: dict[bytes, _LocalChannel] = {}
        self._connections: dict[str, int] = {app.id: 0 for app in apps}
        # Apps with max_connections report their counts with each heartbeat; others need not.
        self._counted = [app.id for app in apps if app.max_connections]
        self._elsewhere: dict[str, int] = {}  # connections on other nodes, as of the last heartbeat
        self._lost_call = None  # moves the clients if Redis stays away for node_timeout
        self._beat_sent_at: float | None = None  # a heartbeat waiting for its answer, since
        self._heartbeat = LoopingCall(self.heartbeat)
        self._heartbeat.clock = reactor
        self._heartbeat_interval = min(1.0, settings.node_timeout / 3)
        self._draining = False
        self._claims = LoopingCall(self.claim_webhooks)
        self._claims.clock = reactor

    def attach(self, listener) -> None:
        self._listener = listener

    def share_console(self, feed, clock) -> None:
        """Make the debug console's entries cluster-wide, on the control channel: this node's go
        to the others while some console watches there, and theirs reach the viewers here."""
        self.console = feed

        def send(lines: str) -> None:
            if self._redis is not None:
                self._redis.execute("PUBLISH", self._control, "C\n\n" + lines).addErrback(
                    self._log_failure, "console")
        feed.share(send)

    def reconfigure(self, apps, limits: LimitsConfig, grace: float) -> None:
        """A reload: new apps get their keys and counts, every app's flags are stored again (what
        the scripts announce for it), and the limits and grace apply from now on."""
        self._apps = {app.id: app for app in apps}
        self._app_keys.update({app.id: app_key(self._prefix, app.id) for app in apps})
        for app in apps:
            self._connections.setdefault(app.id, 0)
        self._counted = [app.id for app in apps if app.max_connections]
        self._limits = limits
        self._grace_ms = int(grace * 1000)
        if self._redis is not None:
            flags = [value for app in apps
                     for value in (self._app_keys[app.id], f"{self._app_flags(app)}\n{app.id}")]
            self._redis.execute("HSET", f"{self._prefix}:apps", *flags).addErrback(
                self._log_failure, "storing the reloaded apps")
        if (self.running and not self._draining and not self._claims.running
                and any(self._app_flags(app).strip("c") for app in apps)):
            self._claims.start(CLAIM_INTERVAL, now=False)

    # -- lifecycle -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._client.startService()
        self._heartbeat.start(self._heartbeat_interval, now=False)
        if any(self._app_flags(app).strip("c") for app in self._apps.values()):
            self._claims.start(CLAIM_INTERVAL, now=False)

    def draining(self) -> None:
        """From now on the clients' leaving is not sent: this incarnation stops renewing its deadline
        and is reaped by the other nodes once it passes, as if it had died. Members who reconnect
        through another node before then stay members without a member_removed/member_added pair.
        Its connections stop counting at once (they are moving), and it takes no more webhooks."""
        self._draining = True
        for loop in (self._heartbeat, self._claims):
            if loop.running:
                loop.stop()
        if self._redis is not None and self._counted:
            self._run(self._redis, scripts.HEARTBEAT, self._timeout_ms,
                      *[value for app_id in self._counted for value in (self._app_keys[app_id], 0)]
                      ).addErrback(self._log_failure, "last heartbeat")

    def stopService(self) -> Deferred:
        """Close the connection. Without draining first, what this node held is removed at once."""
        super().stopService()
        for loop in (self._heartbeat, self._claims):
            if loop.running:
                loop.stop()
        redis, self._redis = self._redis, None
        self.ready = False
        leaving = succeed(None)
        if redis is not None and not self._draining:
            leaving = self._reap(redis, str(self.node_number), force=True)
            leaving.addErrback(lambda f: log.warn("Could not remove this node from Redis: {why}",
                                                  why=f.getErrorMessage()))
        return leaving.addBoth(lambda _: self._client.stopService())

    def _connected(self, redis) -> Deferred:
        """A new connection: register a new incarnation, then (if we had one) move our clients."""
        if self._lost_call is not None and self._lost_call.active():
            self._lost_call.cancel()
        registered = self._register(redis)
        registered.addCallback(self._registered, redis)
        return registered

    def _register(self, redis) -> Deferred:
        number = random.randrange(1, 2**31)
        apps = [value for app in self._apps.values()
                for value in (self._app_keys[app.id], f"{self._app_flags(app)}\n{app.id}")]
        answer = redis.evalsha(scripts.REGISTER, (), (self._prefix, number, self._timeout_ms, *apps))
        return answer.addCallback(lambda taken: number if taken else self._register(redis))

    def _registered(self, number: int, redis) -> None:
        previous = self.node_number
        self.node_number = number
        self._number = str(number).encode()
        self._socket_prefix = f"{number}."
        self._subscribed.clear()
        self._redis = redis
        redis.execute("SUBSCRIBE", self._control).addErrback(self._log_failure, "subscribe")
        self.ready = True
        log.info("Joined the cluster as node {number}", number=number)
        if previous is not None:
            # The old incarnation's connections are moving (4200): they no longer count.
            redis.send("DEL", f"{self._prefix}:n:{previous}:conns")
            self._listener.state_lost("Server reconnected to its cluster")
        self.heartbeat()  # learn the other nodes' connections now, not a second later

    def _lost(self, reason) -> None:
        self._redis = None
        self.ready = False
        self._beat_sent_at = None
        if self.running and self.node_number is not None:
            # Back within node_timeout: the clients move then. Not back: the other nodes are
            # removing them from the cluster anyway, so they had better reconnect elsewhere now.
            self._lost_call = self._reactor.callLater(
                self._timeout_ms / 1000, self._listener.state_lost, "Server lost its cluster")

    def _declared_dead(self) -> None:
        """Redis no longer knows this incarnation (Redis restarted empty, or we were reaped): start
        over on a new connection, exactly as after a lost one."""
        redis = self._redis
        if redis is not None:
            log.warn("Redis no longer knows node {number}; joining again as a new node",
                     number=self.node_number)
            redis.transport.abortConnection()

    def _app_flags(self, app) -> str:
        """What this app wants the scripts to announce (see redis_scripts)."""
        wants = self._listener.wants_webhook if self._listener is not None else (lambda a, n: False)
        flags = "".join(flag for flag, name in (
            ("o", "channel_occupied"), ("v", "channel_vacated"), ("a", "member_added"),
            ("r", "member_removed"), ("m", "cache_miss")) if wants(app.id, name))
        if app.subscription_count or wants(app.id, "subscription_count"):
            flags += "c"
        return flags

    # -- periodic work -------------------------------------------------------------------------

    def heartbeat(self) -> Deferred:
        """Renew this node's deadline, report its connections, reap nodes past their deadline."""
        redis = self._redis
        if redis is None or self._draining:
            return succeed(None)
        now = self._reactor.seconds()
        if self._beat_sent_at is not None:
            if now - self._beat_sent_at > self._timeout_ms / 1000:
                # A Redis that vanished without closing the connection: stop waiting for it.
                log.warn("Redis has not answered for {seconds:.0f} s; reconnecting",
                         seconds=now - self._beat_sent_at)
                redis.transport.abortConnection()
            return succeed(None)
        self._beat_sent_at = now
        if self.console is not None and self.console.has_viewers:
            # Every other node sends this node its console entries while it hears this.
            redis.execute("PUBLISH", self._control, f"W\n{self.console.node}\n").addErrback(
                self._log_failure, "console")
        sent = {app_id: self._connections[app_id] for app_id in self._counted}
        counts = [value for app_id, count in sent.items() for value in (self._app_keys[app_id], count)]
        beat = self._run(redis, scripts.HEARTBEAT, self._timeout_ms, *counts)
        beat.addBoth(self._answered)
        beat.addCallback(self._beaten, redis, sent)
        beat.addErrback(self._log_failure, "heartbeat")
        return beat

    def _answered(self, result):
        self._beat_sent_at = None
        return result

    def _beaten(self, reply, redis, sent: dict[str, int]) -> Deferred | None:
        if reply[0] == 0:
            self._declared_dead()
            return None
        _, totals, dead = reply
        for (app_id, count), total in zip(sent.items(), totals):
            self._elsewhere[app_id] = max(0, total - count)
        reaped = [self._reap(redis, node.decode()) for node in set(dead)]
        return gatherResults(reaped) if reaped else None

    def _reap(self, redis, node: str, force: bool = False) -> Deferred:
        """Remove what a dead node held, a bounded chunk per call (other commands run between)."""
        def chunk(reply):
            done = reply[0]
            self._members_gone(reply[1:])
            if done == 2:
                return self._run(redis, scripts.REAP, node, self._grace_ms, 0, REAP_BATCH
                                 ).addCallback(chunk)
            if done == 1 and not force:
                log.info("Node {node} stopped answering; removed what it held", node=node)
            return done
        first = self._run(redis, scripts.REAP, node, self._grace_ms, 1 if force else 0, REAP_BATCH)
        return first.addCallback(chunk)

    def _members_gone(self, removed: list) -> None:
        """(app id, channel, user) triples a script reports: members whose last connection went."""
        if self._listener is not None:
            for i in range(0, len(removed), 3):
                self._listener.member_changed(removed[i].decode(), removed[i + 1].decode(),
                                              removed[i + 2].decode(), False)

    def claim_webhooks(self) -> Deferred:
        """Take due webhook events from Redis (each goes to exactly one node) and send them."""
        redis = self._redis
        if redis is None:
            return succeed(None)
        claimed = self._run(redis, scripts.CLAIM, CLAIM_BATCH)
        claimed.addCallback(self._emit_claimed)
        claimed.addErrback(self._log_failure, "claim webhook events")
        return claimed

    def _emit_claimed(self, claimed) -> Deferred | None:
        if not claimed:
            return None
        keys = claimed[0::2]
        for entry in claimed[1::2]:
            app_id, _, event = entry.decode().partition("\n")
            self._listener.emit_webhook(app_id, json.loads(event))
        # Confirmed once in the outbox: a node that dies before that gives them back to the queue.
        stored = self._listener.webhooks_stored()
        return stored.addCallback(lambda _: self._redis and self._redis.send(
            "HDEL", f"{self._prefix}:n:{self.node_number}:wh", *keys))

    def sync(self) -> Deferred:
        """Fires once a heartbeat, a webhook claim and every push sent to this node so far are done."""
        if self._redis is None:
            return succeed(None)
        done = self.heartbeat()
        done.addCallback(lambda _: self.claim_webhooks())
        done.addCallback(lambda _: self._redis.execute("PING") if self._redis else None)
        return done

    # -- pushes --------------------------------------------------------------------------------

    def _push(self, push) -> None:
        """A pub/sub message: the hot path of cross-node delivery."""
        if push[0] != b"message":
            return
        channel = self._subscribed.get(push[1])
        payload = push[2]
        if channel is not None:
            kind = payload[0]
            if kind == _EVENT:
                end = payload.index(b"\n")
                except_socket_id = payload[1:end].decode() if end > 1 else None
                self._listener.deliver(channel.app_id, channel.name, memoryview(payload)[end + 1:],
                                       except_socket_id)
            elif kind == _COUNT:
                count, _, origin = payload[1:].partition(b"\n")
                # A change made here is reported from its answer, after the subscriber is told.
                if origin != self._number:
                    self._listener.subscription_count_changed(
                        channel.app_id, channel.name, int(count), False)
        elif push[1] == self._control:
            self._on_control(payload.decode())

    def _on_control(self, message: str) -> None:
        kind, app_id, user_id = message.split("\n", 2)
        if kind in ("W", "C"):
            console = self.console
            if console is None:
                return
            if kind == "W":  # (app_id holds the watching node's name)
                if app_id != console.node:
                    console.remote_watching()
            else:  # entries of one turn of another node, as JSON lines
                console.remote_lines(user_id)
            return
        if kind == "T":
            self._listener.terminate_user_here(app_id, user_id)
        else:
            self._listener.user_online_changed(app_id, user_id, kind == "U1")

    # -- connections ---------------------------------------------------------------------------

    def admit_connection(self, app) -> bool:
        """Within max_connections, counting other nodes as of the last heartbeat (at most
        ``node_timeout / 3`` seconds, and never more than one second, old)."""
        here = self._connections[app.id]
        if app.max_connections and here + self._elsewhere.get(app.id, 0) >= app.max_connections:
            return False
        self._connections[app.id] = here + 1
        return True

    def connection_closed(self, app_id: str) -> None:
        self._connections[app_id] -= 1

    # -- channels ------------------------------------------------------------------------------

    def _mine(self, socket_id: str) -> bool:
        """Operations for sockets of an earlier incarnation are moot: it is being reaped."""
        return socket_id.startswith(self._socket_prefix)

    def _event_channel(self, app_id: str, channel: str) -> bytes:
        return f"{self._app_keys[app_id]}:e:{channel}".encode()

    def join(self, app, channel: str, socket_id: str, member):
        redis = self._redis
        if redis is None or not self._mine(socket_id):
            return fail(ClusterUnavailable())
        key = self._event_channel(app.id, channel)
        local = self._subscribed.get(key)
        if local is None:
            local = self._subscribed[key] = _LocalChannel(app.id, channel)
        if not local.sockets:
            # Subscribed before the join runs, on the same connection: no event after it is missed.
            local.unsubscribing = False
            redis.execute("SUBSCRIBE", key).addErrback(self._log_failure, "subscribe")
        local.sockets.add(socket_id)
        user_id, user_info = member if member is not None else ("", None)
        added = protocol.member_added(channel, user_id, user_info) if member is not None else ""
        joined = self._run(redis, scripts.JOIN, self._app_keys[app.id], channel, socket_id, user_id,
                           json.dumps(user_info, separators=(",", ":"), ensure_ascii=False),
                           app.limits.max_presence_members, added,
                           1 if protocol.is_cache(channel) else 0)
        return joined.addCallbacks(self._joined, self._not_joined, (app, channel, socket_id, user_id),
                                   None, (app, channel, socket_id))

    def _joined(self, reply, app, channel: str, socket_id: str,
                user_id: str) -> Joined | MemberLimitReached:
        status = reply[0]
        if status < 0:
            self._forget_socket(app.id, channel, socket_id)
        if status == -1:
            self._declared_dead()
            raise ClusterUnavailable()
        if status == -2:
            return MemberLimitReached(app.limits.max_presence_members)
        members = None
        if protocol.is_presence(channel):
            rest = reply[4:]
            members = {rest[i].decode(): json.loads(rest[i + 1]) for i in range(0, len(rest), 2)}
            if reply[3]:
                self._listener.member_changed(app.id, channel, user_id, True)
        return Joined(bool(status), reply[1], members, reply[2].decode() or None)

    def _not_joined(self, failure, app, channel: str, socket_id: str):
        self._forget_socket(app.id, channel, socket_id)
        return _unavailable(failure)

    def _forget_socket(self, app_id: str, channel: str, socket_id: str) -> None:
        key = self._event_channel(app_id, channel)
        local = self._subscribed.get(key)
        if local is None:
            return
        local.sockets.discard(socket_id)
        if not local.sockets and self._redis is not None:
            local.unsubscribing = True
            unsubscribed = self._redis.execute("UNSUBSCRIBE", key)
            unsubscribed.addErrback(self._log_failure, "unsubscribe")
            unsubscribed.addCallback(self._unsubscribed, key, local)

    def _unsubscribed(self, _, key: bytes, local: _LocalChannel) -> None:
        if local.unsubscribing and self._subscribed.get(key) is local:  # nobody joined meanwhile
            del self._subscribed[key]

    def leave(self, app, channel: str, socket_id: str, user_id: str | None = None) -> Deferred:
        redis = self._redis
        if redis is None or not self._mine(socket_id) or self._draining:
            return succeed(None)
        left = self._run(redis, scripts.LEAVE, self._app_keys[app.id], channel, socket_id,
                         self._grace_ms)
        self._forget_socket(app.id, channel, socket_id)
        left.addCallback(self._left, app, channel)
        return left.addErrback(self._log_failure, "leave")

    def _left(self, reply, app, channel: str) -> int | None:
        if reply[0] < 0:
            return None
        if reply[1]:
            self._listener.member_changed(app.id, channel, reply[1].decode(), False)
        return reply[0]

    # -- users ---------------------------------------------------------------------------------

    def sign_in(self, app, socket_id: str, user_id: str, watchlist: tuple[str, ...]):
        redis = self._redis
        if redis is None or not self._mine(socket_id):
            return fail(ClusterUnavailable())
        answer = self._run(redis, scripts.SIGN_IN, self._app_keys[app.id], app.id, socket_id,
                           user_id, *watchlist)
        return answer.addCallbacks(self._signed_in, _unavailable, (watchlist,))

    def _signed_in(self, reply, watchlist) -> set[str]:
        if reply[0] == -1:
            self._declared_dead()
            raise ClusterUnavailable()
        return {watched for watched, online in zip(watchlist, reply[1:]) if online}

    def sign_out(self, app, socket_id: str, user_id: str) -> None:
        redis = self._redis
        if redis is not None and self._mine(socket_id) and not self._draining:
            self._run(redis, scripts.SIGN_OUT, self._app_keys[app.id], socket_id).addErrback(
                self._log_failure, "sign out")

    def terminate_user(self, app_id: str, user_id: str):
        redis = self._redis
        if redis is None:
            return fail(ClusterUnavailable())
        sent = redis.execute("PUBLISH", self._control, f"T\n{app_id}\n{user_id}")
        return sent.addCallbacks(lambda _: None, _unavailable)

    # -- events --------------------------------------------------------------------------------

    def publish(self, app, channel: str, text: str, except_socket_id: str | None,
                cached: tuple[str, str] | None = None) -> None:
        """Sent to Redis only; every node, this one too, delivers it when Redis passes it on."""
        redis = self._redis
        if redis is None:
            return
        envelope = b"E%s\n%s" % ((except_socket_id or "").encode(), text.encode())
        if cached is None:
            redis.send("PUBLISH", self._event_channel(app.id, channel), envelope)
        else:
            self._run(redis, scripts.PUBLISH_CACHED, self._app_keys[app.id], channel, text,
                      self._limits.cache_ttl * 1000, envelope).addErrback(self._log_failure, "cache")

    # -- queries -------------------------------------------------------------------------------

    def _query(self, script, *args) -> Deferred:
        redis = self._redis
        if redis is None:
            return fail(ClusterUnavailable())
        return self._run(redis, script, *args).addErrback(_unavailable)

    def channel_stats(self, app_id: str, names):
        names = list(names)
        answer = self._query(scripts.STATS, self._app_keys[app_id], *names)
        return answer.addCallback(lambda reply: {
            name: _stats(reply[2 * i], reply[2 * i + 1]) for i, name in enumerate(names)})

    def occupied_channels(self, app_id: str, prefix: str):
        answer = self._query(scripts.OCCUPIED, self._app_keys[app_id], prefix)
        return answer.addCallback(lambda reply: {
            reply[i].decode(): _stats(reply[i + 1], reply[i + 2]) for i in range(0, len(reply), 3)})

    def channel_members(self, app_id: str, channel: str):
        redis = self._redis
        if redis is None:
            return fail(ClusterUnavailable())
        answer = redis.execute("HGETALL", f"{self._app_keys[app_id]}:mi:{channel}")
        return answer.addCallbacks(
            lambda infos: {user.decode(): json.loads(info) for user, info in infos.items()},
            _unavailable)

    def user_sockets(self, app_id: str, user_id: str):
        redis = self._redis
        if redis is None:
            return fail(ClusterUnavailable())
        answer = redis.execute("SMEMBERS", f"{self._app_keys[app_id]}:us:{user_id}")
        return answer.addCallbacks(lambda ids: sorted(i.decode() for i in ids), _unavailable)

    def cached_event(self, app_id: str, channel: str):
        answer = self._query(scripts.CACHED, self._app_keys[app_id], channel)
        return answer.addCallback(_cached_event)

    # -- helpers -------------------------------------------------------------------------------

    def _run(self, redis, script, *args) -> Deferred:
        started = perf_counter()
        answer = redis.evalsha(script, (), (self._prefix, self.node_number, *args))
        return answer.addCallback(self._timed, started)

    def _timed(self, result, started: float):
        self.round_trip(perf_counter() - started)
        return result

    @staticmethod
    def _log_failure(failure, what: str) -> None:
        if failure.check(RedisConnectionLost):
            return  # the connection's loss is logged once, where it is noticed
        log.failure("Redis {what} failed", failure, what=what)


def _unavailable(failure):
    failure.trap(RedisConnectionLost, RedisError)
    raise ClusterUnavailable(failure.getErrorMessage())


def _stats(subscribers: int, users: int) -> ChannelStats:
    return ChannelStats(subscribers, users if users >= 0 else None)


def _cached_event(reply) -> CachedEvent | None:
    text, ms_left = reply
    if not text or ms_left <= 0:
        return None
    frame = json.loads(text)
    return CachedEvent(text.decode(), frame["event"], frame["data"], -(-ms_left // 1000))
