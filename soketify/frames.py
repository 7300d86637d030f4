"""Server-to-client WebSocket text frames (RFC 6455 section 5.2), built once per event.

A server frame is never masked and Soketify never compresses, so the frame is a two to ten byte
header followed by the payload: simple enough to build here, about three times cheaper than going
through Autobahn's PreparedMessage.
"""

from __future__ import annotations

from struct import Struct

_SHORT = Struct("!BB")
_MEDIUM = Struct("!BBH")
_LONG = Struct("!BBQ")
_FINAL_TEXT = 0x81  # FIN bit + opcode 1 (text)


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying this UTF-8 payload."""
    length = len(payload)
    if length < 126:
        return _SHORT.pack(_FINAL_TEXT, length) + payload
    if length < 0x10000:
        return _MEDIUM.pack(_FINAL_TEXT, 126, length) + payload
    return _LONG.pack(_FINAL_TEXT, 127, length) + payload
