"""Cuts Autobahn's per-connection cost without changing what it does (DESIGN.md "Cost per connection").

Every reach into Autobahn's internals lives here, each name listed once below, and
tests/test_autobahn_tuning.py fails when Autobahn renames or drops one of them.

- Autobahn formats its option list and several debug strings (``pformat``, ``hltype``, ``hlval``) on
  every handshake even when debug logging is off. Here those helpers return lazy values that format only
  if a debug line is really written, so debug output stays the same.
- Autobahn copies every protocol option from the factory onto each connection unless the protocol
  already has it; setting them once on a per-factory protocol class leaves the instances without them.
- Once a connection is open, its handshake leftovers are dropped and the state every open connection
  holds with the same value is read from class attributes instead (``install_open_state_defaults``
  once per class, ``shed_open_state`` once per connection).
- A connection whose handshake was answered without Autobahn (soketify.handshake) is made open from
  the start by ``opened_connection``: the same compact state a shed connection keeps, the shared
  values on the class (``OPENED_DEFAULTS``), and what few connections ever use (``MADE_ON_FIRST_READ``:
  the peer string, transport details, UTF-8 validator, open/closed futures) made on first read.
- The two connection states the write path needs (``is_open``, ``mark_closing``).
"""

from __future__ import annotations

from pprint import pformat as _pformat

import autobahn.twisted.websocket as _twisted_websocket
import autobahn.websocket.protocol as _websocket_protocol
import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.util import hltype as _hltype, hlval as _hlval
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.utf8validator import Utf8Validator

# -- what this module touches in Autobahn ---------------------------------------------------------

# Module-level names, "module:attribute[.attribute]"; each must exist.
AUTOBAHN_NAMES = (
    "autobahn.util:hltype",
    "autobahn.util:hlval",
    # apply() replaces these module globals, which Autobahn's handshake code calls.
    "autobahn.websocket.protocol:pformat",
    "autobahn.websocket.protocol:hltype",
    "autobahn.websocket.protocol:hlval",
    "autobahn.twisted.websocket:hltype",
    "autobahn.twisted.websocket:hlval",
    # options_on_class() reads the option names from here.
    "autobahn.websocket.protocol:WebSocketServerProtocol.CONFIG_ATTRS",
    "autobahn.websocket.protocol:TrafficStats",
    "autobahn.websocket.protocol:WebSocketProtocol.STATE_OPEN",
    "autobahn.websocket.protocol:WebSocketProtocol.STATE_CLOSING",
    "autobahn.websocket.protocol:WebSocketProtocol.SEND_STATE_GROUND",
    # What MADE_ON_FIRST_READ makes.
    "autobahn.twisted.util:create_transport_details",
    "autobahn.twisted.util:peer2str",
    "autobahn.wamp.types:TransportDetails.CHANNEL_FRAMING_WEBSOCKET",
    "autobahn.websocket.utf8validator:Utf8Validator",
)
# Per-connection attributes Autobahn sets before onOpen that this module reads or replaces, besides
# HANDSHAKE_LEFTOVERS and OPEN_STATE_DEFAULTS.
CONNECTION_ATTRIBUTES = ("state", "send_queue", "trafficStats")

# Soketify's own handshake state (PusherServerProtocol.onConnect keeps its admission answer for
# onOpen), dropped with Autobahn's.
SOKETIFY_HANDSHAKE_STATE = frozenset(("_refusal",))

# Handshake state Autobahn keeps for the life of a connection although nothing reads it once open.
HANDSHAKE_LEFTOVERS = frozenset((
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "http_response_data",
    "websocket_protocols", "websocket_extensions", "websocket_origin",
    "_wskey",
)) | SOKETIFY_HANDSHAKE_STATE

