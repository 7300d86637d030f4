"""Guards for soketify.autobahn_tuning: what it touches in Autobahn still exists and still works.

The in-memory pair below is a plain Autobahn server with the options PusherServerFactory sets, talking
to a plain Autobahn client that offers permessage-deflate as browsers do, so these tests depend on
Autobahn and this module only (and soketify.handshake, which answers the handshake of a connection
made by opened_connection).
"""

from __future__ import annotations

import importlib
from collections import deque

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import PerMessageDeflateOffer
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from soketify import autobahn_tuning
from soketify.autobahn_tuning import (
    AUTOBAHN_NAMES, CONNECTION_ATTRIBUTES, HANDSHAKE_LEFTOVERS, MADE_ON_FIRST_READ, OPEN_STATE_DEFAULTS,
    OPENED_DEFAULTS, SOKETIFY_HANDSHAKE_STATE, install_open_state_defaults, is_open,
    mark_closing, new_traffic_totals, opened_connection, shed_open_state,
)
from soketify.handshake import accept_value, plain_upgrade

MAX_MESSAGE_SIZE = 1024
# The helpers apply() replaces, where it replaces them.
PATCHED_HELPERS = (
    "autobahn.websocket.protocol:pformat", "autobahn.websocket.protocol:hltype",
    "autobahn.websocket.protocol:hlval", "autobahn.twisted.websocket:hltype",
    "autobahn.twisted.websocket:hlval",
)
HANDSHAKE_REQUEST = (
    b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n")
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 6001)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


def resolve(name: str):
    """The object an AUTOBAHN_NAMES entry ("module:attribute.attribute") names."""
    module_name, _, path = name.partition(":")
    found = importlib.import_module(module_name)
    for part in path.split("."):
        found = getattr(found, part)
    return found


# -- an Autobahn server and client in memory --------------------------------------------------------

class RecordingServer(WebSocketServerProtocol):
    """Plain Autobahn: records its state as onOpen sees it."""

    def onOpen(self):
        self.factory.open_states.append(dict(self.__dict__))


