"""The Pusher protocol (version 7) without I/O: names, error codes, frame decoding and encoding.

Server frames are JSON text; ``data`` of system events is itself a JSON string (double encoding),
as pusher-js expects.
"""

from __future__ import annotations

import json
import re
from math import isfinite
from dataclasses import dataclass
from typing import Any

# Event names on the wire, kept verbatim.
CONNECTION_ESTABLISHED = "pusher:connection_established"
ERROR = "pusher:error"
PING = "pusher:ping"
PONG = "pusher:pong"
SUBSCRIBE = "pusher:subscribe"
UNSUBSCRIBE = "pusher:unsubscribe"
SIGNIN = "pusher:signin"
SUBSCRIPTION_SUCCEEDED = "pusher_internal:subscription_succeeded"
SUBSCRIPTION_ERROR = "pusher:subscription_error"
SUBSCRIPTION_COUNT = "pusher_internal:subscription_count"
MEMBER_ADDED = "pusher_internal:member_added"
MEMBER_REMOVED = "pusher_internal:member_removed"
CACHE_MISS = "pusher:cache_miss"
SIGNIN_SUCCESS = "pusher:signin_success"
WATCHLIST_EVENTS = "pusher_internal:watchlist_events"
SERVER_TO_USER_PREFIX = "#server-to-user-"

SUPPORTED_PROTOCOLS = frozenset((5, 6, 7))

# Close codes (PROTOCOL.md section 1).
APP_NOT_FOUND = 4001
APP_DISABLED = 4003
APP_OVER_QUOTA = 4004
PATH_NOT_FOUND = 4005
INVALID_VERSION = 4006
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT_NOW = 4200
PONG_NOT_RECEIVED = 4201
CLOSED_FOR_INACTIVITY = 4202
CLIENT_EVENT_REJECTED = 4301
WATCHLIST_TOO_LONG = 4302

# Channel-type prefixes, most specific first (a true prefix match decides the type).
CHANNEL_PREFIXES = (
    ("private-encrypted-cache-", "private-encrypted-cache"),
    ("private-encrypted-", "private-encrypted"),
    ("private-cache-", "private-cache"),
    ("presence-cache-", "presence-cache"),
    ("private-", "private"),
    ("presence-", "presence"),
    ("cache-", "cache"),
    ("#server-to-user-", "server-to-user"),
)

_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_\-=@,.;]+\Z")
# Ours are "<node>.<n>", each part far shorter than 20 digits.
SOCKET_ID = re.compile(r"\d{1,20}\.\d{1,20}\Z")


def channel_type(name: str) -> str:
    """The channel's type from its prefix: 'public', 'private', 'presence', 'cache', ..."""
    for prefix, kind in CHANNEL_PREFIXES:
        if name.startswith(prefix):
            return kind
    return "public"


def needs_auth(name: str) -> bool:
    return channel_type(name) not in ("public", "cache", "server-to-user")


def is_presence(name: str) -> bool:
    return name.startswith("presence-")


def is_cache(name: str) -> bool:
    return "cache" in channel_type(name)


def is_encrypted(name: str) -> bool:
    return name.startswith("private-encrypted-")


def channel_name_problem(name: Any, max_length: int = 200) -> str | None:
    """Why a channel name is invalid, or None when it is fine."""
    if not isinstance(name, str) or not name:
        return "channel name must be a non-empty string"
    if len(name) > max_length:
        return f"channel name is longer than {max_length} characters"
    if name.startswith("#server-to-user-"):
        user_id = name[len("#server-to-user-"):]
        if user_id and _CHANNEL_NAME.match(user_id):
            return None
    if not _CHANNEL_NAME.match(name):
        return "channel name may only contain A-Z, a-z, 0-9 and _-=@,.;"
    return None


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A decoded client frame: its event name, its data (object or string) and channel, if any."""

    event: str
    data: Any
    channel: str | None


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A client frame that cannot be handled: reported back as pusher:error with this code."""

    code: int | None
    message: str


# Deepest nesting of arrays and objects a client may send: far beyond any real use, and shallow
# enough that encoding the value again (a relayed client event) cannot reach Python's recursion limit.
MAX_JSON_DEPTH = 100


def _finite(text: str) -> float:
    value = float(text)
    if not isfinite(value):
        raise ValueError(f"JSON number {text} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# NaN, Infinity and numbers that overflow to infinity are refused: relayed, they would not be JSON.
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)

