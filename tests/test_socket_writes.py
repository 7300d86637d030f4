"""send_now against real loopback TCP connections: the Twisted internals it relies on are there, an
idle connection is written with no reactor round, and a full socket falls back to Twisted's buffer
without reordering or losing a byte. The same cases run through websocket.write_to_subscribers, which
inlines send_now's condition for the hub's delivery loop."""

from __future__ import annotations

from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.tcp import Server
from twisted.trial import unittest

from soketify.autobahn_tuning import STATE_OPEN
from soketify.socket_writes import send_now
from soketify.websocket import write_to_subscribers


def write_now(transport, data: bytes) -> None:
    """What PusherServerProtocol.write_frame does with a frame: send at once, queue the rest."""
    rest = send_now(transport, data)
    if rest:
        transport.write(rest)


class Subscriber:
    """What write_to_subscribers reads of a connection (an open state, a transport), and the two
    writes it falls back to, as PusherServerProtocol does them."""

    state = STATE_OPEN

    def __init__(self, transport):
        self.transport = transport

    def write_frame(self, frame: bytes) -> None:
        write_now(self.transport, frame)

    def queue_unsent(self, frame: bytes) -> None:
        self.transport.write(frame)


def write_to_one_subscriber(transport, data: bytes) -> None:
    """What the hub's delivery loop does for a channel with this one subscriber."""
    write_to_subscribers({"1.1": Subscriber(transport)}, data, None)


class Collect(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.waiting: list[tuple[int, Deferred]] = []

    def dataReceived(self, data):
        self.received += data
        for entry in list(self.waiting):
            if len(self.received) >= entry[0]:
                self.waiting.remove(entry)
                entry[1].callback(bytes(self.received))

    def until(self, size: int) -> Deferred:
        waiter = Deferred()
        self.waiting.append((size, waiter))
        self.dataReceived(b"")
        return waiter


class Connected(protocol.Protocol):
    def connectionMade(self):
        self.factory.made.callback(self)


class SocketWritesTests(unittest.TestCase):
    write = staticmethod(write_now)

    @inlineCallbacks
    def setUp(self):
        server_factory = protocol.Factory.forProtocol(Connected)
        server_factory.made = Deferred()
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = Collect()
        connected = protocol.ClientCreator(reactor, lambda: self.client).connectTCP(
            "127.0.0.1", port.getHost().port)
        yield connected
        server = yield server_factory.made
        self.transport = server.transport
        self.addCleanup(self.client.transport.loseConnection)
        self.addCleanup(self.transport.loseConnection)

    def test_the_twisted_internals_it_reads_are_there(self):
        """A server connection is a tcp.Server with the buffer fields send_now checks."""
        transport = self.transport
        self.assertIs(transport.__class__, Server)
        self.assertEqual((transport._tempDataLen, transport.dataBuffer, transport.disconnecting),
                         (0, b"", False))
        self.assertTrue(callable(transport.socket.send))

    @inlineCallbacks
    def test_an_idle_connection_is_written_at_once(self):
        """Nothing queued: the bytes leave in this call; the reactor is not asked to wait for
        writability."""
        self.write(self.transport, b"frame-1")
        self.assertNotIn(self.transport, reactor.getWriters())
        self.assertEqual((self.transport._tempDataLen, self.transport.dataBuffer), (0, b""))
        received = yield self.client.until(7)
        self.assertEqual(received, b"frame-1")

    @inlineCallbacks
    def test_a_full_socket_falls_back_to_twisteds_buffer_in_order(self):
        """When the socket takes only part of a write, the rest and every later write queue in
        Twisted's buffer, and the peer gets every byte in order."""
        self.client.transport.pauseProducing()  # the peer stops reading: the buffers fill up
        chunks = [bytes([65 + n % 26]) * 65536 for n in range(64)]
        for chunk in chunks:
            self.write(self.transport, chunk)
        self.assertGreater(self.transport._tempDataLen + len(self.transport.dataBuffer), 0,
                           "4 MB do not fit in the socket buffers: some is queued")
        self.assertIn(self.transport, reactor.getWriters())
        self.write(self.transport, b"last")
        self.client.transport.resumeProducing()
        expected = b"".join(chunks) + b"last"
        received = yield self.client.until(len(expected))
        self.assertEqual(received, expected)

    @inlineCallbacks
    def test_after_a_close_is_started_writes_go_through_twisted(self):
        """loseConnection() with data queued: send_now no longer sends around the buffer."""
        self.transport.write(b"queued")
        self.transport.loseConnection()
        self.write(self.transport, b"-after")
        received = yield self.client.until(12)
        self.assertEqual(received, b"queued-after")
        yield task.deferLater(reactor, 0, lambda: None)


class WriteToSubscribersTests(SocketWritesTests):
    """The hub's delivery loop behaves as send_now in every case above."""

    write = staticmethod(write_to_one_subscriber)

    @inlineCallbacks
    def test_the_excluded_subscriber_gets_nothing(self):
        """The socket id a client event came from is skipped; the others get the frame."""
        write_to_subscribers({"1.1": Subscriber(self.transport)}, b"not for the sender", "1.1")
        write_to_subscribers({"1.1": Subscriber(self.transport)}, b"for everyone", "2.2")
        received = yield self.client.until(12)
        self.assertEqual(received, b"for everyone")