class ShedServer(WebSocketServerProtocol):
    """Sheds its open state in onOpen, as Soketify does, then echoes text and records closes."""

    def onOpen(self):
        shed_open_state(self, self.factory.traffic_totals)

    def onMessage(self, payload, isBinary):
        self.factory.received.append(payload)
        self.sendMessage(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.closes.append((wasClean, code))


install_open_state_defaults(ShedServer)


class RecordingClient(WebSocketClientProtocol):
    def onOpen(self):
        self.messages, self.pongs, self.closed = [], [], None

    def onMessage(self, payload, isBinary):
        self.messages.append((payload, isBinary))

    def onPong(self, payload):
        self.pongs.append(payload)

    def onClose(self, wasClean, code, reason):
        self.closed = (wasClean, code)


class Transport(StringTransport):
    """A StringTransport that, like TCP transports, lets Autobahn unregister a producer it never
    registered (as it does when dropping a connection)."""

    def unregisterProducer(self):
        self.producer = None


def use_clock(test_case) -> MemoryReactorClock:
    """A Clock that also runs Autobahn's txaio timers, for the length of the test."""
    clock = MemoryReactorClock()
    loop, txaio.config.loop = txaio.config.loop, clock
    test_case.addCleanup(setattr, txaio.config, "loop", loop)
    return clock


def server_factory(server_class) -> WebSocketServerFactory:
    """An Autobahn server factory set up as Soketify sets up its own."""
    autobahn_tuning.apply()
    factory = WebSocketServerFactory()
    factory.protocol = server_class
    # The options PusherServerFactory sets.
    factory.setProtocolOptions(
        maxFramePayloadSize=MAX_MESSAGE_SIZE, maxMessagePayloadSize=MAX_MESSAGE_SIZE,
        webStatus=False, failByDrop=False, perMessageCompressionAccept=lambda offers: None,
        autoPingInterval=0)
    autobahn_tuning.options_on_class(factory)
    factory.open_states, factory.received, factory.closes = [], [], []
    factory.traffic_totals = new_traffic_totals()
    return factory


class Pair:
    """One Autobahn server connection and one Autobahn client, on StringTransports and a Clock."""

    def __init__(self, test_case, server_class, client_offers=None):
        self.clock = use_clock(test_case)
        self.factory = server_factory(server_class)
        client_factory = WebSocketClientFactory(
            "ws://localhost/app/app-key?protocol=7&client=js", reactor=self.clock)
        client_factory.protocol = RecordingClient
        client_factory.setProtocolOptions(perMessageCompressionOffers=(
            [PerMessageDeflateOffer()] if client_offers is None else client_offers))
        self.client = client_factory.buildProtocol(SERVER_ADDRESS)
        self.server_transport = Transport(hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        self.client_transport = Transport(hostAddress=CLIENT_ADDRESS, peerAddress=SERVER_ADDRESS)
        self.lost = False
        self.client.makeConnection(self.client_transport)
        self.server = self.connect_server()
        self.pump()

    def connect_server(self):
        """The server's connection, through Autobahn's handshake."""
        server = self.factory.buildProtocol(CLIENT_ADDRESS)
        server.makeConnection(self.server_transport)
        return server

    def pump(self, seconds: float = 0):
        """Carry bytes both ways until both are quiet, then deliver a dropped connection to both."""
        self.clock.advance(seconds)
        moved = True
        while moved:
            moved = False
            for transport, receiver in ((self.client_transport, self.server),
                                        (self.server_transport, self.client)):
                data = transport.value()
                if data and not self.lost:
                    transport.clear()
                    receiver.dataReceived(data)
                    moved = True
            if not self.lost and (self.server_transport.disconnecting
                                  or self.client_transport.disconnecting):
                self.lost = True
                self.server.connectionLost(Failure(ConnectionDone()))
                self.client.connectionLost(Failure(ConnectionDone()))


class OpenedPair(Pair):
    """A Pair whose server connection is made open by opened_connection, the client's handshake
    answered as soketify.websocket answers a plain upgrade request. (Autobahn's client offers
    compression with parameters plain_upgrade leaves to Autobahn, so it offers none here.)"""

    def __init__(self, test_case, server_class):
        super().__init__(test_case, server_class, client_offers=[])

    def connect_server(self):
        request = self.client_transport.value()
        self.client_transport.clear()
        upgrade = plain_upgrade(request)
        assert upgrade is not None, request
        server = opened_connection(self.factory, self.server_transport, self.factory.traffic_totals)
        self.server_transport.protocol = server
        self.server_transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\n"
                                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                                    + accept_value(upgrade.key) + b"\r\n\r\n")
        return server


# -- the names ----------------------------------------------------------------------------------

class AutobahnNamesTests(unittest.TestCase):
    def test_every_listed_autobahn_name_exists(self):
        """Each module-level name in AUTOBAHN_NAMES resolves in the installed Autobahn."""
        missing = []
        for name in AUTOBAHN_NAMES:
            try:
                resolve(name)
            except (ImportError, AttributeError):
                missing.append(name)
        self.assertEqual(missing, [])

    def test_server_handshake_calls_the_patched_helpers(self):
        """A server connection's handshake and loss call each helper apply() makes lazy, in each
        module it patches, so making them lazy still saves that work."""
        use_clock(self)
        factory = server_factory(RecordingServer)
        calls = set()
        for name in PATCHED_HELPERS:
            self.assertIn(name, AUTOBAHN_NAMES)
            module_name, _, attribute = name.partition(":")
            module = importlib.import_module(module_name)

            def counting(*args, _lazy=getattr(module, attribute), _name=name, **kwargs):
                calls.add(_name)
                return _lazy(*args, **kwargs)
            self.patch(module, attribute, counting)
        server = factory.buildProtocol(CLIENT_ADDRESS)
        transport = Transport(hostAddress=SERVER_ADDRESS, peerAddress=CLIENT_ADDRESS)
        server.makeConnection(transport)
        server.dataReceived(HANDSHAKE_REQUEST)
        self.assertIn(b" 101 ", transport.value().split(b"\r\n")[0])
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(sorted(set(PATCHED_HELPERS) - calls), [])

    def test_lazy_helpers_format_as_the_originals(self):
        """After apply(), the patched helpers print exactly what Autobahn's own would."""
        from pprint import pformat

        from autobahn.util import hltype, hlval
        autobahn_tuning.apply()
        module = resolve("autobahn.websocket.protocol:pformat").__module__
        self.assertEqual(module, autobahn_tuning.__name__)
        self.assertEqual(str(resolve("autobahn.websocket.protocol:pformat")([("a", 1)])),
                         pformat([("a", 1)]))
        for module_name in ("autobahn.websocket.protocol", "autobahn.twisted.websocket"):
            lazy_hltype, lazy_hlval = (resolve(f"{module_name}:{name}") for name in ("hltype", "hlval"))
            self.assertEqual(f"{lazy_hltype(resolve)}", hltype(resolve))
            self.assertEqual(str(lazy_hlval(42)), hlval(42))

    def test_config_attrs_lists_factory_options(self):
        """CONFIG_ATTRS exists on the server protocol class and names options the factory has."""
        config_attrs = WebSocketServerProtocol.CONFIG_ATTRS
        self.assertTrue(all(isinstance(name, str) for name in config_attrs))
        self.assertIn("maxMessagePayloadSize", config_attrs)
        factory = WebSocketServerFactory()
        self.assertEqual([name for name in config_attrs if not hasattr(factory, name)], [])

    def test_options_on_class_leave_connections_without_copies(self):
        """With options on the class, Autobahn copies none of them onto an open connection."""
        pair = Pair(self, RecordingServer)
        [state] = pair.factory.open_states
        self.assertEqual(sorted(set(state) & set(WebSocketServerProtocol.CONFIG_ATTRS)), [])
        self.assertEqual(pair.server.maxMessagePayloadSize, MAX_MESSAGE_SIZE)

    def test_shared_state_names_are_not_options(self):
        """No shed or defaulted name is an option: a class attribute would hide the factory's value."""
        options = set(WebSocketServerProtocol.CONFIG_ATTRS)
        self.assertEqual(sorted((set(OPEN_STATE_DEFAULTS) | HANDSHAKE_LEFTOVERS) & options), [])

    def test_defaults_shadow_nothing_autobahn_defines_on_its_classes(self):
        """Installing the defaults replaces no method, property or other class attribute of Autobahn."""
        clashes = [name for name in OPEN_STATE_DEFAULTS
                   if any(name in vars(cls) for cls in WebSocketServerProtocol.__mro__)]
        self.assertEqual(clashes, [])

    def test_open_and_closing_states_exist(self):
        """STATE_OPEN and STATE_CLOSING are distinct Autobahn states."""
        self.assertIsInstance(WebSocketProtocol.STATE_OPEN, int)
        self.assertIsInstance(WebSocketProtocol.STATE_CLOSING, int)
        self.assertNotEqual(WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING)
        self.assertEqual(WebSocketServerProtocol.STATE_OPEN, WebSocketProtocol.STATE_OPEN)


# -- what Autobahn sets on a connection ------------------------------------------------------------

class OpenConnectionTests(unittest.TestCase):
    def open_state(self, **pair_options) -> dict:
        pair = Pair(self, RecordingServer, **pair_options)
        [state] = pair.factory.open_states
        return state

    def test_handshake_leftovers_are_set_by_autobahn_before_on_open(self):
        """Every Autobahn name in HANDSHAKE_LEFTOVERS is on a connection when onOpen runs."""
        state = self.open_state()
        self.assertEqual(sorted(HANDSHAKE_LEFTOVERS - SOKETIFY_HANDSHAKE_STATE - set(state)), [])

    def test_soketify_handshake_state_is_not_autobahns(self):
        """The names kept for Soketify's own handshake state are ones Autobahn does not set."""
        self.assertEqual(sorted(SOKETIFY_HANDSHAKE_STATE & set(self.open_state())), [])

    def test_open_state_defaults_are_set_by_autobahn_before_on_open(self):
        """Every name in OPEN_STATE_DEFAULTS is on a connection when onOpen runs."""
        state = self.open_state()
        self.assertEqual(sorted(set(OPEN_STATE_DEFAULTS) - set(state)), [])

    def test_open_state_defaults_are_the_values_of_an_open_connection(self):
        """Autobahn gives an open connection exactly the defaults (the same objects), with or without
        a compression offer, so shed_open_state drops them all."""
        for offers in (None, []):
            state = self.open_state(client_offers=offers)
            differing = {name: state.get(name) for name, value in OPEN_STATE_DEFAULTS.items()
                         if state.get(name, value) is not value}
            self.assertEqual(differing, {})

    def test_connection_attributes_are_autobahns(self):
        """state, send_queue and trafficStats are the names Autobahn uses, with the expected kinds."""
        state = self.open_state()
        self.assertEqual(sorted(set(CONNECTION_ATTRIBUTES) - set(state)), [])
        self.assertEqual(state["state"], WebSocketProtocol.STATE_OPEN)
        self.assertIsInstance(state["send_queue"], deque)
        self.assertEqual(len(state["send_queue"]), 0)
        self.assertIsInstance(state["trafficStats"], TrafficStats)

    def test_is_open_and_mark_closing_read_and_write_autobahns_state(self):
        """is_open follows Autobahn's state; after mark_closing Autobahn sends no close frame."""
        pair = Pair(self, RecordingServer)
        self.assertTrue(is_open(pair.server))
        mark_closing(pair.server)
        self.assertFalse(is_open(pair.server))
        self.assertEqual(pair.server.state, WebSocketProtocol.STATE_CLOSING)
        pair.server.sendClose(1000)
        self.assertEqual(pair.server_transport.value(), b"")


# -- a shed connection still behaves ------------------------------------------------------------------

class ShedConnectionTests(unittest.TestCase):
    def pair(self):
        return Pair(self, ShedServer)

    def test_shed_connection_is_compact(self):
        """After shed_open_state no leftover or default-valued state remains on the connection."""
        pair = self.pair()
        kept = set(vars(pair.server))
        self.assertEqual(sorted(kept & (HANDSHAKE_LEFTOVERS | set(OPEN_STATE_DEFAULTS))), [])
        self.assertEqual(pair.server.send_queue, ())
        self.assertIs(pair.server.trafficStats, pair.factory.traffic_totals)

    def test_shed_requires_the_class_defaults(self):
        """Shedding a connection whose class lacks the defaults is refused, not a later crash."""
        pair = Pair(self, RecordingServer)
        self.assertRaises(TypeError, shed_open_state, pair.server, new_traffic_totals())

    def test_messages_flow_both_ways_and_count_in_the_node_totals(self):
        """A shed connection receives and sends messages; its traffic counts in the shared totals."""
        pair = self.pair()
        other = self.pair()
        other.server.trafficStats = pair.server.trafficStats
        pair.client.sendMessage(b"one")
        other.client.sendMessage(b"two")
        pair.pump()
        other.pump()
        self.assertEqual(pair.factory.received + other.factory.received, [b"one", b"two"])
        self.assertEqual(pair.client.messages, [(b"one", False)])
        totals = pair.factory.traffic_totals
        self.assertEqual(totals.incomingWebSocketMessages, 2)
        self.assertEqual(totals.outgoingWebSocketMessages, 2)

    def test_client_close_is_clean(self):
        """A client's close is answered and the connection ends cleanly on both sides."""
        pair = self.pair()
        pair.client.sendClose(1000)
        pair.pump()
        self.assertTrue(pair.lost)
        self.assertEqual(pair.client.closed, (True, 1000))
        self.assertEqual(pair.factory.closes, [(True, 1000)])

    def test_server_close_is_clean(self):
        """A close the server starts (as for 4200) completes cleanly once the client answers."""
        pair = self.pair()
        pair.server.sendClose(4200, "Server is shutting down")
        pair.pump()
        self.assertTrue(pair.lost)
        self.assertEqual(pair.client.closed, (True, 4200))
        # Autobahn's client answers with 1000 (it echoes no code unless told to).
        self.assertEqual(pair.factory.closes, [(True, 1000)])

    def test_silent_client_is_dropped_after_the_close_timeout(self):
        """A client that never answers the server's close is dropped by Autobahn's close timer."""
        pair = self.pair()
        pair.server.sendClose(4200, "Server is shutting down")
        pair.server_transport.clear()
        pair.pump(pair.server.closeHandshakeTimeout + 0.1)
        self.assertTrue(pair.lost)
        self.assertEqual(pair.factory.closes, [(False, 1006)])
        self.assertTrue(pair.server.wasCloseHandshakeTimeout)

    def test_ping_is_answered(self):
        """A client's ping gets a pong with the same payload."""
        pair = self.pair()
        pair.client.sendPing(b"are you there")
        pair.pump()
        self.assertEqual(pair.client.pongs, [b"are you there"])

    def test_frame_over_the_limit_is_closed_with_1009(self):
        """A message over the size limit gets close code 1009 and the connection ends."""
        pair = self.pair()
        pair.client.sendMessage(b"x" * (MAX_MESSAGE_SIZE + 1))
        pair.pump()
        self.assertTrue(pair.lost)
        self.assertEqual(pair.client.closed[1], 1009)
        self.assertEqual(pair.factory.received, [])

    def test_protocol_error_is_closed_with_1002(self):
        """A frame that breaks the protocol (unmasked from a client) gets close code 1002."""
        pair = self.pair()
        pair.client_transport.write(b"\x81\x02hi")
        pair.pump()
        self.assertTrue(pair.lost)
        self.assertEqual(pair.client.closed[1], 1002)

    def test_marked_closing_connection_ends_on_abort(self):
        """After mark_closing and an abort, Autobahn reports the loss as unclean."""
        pair = self.pair()
        mark_closing(pair.server)
        pair.server_transport.abortConnection()
        pair.pump()
        self.assertTrue(pair.lost)
        self.assertEqual(len(pair.factory.closes), 1)
        self.assertFalse(pair.factory.closes[0][0])


class OpenedConnectionTests(ShedConnectionTests):
    """A connection made by opened_connection behaves as a shed one in every test above."""

    def pair(self):
        return OpenedPair(self, ShedServer)

    def test_shed_requires_the_class_defaults(self):
        """Making an opened connection of a class without the defaults is refused."""
        factory = server_factory(RecordingServer)
        self.assertRaises(TypeError, opened_connection, factory, Transport(), new_traffic_totals())

    def test_opened_connection_reads_as_a_shed_one(self):
        """Every attribute a shed connection holds reads the same on an opened one (its own, a class
        default or made on first read), and the opened one holds no more of its own."""
        shed, opened = Pair(self, ShedServer).server, self.pair().server
        opened_own = set(vars(opened))
        self.assertEqual(sorted(opened_own - set(vars(shed))), [])
        for name, value in vars(shed).items():
            if name in ("factory", "transport", "trafficStats"):
                continue
            if name in MADE_ON_FIRST_READ:
                self.assertNotIn(name, opened_own)
                self.assertIs(type(getattr(opened, name)), type(value), name)
            elif name in OPENED_DEFAULTS:
                self.assertEqual(list(getattr(opened, name)) if name in (
                    "websocket_extensions_in_use", "send_queue") else getattr(opened, name),
                    list(value) if name in ("websocket_extensions_in_use", "send_queue") else value,
                    name)
            else:
                self.assertEqual(getattr(opened, name), value, name)

    def test_made_on_first_read_as_autobahn_makes_them(self):
        """What opened connections make on first read is what Autobahn gives every connection."""
        autobahn_made = Pair(self, RecordingServer).factory.open_states[0]
        opened = self.pair().server
        self.assertEqual(opened.peer, autobahn_made["peer"])
        self.assertEqual(opened._transport_details.peer, autobahn_made["_transport_details"].peer)
        self.assertEqual(opened._transport_details.channel_framing,
                         autobahn_made["_transport_details"].channel_framing)
        self.assertEqual((opened._valid_events, opened._results),
                         (autobahn_made["_valid_events"], autobahn_made["_results"]))
        self.assertTrue(opened.is_open.called)
        self.assertFalse(opened.is_closed.called)

    def test_opened_defaults_are_autobahns_values(self):
        """OPENED_DEFAULTS hold the values Autobahn's handshake leaves (as tuples where it keeps an
        empty list or deque, which nothing writes to once open)."""
        state = Pair(self, RecordingServer).factory.open_states[0]
        for name, value in OPENED_DEFAULTS.items():
            self.assertEqual(value, tuple(state[name]) if name in (
                "websocket_extensions_in_use", "send_queue") else state[name], name)

    def test_connections_are_counted_until_lost(self):
        """The factory's connection count (Autobahn's maxConnections check) includes opened
        connections and forgets them once lost."""
        pair = self.pair()
        self.assertEqual(pair.factory.countConnections, 1)
        pair.client.sendClose(1000)
        pair.pump()
        self.assertEqual(pair.factory.countConnections, 0)
