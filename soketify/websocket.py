"""The WebSocket endpoint ``/app/{key}``: Autobahn bytes in -> protocol.decode -> hub; hub -> frames out."""

from __future__ import annotations

from urllib.parse import unquote

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.tcp import Server as TcpServerTransport
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from soketify import protocol
from soketify.address_limits import AddressLimits
from soketify.apps import origin_allowed
from soketify.autobahn_tuning import (
    STATE_OPEN, install_open_state_defaults, is_open, mark_closing, new_traffic_totals,
    opened_connection, shed_open_state)
from soketify.cluster.interfaces import IConnection
from soketify.frames import text_frame
from soketify.handshake import accept_value, plain_upgrade
from soketify.log_summary import Summarised
from soketify.socket_writes import send_now

APP_PATH_PREFIX = "/app/"

@implementer(IConnection)
class PusherServerProtocol(WebSocketServerProtocol):
    """One client connection. Also the connection object the hub knows (socket_id, app, channels)."""

    _log = Logger()

    socket_id: str | None = None
    app = None
    channels: set | frozenset = frozenset()
    last_activity = 0.0
    ping_sent_at: float | None = None
    # Per-connection state with shared defaults: it costs memory only once it is set.
    user_id: str | None = None
    user_info = None
    watchlist: tuple = ()
    authorized = False
    closed = False
    backlog = None  # frames waiting while an earlier one waits for the cluster engine
    connected_at = 0.0
    client_event_window = 0.0
    client_events_in_window = 0
    bad_frames_window = 0.0
    bad_frames_in_window = 0
    _counted_address: str | None = None  # counted by the factory's AddressLimits
    _refusal: tuple[int, str] | None = None
    _paused = False
    _unsent_while_paused = 0
    close_code: int | None = None  # set as it closes (for the debug console)
    close_reason: str | None = None

    def onConnect(self, request):
        """Decide now, answer in onOpen: pusher-js reads errors as a frame and a close code."""
        versions = request.params.get("protocol")
        self._refusal = self._admission(request.path, versions[0] if versions else None,
                                        request.origin or None)
        return None

    def _admission(self, path: str, version_text: str | None, origin: str | None
                   ) -> tuple[int, str] | None:
        """Why this request for ``path`` (percent-encoded) with this ``protocol`` query value and
        Origin header may not connect, as a Pusher error code and message; None when it may."""
        factory = self.factory
        if factory.stopping:
            return protocol.RECONNECT_NOW, "Server is shutting down"
        if not path.startswith(APP_PATH_PREFIX):
            return protocol.PATH_NOT_FOUND, f"Path not found: {path}"
        key = unquote(path[len(APP_PATH_PREFIX):])
        if not key or "/" in key:
            return protocol.PATH_NOT_FOUND, f"Path not found: {path}"
        if not version_text:
            return protocol.NO_PROTOCOL, "No protocol version supplied"
        try:
            version = int(version_text)
        except ValueError:
            version = None
        if version not in protocol.SUPPORTED_PROTOCOLS:
            return protocol.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {version_text}"
        self.app = factory.hub.apps.by_key(key)
        if self.app is None:
            return protocol.APP_NOT_FOUND, "App key not in this cluster"
        if not origin_allowed(self.app.allowed_origins, origin):
            # 4009 rather than an HTTP 403: pusher-js reads a close code and stops retrying, where
            # a refused handshake would look like a network failure and be retried forever.
            return protocol.UNAUTHORIZED, f"Origin {origin!r} is not allowed for this app"
        return None

    def onOpen(self):
        refusal = self._refusal
        # Drop what every open connection would otherwise carry separately (about 2 KB each).
        shed_open_state(self, self.factory.traffic_totals)
        self.greet(refusal)

    def greet(self, refusal: tuple[int, str] | None, handshake_answer: bytes = b"") -> None:
        """Admit the newly open connection or refuse it, in frames. ``handshake_answer`` is the HTTP
        answer still to send when the handshake was answered without Autobahn; it goes out in one
        write with the first frame."""
        factory = self.factory
        addresses = factory.address_limits
        if addresses.enabled:
            # Every handshake counts, refused ones (wrong key, origin...) too: a flood is a flood.
            address = self.remote_address
            why = addresses.admit(address)
            if why is None:
                self._counted_address = address
            elif refusal is None:
                refusal = protocol.OVER_CAPACITY, why
        if refusal is None:
            # Counted here, once the handshake is done, so a failed handshake takes no place.
            refusal = factory.hub.admit(self.app)
        if refusal is not None:
            code, message = refusal
            hub = factory.hub
            if self.app is not None and hub.feed.watching:
                # Refused apps' clients (disabled, over quota, origin, address limits) in the log.
                hub.refused(self.app.id, None, message, None, code)
            self.app = None
            self.write_frame(handshake_answer
                             + text_frame(protocol.error(code, message).encode("utf-8")))
            self.sendClose(code, message)
            return
        hub = factory.hub
        self.socket_id = hub.new_socket_id()
        self.last_activity = factory.clock.seconds()
        if self.app.authorized_connections:
            self.connected_at = self.last_activity
        hub.connect(self)
        self.transport.registerProducer(self, True)
        established = protocol.connection_established(self.socket_id, factory.activity_timeout)
        self.write_frame(handshake_answer + text_frame(established.encode("utf-8")))

    def onMessage(self, payload: bytes, isBinary: bool):
        if self.socket_id is None:
            return
        factory = self.factory
        self.last_activity = factory.clock.seconds()
        traffic = factory.hub.traffic[self.app.id]
        traffic.ws_received_messages += 1
        traffic.ws_received_bytes += len(payload)
        try:
            if isBinary:
                message = protocol.ProtocolError(None, "Binary frames are not supported; send JSON text")
            else:
                message = protocol.decode(payload.decode("utf-8"))
            factory.sessions.receive(self, message)
        except Exception:
            # Autobahn would swallow it; log it and close only this connection.
            self._log.failure("Error handling a frame from {socket_id}", socket_id=self.socket_id)
            self.close(protocol.RECONNECT_NOW, "Internal server error")

    def onClose(self, wasClean, code, reason):
        if self._counted_address is not None:
            self.factory.address_limits.release(self._counted_address)
            self._counted_address = None
        if self.socket_id is not None and not self.closed:
            try:
                hub = self.factory.hub
                if self.closedByMe and self.localCloseCode == self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG:
                    # Autobahn refused a frame over [server] max_message_size before we saw it.
                    hub.refused(self.app.id, "message_size", "Message too big", self.socket_id,
                                self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG)
                if hub.feed.watching:
                    self.close_code, self.close_reason = self._close_as_seen(code, reason)
                hub.disconnect(self)
            except Exception:
                self._log.failure("Error forgetting closed connection {socket_id}",
                                  socket_id=self.socket_id)

    def _close_as_seen(self, code, reason):
        """The close code and reason of the handshake, whoever began it (Autobahn reports the
        client's; ours are the ones we sent)."""
        if self.localCloseCode is not None and self.closedByMe:
            code, reason = self.localCloseCode, self.localCloseReason
        if isinstance(reason, bytes):  # Autobahn keeps the reason it sent encoded
            reason = reason.decode("utf-8", "replace")
        return code, reason

    # -- the connection interface the hub uses ------------------------------------------------

    def send(self, text: str) -> None:
        frame = text_frame(text.encode("utf-8"))
        if self.app is not None:
            self.factory.hub.traffic[self.app.id].sent(1, len(frame))
        self.write_frame(frame)

    def write_frame(self, frame: bytes) -> None:
        """Write prepared frame bytes; never closes synchronously (the hub iterates subscribers)."""
        if self.state != STATE_OPEN:  # is_open(self), inlined: this runs once per delivery
            return
        # One send() at once (socket_writes explains why); only what it does not take is queued.
        unsent = send_now(self.transport, frame)
        if unsent:
            self.queue_unsent(unsent)

    def queue_unsent(self, frame: bytes) -> None:
        """Queue in Twisted's buffer what could not be sent at once, or drop a client that has
        stopped reading for too long."""
        transport = self.transport
        if self._paused:
            self._unsent_while_paused += len(frame)
            if self._unsent_while_paused > self.factory.max_send_buffer:
                self.factory.slow_clients_log.log(
                    "", socket_id=self.socket_id, address=self.remote_address,
                    limit=self.factory.max_send_buffer)
                mark_closing(self)
                # abortConnection reports the loss on a later reactor turn, never within this write.
                transport.abortConnection()
                return
        transport.write(frame)

    @property
    def remote_address(self) -> str:
        """The client's IP address (or what stands for it on other transports), for logs."""
        peer = self.transport.getPeer()
        return getattr(peer, "host", None) or str(peer)

    @property
    def closing(self) -> bool:
        """A close was started, by either side (or the connection is gone)."""
        return not is_open(self)

    def close(self, code: int, reason: str) -> None:
        if is_open(self):
            self.sendClose(code, reason)

    # -- push producer: the transport tells us when the client stops reading ------------------

    def pauseProducing(self):
        # Twisted calls this on every write while its buffer is over the mark: count from the first.
        if not self._paused:
            self._paused = True
            self._unsent_while_paused = 0

    def resumeProducing(self):
        self._paused = False
        self._unsent_while_paused = 0

    def stopProducing(self):
        self._paused = False


