"""One connection's conversation: what each client frame means, and the replies it gets.

The hub answers with results (joined, refused, who is online); this layer turns them into frames for
the one connection concerned. Some answers come later, from the cluster engine: a connection's frames
are still handled strictly in the order they arrived (frames that arrive meanwhile wait in the
connection's ``backlog``), so a client never sees the reply to a later frame before an earlier one.
"""

from __future__ import annotations

from collections import deque

from twisted.logger import Logger

from soketify import client_events, protocol, signing, subscriptions
from soketify.bad_frames import BadFrames
from soketify.cluster.interfaces import ClusterUnavailable, MemberLimitReached
from soketify.users import watchlist_events

log = Logger()

# Frames one connection may send while an earlier one waits for the cluster engine.
MAX_BACKLOG = 1000


class Sessions:
    """The conversation layer of one node; per-connection state lives on the connection."""

    def __init__(self, hub, limits, clock):
        self.hub = hub
        self.limits = limits
        self.clock = clock
        self.bad_frames = BadFrames(clock, limits.max_bad_frames_per_minute)
        self._handlers = {
            protocol.PING: self._on_ping,
            protocol.PONG: self._on_pong,
            protocol.SUBSCRIBE: self._on_subscribe,
            protocol.UNSUBSCRIBE: self._on_unsubscribe,
            protocol.SIGNIN: self._on_signin,
        }

    def _refuse_and_close(self, connection, code: int, why: str) -> None:
        self.hub.refused(connection.app.id, None, why, connection.socket_id, code)
        refuse_and_close(connection, code, why)

    def reconfigure(self, limits) -> None:
        """A reload's [limits], from the next frame on."""
        self.limits = limits
        self.bad_frames.max_per_minute = limits.max_bad_frames_per_minute

    def receive(self, connection, message: protocol.ClientMessage | protocol.ProtocolError) -> None:
        """Handle one decoded client frame now, or after the frames still waiting before it."""
        if connection.closing:
            return  # a close was started: what the client still sends has no one to answer
        backlog = connection.backlog
        if backlog is None:
            self._handle(connection, message)
        elif len(backlog) < MAX_BACKLOG:
            backlog.append(message)
        else:
            # Over capacity: pusher-js backs off before reconnecting.
            connection.backlog = deque()
            self._refuse_and_close(connection, protocol.OVER_CAPACITY,
                             f"More than {MAX_BACKLOG} frames waiting; slow down")

    def _handle(self, connection, message) -> None:
        try:
            pending = self._dispatch(connection, message)
        except Exception:
            self._internal_error(None, connection)
            return
        if pending is None:
            return
        pending.addErrback(self._internal_error, connection)
        if not pending.called:
            connection.backlog = deque()
            pending.addBoth(self._resume, connection)

    def _resume(self, _, connection) -> None:
        backlog, connection.backlog = connection.backlog, None
        while backlog and not (connection.closed or connection.closing):
            self._handle(connection, backlog.popleft())
            if connection.backlog is not None:
                # Waiting again: what is left stays behind the new wait, in order.
                connection.backlog.extend(backlog)
                return

    def _internal_error(self, failure, connection) -> None:
        # Logged, and only this connection is closed; everything else goes on.
        log.failure("Error handling a frame from {socket_id}", failure, socket_id=connection.socket_id)
        connection.close(protocol.RECONNECT_NOW, "Internal server error")

    def _dispatch(self, connection, message):
        if isinstance(message, protocol.ProtocolError):
            return self._bad_frame(connection, message.code, message.message)
        handler = self._handlers.get(message.event)
        if handler is not None:
            return handler(connection, message)
        if message.event.startswith(client_events.CLIENT_EVENT_PREFIX):
            return self._on_client_event(connection, message)
        return self._bad_frame(connection, None, f"Unsupported event {message.event!r}")

    def _bad_frame(self, connection, code: int | None, problem: str) -> None:
        connection.send(protocol.error(code, problem))
        self.bad_frames.seen(connection, problem)

    # -- keep-alive ----------------------------------------------------------------------------

    def _on_ping(self, connection, message) -> None:
        connection.send(protocol.pong())

    def _on_pong(self, connection, message) -> None:
        """Answer to our own ping: receiving it already counted as activity."""

    # -- subscriptions -------------------------------------------------------------------------

    @staticmethod
    def _requested_channel(connection, message) -> str | None:
        """data.channel of a (un)subscribe; a frame without one is answered with pusher:error."""
        data = message.data
        name = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(name, str):
            connection.send(protocol.error(None, f"{message.event} needs data.channel"))
            return None
        return name

    def _on_subscribe(self, connection, message):
        name = self._requested_channel(connection, message)
        if name is None:
            return None
        app = connection.app
        problem = protocol.channel_name_problem(name, app.limits.max_channel_name_length)
        if problem is not None:
            limit = ("channel_name_length" if len(name) > app.limits.max_channel_name_length
                     else None)
            self.hub.refused(app.id, limit, f"{name!r}: {problem}", connection.socket_id, 400)
            connection.send(protocol.subscription_error(name, "InvalidChannel", problem, 400))
            return None
        decision = subscriptions.authorize(app, app.limits, connection, name, message.data)
        if isinstance(decision, subscriptions.Refusal):
            if decision.limit is not None or self.hub.feed.watching:
                self.hub.refused(app.id, decision.limit, f"{name!r}: {decision.message}",
                                 connection.socket_id, decision.status)
            connection.send(protocol.subscription_error(name, decision.kind, decision.message,
                                                        decision.status))
            return None
        joined = self.hub.subscribe(connection, name, decision.member)
        joined.addCallbacks(self._subscribed, self._not_subscribed,
                            (connection, name), None, (connection, name))
        return joined

    def _subscribed(self, result, connection, name: str) -> None:
        if connection.closed:
            return
        if isinstance(result, MemberLimitReached):
            why = f"Presence channel {name!r} already has {result.limit} members"
            self.hub.refused(connection.app.id, "presence_members", why, connection.socket_id,
                             protocol.OVER_CAPACITY)
            connection.send(protocol.subscription_error(name, "LimitReached", why,
                                                        protocol.OVER_CAPACITY))
            return
        if protocol.needs_auth(name):
            connection.authorized = True
        members = result.members
        connection.send(protocol.subscription_succeeded(name, None if members is None else {
            "presence": {"ids": list(members), "count": len(members), "hash": members}}))
        if protocol.is_cache(name):
            connection.send(result.cached if result.cached is not None
                            else protocol.encode(protocol.CACHE_MISS, channel=name))
        self.hub.subscribed(connection, name, result)

    def _not_subscribed(self, failure, connection, name: str) -> None:
        failure.trap(ClusterUnavailable)
        if not connection.closed:
            connection.send(protocol.subscription_error(
                name, "ServerError", "The server cannot reach its cluster; try again", 503))

    def _on_unsubscribe(self, connection, message) -> None:
        name = self._requested_channel(connection, message)
        if name is not None:
            self.hub.unsubscribe(connection, name)

    # -- client events -------------------------------------------------------------------------

    def _on_client_event(self, connection, message) -> None:
        refused = client_events.refusal(connection.app, connection, message.event,
                                        message.channel, message.data, self.clock.seconds())
        if refused is not None:
            why, limit = refused
            if limit is not None or self.hub.feed.watching:
                self.hub.refused(connection.app.id, limit, why, connection.socket_id,
                                 protocol.CLIENT_EVENT_REJECTED)
            connection.send(protocol.error(protocol.CLIENT_EVENT_REJECTED, why))
            return
        self.hub.client_event(connection, message.event, message.channel, message.data)

    # -- sign-in -------------------------------------------------------------------------------

    def _on_signin(self, connection, message):
        app = connection.app
        data = message.data if isinstance(message.data, dict) else {}
        user_data, auth = data.get("user_data"), data.get("auth")
        if not isinstance(user_data, str) or not signing.verify_user_auth(
                app.key, app.secret, connection.socket_id, user_data, auth):
            return self._refuse_and_close(connection, protocol.UNAUTHORIZED,
                                    "Invalid signature for user_data and this socket")
        try:
            user = protocol.loads(user_data)
        except ValueError:
            user = None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id:
            return self._refuse_and_close(connection, protocol.UNAUTHORIZED,
                                    "user_data must be a JSON object with a non-empty string id")
        if len(user_id) > self.limits.max_user_id_length:
            return self._refuse_and_close(connection, protocol.UNAUTHORIZED,
                                    f"user id is longer than {self.limits.max_user_id_length}")
        if connection.user_id is not None:
            if connection.user_id != user_id:
                return self._refuse_and_close(connection, protocol.UNAUTHORIZED,
                                        "This connection is already signed in as another user")
            connection.send(protocol.encode(protocol.SIGNIN_SUCCESS, {"user_data": user_data}))
            return None
        watchlist = user.get("watchlist") or []
        if not isinstance(watchlist, list) or not all(isinstance(w, str) and w for w in watchlist):
            return self._refuse_and_close(connection, protocol.UNAUTHORIZED,
                                    "user_data.watchlist must be a list of user ids")
        # Sign-in still succeeds with a watchlist that is too long; the watchlist is refused.
        too_long = len(watchlist) > self.limits.max_watchlist_size
        watched = () if too_long else tuple(dict.fromkeys(watchlist))
        signed_in = self.hub.sign_in(connection, user_id, user.get("user_info"), watched)
        signed_in.addCallbacks(self._signed_in, self._not_signed_in,
                               (connection, user_data, too_long), None, (connection,))
        return signed_in

    def _signed_in(self, online, connection, user_data: str, too_long: bool) -> None:
        if connection.closed:
            return
        connection.send(protocol.encode(protocol.SIGNIN_SUCCESS, {"user_data": user_data}))
        if too_long:
            connection.send(protocol.error(
                protocol.WATCHLIST_TOO_LONG,
                f"The watchlist has more than {self.limits.max_watchlist_size} user ids"))
        watchlist = connection.watchlist
        if watchlist:
            events = watchlist_events([w for w in watchlist if w in online],
                                      [w for w in watchlist if w not in online])
            connection.send(protocol.encode(protocol.WATCHLIST_EVENTS, {"events": events}))

    def _not_signed_in(self, failure, connection) -> None:
        failure.trap(ClusterUnavailable)
        if not connection.closed:
            self._refuse_and_close(connection, protocol.RECONNECT_NOW,
                             "The server cannot reach its cluster; reconnect")


def refuse_and_close(connection, code: int, why: str) -> None:
    """Send pusher:error with the code, then close with it (pusher-js decides from the close code)."""
    connection.send(protocol.error(code, why))
    connection.close(code, why)
