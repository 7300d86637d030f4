"""Who may use the debug console: a password (or its scrypt hash) for people, a bearer token for
scripts; sessions in HttpOnly SameSite cookies, a CSRF token for every action, and wrong passwords
slowing the next attempt.

    python -m soketify.console_auth      # asks for a password, prints its console.password_hash
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import secrets
import sys

# scrypt's cost for new hashes: about 50 ms and 16 MB here.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SCRYPT_MAXMEM = 256 * 1024 * 1024
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


def parse_hash(password_hash: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, hash) of "scrypt:N:r:p:salt:hash"; ValueError saying what is wrong."""
    parts = password_hash.split(":")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(part) for part in parts[1:4])
        salt, digest = (base64.b64decode(part, validate=True) for part in parts[4:])
    except (ValueError, binascii.Error):
        raise ValueError('must be "scrypt:N:r:p:salt:hash" (salt and hash in base64) as printed '
                         'by python -m soketify.console_auth') from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not digest:
        raise ValueError("needs N a power of 2, r and p at least 1, and a hash")
    if 128 * r * (n + 2 + p) > SCRYPT_MAXMEM:  # what OpenSSL needs, checked before it runs
        raise ValueError(f"needs more than {SCRYPT_MAXMEM >> 20} MB to check: lower N or r")
    return n, r, p, salt, digest


def password_matches(given: str, password: str, password_hash: str) -> bool:
    """Constant time whatever is given; a hash is checked when configured (the config check
    made sure it parses)."""
    if password_hash:
        n, r, p, salt, expected = parse_hash(password_hash)
        digest = hashlib.scrypt(given.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM)
        return hmac.compare_digest(digest, expected)
    # Digests of equal length: the time says nothing of the password's length either.
    return bool(password) and hmac.compare_digest(hashlib.sha256(given.encode()).digest(),
                                                  hashlib.sha256(password.encode()).digest())


def token_matches(header: bytes | None, token: str) -> bool:
    """An ``Authorization: Bearer <token>`` header carrying the configured token."""
    if not token or not header or not header.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(header[len(b"Bearer "):].strip(), token.encode())


class Sessions:
    """Signed-in browsers, and wrong passwords per address.

    A session is a signed cookie value (expiry, nonce, HMAC), not a record: every worker of a host
    checks it with the same key, so a browser signed in on one worker is signed in on all. The key
    is derived from the host's key and the password, so a new password signs everyone out."""

    def __init__(self, clock, key: bytes | None = None, secret: str = ""):
        """``key``: the host's session key (the supervisor's, shared by its workers); ``secret``:
        what changes the key when it changes (the password or its hash)."""
        self._clock = clock
        self._host_key = key or secrets.token_bytes(32)
        self._key = b""
        self.rekey(secret)
        self._revoked: dict[str, float] = {}  # signed out here: value -> expiry
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, last at)

    def rekey(self, secret: str) -> None:
        """The password changed: every session so far is void."""
        self._key = hmac.new(self._host_key, b"console\0" + secret.encode(), hashlib.sha256).digest()

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def open(self) -> tuple[str, str]:
        """A new session: (its cookie value, its CSRF token)."""
        body = f"{int(self._clock.seconds() + SESSION_SECONDS)}.{secrets.token_urlsafe(16)}"
        session = f"{body}.{self._sign(body)}"
        return session, self._csrf(session)

    def _csrf(self, session: str) -> str:
        return self._sign("csrf\0" + session)[:32]

    def csrf_of(self, session: str | None) -> str | None:
        """The CSRF token of a valid, unexpired session, or None."""
        body, _, signature = (session or "").rpartition(".")
        expiry = body.partition(".")[0]
        if not body or not expiry.isdigit() or not hmac.compare_digest(
                signature.encode(), self._sign(body).encode()):
            return None
        if int(expiry) < self._clock.seconds() or session in self._revoked:
            return None
        return self._csrf(session)

    def close(self, session: str | None) -> None:
        """Signed out (here: the browser forgets its cookie too)."""
        if self.csrf_of(session) is None:
            return
        now = self._clock.seconds()
        for gone in [s for s, expiry in self._revoked.items() if expiry < now]:
            del self._revoked[gone]
        if len(self._revoked) < MAX_SESSIONS:
            self._revoked[session] = int(session.partition(".")[0])

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



def main() -> int:
    first = getpass.getpass("Console password: ")
    if not first or first != getpass.getpass("Again: "):
        print("The passwords are empty or differ", file=sys.stderr)
        return 1
    print(f'password_hash = "{hash_password(first)}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