install_open_state_defaults(PusherServerProtocol)


def write_to_subscribers(subscribers: dict, frame: bytes, except_socket_id: str | None) -> None:
    """The hub's delivery loop (Hub ``write_each``): ``write_frame(frame)`` to each subscriber
    (socket id -> connection) but ``except_socket_id``; the hot path.

    The common case is written right here rather than through two Python calls per subscriber,
    which cost about 7 % of a delivery's CPU at everyday load: an open connection on a plain TCP
    transport with nothing queued and no close under way gets one send(), under send_now's own
    condition inlined (tests/test_socket_writes.py runs its cases through both). Every other
    case goes through write_frame, and whatever send() does not take through queue_unsent.
    """
    if except_socket_id is None:
        connections = subscribers.values()
    else:
        connections = [c for socket_id, c in subscribers.items() if socket_id != except_socket_id]
    length = len(frame)
    for connection in connections:
        transport = connection.transport
        if (connection.state != STATE_OPEN or transport.__class__ is not TcpServerTransport
                or transport._tempDataLen or transport.dataBuffer or transport.disconnecting):
            connection.write_frame(frame)
            continue
        try:
            sent = transport.socket.send(frame)
        except OSError:
            sent = 0  # EAGAIN (the socket buffer is full) or a broken connection Twisted finds
        if sent != length:
            connection.queue_unsent(frame[sent:])