# Autobahn state that every open connection holds with the same value until it starts closing.
# Kept as class attributes instead: reads see the same value, a later write makes it per instance.
OPEN_STATE_DEFAULTS = {
    name: None for name in (
        "autoPingPending", "autoPingPendingCall", "autoPingPendingSent", "autoPingTimeoutCall",
        "closeHandshakeTimeoutCall", "openHandshakeTimeoutCall", "localCloseCode",
        "localCloseReason", "remoteCloseCode", "remoteCloseReason", "wasNotCleanReason",
        "trackedTimings", "_perMessageCompress", "websocket_protocol_in_use", "current_frame")
}
OPEN_STATE_DEFAULTS.update({
    name: False for name in (
        "closedByMe", "droppedByMe", "failedByMe", "wasClean", "wasCloseHandshakeTimeout",
        "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded",
        "wasOpenHandshakeTimeout", "wasServerConnectionDropTimeout",
        "wasServingFlashSocketPolicyFile", "triggered", "inside_message")
})
OPEN_STATE_DEFAULTS["autoPingPendingSeq"] = 0

# Autobahn queues writes only for sync/chopped sends (sendFrame(sync=True or chopsize=...),
# sendMessageFrame(sync=True)), which Soketify never makes; an empty tuple reads as an empty
# queue at no cost per connection (and fails loudly if such a send is ever made).
_NO_SEND_QUEUE = ()

# Set on a class by install_open_state_defaults; shed_open_state refuses classes without it, since
# their connections would lose attributes Autobahn reads later (on close, ping, errors).
_DEFAULTS_INSTALLED = "_soketify_open_state_defaults"
# Set on a class by options_on_class; opened_connection needs the options there (Autobahn's
# handshake is what copies them onto a connection otherwise).
_OPTIONS_ON_CLASS = "_soketify_options_on_class"

# What Autobahn's handshake leaves on every open connection, the same for all of them: class attributes
# for connections made by opened_connection (a later write makes one per instance, as Autobahn does).
OPENED_DEFAULTS = {
    "send_state": WebSocketProtocol.SEND_STATE_GROUND,
    "data": b"",
    "websocket_version": 13,
    "websocket_extensions_in_use": (),
    "send_queue": _NO_SEND_QUEUE,
}


def _transport_details(protocol) -> TransportDetails:
    details = create_transport_details(protocol.transport, True)
    details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
    return details


# Per-connection state Autobahn makes for every connection although most never read it; for
# connections made by opened_connection it is made, as Autobahn would have made it, on first read.
MADE_ON_FIRST_READ = {
    "peer": lambda protocol: peer2str(protocol.transport),
    "_transport_details": _transport_details,
    "utf8validator": lambda protocol: Utf8Validator(),  # read when a message begins
    "is_open": lambda protocol: txaio.create_future_success(None),  # open from the start
    "is_closed": lambda protocol: txaio.create_future(),  # resolved when the connection is lost
    "_valid_events": lambda protocol: ["message"],
    "_results": lambda protocol: {"message": None},
}


class _MadeOnFirstRead:
    """A class attribute that makes a connection's value on first read and keeps it in the
    connection's own ``__dict__`` (a non-data descriptor: values Autobahn sets itself win)."""

    __slots__ = ("_name", "_make")

    def __init__(self, name, make):
        self._name = name
        self._make = make

    def __get__(self, protocol, owner=None):
        if protocol is None:
            return self
        value = protocol.__dict__[self._name] = self._make(protocol)
        return value


_STATE_OPEN = WebSocketProtocol.STATE_OPEN
# For the per-subscriber write path, which compares ``protocol.state`` inline (no call per delivery).
STATE_OPEN = _STATE_OPEN
_STATE_CLOSING = WebSocketProtocol.STATE_CLOSING


# -- lazy debug formatting ------------------------------------------------------------------------

class _Lazy:
    """A value formatted on first use: str(), repr() and format() all compute it then."""

    __slots__ = ("_function", "_args", "_kwargs")

    def __init__(self, function, args, kwargs):
        self._function = function
        self._args = args
        self._kwargs = kwargs

    def __str__(self) -> str:
        return str(self._function(*self._args, **self._kwargs))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self._function(*self._args, **self._kwargs), spec)


def _lazy(function):
    def deferred_call(*args, **kwargs):
        return _Lazy(function, args, kwargs)
    deferred_call.__wrapped__ = function
    return deferred_call


def apply() -> None:
    """Make Autobahn's debug formatting lazy (idempotent)."""
    if getattr(_websocket_protocol.pformat, "__wrapped__", None) is _pformat:
        return
    _websocket_protocol.pformat = _lazy(_pformat)
    for module in (_websocket_protocol, _twisted_websocket):
        module.hltype = _lazy(_hltype)
        module.hlval = _lazy(_hlval)


