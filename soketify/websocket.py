"""The WebSocket endpoint ``/app/{key}``: Autobahn bytes in -> protocol.decode -> hub; hub -> frames out."""

from __future__ import annotations

from urllib.parse import unquote

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage, TrafficStats
from twisted.logger import Logger

from soketify import protocol

APP_PATH_PREFIX = "/app/"

# Handshake state Autobahn keeps for the life of a connection although nothing reads it once open.
_HANDSHAKE_LEFTOVERS = frozenset((
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "http_response_data",
    "websocket_protocols", "websocket_extensions", "websocket_origin",
    "_wskey", "_refusal",
))

# Autobahn state that every open connection holds with the same value until it starts closing.
# Kept as class attributes instead: reads see the same value, a later write makes it per instance.
_OPEN_STATE_DEFAULTS = {
    name: None for name in (
        "autoPingPending", "autoPingPendingCall", "autoPingPendingSent", "autoPingTimeoutCall",
        "closeHandshakeTimeoutCall", "openHandshakeTimeoutCall", "localCloseCode",
        "localCloseReason", "remoteCloseCode", "remoteCloseReason", "wasNotCleanReason",
        "trackedTimings", "_perMessageCompress", "websocket_protocol_in_use", "current_frame")
}
_OPEN_STATE_DEFAULTS.update({
    name: False for name in (
        "closedByMe", "droppedByMe", "failedByMe", "wasClean", "wasCloseHandshakeTimeout",
        "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded",
        "wasOpenHandshakeTimeout", "wasServerConnectionDropTimeout",
        "wasServingFlashSocketPolicyFile", "triggered", "inside_message")
})
_OPEN_STATE_DEFAULTS["autoPingPendingSeq"] = 0
# Autobahn queues writes only for sync/chopped sends, which Soketify never makes; an empty tuple
# reads as an empty queue at no cost per connection.
_NO_SEND_QUEUE = ()


def frame_text(text: str) -> bytes:
    """One unmasked, uncompressed WebSocket text frame, ready to be written to any server socket."""
    return PreparedMessage(text.encode("utf-8"), False, False, True).payloadHybi


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
    connected_at = 0.0
    client_event_window = 0.0
    client_events_in_window = 0
    _refusal: tuple[int, str] | None = None
    _paused = False
    _unsent_while_paused = 0

    def onConnect(self, request):
        """Decide now, answer in onOpen: pusher-js reads errors as a frame and a close code."""
        self._refusal = self._admission(request.path, request.params)
        return None

    def _admission(self, path: str, params: dict) -> tuple[int, str] | None:
        factory = self.factory
        if factory.stopping:
            return protocol.RECONNECT_NOW, "Server is shutting down"
        if not path.startswith(APP_PATH_PREFIX):
            return protocol.PATH_NOT_FOUND, f"Path not found: {path}"
        key = unquote(path[len(APP_PATH_PREFIX):])
        if not key or "/" in key:
            return protocol.PATH_NOT_FOUND, f"Path not found: {path}"
        versions = params.get("protocol")
        if not versions or not versions[0]:
            return protocol.NO_PROTOCOL, "No protocol version supplied"
        try:
            version = int(versions[0])
        except ValueError:
            version = None
        if version not in protocol.SUPPORTED_PROTOCOLS:
            return protocol.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {versions[0]}"
        self.app = factory.hub.apps.by_key(key)
        return factory.hub.admission_error(self.app)

    def onOpen(self):
        factory = self.factory
        refusal = self._refusal
        self._shed_shared_state()
        if refusal is not None:
            code, message = refusal
            self.app = None
            self.send(protocol.error(code, message))
            self.sendClose(code, message)
            return
        hub = factory.hub
        self.socket_id = hub.new_socket_id()
        self.last_activity = factory.clock.seconds()
        if self.app.authorized_connections:
            self.connected_at = self.last_activity
        hub.connect(self)
        factory.connections.add(self)
        self.transport.registerProducer(self, True)
        self.send(protocol.connection_established(self.socket_id, factory.activity_timeout))

    def _shed_shared_state(self) -> None:
        """Drop what every open connection would otherwise carry separately (about 2 KB each)."""
        state = self.__dict__
        compact = {}
        for name, value in state.items():
            if name in _HANDSHAKE_LEFTOVERS:
                continue
            if name in _OPEN_STATE_DEFAULTS and value is _OPEN_STATE_DEFAULTS[name]:
                continue
            compact[name] = value
        compact["send_queue"] = _NO_SEND_QUEUE
        # Byte counters nobody reads per connection: one node-wide set of totals instead.
        compact["trafficStats"] = self.factory.traffic_totals
        # A fresh dict sized for what is left; the old one was sized for 60 attributes.
        self.__dict__ = compact

    def onMessage(self, payload: bytes, isBinary: bool):
        if self.socket_id is None:
            return
        factory = self.factory
        self.last_activity = factory.clock.seconds()
        if isBinary:
            self.send(protocol.error(None, "Binary frames are not supported; send JSON text"))
            return
        try:
            factory.hub.handle(self, protocol.decode(payload.decode("utf-8")))
        except Exception:
            # Autobahn would swallow it; log it and close only this connection.
            self._log.failure("Error handling a frame from {socket_id}", socket_id=self.socket_id)
            self.close(protocol.RECONNECT_NOW, "Internal server error")

    def onClose(self, wasClean, code, reason):
        if self.socket_id is not None and self in self.factory.connections:
            self.factory.connections.discard(self)
            try:
                self.factory.hub.disconnect(self)
            except Exception:
                self._log.failure("Error forgetting closed connection {socket_id}",
                                  socket_id=self.socket_id)

    # -- the connection interface the hub uses ------------------------------------------------

    def send(self, text: str) -> None:
        self.write_frame(frame_text(text))

    def write_frame(self, frame: bytes) -> None:
        """Write prepared frame bytes; never closes synchronously (the hub iterates subscribers)."""
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        if self._paused:
            self._unsent_while_paused += len(frame)
            if self._unsent_while_paused > self.factory.max_send_buffer:
                self._log.warn("Dropping slow client {socket_id}: over {limit} bytes unsent",
                               socket_id=self.socket_id, limit=self.factory.max_send_buffer)
                self.state = WebSocketServerProtocol.STATE_CLOSING
                # abortConnection reports the loss on a later reactor turn, never within this write.
                self.transport.abortConnection()
                return
        self.transport.write(frame)

    def close(self, code: int, reason: str) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code, reason)

    # -- push producer: the transport tells us when the client stops reading ------------------

    def pauseProducing(self):
        self._paused = True
        self._unsent_while_paused = 0

    def resumeProducing(self):
        self._paused = False
        self._unsent_while_paused = 0

    def stopProducing(self):
        self._paused = False


for _name, _value in _OPEN_STATE_DEFAULTS.items():
    setattr(PusherServerProtocol, _name, _value)


class PusherServerFactory(WebSocketServerFactory):
    protocol = PusherServerProtocol

    def __init__(self, hub, clock, activity_timeout: int, max_message_size: int,
                 max_send_buffer: int):
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.activity_timeout = activity_timeout
        self.max_send_buffer = max_send_buffer
        self.connections: set[PusherServerProtocol] = set()
        self.traffic_totals = TrafficStats()
        self.stopping = False
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            webStatus=False,
            # Send a close frame with the reason (1009 message too big, 1002, ...) before dropping.
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=0,
        )
