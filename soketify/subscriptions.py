"""Who may subscribe to what: channel auth signatures and presence member data (PROTOCOL.md 3-4).

Pure functions: they read the connection (``socket_id``, ``user_id``, ``user_info``) and the request,
and answer with a grant (and the presence member) or a refusal that becomes ``subscription_error``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from soketify import protocol, signing
from soketify.config import AppConfig, LimitsConfig


@dataclass(frozen=True, slots=True)
class Grant:
    member: tuple[str, Any] | None = None  # (user_id, user_info) on presence channels


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: str  # AuthError, LimitReached, InvalidChannel
    message: str
    status: int
    limit: str | None = None  # the app limit refused over, as /metrics names it (Hub.refused)


def _auth_error(message: str) -> Refusal:
    return Refusal("AuthError", message, 401)


def authorize(app: AppConfig, limits: LimitsConfig, connection, name: str, data: dict,
              ) -> Grant | Refusal:
    """Decide a pusher:subscribe for ``name`` (already a valid channel name)."""
    kind = protocol.channel_type(name)
    if kind in ("public", "cache"):
        return Grant()
    if kind == "server-to-user":
        user_id = name[len(protocol.SERVER_TO_USER_PREFIX):]
        if connection.user_id is None:
            return _auth_error("Sign in before subscribing to #server-to-user- channels")
        if connection.user_id != user_id:
            return _auth_error("A connection may only subscribe to its own #server-to-user- channel")
        return Grant()
    auth = data.get("auth")
    socket_id = connection.socket_id
    if not kind.startswith("presence"):
        if signing.verify_channel_auth(app.key, app.secret, socket_id, name, auth):
            return Grant()
        return _auth_error(f"Invalid signature for channel {name!r} and socket {socket_id}")
    channel_data = data.get("channel_data")
    if channel_data is None and connection.user_id is not None:
        # pusher-js 7.4+ omits channel_data when signed in: the member is the signed-in user.
        if not signing.verify_channel_auth(app.key, app.secret, socket_id, name, auth):
            return _auth_error(f"Invalid signature for channel {name!r} and socket {socket_id}")
        return _member(limits, connection.user_id, connection.user_info)
    if not isinstance(channel_data, str):
        return _auth_error("Presence channels need channel_data (a JSON string) or a signed-in user")
    if not signing.verify_channel_auth(app.key, app.secret, socket_id, name, auth, channel_data):
        return _auth_error(f"Invalid signature for channel {name!r}, socket {socket_id} and "
                           "this channel_data")
    try:
        member = protocol.loads(channel_data)
    except ValueError:
        return Refusal("AuthError", "channel_data is not valid JSON", 400)
    if not isinstance(member, dict):
        return Refusal("AuthError", "channel_data must be a JSON object", 400)
    user_id = member.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int, float)):
        return Refusal("AuthError", "channel_data.user_id must be a string or a number", 400)
    if not isinstance(user_id, str):
        user_id = json.dumps(user_id)
    return _member(limits, user_id, member.get("user_info"))


def _member(limits: LimitsConfig, user_id: str, user_info: Any) -> Grant | Refusal:
    if not user_id or len(user_id) > limits.max_user_id_length:
        return Refusal("LimitReached",
                       f"user_id must be 1 to {limits.max_user_id_length} characters long",
                       protocol.OVER_CAPACITY)
    if user_info is not None:
        size = len(json.dumps(user_info, separators=(",", ":"), ensure_ascii=False).encode())
        if size > limits.max_user_info_bytes:
            return Refusal("LimitReached",
                           f"user_info is {size} bytes; at most {limits.max_user_info_bytes} allowed",
                           protocol.OVER_CAPACITY, "presence_member_size")
    return Grant((user_id, user_info))
