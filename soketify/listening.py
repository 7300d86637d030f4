"""Listening ports shared by the worker processes of one host.

Each worker opens every ``listen`` endpoint itself with SO_REUSEPORT; the kernel then hashes each new
connection to one of the workers' sockets. Measured against one socket passed to every worker
(``bench/spread.py``), this spreads connections evenly (max/min 1.00-1.08 over 2 and 3 workers)
where a shared socket goes to whichever worker wakes first (max/min 1.07-2.35, up to 4 in bursts).
"""

from __future__ import annotations

import socket

from twisted.application import service
from twisted.internet import tcp
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

log = Logger()

# Endpoint kinds whose ports can be shared this way.
REUSABLE_ENDPOINTS = ("tcp", "tcp6", "ssl")


class ReusePortTCP(tcp.Port):
    def createInternetSocket(self):
        sock = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


class ReusePortReactor:
    """The reactor, except that the TCP and TLS ports endpoints open through it set SO_REUSEPORT."""

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        listening = ReusePortTCP(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog,
                              interface)


class EndpointListener(service.Service):
    """Listens on one endpoint while running; ``listening`` fires with the port, or fails (the
    address is taken, say) so that a worker can report it and end."""

    def __init__(self, endpoint, factory):
        self._endpoint = endpoint
        self._factory = factory
        self._port = None
        self.listening = None

    def startService(self):
        super().startService()
        self.listening = self._endpoint.listen(self._factory)

        def listening(port):
            self._port = port
            return port
        self.listening.addCallback(listening)

    def stopService(self):
        super().stopService()
        if self._port is None:
            return None
        port, self._port = self._port, None
        return port.stopListening()


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """The TLS settings of one ``ssl:`` listener, read again from their files by ``reload`` (SIGHUP):
    each new connection asks for its TLS connection here, so new handshakes use the new certificate
    while open connections keep theirs."""

    def __init__(self, description: str, reactor):
        self.description = description
        self._reactor = reactor
        self._current = self._read()

    def _read(self):
        # The endpoint parser reads the key and certificate files named in the description.
        return serverFromString(self._reactor, self.description)._sslContextFactory

    def reload(self) -> None:
        """Read the files again; raises (and keeps the current ones) if they cannot be used."""
        self._current = self._read()

    def serverConnectionForTLS(self, protocol):
        return self._current.serverConnectionForTLS(protocol)


def listening_endpoint(description: str, reactor):
    """The endpoint for one ``listen`` entry, and its ReloadableTLS if it is an ``ssl:`` one (else
    None). ``reactor`` may be a ReusePortReactor."""
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return endpoint, None
    tls = ReloadableTLS(description, reactor)
    endpoint._sslContextFactory = tls
    return endpoint, tls
