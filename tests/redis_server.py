"""A real redis-server for tests: a child process on a free port, restartable on the same port."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.internet import defer, endpoints, protocol, task

START_TIMEOUT = 10.0  # seconds for redis-server to accept connections
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


def redis_server_path() -> str | None:
    """Where redis-server is, or None when it is not installed. SOKETIFY_REDIS_SERVER names another
    server binary to test against (a newer Redis, valkey-server)."""
    if os.environ.get("SOKETIFY_REDIS_SERVER"):
        return os.environ["SOKETIFY_REDIS_SERVER"]
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None)


def redis_server_installed() -> bool:
    """Whether tests that need a real Redis can run."""
    return redis_server_path() is not None


def require_redis_server(test_case):
    """Fail (not skip) a test when redis-server is missing: `make test` installs it."""
    if not redis_server_installed():
        test_case.fail("redis-server is not installed (apt-get install redis-server, or run `make test`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process(protocol.ProcessProtocol):
    def __init__(self):
        self.output = bytearray()
        self.ended = defer.Deferred()
        self.exited = False

    def outReceived(self, data):
        self.output = (self.output + data)[-65536:]  # the end is what explains a failure

    errReceived = outReceived

    def processEnded(self, reason):
        self.exited = True
        self.ended.callback(None)


class RedisServer:
    """redis-server with no persistence in a temporary directory; start, restart and stop are Deferreds."""

    def __init__(self, reactor, password: str | None = None, extra_args=(), tls_files=None):
        self.reactor = reactor
        self.password = password
        self.extra_args = tuple(extra_args)
        self.tls_files = tls_files  # (key path, certificate path): serve TLS only, on the port
        self.port = None
        self.directory = None
        self._process = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls_files else 'redis'}://{auth}127.0.0.1:{self.port}"

    async def start(self):
        """Start on a free port (the same port once chosen) and wait until it accepts connections."""
        path = redis_server_path()
        if path is None:
            raise RuntimeError("redis-server is not installed")
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="soketify-redis-")
        if self.port is None:
            self.port = free_port()
        args = [path, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
        if self.tls_files:
            key, cert = self.tls_files
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-key-file", key, "--tls-cert-file", cert,
                     "--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self._process = _Process()
        self.reactor.spawnProcess(self._process, path, args, env=None)
        await self._wait_until_accepting()

    async def _wait_until_accepting(self):
        endpoint = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=1)
        deadline = self.reactor.seconds() + START_TIMEOUT
        while True:
            if self._process.exited:
                raise RuntimeError(f"redis-server exited at start:\n{self._process.output.decode(errors='replace')}")
            try:
                probe = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            except Exception:
                if self.reactor.seconds() > deadline:
                    await self.stop()
                    raise RuntimeError(f"redis-server did not accept connections within {START_TIMEOUT} s")
                await task.deferLater(self.reactor, 0.02, lambda: None)
            else:
                probe.transport.abortConnection()
                return

    async def stop(self):
        """SIGTERM, then wait for the exit (SIGKILL if it takes too long). Harmless when not running."""
        process, self._process = self._process, None
        if process is None or process.exited:
            return
        process.transport.signalProcess("TERM")
        killer = self.reactor.callLater(STOP_TIMEOUT, _kill, process)
        await process.ended
        if killer.active():
            killer.cancel()

    async def restart(self, password: str | None = ...):
        """Stop and start again on the same port, optionally with another password (None: none)."""
        await self.stop()
        if password is not ...:
            self.password = password
        await self.start()

    async def close(self):
        """Stop and remove the temporary directory."""
        await self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _kill(process):
    if not process.exited:
        process.transport.signalProcess("KILL")


async def start_redis(test_case, reactor, password=None, extra_args=(), tls_files=None) -> RedisServer:
    """Start a RedisServer that the test case's cleanup stops; fails the test if redis-server is missing."""
    require_redis_server(test_case)
    server = RedisServer(reactor, password, extra_args, tls_files)
    test_case.addCleanup(lambda: defer.ensureDeferred(server.close()))
    await server.start()
    return server
