"""HMAC-SHA256 signatures of the Pusher protocol; every check is constant-time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping


def sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _matches(expected: str, given: object) -> bool:
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def channel_auth(key: str, secret: str, socket_id: str, channel: str,
                 channel_data: str | None = None) -> str:
    """The ``auth`` value a customer's auth endpoint returns for a private or presence channel."""
    message = f"{socket_id}:{channel}"
    if channel_data is not None:
        message += f":{channel_data}"
    return f"{key}:{sign(secret, message)}"


def verify_channel_auth(key: str, secret: str, socket_id: str, channel: str, auth: object,
                        channel_data: str | None = None) -> bool:
    """True when ``auth`` is ``key:signature`` over socket id, channel and the raw channel_data."""
    return _matches(channel_auth(key, secret, socket_id, channel, channel_data), auth)


def user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    return f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}"


def verify_user_auth(key: str, secret: str, socket_id: str, user_data: str, auth: object) -> bool:
    return _matches(user_auth(key, secret, socket_id, user_data), auth)


def rest_string_to_sign(method: str, path: str, params: Mapping[str, str]) -> str:
    """METHOD\\nPATH\\nQUERY: every parameter but auth_signature, keys lowercased and sorted, unescaped."""
    query = "&".join(f"{k}={v}" for k, v in sorted(
        (k.lower(), v) for k, v in params.items() if k.lower() != "auth_signature"))
    return f"{method}\n{path}\n{query}"


def rest_signature(secret: str, method: str, path: str, params: Mapping[str, str]) -> str:
    return sign(secret, rest_string_to_sign(method, path, params))


def verify_rest_signature(secret: str, method: str, path: str, params: Mapping[str, str],
                          signature: object) -> bool:
    return _matches(rest_signature(secret, method, path, params), signature)


def webhook_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()
