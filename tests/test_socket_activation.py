"""Socket activation (debian/soketify.socket): systemd holds the listening socket and hands it to the
daemon, whose config says listen = ["systemd:domain=...:index=0"]. systemd-socket-activate plays
systemd: it binds the port, waits for the first connection, then starts the real twistd with the
socket as descriptor 3 (LISTEN_FDS, LISTEN_PID), as systemd does for soketify.service."""

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def socket_activate_path() -> str | None:
    found = shutil.which("systemd-socket-activate")
    if found is None and os.access("/usr/bin/systemd-socket-activate", os.X_OK):
        found = "/usr/bin/systemd-socket-activate"
    return found


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class Received:
    """What a blocking socket has sent, read as far as a test needs."""

    def __init__(self, connection: socket.socket, test_case: unittest.TestCase):
        self.connection = connection
        self.test_case = test_case
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.connection.recv(65536)
        self.test_case.assertTrue(chunk, f"connection closed after {self.buffer!r}")
        self.buffer += chunk

    def until(self, separator: bytes) -> bytes:
        while separator not in self.buffer:
            self._more()
        found, _, self.buffer = self.buffer.partition(separator)
        return found

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._more()
        found, self.buffer = self.buffer[:count], self.buffer[count:]
        return found


class SocketActivationTests(unittest.TestCase):
    def setUp(self):
        self.activate = socket_activate_path()
        if self.activate is None:
            raise unittest.SkipTest("systemd-socket-activate is not installed (package systemd)")
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)

    def start(self, address: str, domain: str) -> subprocess.Popen:
        """systemd-socket-activate listening on ``address``, ready to start twistd soketify with
        listen = ["systemd:domain=<domain>:index=0"] on the first connection."""
        config = os.path.join(self.directory, "soketify.toml")
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = ["systemd:domain={domain}:index=0"]\n'
                    f'state_dir = "{self.directory}"\n'
                    '[[apps]]\nid = "1"\nkey = "app-key"\nsecret = "app-secret"\n')
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.log = os.path.join(self.directory, "output.log")
        output = open(self.log, "w")
        self.addCleanup(output.close)
        listening = threading.Event()
        # systemd-socket-activate passes only the variables named with -E (and HOME, PATH, TERM).
        # --fdname: systemd names every descriptor it passes (LISTEN_FDNAMES, after the socket unit
        # by default), and Twisted ignores descriptors that come without names.
        daemon = subprocess.Popen(
            [self.activate, "--listen", address, "--fdname", "soketify.socket",
             "-E", f"PYTHONPATH={ROOT}",
             twistd, "-n", "--pidfile=", "soketify", "--config", config],
            cwd=self.directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: daemon.poll() is None and daemon.kill())
        self.addCleanup(lambda: daemon.poll() is None or daemon.wait())

        def copy_output():
            # The activator, then twistd (exec'd in its place), write to the pipe until they end.
            for line in daemon.stdout:
                output.write(line.decode("utf-8", "replace"))
                output.flush()
                if b"Listening on" in line:
                    listening.set()
            listening.set()  # ended: the assertion below says why
        copier = threading.Thread(target=copy_output, daemon=True)
        copier.start()
        self.addCleanup(copier.join, 30)
        self.assertTrue(listening.wait(20), self.output())
        self.assertIsNone(daemon.poll(), self.output())
        return daemon

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def stop(self, daemon: subprocess.Popen) -> None:
        """SIGTERM reaches twistd itself (systemd-socket-activate exec'd it): a graceful stop."""
        daemon.send_signal(signal.SIGTERM)
        self.assertIn(daemon.wait(30), (0, -signal.SIGTERM), self.output())

    def check_http_then_websocket(self, family: int, host: str, port: int) -> None:
        # The first connection starts the daemon: it waits in the socket's queue meanwhile, as
        # connections do while soketify.service restarts.
        api = http.client.HTTPConnection(host, port, timeout=30)
        self.addCleanup(api.close)
        api.request("GET", "/ready")
        response = api.getresponse()
        self.assertEqual(response.status, 200, self.output())
        response.read()
        with socket.socket(family) as client:
            client.settimeout(30)
            client.connect((host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            client.sendall(
                f"GET /app/app-key?protocol=7&client=js&version=8.6.0 HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            received = Received(client, self)
            head = received.until(b"\r\n\r\n").decode().split("\r\n")
            self.assertTrue(head[0].startswith("HTTP/1.1 101"), head)
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (line.partition(":") for line in head[1:])}
            accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
            self.assertEqual(headers.get("sec-websocket-accept"), accept.decode())
            opcode, length = received.exactly(2)
            self.assertEqual(opcode, 0x81)  # a final text frame, unmasked
            if length == 126:
                length = struct.unpack("!H", received.exactly(2))[0]
            message = json.loads(received.exactly(length))
        self.assertEqual(message["event"], "pusher:connection_established")
        self.assertIn("socket_id", json.loads(message["data"]))

    def test_inet_socket(self):
        """An IPv4 socket from systemd (domain=INET) serves the REST API and WebSocket upgrades,
        including the connection that was waiting while the daemon started."""
        port = free_port()
        daemon = self.start(f"127.0.0.1:{port}", "INET")
        self.check_http_then_websocket(socket.AF_INET, "127.0.0.1", port)
        self.assertIn("Soketify listening on systemd:domain=INET:index=0", self.output())
        self.stop(daemon)

    def test_inet6_socket(self):
        """An IPv6 socket (domain=INET6, what soketify.socket's ListenStream=6001 gives) serves too."""
        if not ipv6_loopback():
            raise unittest.SkipTest("this host has no IPv6 loopback address")
        port = free_port(socket.AF_INET6, "::1")
        daemon = self.start(f"[::1]:{port}", "INET6")
        self.check_http_then_websocket(socket.AF_INET6, "::1", port)
        self.stop(daemon)


class ListenProblemTests(unittest.TestCase):
    """A listen endpoint that cannot be made is one line at start-up, not a traceback."""

    def problems(self, *listen):
        from soketify.config import parse
        from soketify.tap import listen_problems
        config = parse({"server": {"listen": list(listen)},
                        "apps": [{"id": "1", "key": "k", "secret": "s"}]}, "soketify.toml")
        return listen_problems(config)

    def test_a_systemd_socket_that_was_not_passed(self):
        """(This test process got no socket; one that did is SocketActivationTests.)"""
        [problem] = self.problems("systemd:domain=INET6:index=0")
        self.assertTrue(problem.startswith(
            "soketify.toml: server.listen: 'systemd:domain=INET6:index=0': systemd passed no such "
            "socket"), problem)
        self.assertIn("soketify.socket", problem)

    def test_unreadable_tls_files_and_typos(self):
        missing, typo = self.problems("ssl:6002:privateKey=/nonexistent/key.pem", "tcpp:6001")
        self.assertIn("'ssl:6002:privateKey=/nonexistent/key.pem'", missing)
        self.assertIn("No such file", missing)
        self.assertIn("'tcpp:6001'", typo)
        self.assertEqual(self.problems("tcp:6001", "tcp6:6003:interface=\\:\\:1"), [])
