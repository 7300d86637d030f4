"""The plain-upgrade fast path: which requests it takes, and that a client sees the same as through
Autobahn's handshake (the answer's bytes, the frames, the close)."""

import re

from twisted.trial import unittest

from soketify.handshake import Upgrade, accept_value, plain_upgrade
from tests.support import APP, Rig, _Connection, make_config

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# What the `ws` package (pusher-js in Node) sends.
NODE = ("GET /app/app-key?protocol=7&client=js&version=8.6.0 HTTP/1.1\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: websocket\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        "Host: 127.0.0.1:6001\r\n\r\n")
# What Chromium sends (pusher-js in a page).
BROWSER = ("GET /app/app-key?protocol=7&client=js&version=8.4.0&flash=false HTTP/1.1\r\n"
           "Host: localhost:6001\r\n"
           "Connection: Upgrade\r\n"
           "Pragma: no-cache\r\n"
           "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n"
           "Upgrade: websocket\r\n"
           "Origin: http://localhost:8000\r\n"
           "Sec-WebSocket-Version: 13\r\n"
           "Accept-Encoding: gzip, deflate, br, zstd\r\n"
           "Accept-Language: en-US,en;q=0.9\r\n"
           "Cookie: a=b; c=d\r\n"
           f"Sec-WebSocket-Key: {KEY}\r\n"
           "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")


def changed(request: str, old: str, new: str) -> str:
    assert old in request, old
    return request.replace(old, new, 1)


# Plain requests: (request, what plain_upgrade reads from it).
PLAIN = [
    (NODE, Upgrade("/app/app-key", "7", KEY)),
    (BROWSER, Upgrade("/app/app-key", "7", KEY, "http://localhost:8000")),
    (changed(NODE, "Upgrade: websocket", "upgrade:   WebSocket"), Upgrade("/app/app-key", "7", KEY)),
    (changed(NODE, "Connection: Upgrade", "Connection: keep-alive, Upgrade"),
     Upgrade("/app/app-key", "7", KEY)),
    (changed(NODE, "?protocol=7&client=js", "?client=js&protocol=&protocol=5"),
     Upgrade("/app/app-key", "5", KEY)),
    (changed(NODE, "?protocol=7&client=js&version=8.6.0", ""), Upgrade("/app/app-key", None, KEY)),
    (changed(NODE, "Host: 127.0.0.1:6001", "Host: [::1]:6001"), Upgrade("/app/app-key", "7", KEY)),
    (changed(NODE, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n", ""),
     Upgrade("/app/app-key", "7", KEY)),
    (changed(NODE, "/app/app-key", "/app/nope"), Upgrade("/app/nope", "7", KEY)),
    (changed(BROWSER, "Origin: http://localhost:8000", "Origin: https://Example.COM"),
     Upgrade("/app/app-key", "7", KEY, "https://Example.COM")),
]

# Requests left to Autobahn: each differs from a plain one in one way.
NOT_PLAIN = {
    "incomplete": NODE[:-2],
    "followed by a frame": NODE + "\x81\x80\x00\x00\x00\x00",
    "POST": changed(NODE, "GET", "POST"),
    "HTTP/1.0": changed(NODE, "HTTP/1.1", "HTTP/1.0"),
    "repeated header": changed(NODE, "Host:", "Host: a\r\nHost:"),
    "header without colon": changed(NODE, "Connection: Upgrade", "Connection Upgrade"),
    "empty header name": changed(NODE, "Connection: Upgrade", "Connection: Upgrade\r\n : x"),
    "tab in a value": changed(BROWSER, "a=b; c=d", "a=b;\tc=d"),
    "bare LF": changed(NODE, "Connection: Upgrade\r\n", "Connection: Upgrade\n"),
    "not ASCII": changed(BROWSER, "a=b", "a=\u00e9"),
    "no Host": changed(NODE, "Host: 127.0.0.1:6001\r\n", ""),
    "bad Host port": changed(NODE, "127.0.0.1:6001", "127.0.0.1:x"),
    "no Upgrade": changed(NODE, "Upgrade: websocket\r\n", ""),
    "Upgrade not websocket": changed(NODE, "Upgrade: websocket", "Upgrade: h2c"),
    "Connection without upgrade": changed(NODE, "Connection: Upgrade", "Connection: close"),
    "version 8": changed(NODE, "Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
    "short key": changed(NODE, KEY, KEY[2:]),
    "bad key": changed(NODE, KEY, "!" + KEY[1:]),
    "subprotocol": changed(NODE, "Upgrade: websocket", "Upgrade: websocket\r\nSec-WebSocket-Protocol: a"),
    "null origin": changed(BROWSER, "http://localhost:8000", "null"),
    "file origin": changed(BROWSER, "http://localhost:8000", "file://"),
    "origin with a path": changed(BROWSER, "http://localhost:8000", "http://localhost:8000/x"),
    "origin port out of range": changed(BROWSER, "localhost:8000", "localhost:99999"),
    "other extension offer": changed(NODE, "client_max_window_bits", "server_no_context_takeover"),
    "fragment": changed(NODE, "version=8.6.0", "version=8.6.0#x"),
    "percent in the query": changed(NODE, "protocol=7", "protocol=%37"),
    "plus in the query": changed(NODE, "version=8.6.0", "version=8+6"),
    "parameters in the path": changed(NODE, "/app/app-key", "/app/app-key;x"),
    "absolute form": changed(NODE, "GET /app/", "GET //host/app/"),
}


class PlainUpgradeTests(unittest.TestCase):
    def test_plain_requests_are_read(self):
        """Requests as pusher-js sends them (Node, browser) and their harmless variants are read:
        path, the protocol query value as parse_qs gives it first, and the key."""
        for request, expected in PLAIN:
            self.assertEqual(plain_upgrade(request.encode("latin-1")), expected, request)

    def test_anything_else_is_left_to_autobahn(self):
        """Each unusual or invalid request gets None, so Autobahn's handshake answers it."""
        taken = [name for name, request in NOT_PLAIN.items()
                 if plain_upgrade(request.encode("latin-1")) is not None]
        self.assertEqual(taken, [])

    def test_accept_value_is_rfc_6455s(self):
        """The example key of RFC 6455 section 1.3 gives the RFC's accept value."""
        self.assertEqual(accept_value(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")


def normalized(raw: bytes) -> bytes:
    """A server's bytes with the socket id (and so the frame's length) and the accept value made
    constant."""
    raw = re.sub(rb'\x81[\x00-\x7d]\{"event":"pusher:connection_established"',
                 b'\x81L{"event":"pusher:connection_established"', raw)
    raw = re.sub(rb'socket_id\\":\\"\d+\.\d+', b'socket_id\\":\\"N', raw)
    return re.sub(rb"Sec-WebSocket-Accept: \S+", b"Sec-WebSocket-Accept: A", raw)


class SameAnswerTests(unittest.TestCase):
    """Through the whole service in memory: the fast path and Autobahn's handshake, side by side."""

    def answer(self, request: str, fast: bool, config=None) -> tuple[bytes, object]:
        rig = Rig(self, config)
        websocket = rig.service.websocket
        if fast:  # the fast path must answer, not Autobahn's handshake
            self.patch(websocket, "buildProtocol", lambda addr: self.fail("Autobahn's handshake"))
        else:
            self.patch(websocket, "open_upgraded", lambda transport, head: None)
        connection = _Connection(rig)
        connection.transport.protocol = connection.protocol
        connection.feed(request.encode("latin-1"))
        rig.reactor.advance(0)
        return connection.transport.value(), connection.transport

    def assertSameAnswer(self, request: str, config=None):
        fast, fast_transport = self.answer(request, True, config)
        autobahn, autobahn_transport = self.answer(request, False, config)
        self.assertEqual(normalized(fast), normalized(autobahn))
        self.assertEqual(fast_transport.disconnecting, autobahn_transport.disconnecting)
        return fast

    def test_plain_requests_get_autobahns_answer(self):
        """Every plain request gets, byte for byte, what Autobahn's handshake answers: the 101 with
        the right accept value and connection_established, or a refusal frame and close."""
        for request, _ in PLAIN:
            answer = self.assertSameAnswer(request)
            self.assertTrue(answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), answer)
            self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", answer)

    def test_refusals_are_the_same(self):
        """A disabled app, an unknown key, a missing protocol: the same frame and close either way."""
        disabled = make_config(apps=[dict(APP, enabled=False)])
        answer = self.assertSameAnswer(NODE, disabled)
        self.assertIn(b'"code":4003', answer)
        for request, code in ((changed(NODE, "app-key", "nope"), b"4001"),
                              (changed(NODE, "protocol=7", "protocol=9"), b"4007"),
                              (changed(NODE, "?protocol=7&", "?"), b"4008")):
            answer = self.assertSameAnswer(request)
            self.assertIn(b'"code":' + code, answer)

    def test_established_connection_works_as_any(self):
        """A connection opened by the fast path subscribes and receives like any other."""
        rig = Rig(self)
        client = rig.connect()
        client.send("pusher:subscribe", {"channel": "news"})
        self.assertEqual(client.next_event()["event"], "pusher_internal:subscription_succeeded")
        response = rig.signed("POST", "/apps/app-id/events",
                              {"name": "flash", "channels": ["news"], "data": "{}"})
        self.assertEqual(response.status, 200)
        event = client.next_event()
        self.assertEqual((event["event"], event["channel"]), ("flash", "news"))
