"""REST triggers on a keep-alive connection, answered without twisted.web: the plain requests only.

A server SDK publishing events sends the same kind of request again and again on one keep-alive
connection: ``POST /apps/{id}/events`` (or ``batch_events``), HTTP/1.1, a body with a Content-Length,
a few headers. twisted.web spends about half of such a request's CPU reading it and writing the answer.
``PlainTriggers`` reads these itself, has the API's own handler answer them (``RestApi.publish``) and
writes the answer twisted.web would write, byte for byte but the Date (tests/test_plain_triggers.py).
At the first request that is anything else (another path or method, chunked, Expect, Connection:
close, HTTP/1.0, a body over the limit...) it hands the connection, with every byte not yet read, to
twisted.web for good, which answers that request and every later one as before.
"""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.web.http import datetimeToString
from twisted.web.server import version as TWISTED_WEB_VERSION
from zope.interface import implementer

from soketify.rest import REASON_PHRASES
from soketify.socket_writes import send_now

_END_OF_HEAD = b"\r\n\r\n"
# twisted.web's limits on a request head (HTTPChannel.totalHeadersSize, maxHeaders): a head near
# them is left to twisted.web to refuse.
MAX_HEAD = 16384
MAX_HEADERS = 100
# An app id of token characters only; the query of printable ASCII (twisted.web takes both).
_REQUEST_LINE = re.compile(
    rb"POST (/apps/([!#$&'*+.^_`|~0-9A-Za-z-]+)/(events|batch_events))(?:\?([!-~]*))? HTTP/1\.1\Z")
# A header line: a token name (RFC 9110 tchar, as twisted.web requires), a printable ASCII value.
_HEADER = re.compile(rb"\r\n([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([ -~]*?)[ \t]*(?=\r\n|\Z)")
# While an answer is on its way, read no more than this ahead (twisted.web pauses as well).
MAX_READ_AHEAD = 16384
# A client that does not read its answers is dropped this long after the idle timeout's close.
ABORT_TIMEOUT = 15
# Headers that change how a request is read or answered: any of these goes to twisted.web.
_NOT_PLAIN_HEADERS = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"trailer"))
_ANSWER_HEAD = (b"HTTP/1.1 %d %s\r\nServer: " + TWISTED_WEB_VERSION
                + b"\r\nDate: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n")


def plain_trigger(head: bytes, max_body: int):
    """(path, app id, endpoint, query, body length) of a request head (without its blank line)
    that PlainTriggers answers itself; None for any other."""
    line_end = head.find(b"\r\n")
    request_line = head if line_end < 0 else head[:line_end]
    matched = _REQUEST_LINE.match(request_line)
    if matched is None:
        return None
    header_lines = b"" if line_end < 0 else head[line_end:]
    pairs = _HEADER.findall(header_lines)
    # Every line read: a line _HEADER cannot read (a bare CR or LF, a control character) is not plain.
    if header_lines.count(b"\r\n") != len(pairs) or len(pairs) > MAX_HEADERS:
        return None
    length = None
    for name, value in pairs:
        name = name.lower()
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection":
            if value.lower() not in (b"keep-alive", b""):
                return None
        elif name in _NOT_PLAIN_HEADERS:
            return None
    if length is None or length > max_body:
        return None
    path, app_id, endpoint, query = matched.groups()
    return path, app_id.decode("ascii"), endpoint, query or b"", length


