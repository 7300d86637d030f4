"""Server text frames: read back by a real Autobahn client, byte for byte what Autobahn would send."""

from autobahn.websocket.protocol import PreparedMessage
from twisted.trial import unittest

from soketify.frames import text_frame
from tests.test_autobahn_tuning import Pair, RecordingServer


class TextFrameTests(unittest.TestCase):
    def test_text_frame_is_read_by_autobahn_as_the_same_text(self):
        """An Autobahn client reads each frame as one text message with the same text, at every
        length encoding (7-bit, 16-bit, 64-bit)."""
        pair = Pair(self, RecordingServer)
        texts = ["", "é", "x" * 125, "ü" * 63, "y" * 126, "z" * 0xFFFF, "€" * 30000]
        for text in texts:
            pair.server_transport.write(text_frame(text.encode("utf-8")))
        pair.pump()
        self.assertEqual(pair.client.messages, [(text.encode("utf-8"), False) for text in texts])
        self.assertIsNone(pair.client.closed)

    def test_text_frame_is_what_autobahn_prepares(self):
        """The frame is FIN + text opcode, unmasked, the same bytes as Autobahn's prepared message."""
        self.assertEqual(text_frame(b"hello"), b"\x81\x05hello")
        for size in (0, 125, 126, 0xFFFF, 0x10000):
            payload = b"a" * size
            self.assertEqual(text_frame(payload),
                             PreparedMessage(payload, False, False, True).payloadHybi, size)
