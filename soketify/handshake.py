"""The WebSocket opening handshake of a plain upgrade request, read without Autobahn's general parser.

Nearly every connection opens with the same kind of request (pusher-js in a browser or in Node): one
``GET /app/{key}?protocol=7&...`` with a handful of well-formed headers, arriving whole in one read.
Autobahn's handshake code handles every case the RFC allows and costs about half of the CPU a new
connection takes. ``plain_upgrade`` recognises the plain case only, with the same checks Autobahn
makes, and answers None for anything else (a duplicate header, a subprotocol, an unusual extension
offer, percent-encoding in the query, a request not yet whole...): those go through Autobahn as before,
which also answers every malformed request with its HTTP error. So the fast path accepts a subset of
what Autobahn accepts, never more, and what a client sees is the same (tests/test_handshake.py).
"""

from __future__ import annotations

import re
from base64 import b64encode
from hashlib import sha1
from typing import NamedTuple

# RFC 6455 section 1.3
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_END_OF_HEAD = b"\r\n\r\n"
# "GET <uri> HTTP/1.1" and the header lines after it ("\r\n" name ":" value), printable ASCII only.
_HEAD = re.compile(r"GET (/[!-~]*) HTTP/1\.1((?:\r\n[ -9;-~]*:[ -~]*)*)")
_HEADER = re.compile(r"\r\n([ -9;-~]*):([ -~]*)")
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
# An Origin that Autobahn parses to (scheme, host, port) and its default "*" policy allows:
# scheme://host[:port] (not file://, which it reads as "null"; "null" itself goes to Autobahn).
_ORIGIN = re.compile(r"(?!file:)[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~-]+(?::([0-9]{1,5}))?",
                     re.IGNORECASE)
# permessage-deflate offers that Autobahn parses without error (and declines, as Soketify does).
_PLAIN_EXTENSION_OFFERS = frozenset((
    "permessage-deflate", "permessage-deflate; client_max_window_bits",
))
_PROTOCOL_FIELD = "protocol="


class Upgrade(NamedTuple):
    path: str           # the request path, still percent-encoded (as Autobahn gives it)
    protocol: str | None  # the first non-empty ``protocol`` query value, as parse_qs would give it
    key: str            # Sec-WebSocket-Key
    origin: str | None = None  # the Origin header, if any


def plain_upgrade(head: bytes) -> Upgrade | None:
    """The upgrade in ``head`` (every byte received so far) if it is one whole, plain, valid request
    and nothing follows it; None leaves the request to Autobahn."""
    if not head.endswith(_END_OF_HEAD):
        return None
    try:
        text = head[:-4].decode("ascii")
    except UnicodeDecodeError:
        return None
    # One pass in C over the whole head: request line and header lines of printable ASCII only (any
    # control character, a bare CR or LF included, goes to Autobahn, whose splitlines() reads those
    # its own way), and no second end of head.
    whole = _HEAD.fullmatch(text)
    if whole is None:
        return None
    uri, header_lines = whole.groups()
    pairs = _HEADER.findall(header_lines)
    headers = {name.strip().lower(): value.strip() for name, value in pairs}
    # A repeated header (Autobahn joins or refuses those) or a line with an empty name.
    if len(headers) != len(pairs) or "" in headers or not _plain_headers(headers):
        return None
    path, _, query = uri.partition("?")
    if uri.startswith("//") or "#" in uri or ";" in path or "%" in query or "+" in query:
        return None
    return Upgrade(path, _first_protocol(query), headers["sec-websocket-key"], headers.get("origin"))


def _plain_headers(headers: dict[str, str]) -> bool:
    host = headers.get("host")
    if not host:
        return False
    if ":" in host and not host.endswith("]") and not host.rpartition(":")[2].isdigit():
        return False
    if not _has_token(headers.get("upgrade"), "websocket"):
        return False
    if not _has_token(headers.get("connection"), "upgrade"):
        return False
    if headers.get("sec-websocket-version") != "13":
        return False
    if _KEY.fullmatch(headers.get("sec-websocket-key", "")) is None:
        return False
    if "sec-websocket-protocol" in headers:
        return False
    origin = headers.get("origin")
    if origin is not None:
        matched = _ORIGIN.fullmatch(origin)
        if matched is None or int(matched.group(1) or 0) > 65535:
            return False
    offers = headers.get("sec-websocket-extensions")
    return offers is None or offers in _PLAIN_EXTENSION_OFFERS


def _has_token(value: str | None, token: str) -> bool:
    """``token`` is one of the comma-separated values (case-insensitive), as Autobahn reads them."""
    if value is None:
        return False
    value = value.lower()
    return value == token or token in [part.strip() for part in value.split(",")]


def _first_protocol(query: str) -> str | None:
    for field in query.split("&"):
        if field.startswith(_PROTOCOL_FIELD) and len(field) > len(_PROTOCOL_FIELD):
            return field[len(_PROTOCOL_FIELD):]
    return None


def accept_value(key: str) -> bytes:
    """Sec-WebSocket-Accept for this Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return b64encode(sha1(key.encode("ascii") + _WEBSOCKET_GUID).digest())
