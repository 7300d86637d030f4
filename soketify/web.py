"""One listening port for both WebSocket and HTTP: the first request line decides.

Requests for ``/app/...`` go straight to the WebSocket factory (cheaper per connection than
twisted.web's WebSocketResource), which answers a plain upgrade request at once and leaves any other
to Autobahn's handshake. A REST connection starting with ``POST /apps/`` goes to PlainTriggers, which
answers plain triggers itself and hands anything else to twisted.web; every other one goes to the
twisted.web Site of the REST API. Once decided, the chosen protocol takes the sniffer's place on the
transport.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.web.server import Request, Site
from zope.interface import implementer

from soketify.plain_triggers import PlainTriggers

WEBSOCKET_PATH_PREFIX = b"/app/"
# Where PlainTriggers may take the connection (it checks the whole request itself).
TRIGGER_REQUEST_START = b"POST /apps/"
# Longer than any sane request line: give up rather than buffer without end.
MAX_REQUEST_LINE = 8192


class FirstLineSwitch(Protocol):
    """Reads up to the end of the request line, then hands the connection to the right protocol."""

    def __init__(self, factory: "SwitchFactory", addr):
        self._factory = factory
        self._addr = addr
        self._buffer = b""
        self._chosen = None

    def dataReceived(self, data: bytes) -> None:
        if self._chosen is not None:
            self._chosen.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_REQUEST_LINE:
                self.transport.loseConnection()
            return
        parts = self._buffer[:end].split(b" ")
        path = parts[1] if len(parts) >= 2 else b""
        buffered, self._buffer = self._buffer, b""
        factory = self._factory
        if path.startswith(WEBSOCKET_PATH_PREFIX):
            chosen = factory.websocket.open_upgraded(self.transport, buffered)
            if chosen is not None:  # answered and open already
                self._chosen = chosen
                hand_over(self.transport, self, chosen)
                return
            chosen = factory.websocket.buildProtocol(self._addr)
        elif buffered.startswith(TRIGGER_REQUEST_START) and factory.api is not None:
            chosen = PlainTriggers(factory.api, factory.site, self._addr, hand_over)
        else:
            chosen = factory.site.buildProtocol(self._addr)
        self._chosen = chosen
        hand_over(self.transport, self, chosen)
        chosen.makeConnection(self.transport)
        chosen.dataReceived(buffered)

    def connectionLost(self, reason) -> None:
        if self._chosen is not None:
            self._chosen.connectionLost(reason)


def hand_over(transport, old, new) -> None:
    """Let ``transport`` talk to ``new`` directly instead of ``old``, where it allows; otherwise
    ``old`` keeps forwarding."""
    if getattr(transport, "wrappedProtocol", None) is old:  # TLS
        transport.wrappedProtocol = new
    elif getattr(transport, "protocol", None) is old:  # TCP
        transport.protocol = new


@implementer(IProtocolNegotiationFactory)
class SwitchFactory(Factory):
    def __init__(self, websocket_factory, site: Site, api=None):
        """``api`` (the RestApi) answers plain triggers without twisted.web (PlainTriggers)."""
        self.websocket = websocket_factory
        self.site = site
        self.api = api

    def doStart(self):
        self.websocket.doStart()
        self.site.doStart()

    def doStop(self):
        self.websocket.doStop()
        self.site.doStop()

    def buildProtocol(self, addr):
        return FirstLineSwitch(self, addr)

    def acceptableProtocols(self):
        """ALPN over TLS: both WebSocket and the REST API speak HTTP/1.1. Without an answer here,
        Twisted fails the TLS handshake of every client that offers ALPN (browsers, curl)."""
        return [b"http/1.1"]


class LimitedRequest(Request):
    """A request that stops buffering its body past the site's limit and remembers that it did."""

    body_too_large = False
    _body_received = 0

    def gotLength(self, length):
        if length is not None and length > self.channel.site.max_request_body:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_received += len(data)
        if self._body_received > self.channel.site.max_request_body:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)


class ApiSite(Site):
    requestFactory = LimitedRequest
    noisy = False

    def __init__(self, resource, max_request_body: int, reactor=None, counted=None):
        """``counted(request)`` counts each answered request (for /metrics)."""
        # The API reads JSON bodies itself; parsing each POST as a form costs ~15 % of a trigger.
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.max_request_body = max_request_body
        self._counted = counted

    def log(self, request):
        """No access log line per request (triggers are the hot path of the REST API): counted."""
        if self._counted is not None:
            self._counted(request)
