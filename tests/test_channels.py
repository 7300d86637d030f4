"""Per-app channel state."""

from twisted.trial import unittest

from soketify.channels import AppChannels


class Conn:
    def __init__(self, socket_id):
        self.socket_id = socket_id
        self.channels = set()


class AppChannelsTests(unittest.TestCase):
    def test_channel_exists_while_occupied(self):
        """A channel appears with its first subscriber and disappears with its last."""
        channels, a, b = AppChannels(), Conn("1.1"), Conn("1.2")
        channels.subscribe(a, "x")
        channels.subscribe(b, "x")
        self.assertEqual(channels.get("x").subscription_count, 2)
        channels.unsubscribe(a, "x")
        self.assertEqual(channels.get("x").subscription_count, 1)
        channels.unsubscribe(b, "x")
        self.assertIsNone(channels.get("x"))
        self.assertEqual(len(channels), 0)

    def test_repeat_subscribe_counts_once(self):
        """Subscribing twice reports 'not new' and keeps one subscription."""
        channels, a = AppChannels(), Conn("1.1")
        self.assertTrue(channels.subscribe(a, "x").new)
        self.assertFalse(channels.subscribe(a, "x").new)
        self.assertEqual(channels.get("x").subscription_count, 1)

    def test_unsubscribe_unknown_is_harmless(self):
        """Leaving a channel one is not in changes nothing."""
        channels, a, b = AppChannels(), Conn("1.1"), Conn("1.2")
        channels.subscribe(a, "x")
        self.assertIsNone(channels.unsubscribe(b, "x"))
        self.assertIsNone(channels.unsubscribe(b, "y"))
        self.assertEqual(channels.get("x").subscription_count, 1)

    def test_remove_connection_leaves_everything(self):
        """A closing connection leaves all its channels."""
        channels, a = AppChannels(), Conn("1.1")
        for name in ("x", "y", "z"):
            channels.subscribe(a, name)
        left = channels.remove_connection(a)
        self.assertEqual(sorted(r.channel.name for r in left), ["x", "y", "z"])
        self.assertEqual(list(channels.occupied()), [])
        self.assertEqual(a.channels, set())

    def test_occupied_by_prefix(self):
        """occupied() filters by prefix."""
        channels, a = AppChannels(), Conn("1.1")
        for name in ("presence-a", "presence-b", "public"):
            channels.subscribe(a, name)
        self.assertEqual(sorted(c.name for c in channels.occupied("presence-")),
                         ["presence-a", "presence-b"])
