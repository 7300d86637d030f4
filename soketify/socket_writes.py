"""Writing a frame to a TCP connection with one ``send()`` at once when nothing is queued.

Twisted's ``transport.write`` only appends to a buffer and asks the reactor to watch the socket for
writability; the reactor then wakes, sends and stops watching. At everyday load, when each socket
gets one event at a time, every delivery so pays two ``epoll_ctl`` calls and a wake-up besides its
``send``. When nothing is queued on the transport, sending at once does the same work with one
system call. Whatever ``send`` does not take (a full socket buffer), and any error, goes through
Twisted's buffer as before, which keeps the order of bytes, the back-pressure accounting (the push
producer is paused when the buffer grows) and the detection of a lost connection.

Every Twisted internal this relies on is named here (``nothing_queued``) and checked by
``tests/test_socket_writes.py``. ``PusherServerProtocol.write_frame`` inlines ``write_now`` (it
runs once per delivery).
"""

from __future__ import annotations

from twisted.internet.tcp import Server


def nothing_queued(transport) -> bool:
    """A plain TCP connection with no bytes waiting in Twisted's buffer and no close under way:
    a frame may be sent at once. Anything else (TLS, test transports) goes through ``write``."""
    return (transport.__class__ is Server and not transport._tempDataLen
            and not transport.dataBuffer and not transport.disconnecting)


def write_now(transport, data: bytes) -> None:
    """Write ``data``: with one send() at once when nothing is queued, else (and for whatever
    send() does not take) through ``transport.write``."""
    if nothing_queued(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN (the socket buffer is full) or a broken connection Twisted finds
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