# A lone surrogate can only come from a \uD800-\uDFFF escape (raw text is decoded strictly).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str | bytes) -> Any:
    """JSON sent by a client, or ValueError (with what is wrong) for anything the server could not
    handle or send back: not JSON, not UTF-8, NaN or an infinite number, nested deeper than
    MAX_JSON_DEPTH, or holding a lone surrogate (a \\uD800-\\uDFFF escape without its pair, which
    no UTF-8 text can carry, so an echo of it would fail)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # strict: UnicodeDecodeError is a ValueError
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    # Counted only when the text could be that deep (two scans in C for ordinary frames).
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    if _SURROGATE_ESCAPE.search(text) is not None and _holds_lone_surrogate(value):
        raise ValueError("JSON text with a lone surrogate (\\uD800-\\uDFFF)")
    return value


def _depth(value: Any) -> int:
    """Levels of arrays and objects in ``value``; iterative, whatever the depth."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in item)
    return deepest


def _holds_lone_surrogate(value: Any) -> bool:
    """Any string in ``value`` (keys included) with a surrogate code point; iterative, since the
    value may be nested as deep as the decoder allows."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item) is not None:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def decode(text: str) -> ClientMessage | ProtocolError:
    """Decode one client text frame."""
    try:
        frame = loads(text)
    except ValueError as problem:
        return ProtocolError(None, f"Invalid JSON: {problem}")
    if not isinstance(frame, dict):
        return ProtocolError(None, "A frame must be a JSON object")
    event = frame.get("event")
    if not isinstance(event, str) or not event:
        return ProtocolError(None, "A frame must have a string 'event'")
    channel = frame.get("channel")
    if channel is not None and not isinstance(channel, str):
        return ProtocolError(None, "'channel' must be a string")
    data = frame.get("data")
    # pusher-js sends data as an object; other clients send it as a JSON string. Some send
    # strings that are not JSON at all (pysher pings with data ""): those stay strings.
    if event.startswith("pusher:") and isinstance(data, str) and data:
        try:
            data = loads(data)
        except ValueError:
            pass
    return ClientMessage(event, data, channel)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode(event: str, data: Any = None, channel: str | None = None, **extra: Any) -> str:
    """A server frame; non-string ``data`` is JSON-encoded to a string (the protocol's double encoding)."""
    frame: dict[str, Any] = {"event": event}
    if channel is not None:
        frame["channel"] = channel
    if data is not None:
        frame["data"] = data if isinstance(data, str) else _dumps(data)
    frame.update(extra)
    return _dumps(frame)


# Every connection gets this frame: filled in from a template, without two JSON encodings.
_CONNECTION_ESTABLISHED_TEMPLATE = (
    '{"event":"pusher:connection_established",'
    '"data":"{\\"socket_id\\":\\"%s\\",\\"activity_timeout\\":%d}"}')


def connection_established(socket_id: str, activity_timeout: int) -> str:
    if socket_id.replace(".", "", 1).isdigit():  # as hub.new_socket_id makes them: nothing to escape
        return _CONNECTION_ESTABLISHED_TEMPLATE % (socket_id, activity_timeout)
    return encode(CONNECTION_ESTABLISHED, {"socket_id": socket_id, "activity_timeout": activity_timeout})


def error(code: int | None, message: str) -> str:
    """pusher:error with its data as an object; ``code`` is optional in the protocol and left out
    for frames that have no code of their own (malformed JSON and the like)."""
    data: dict[str, Any] = {"message": message}
    if code is not None:
        data["code"] = code
    return _dumps({"event": ERROR, "data": data})


def pong() -> str:
    return encode(PONG, {})


def ping() -> str:
    return encode(PING, {})


def subscription_succeeded(channel: str, data: Any = None) -> str:
    return encode(SUBSCRIPTION_SUCCEEDED, data if data is not None else {}, channel)


def subscription_error(channel: str, kind: str, message: str, status: int) -> str:
    return _dumps({"event": SUBSCRIPTION_ERROR, "channel": channel,
                   "data": {"type": kind, "error": message, "status": status}})


def event(name: str, channel: str, data: str, user_id: str | None = None) -> str:
    """A channel event as subscribers receive it; ``data`` is passed through as given."""
    frame: dict[str, Any] = {"event": name, "channel": channel, "data": data}
    if user_id is not None:
        frame["user_id"] = user_id
    return _dumps(frame)


def member_added(channel: str, user_id: str, user_info: Any) -> str:
    return encode(MEMBER_ADDED, {"user_id": user_id, "user_info": user_info}, channel)


def member_removed(channel: str, user_id: str) -> str:
    return encode(MEMBER_REMOVED, {"user_id": user_id}, channel)


def subscription_count(channel: str, count: int) -> str:
    return encode(SUBSCRIPTION_COUNT, {"subscription_count": count}, channel)
