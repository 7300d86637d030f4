"""The hub and the session layer with small fake connections and an engine that answers late."""

import json

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from soketify import protocol, signing
from soketify.apps import AppRegistry
from soketify.cluster.interfaces import ClusterUnavailable, IConnection
from soketify.cluster.local import LocalCluster
from soketify.config import AppConfig, LimitsConfig
from soketify.frames import text_frame
from soketify.hub import Hub
from soketify.session import MAX_BACKLOG, Sessions
from soketify.websocket import PusherServerProtocol

APP = AppConfig(id="app-id", key="app-key", secret="app-secret")


@implementer(IConnection)
class FakeConnection:
    """Records what the node sends it; frames are decoded back to JSON for the assertions."""

    channels = frozenset()
    user_id = None
    user_info = None
    watchlist = ()
    authorized = False
    closing = False
    closed = False
    backlog = None
    connected_at = 0.0
    client_event_window = 0.0
    client_events_in_window = 0
    bad_frames_window = 0.0
    bad_frames_in_window = 0
    remote_address = "10.0.0.7"

    def __init__(self, socket_id: str, app=APP):
        self.socket_id = socket_id
        self.app = app
        self.received: list[dict] = []
        self.close_code = None

    def send(self, text: str) -> None:
        self.received.append(json.loads(text))

    def write_frame(self, frame: bytes) -> None:
        length = frame[1] & 0x7F
        offset = 2 if length < 126 else (4 if length == 126 else 10)
        self.received.append(json.loads(frame[offset:]))

    def close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.closing = True

    def events(self) -> list[str]:
        names, self.received = [frame["event"] for frame in self.received], []
        return names


class LateCluster(LocalCluster):
    """The local engine, but joins and sign-ins run only when the test releases them, in the order
    they were asked (as a remote engine would: answers and notifications in one order)."""

    def __init__(self, clock):
        super().__init__(clock, LimitsConfig())
        self.held: list[tuple[object, tuple, Deferred]] = []
        self.unavailable = False

    def _later(self, operation, args) -> Deferred:
        if self.unavailable:
            return fail(ClusterUnavailable())
        late = Deferred()
        self.held.append((operation, args, late))
        return late

    def join(self, *args):
        return self._later(super().join, args)

    def sign_in(self, *args):
        return self._later(super().sign_in, args)

    def release(self) -> None:
        held, self.held = self.held, []
        for operation, args, late in held:
            operation(*args).chainDeferred(late)


def message(event: str, data=None, channel=None):
    return protocol.decode(json.dumps({"event": event, "data": data or {}, "channel": channel}))


class HubTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.cluster = LateCluster(self.clock)
        self.frames = []

        def counting_frame(payload: bytes) -> bytes:
            self.frames.append(payload)
            return text_frame(payload)
        self.hub = Hub(AppRegistry([APP]), self.cluster, counting_frame, LimitsConfig(), self.clock)
        self.sessions = Sessions(self.hub, LimitsConfig(), self.clock)

    def connect(self, n: int) -> FakeConnection:
        connection = FakeConnection(f"1.{n}")
        self.assertIsNone(self.hub.admit(APP))
        self.hub.connect(connection)
        return connection

    def test_connections_provide_the_interface(self):
        """The WebSocket protocol and the fake both provide IConnection."""
        self.assertTrue(verifyClass(IConnection, PusherServerProtocol))
        self.assertTrue(verifyObject(IConnection, FakeConnection("1.1")))

    def test_frames_wait_behind_an_unanswered_subscribe(self):
        """A ping sent after a subscribe is answered after the subscribe's own reply."""
        client = self.connect(1)
        self.sessions.receive(client, message(protocol.SUBSCRIBE, {"channel": "news"}))
        self.sessions.receive(client, message(protocol.PING))
        self.sessions.receive(client, message(protocol.UNSUBSCRIBE, {"channel": "news"}))
        self.assertEqual(client.events(), [])
        self.cluster.release()
        self.assertEqual(client.events(), [protocol.SUBSCRIPTION_SUCCEEDED, protocol.PONG])
        stats = self.successResultOf(self.hub.channel_stats(APP.id, ["news"]))
        self.assertFalse(stats["news"].occupied, "the unsubscribe ran after the subscribe")

    def test_new_member_is_not_told_of_itself_and_others_hear_it_after_their_own_reply(self):
        """member_added goes to the other members, never before their own subscription_succeeded."""
        alice, bob = self.connect(1), self.connect(2)
        for client, user in ((alice, "alice"), (bob, "bob")):
            data = json.dumps({"user_id": user})
            auth = signing.channel_auth(APP.key, APP.secret, client.socket_id, "presence-r", data)
            self.sessions.receive(client, message(protocol.SUBSCRIBE, {
                "channel": "presence-r", "auth": auth, "channel_data": data}))
        self.cluster.release()
        self.assertEqual(alice.events(), [protocol.SUBSCRIPTION_SUCCEEDED, protocol.MEMBER_ADDED])
        self.assertEqual(bob.events(), [protocol.SUBSCRIPTION_SUCCEEDED])

    def test_closed_while_the_cluster_answers_leaves_and_signs_out(self):
        """A connection that closes before its subscribe or sign-in is answered is not left behind."""
        client = self.connect(1)
        self.sessions.receive(client, message(protocol.SUBSCRIBE, {"channel": "news"}))
        user_data = json.dumps({"id": "u"})
        self.sessions.receive(client, message(protocol.SIGNIN, {
            "user_data": user_data,
            "auth": signing.user_auth(APP.key, APP.secret, client.socket_id, user_data)}))
        self.hub.disconnect(client)
        self.cluster.release()
        self.assertEqual(client.events(), [])
        stats = self.successResultOf(self.hub.channel_stats(APP.id, ["news"]))
        self.assertFalse(stats["news"].occupied)
        online = self.successResultOf(LocalCluster.sign_in(self.cluster, APP, "1.9", "w", ("u",)))
        self.assertEqual(online, set())

    def test_too_many_waiting_frames_close_the_connection_with_4100(self):
        """A client that floods frames while one waits is told to back off (4100), others unharmed."""
        client, other = self.connect(1), self.connect(2)
        self.sessions.receive(client, message(protocol.SUBSCRIBE, {"channel": "news"}))
        for _ in range(MAX_BACKLOG + 1):
            self.sessions.receive(client, message(protocol.PING))
        self.assertEqual(client.close_code, protocol.OVER_CAPACITY)
        self.assertEqual(client.received[-1]["data"]["code"], protocol.OVER_CAPACITY)
        self.sessions.receive(other, message(protocol.PING))
        self.assertEqual(other.events(), [protocol.PONG])

    def test_an_event_is_framed_once_for_every_subscriber(self):
        """Publishing to many local subscribers frames the event once."""
        clients = [self.connect(n) for n in range(5)]
        for client in clients:
            self.sessions.receive(client, message(protocol.SUBSCRIBE, {"channel": "news"}))
        self.cluster.release()
        self.frames.clear()
        self.hub.publish(APP.id, ["news"], "e", "1", except_socket_id="1.0")
        self.assertEqual(len(self.frames), 1)
        self.assertEqual([c.received[-1]["event"] for c in clients[1:]], ["e"] * 4)
        self.assertEqual(clients[0].received[-1]["event"], protocol.SUBSCRIPTION_SUCCEEDED)

    def test_an_unreachable_cluster_refuses_the_subscription_not_the_connection(self):
        """With the engine unreachable a subscribe gets a ServerError; the connection stays open."""
        self.cluster.unavailable = True
        client = self.connect(1)
        self.sessions.receive(client, message(protocol.SUBSCRIBE, {"channel": "news"}))
        self.assertEqual(client.received[0]["event"], protocol.SUBSCRIPTION_ERROR)
        self.assertEqual(client.received[0]["data"]["type"], "ServerError")
        self.assertIsNone(client.close_code)
        self.sessions.receive(client, message(protocol.PING))
        self.assertEqual(client.received[-1]["event"], protocol.PONG)

    def test_no_connections_waits_for_the_last_one(self):
        """when_no_connections fires once the last connection is gone, not before."""
        first, second = self.connect(1), self.connect(2)
        gone = self.hub.when_no_connections()
        self.hub.disconnect(first)
        self.assertNoResult(gone)
        self.hub.disconnect(second)
        self.successResultOf(gone)