class PusherServerFactory(WebSocketServerFactory):
    protocol = PusherServerProtocol

    def __init__(self, hub, sessions, clock, activity_timeout: int, max_message_size: int,
                 max_send_buffer: int, address_limits: AddressLimits | None = None):
        super().__init__()
        self.address_limits = address_limits or AddressLimits(clock, 0, 0)
        self.hub = hub
        self.sessions = sessions
        self.clock = clock
        self.activity_timeout = activity_timeout
        self.max_send_buffer = max_send_buffer
        self.traffic_totals = new_traffic_totals()
        self.stopping = False
        self.slow_clients_log = Summarised(
            clock, PusherServerProtocol._log, LogLevel.warn,
            "Dropping slow client {socket_id} ({address}): over {limit} bytes unsent",
            "slow clients dropped")
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            webStatus=False,
            # Send a close frame with the reason (1009 message too big, 1002, ...) before dropping.
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=0,
        )
        # Autobahn's answer to an upgrade, up to the Sec-WebSocket-Accept value.
        answer = ["HTTP/1.1 101 Switching Protocols"]
        if self.server:
            answer.append(f"Server: {self.server}")
        answer += ["Upgrade: WebSocket", "Connection: Upgrade"]
        for name, values in self.headers.items():  # a value, or several, as Autobahn writes them
            values = [values] if isinstance(values, str) or not hasattr(values, "__iter__") else values
            answer += [f"{name}: {value}" for value in values]
        self._switching_protocols = ("\r\n".join(answer) + "\r\nSec-WebSocket-Accept: ").encode()

    def open_upgraded(self, transport, head: bytes):
        """The connection for ``head``, the bytes received so far on ``transport``, when they are a
        plain upgrade request (soketify.handshake): answered, open, admitted or refused. None leaves
        the request to Autobahn's handshake (``buildProtocol``)."""
        # Autobahn's handshake answers 503 over maxConnections (Soketify counts per app instead).
        upgrade = None if self.maxConnections else plain_upgrade(head)
        if upgrade is None:
            return None
        connection = opened_connection(self, transport, self.traffic_totals)
        try:
            connection.greet(connection._admission(upgrade.path, upgrade.protocol, upgrade.origin),
                             self._switching_protocols + accept_value(upgrade.key) + b"\r\n\r\n")
        except Exception:
            # As a failing onOpen would: logged, this connection alone dropped (its loss is still
            # reported to it, which uncounts it).
            connection._log.failure("Error opening a connection")
            transport.abortConnection()
        return connection
