"""In-memory test rig: the real service on a MemoryReactorClock, clients on StringTransports."""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from urllib.parse import urlencode

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from soketify import config as config_module, signing
from soketify.tap import SoketifyService

APP = {"id": "app-id", "key": "app-key", "secret": "app-secret"}


def make_config(**sections):
    """A Config from keyword sections; ``apps`` defaults to the one test app."""
    data = {"apps": [dict(APP)]}
    data.update(sections)
    return config_module.parse(data, "<test>")


class AbortableTransport(StringTransport):
    """A StringTransport that reports its loss on the next reactor turn, as TCP does."""

    def __init__(self, clock, protocol_holder):
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self._clock = clock
        self._holder = protocol_holder
        self.lost = False

    def _lose(self):
        if not self.lost:
            self.lost = True
            self._clock.callLater(0, self._holder.connection_lost)

    def unregisterProducer(self):
        """Like TCP transports, unregistering with nothing registered is harmless."""
        self.producer = None

    def loseConnection(self):
        super().loseConnection()
        self._lose()

    def abortConnection(self):
        super().abortConnection()
        self._lose()


class Rig:
    """The whole service wired on a fake reactor; txaio's timers run on the same clock."""

    def __init__(self, test_case, config=None, start=True, service_kwargs=None):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(time.time())
        self._txaio_loop = txaio.config.loop
        txaio.config.loop = self.reactor
        test_case.addCleanup(self._restore)
        self.service = SoketifyService(config or make_config(), self.reactor, **(service_kwargs or {}))
        if start:
            self.service.startService()
        self.switch = self.service.listeners[0].factory

    def _restore(self):
        txaio.config.loop = self._txaio_loop

    @property
    def hub(self):
        return self.service.hub

    def advance(self, seconds: float, step: float = 1.0):
        while seconds > 0:
            self.reactor.advance(min(step, seconds))
            seconds -= step

    def connect(self, path="/app/app-key?protocol=7&client=js&version=8.6.0", established=True):
        client = WsClient(self, path)
        if established:
            frame = client.next_event()
            assert frame["event"] == "pusher:connection_established", frame
            client.socket_id = json.loads(frame["data"])["socket_id"]
        return client

    def http(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        return HttpClient(self).request(method, path, body, headers)

    def signed(self, method: str, path: str, body=None, params=None, app=APP, timestamp=None):
        """A REST request signed as the official SDKs sign it."""
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        query = {"auth_key": app["key"], "auth_timestamp": str(int(timestamp or self.reactor.seconds())),
                 "auth_version": "1.0"}
        if raw:
            query["body_md5"] = signing.body_md5(raw)
        query.update(params or {})
        query["auth_signature"] = signing.rest_signature(app["secret"], method, path, query)
        return self.http(method, f"{path}?{urlencode(query)}", raw,
                         {"Content-Type": "application/json"} if raw else None)


class _Connection:
    def __init__(self, rig: Rig):
        self.rig = rig
        self.protocol = rig.switch.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = AbortableTransport(rig.reactor, self)
        self.protocol.makeConnection(self.transport)

    def connection_lost(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.transport.protocol.connectionLost(Failure(ConnectionDone()))

    def feed(self, data: bytes):
        # After the first line the switch has handed the transport to the chosen protocol.
        target = self.transport.protocol if self.transport.protocol is not None else self.protocol
        target.dataReceived(data)


class HttpClient(_Connection):
    def request(self, method, path, body=b"", headers=None):
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.transport.protocol = self.protocol
        self.feed(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self.rig.reactor.advance(0)
        return HttpResponse(self.transport.value())


class HttpResponse:
    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if lines[0] else 0
        self.headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        if self.headers.get("transfer-encoding") == "chunked":
            self.body = _unchunk(self.body)

    def json(self):
        return json.loads(self.body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


class WsClient(_Connection):
    """A WebSocket client speaking through the real switch, Autobahn protocol and hub."""

    socket_id = None

    def __init__(self, rig: Rig, path: str):
        super().__init__(rig)
        self.transport.protocol = self.protocol
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        self._buffer = b""
        self._handshake_done = False
        self.close_code = None
        self.frames: list = []
        self.feed(request.encode())

    # -- receiving ---------------------------------------------------------------------------

    def _pump(self):
        self._buffer += self.transport.value()
        self.transport.clear()
        if not self._handshake_done:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self._buffer[:end].split(b"\r\n")[0]
            assert b" 101 " in status, self._buffer[:end]
            self._handshake_done = True
            self._buffer = self._buffer[end + 4:]
        while len(self._buffer) >= 2:
            b0, b1 = self._buffer[0], self._buffer[1]
            length, offset = b1 & 0x7F, 2
            if length == 126:
                if len(self._buffer) < 4:
                    return
                length, offset = struct.unpack("!H", self._buffer[2:4])[0], 4
            elif length == 127:
                if len(self._buffer) < 10:
                    return
                length, offset = struct.unpack("!Q", self._buffer[2:10])[0], 10
            if len(self._buffer) < offset + length:
                return
            payload = self._buffer[offset:offset + length]
            self._buffer = self._buffer[offset + length:]
            opcode = b0 & 0x0F
            if opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            elif opcode == 1:
                self.frames.append(json.loads(payload))
            elif opcode == 9:
                self.frames.append({"ping": payload})

    def events(self) -> list:
        """Every JSON frame received since the last call."""
        self._pump()
        frames, self.frames = self.frames, []
        return frames

    def next_event(self) -> dict:
        frames = self.events()
        assert frames, "no frame received"
        self.frames = frames[1:]
        return frames[0]

    # -- sending -----------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes):
        """One masked client frame, as browsers and pusher-js send them."""
        mask = os.urandom(4)
        length = len(payload)
        if length <= 125:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length <= 0xFFFF:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.feed(header + mask + masked)

    def send_raw(self, payload: bytes, binary=False):
        self.send_frame(2 if binary else 1, payload)

    def send(self, event: str, data=None, channel=None):
        frame = {"event": event, "data": data if data is not None else {}}
        if channel is not None:
            frame["channel"] = channel
        self.send_raw(json.dumps(frame).encode())

    def subscribe(self, channel: str, **data):
        self.send("pusher:subscribe", dict(data, channel=channel))
        return self.next_event()

    def close(self, code: int = 1000):
        self.send_frame(8, struct.pack("!H", code))
