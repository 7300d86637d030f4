"""Writing a frame to a TCP connection with one ``send()`` at once when nothing is queued.

Twisted's ``transport.write`` only appends to a buffer and asks the reactor to watch the socket for
writability; the reactor then wakes, sends and stops watching. At everyday load, when each socket
gets one event at a time, every delivery so pays two ``epoll_ctl`` calls and a wake-up besides its
``send``. When nothing is queued on the transport, sending at once does the same work with one
system call. Whatever ``send`` does not take (a full socket buffer), and any error, goes through
Twisted's buffer as before, which keeps the order of bytes, the back-pressure accounting (the push
producer is paused when the buffer grows) and the detection of a lost connection.

Every Twisted internal this relies on is named here (``send_now``) and checked by
``tests/test_socket_writes.py``; ``PusherServerProtocol.write_frame`` writes with ``send_now``.
"""

from __future__ import annotations

from twisted.internet.tcp import Server


def send_now(transport, data: bytes) -> bytes:
    """Send what the socket takes at once if ``transport`` is a plain TCP connection with nothing
    queued in Twisted's buffer and no close under way; return the rest (empty when all went), which
    the caller hands to ``transport.write``. TLS and test transports get everything back."""
    if (transport.__class__ is not Server or transport._tempDataLen or transport.dataBuffer
            or transport.disconnecting):
        return data
    try:
        sent = transport.socket.send(data)
    except OSError:
        return data  # EAGAIN (the socket buffer is full) or a broken connection Twisted finds
    return data[sent:]