# -- options once per class -----------------------------------------------------------------------

def options_on_class(factory) -> None:
    """Give the factory a protocol subclass carrying its options, so connections need no copies."""
    base = factory.protocol
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS}
    # A function stored on a class would become a method; keep option callbacks plain.
    options = {name: staticmethod(value) if callable(value) else value
               for name, value in options.items()}
    options[_OPTIONS_ON_CLASS] = True
    factory.protocol = type(base.__name__, (base,), options)


# -- state of open connections --------------------------------------------------------------------

def install_open_state_defaults(protocol_class) -> None:
    """Give ``protocol_class`` the shared open-state values, so its connections can shed theirs and
    ``opened_connection`` can make connections of it."""
    for name, value in (OPEN_STATE_DEFAULTS | OPENED_DEFAULTS).items():
        setattr(protocol_class, name, value)
    for name, make in MADE_ON_FIRST_READ.items():
        setattr(protocol_class, name, _MadeOnFirstRead(name, make))
    setattr(protocol_class, _DEFAULTS_INSTALLED, True)


def _require_defaults(protocol_class) -> None:
    if not getattr(protocol_class, _DEFAULTS_INSTALLED, False):
        raise TypeError(f"{protocol_class.__name__}: call install_open_state_defaults on the class "
                        "first")


def new_traffic_totals() -> TrafficStats:
    """One set of byte and frame counters for the whole node, shared by every shed connection."""
    return TrafficStats()


def shed_open_state(protocol, traffic_totals: TrafficStats) -> None:
    """Drop what every open connection would otherwise carry separately (about 2 KB each).

    Call once from ``onOpen`` (read any handshake leftovers you need first), on a connection whose
    class went through ``install_open_state_defaults``. The connection's ``__dict__`` is replaced by
    a compact one: no handshake leftovers, no default-valued state, an empty send queue shared by
    all, and ``traffic_totals`` (from ``new_traffic_totals``) counting its traffic with the node's.
    """
    _require_defaults(type(protocol))
    compact = {}
    for name, value in protocol.__dict__.items():
        if name in HANDSHAKE_LEFTOVERS:
            continue
        if name in OPEN_STATE_DEFAULTS and value is OPEN_STATE_DEFAULTS[name]:
            continue
        compact[name] = value
    compact["send_queue"] = _NO_SEND_QUEUE
    compact["trafficStats"] = traffic_totals
    # A fresh dict sized for what is left; the old one was sized for 60 attributes.
    protocol.__dict__ = compact


def opened_connection(factory, transport, traffic_totals: TrafficStats):
    """A connection of ``factory.protocol`` on ``transport``, open from the start, for a handshake
    answered without Autobahn: the state a shed connection keeps, nothing more (the class provides
    the rest). Autobahn then reads its frames and closes it as any other; the caller sends the
    handshake answer. ``factory.protocol`` must have gone through ``install_open_state_defaults``
    and ``options_on_class``. Autobahn's maxConnections check is the caller's to make."""
    protocol_class = factory.protocol
    _require_defaults(protocol_class)
    if not getattr(protocol_class, _OPTIONS_ON_CLASS, False):
        raise TypeError(f"{protocol_class.__name__}: call options_on_class on the factory first")
    protocol = protocol_class.__new__(protocol_class)
    protocol.__dict__ = {"factory": factory, "transport": transport, "connected": 1,
                         "state": _STATE_OPEN, "trafficStats": traffic_totals}
    # Autobahn's _connectionMade counts the connection and its _connectionLost uncounts it.
    factory.countConnections += 1
    if protocol.tcpNoDelay:
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):  # not TCP (a test transport, a Unix socket)
            pass
    return protocol


def is_open(protocol) -> bool:
    """True while the connection is open: not yet closing, closed or still in its handshake."""
    return protocol.state == _STATE_OPEN


def mark_closing(protocol) -> None:
    """Mark the connection as closing without a close frame, for one about to be aborted.

    ``is_open`` is false from now on; Autobahn then ignores ``sendClose`` and ``sendPing`` and raises
    ``Disconnected`` from ``sendMessage``, until the transport reports the loss (state closed)."""
    protocol.state = _STATE_CLOSING
