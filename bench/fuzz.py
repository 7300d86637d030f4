"""Hostile input against a running daemon: how many answers are 5xx, how many tracebacks the log holds.

Starts Soketify (twistd, as bench/run.py does), then sends, with a fixed seed:
  - N signed REST requests (events, batch_events, channel queries) with hostile bodies and queries:
    deep nesting, lone surrogates, invalid UTF-8, wrong JSON types, random bytes;
  - M WebSocket frames of the same kinds over a few raw connections (reconnecting when one is closed).
Prints the counts of each HTTP status class, the close codes seen, and the tracebacks and size of the
server's log. Not a test (tests/test_hostile_input.py is); a figure for the issue notes.

Usage:  .venv/bin/python bench/fuzz.py [--requests 5000] [--frames 20000] [--seed 1]
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from urllib.parse import urlencode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import APP_ID, APP_KEY, APP_SECRET, Server  # noqa: E402

NESTINGS = ["[" * 30000 + "]" * 30000, '{"a":' * 10000 + "1" + "}" * 10000]


def hostile_value(rng: random.Random, depth=0):
    kind = rng.randrange(9)
    if kind == 0 and depth < 3:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 1 and depth < 3:
        keys = ["name", "data", "channel", "channels", "socket_id", "info", "batch", "x"]
        return {rng.choice(keys): hostile_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return rng.choice([None, True, 5, -1.5, "", "news", "private-a", "presence-a", "\ud800",
                       "a\udfffb", "x" * 300, "1.2", "client-x", "pusher:subscribe", "\U0001F600"])


def hostile_body(rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return rng.choice(NESTINGS).encode()
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if choice == 2:
        return b'{"name":"e","channels":["a"],"data":"\xff\xfe"}'
    value = hostile_value(rng)
    if choice == 3:
        value = {"batch": [hostile_value(rng) for _ in range(rng.randrange(4))]}
    return json.dumps(value).encode()  # ensure_ascii: surrogates as \ud800 escapes


def signed_target(path: str, method: str, body: bytes, extra: dict) -> str:
    query = {"auth_key": APP_KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0"}
    if body:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    query.update(extra)
    signed = "&".join(f"{k.lower()}={query[k]}" for k in sorted(query, key=str.lower))
    query["auth_signature"] = hmac.new(APP_SECRET.encode(), f"{method}\n{path}\n{signed}".encode(),
                                       hashlib.sha256).hexdigest()
    return f"{path}?{urlencode(query)}"


def http(port: int, method: str, target: str, body: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n".encode() + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


class RawWebSocket:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        self.buffer = self.buffer.split(b"\r\n\r\n", 1)[1]
        self.sock.setblocking(False)

    def send(self, payload: bytes, opcode=1):
        mask = os.urandom(4)
        n = len(payload)
        head = (struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else
                struct.pack("!BBH", 0x80 | opcode, 0xFE, n) if n < 65536 else
                struct.pack("!BBQ", 0x80 | opcode, 0xFF, n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def close_code(self):
        """The close code received so far, if any (reads what is there, without waiting)."""
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except BlockingIOError:
            pass
        while len(self.buffer) >= 2:
            n, offset = self.buffer[1] & 0x7F, 2
            if n == 126:
                n, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif n == 127:
                n, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < offset + n:
                break
            opcode, payload = self.buffer[0] & 0x0F, self.buffer[offset:offset + n]
            self.buffer = self.buffer[offset + n:]
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    server = Server("soketify", tempfile.mkdtemp(prefix="fuzz-"))
    server.start()
    try:
        port = server.ws_port
        statuses = Counter()
        for _ in range(args.requests):
            path = rng.choice([f"/apps/{APP_ID}/events", f"/apps/{APP_ID}/batch_events",
                               f"/apps/{APP_ID}/channels", f"/apps/{APP_ID}/channels/%FF",
                               f"/apps/{APP_ID}/channels/news"])
            method = "POST" if path.endswith("events") else "GET"
            body = hostile_body(rng) if method == "POST" else b""
            extra = rng.choice([{}, {"info": "user_count"}, {"filter_by_prefix": "\ud800"},
                                {"x": "%FF"}])
            try:
                target = signed_target(path, method, body, extra)
            except UnicodeEncodeError:
                target = signed_target(path, method, body, {})
            statuses[http(port, method, target, body) // 100 * 100] += 1
        closes = Counter()
        sockets = [RawWebSocket(port) for _ in range(4)]
        for n in range(args.frames):
            i = n % len(sockets)
            choice = rng.randrange(5)
            if choice == 0:
                payload = rng.choice(NESTINGS).encode()[:60000]
            elif choice == 1:
                payload = json.dumps({"event": rng.choice(["pusher:subscribe", "client-x", "pusher:x"]),
                                      "channel": hostile_value(rng),
                                      "data": hostile_value(rng)}).encode()
            else:
                payload = json.dumps(hostile_value(rng)).encode()
            try:
                sockets[i].send(payload, opcode=rng.choice([1, 1, 1, 2]))
            except OSError:
                pass
            if n % 50 == 0:
                code = sockets[i].close_code()
                if code is not None:
                    closes[code] += 1
                    sockets[i].sock.close()
                    sockets[i] = RawWebSocket(port)
        time.sleep(1)
    finally:
        server.stop()
    log = open(server.logpath, "rb").read()
    print(f"REST: {args.requests} hostile requests: " +
          ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) +
          f" ({statuses.get(500, 0)} answered 5xx)")
    print(f"WebSocket: {args.frames} hostile frames on 4 connections at a time; closes: "
          + (", ".join(f"{code}: {count}" for code, count in sorted(closes.items())) or "none"))
    print(f"server log: {len(log)} bytes, {log.count(b'Traceback')} tracebacks, "
          f"{log.count(b'Bad frame from')} 'Bad frame' lines, {log.count(b'more bad frames')} count lines")


if __name__ == "__main__":
    main()