@implementer(IPushProducer)
class PlainTriggers(Protocol, TimeoutMixin):
    """One REST connection while its requests are plain triggers (see the module's docstring).

    Like twisted.web's channel it is the push producer of its transport: when the client does not
    read its answers and the transport's buffer fills, it stops reading requests until the buffer
    drains; while an answer waits for the cluster it reads at most MAX_READ_AHEAD ahead."""

    def __init__(self, api, site, addr, hand_over):
        """``hand_over(transport, old, new)`` lets the transport talk to a new protocol."""
        self._api = api
        self._site = site
        self._addr = addr
        self._hand_over_transport = hand_over
        self._buffer = b""
        self._waiting = False  # an answer is on its way (`info`): later requests wait their turn
        self._transport_full = False  # the client is not reading its answers
        self._reading = True
        self._channel = None  # twisted.web's, once handed over
        self._gone = False
        self._aborting = None

    def connectionMade(self) -> None:
        # The idle timeout twisted.web's channel would have, on the site's reactor.
        self.callLater = self._site.reactor.callLater
        self.setTimeout(self._site.timeOut)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self._channel is not None:  # a transport that does not let go of us (forwarding)
            self._channel.dataReceived(data)
            return
        self.resetTimeout()
        self._buffer += data
        self._serve()

    def _serve(self) -> None:
        """Answer every whole plain request buffered, in order; hand over at any other."""
        while (self._buffer and not self._waiting and not self._transport_full
               and self._channel is None and not self._gone):
            head_end = self._buffer.find(_END_OF_HEAD)
            if head_end < 0 and len(self._buffer) > MAX_HEAD or head_end >= MAX_HEAD:
                self._to_twisted_web()
                return
            if head_end < 0:
                break
            request = plain_trigger(self._buffer[:head_end], self._site.max_request_body)
            if request is None:
                self._to_twisted_web()
                return
            path, app_id, endpoint, query, length = request
            body_start = head_end + 4
            if len(self._buffer) < body_start + length:
                break  # the rest of the body is on its way
            body = self._buffer[body_start:body_start + length]
            self._buffer = self._buffer[body_start + length:]
            answer = self._api.publish(endpoint, app_id, b"POST", path, query, body)
            received = body_start + length
            if isinstance(answer, Deferred):
                answers = []
                answer.addCallback(answers.append)
                if not answers:  # not there yet: later requests wait for it
                    self._wait_for(answer, answers, app_id, received)
                    break
                answer = answers[0]
            self._api.count_http(app_id, received, self._write_answer(*answer))
        self._read_if_room()

    def _wait_for(self, answer: Deferred, answers: list, app_id: str, received: int) -> None:
        self._waiting = True
        self.setTimeout(None)  # the client is not idle: it waits for us

        def answered(_):
            self._waiting = False
            if self._gone:
                return
            self.setTimeout(self._site.timeOut)
            self._api.count_http(app_id, received, self._write_answer(*answers[0]))
            self._serve()
        answer.addCallback(answered)

    def _read_if_room(self) -> None:
        """Read from the client while its answers leave and nothing waits with much read ahead."""
        reading = not self._transport_full and (not self._waiting
                                                or len(self._buffer) <= MAX_READ_AHEAD)
        if reading != self._reading and self._channel is None and not self._gone:
            self._reading = reading
            if reading:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    def _write_answer(self, status: int, body: bytes) -> int:
        """Write the answer; returns its size in bytes."""
        data = _ANSWER_HEAD % (status, REASON_PHRASES[status], datetimeToString(), len(body)) + body
        transport = self.transport
        rest = send_now(transport, data)
        if rest:
            transport.write(rest)
        return len(data)

    # -- the transport's producer: it pauses us when the client does not read ----------------

    def pauseProducing(self) -> None:
        self._transport_full = True
        self._read_if_room()

    def resumeProducing(self) -> None:
        self._transport_full = False
        self._serve()

    def stopProducing(self) -> None:
        self._gone = True

    # -- handing over, timing out, ending ------------------------------------------------------

    def _to_twisted_web(self) -> None:
        """From now on twisted.web serves this connection, starting with what is buffered."""
        self.setTimeout(None)
        transport = self.transport
        transport.unregisterProducer()
        if not self._reading:
            self._reading = True
            transport.resumeProducing()
        channel = self._channel = self._site.buildProtocol(self._addr)
        self._hand_over_transport(transport, self, channel)
        channel.makeConnection(transport)
        buffered, self._buffer = self._buffer, b""
        channel.dataReceived(buffered)

    def timeoutConnection(self) -> None:
        """Idle for the site's timeout: close, and drop the client if it does not let go."""
        self._aborting = self.callLater(ABORT_TIMEOUT, self.transport.abortConnection)
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self._gone = True
        self.setTimeout(None)
        if self._aborting is not None and self._aborting.active():
            self._aborting.cancel()
        if self._channel is not None:
            self._channel.connectionLost(reason)
