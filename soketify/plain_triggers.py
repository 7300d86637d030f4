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
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.server import version as TWISTED_WEB_VERSION

from soketify.socket_writes import send_now

_END_OF_HEAD = b"\r\n\r\n"
# twisted.web refuses longer lines; anything this long is left to it.
MAX_HEAD = 16384
_REQUEST_LINE = re.compile(
    rb"POST (/apps/([^/%?#\s]+)/(events|batch_events))(?:\?([!-~]*))? HTTP/1\.1\Z")
_HEADER = re.compile(rb"\r\n([!-9;-~]+):[ \t]*([ -~]*?)[ \t]*(?=\r\n|\Z)")
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
    if header_lines.count(b"\r\n") != len(pairs):
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


class PlainTriggers(Protocol, TimeoutMixin):
    """One REST connection while its requests are plain triggers (see the module's docstring)."""

    def __init__(self, api, site, addr, hand_over):
        """``hand_over(transport, old, new)`` lets the transport talk to a new protocol."""
        self._api = api
        self._site = site
        self._addr = addr
        self._hand_over_transport = hand_over
        self._buffer = b""
        self._waiting = False  # an answer is on its way (`info`): later requests wait their turn
        self._channel = None  # twisted.web's, once handed over
        self._gone = False

    def connectionMade(self) -> None:
        # The idle timeout twisted.web's channel would have, on the site's reactor.
        self.callLater = self._site.reactor.callLater
        self.setTimeout(self._site.timeOut)

    def dataReceived(self, data: bytes) -> None:
        if self._channel is not None:  # a transport that does not let go of us (forwarding)
            self._channel.dataReceived(data)
            return
        self.resetTimeout()
        self._buffer += data
        self._serve()

    def _serve(self) -> None:
        """Answer every whole plain request buffered, in order; hand over at any other."""
        while self._buffer and not self._waiting and self._channel is None:
            head_end = self._buffer.find(_END_OF_HEAD)
            if head_end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._to_twisted_web()
                return
            request = plain_trigger(self._buffer[:head_end], self._site.max_request_body)
            if request is None:
                self._to_twisted_web()
                return
            path, app_id, endpoint, query, length = request
            body_start = head_end + 4
            if len(self._buffer) < body_start + length:
                return  # the rest of the body is on its way
            body = self._buffer[body_start:body_start + length]
            self._buffer = self._buffer[body_start + length:]
            answer = self._api.publish(endpoint, app_id, b"POST", path, query, body)
            if isinstance(answer, Deferred):
                self._waiting = True
                answer.addCallback(self._answered_later)
                return
            self._write_answer(*answer)

    def _answered_later(self, answer) -> None:
        self._waiting = False
        if self._gone:
            return
        self._write_answer(*answer)
        self._serve()

    def _write_answer(self, status: int, body: bytes) -> None:
        data = _ANSWER_HEAD % (status, RESPONSES[status], datetimeToString(), len(body)) + body
        transport = self.transport
        rest = send_now(transport, data)
        if rest:
            transport.write(rest)

    def _to_twisted_web(self) -> None:
        """From now on twisted.web serves this connection, starting with what is buffered."""
        self.setTimeout(None)
        channel = self._channel = self._site.buildProtocol(self._addr)
        self._hand_over_transport(self.transport, self, channel)
        channel.makeConnection(self.transport)
        buffered, self._buffer = self._buffer, b""
        channel.dataReceived(buffered)

    def connectionLost(self, reason) -> None:
        self._gone = True
        self.setTimeout(None)
        if self._channel is not None:
            self._channel.connectionLost(reason)
