"""Who may use the debug console: a password (or its scrypt hash) for people, a bearer token for
scripts; sessions in HttpOnly SameSite cookies, a CSRF token for every action, and wrong passwords
slowing the next attempt.

    python -m soketify.console_auth      # asks for a password, prints its console.password_hash
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import ipaddress
import secrets
import sys

# scrypt's cost for new hashes: about 50 ms and 16 MB here.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SESSION_SECONDS = 12 * 3600
# After this many wrong passwords from one address, each next attempt waits 1 s, 2 s, 4 s ... 60 s.
FREE_FAILURES = 3
MAX_WAIT = 60.0


MAX_SESSIONS = 1000
MAX_SOURCES = 10000


def _source(address: str) -> str:
    """Whom wrong passwords are counted against: an IPv4 address, or an IPv6 /64 (one host
    easily has a whole /64 to try from)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return "scrypt:%d:%d:%d:%s:%s" % (SCRYPT_N, SCRYPT_R, SCRYPT_P,
                                      base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def password_matches(given: str, password: str, password_hash: str) -> bool:
    """Constant time for a given length of secret; a hash is checked when configured."""
    if password_hash:
        _, n, r, p, salt, expected = password_hash.split(":")
        try:
            digest = hashlib.scrypt(given.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                    p=int(p), maxmem=256 * 1024 * 1024)
            return hmac.compare_digest(digest, base64.b64decode(expected))
        except ValueError:
            return False
    return bool(password) and hmac.compare_digest(given.encode(), password.encode())


def token_matches(header: bytes | None, token: str) -> bool:
    """An ``Authorization: Bearer <token>`` header carrying the configured token."""
    if not token or not header or not header.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(header[len(b"Bearer "):].strip(), token.encode())


class Sessions:
    """Signed-in browsers: session id -> (CSRF token, expiry); and wrong passwords per address."""

    def __init__(self, clock):
        self._clock = clock
        self._sessions: dict[str, tuple[str, float]] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, last at)

    def open(self) -> tuple[str, str]:
        """A new session: (its cookie value, its CSRF token)."""
        self._forget_expired()
        while len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            del self._sessions[next(iter(self._sessions))]
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._sessions[session] = (csrf, self._clock.seconds() + SESSION_SECONDS)
        return session, csrf

    def csrf_of(self, session: str | None) -> str | None:
        """The CSRF token of a live session, or None."""
        found = self._sessions.get(session or "")
        if found is None or found[1] < self._clock.seconds():
            return None
        return found[0]

    def close(self, session: str | None) -> None:
        self._sessions.pop(session or "", None)

    def close_all(self) -> None:
        """The password changed: every browser signs in again."""
        self._sessions.clear()

    def wait_before_trying(self, address: str) -> float:
        """Seconds this address must still wait before its next password attempt (0: none)."""
        count, last = self._failures.get(_source(address), (0, 0.0))
        if count < FREE_FAILURES:
            return 0.0
        wait = min(MAX_WAIT, 2.0 ** (count - FREE_FAILURES))
        return max(0.0, last + wait - self._clock.seconds())

    def failed(self, address: str) -> None:
        source = _source(address)
        count, _ = self._failures.pop(source, (0, 0.0))
        while len(self._failures) >= MAX_SOURCES:  # the least recently failed are forgotten
            del self._failures[next(iter(self._failures))]
        self._failures[source] = (count + 1, self._clock.seconds())

    def succeeded(self, address: str) -> None:
        self._failures.pop(_source(address), None)

    def _forget_expired(self) -> None:
        now = self._clock.seconds()
        for session in [s for s, (_, expiry) in self._sessions.items() if expiry < now]:
            del self._sessions[session]


def main() -> int:
    first = getpass.getpass("Console password: ")
    if not first or first != getpass.getpass("Again: "):
        print("The passwords are empty or differ", file=sys.stderr)
        return 1
    print(f'password_hash = "{hash_password(first)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
