"""Limits per client IP address on one node: open WebSocket connections, and handshakes per second.

A flood of connections from one address (a script gone wrong, an attacker) is refused before it
takes a place in any app: the client gets pusher:error 4100 and a close with 4100, after which
pusher-js waits about a second before it tries again (4200 would make it retry at once). Both limits are per node (per worker with workers), and
0 turns each off; with both off nothing is counted at all.
"""

from __future__ import annotations


class AddressLimits:
    def __init__(self, clock, max_connections: int, max_handshakes_per_second: int):
        self._clock = clock
        self.reconfigure(max_connections, max_handshakes_per_second)
        self._connections: dict[str, int] = {}
        self._handshakes: dict[str, list] = {}  # address -> [start of its second, handshakes]
        self._pruned_at = 0.0

    def reconfigure(self, max_connections: int, max_handshakes_per_second: int) -> None:
        """New limits (at start, and on a reload). Connections opened while nothing was counted
        stay uncounted: they are never released either."""
        self._max_connections = max_connections
        self._max_handshakes = max_handshakes_per_second
        self.enabled = bool(max_connections or max_handshakes_per_second)

    def admit(self, address: str) -> str | None:
        """Count one new connection from ``address``, or say why it is refused (then not counted).
        An admitted connection must be ``release``d when it ends."""
        if self._max_handshakes:
            now = self._clock.seconds()
            window = self._handshakes.get(address)
            if window is None or not 0 <= now - window[0] < 1.0:  # (a clock set back starts anew)
                if len(self._handshakes) > 10000 and now - self._pruned_at >= 1.0:
                    # Forget the addresses whose second is over, at most once a second.
                    self._pruned_at = now
                    self._handshakes = {a: w for a, w in self._handshakes.items()
                                        if 0 <= now - w[0] < 1.0}
                window = self._handshakes[address] = [now, 0]
            window[1] += 1
            if window[1] > self._max_handshakes:
                return (f"More than {self._max_handshakes} connections a second from your address; "
                        "try again later")
        if self._max_connections:
            count = self._connections.get(address, 0)
            if count >= self._max_connections:
                return (f"More than {self._max_connections} connections from your address; close "
                        "some first")
        self._connections[address] = self._connections.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        count = self._connections.get(address, 0) - 1
        if count > 0:
            self._connections[address] = count
        else:
            self._connections.pop(address, None)

    def connections_from(self, address: str) -> int:
        return self._connections.get(address, 0)
