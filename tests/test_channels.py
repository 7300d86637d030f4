"""This node's subscribers per channel."""

from twisted.trial import unittest

from soketify.channels import AppChannels


class Conn:
    def __init__(self, socket_id):
        self.socket_id = socket_id
        self.channels = frozenset()


class AppChannelsTests(unittest.TestCase):
    def test_channel_exists_while_occupied(self):
        """A channel appears with its first local subscriber and disappears with its last."""
        channels, a, b = AppChannels(), Conn("1.1"), Conn("1.2")
        channels.add(a, "x")
        channels.add(b, "x")
        self.assertEqual(list(channels.get("x").subscribers), ["1.1", "1.2"])
        channels.remove(a, "x")
        self.assertEqual(list(channels.get("x").subscribers), ["1.2"])
        channels.remove(b, "x")
        self.assertIsNone(channels.get("x"))
        self.assertEqual(len(channels), 0)

    def test_repeat_subscribe_counts_once(self):
        """Adding a subscriber twice reports 'not new' and keeps one subscription."""
        channels, a = AppChannels(), Conn("1.1")
        self.assertTrue(channels.add(a, "x"))
        self.assertFalse(channels.add(a, "x"))
        self.assertEqual(len(channels.get("x").subscribers), 1)

    def test_unsubscribe_unknown_is_harmless(self):
        """Leaving a channel one is not in changes nothing."""
        channels, a, b = AppChannels(), Conn("1.1"), Conn("1.2")
        channels.add(a, "x")
        self.assertEqual(channels.remove(b, "x"), (False, None))
        self.assertEqual(channels.remove(b, "y"), (False, None))
        self.assertEqual(len(channels.get("x").subscribers), 1)

    def test_remove_connection_leaves_everything_and_names_presence_users(self):
        """A closing connection leaves all its channels; each presence channel names its user."""
        channels, a = AppChannels(), Conn("1.1")
        for name in ("x", "y"):
            channels.add(a, name)
        channels.add(a, "presence-z", "alice")
        self.assertEqual(channels.user_of("presence-z", "1.1"), "alice")
        left = channels.remove_connection(a)
        self.assertEqual(sorted(left), [("presence-z", "alice"), ("x", None), ("y", None)])
        self.assertEqual(len(channels), 0)
        self.assertEqual(a.channels, set())

    def test_idle_connections_carry_no_set(self):
        """A connection gets a set of its own only with its first subscription."""
        channels, a = AppChannels(), Conn("1.1")
        self.assertIsInstance(a.channels, frozenset)
        channels.add(a, "x")
        self.assertEqual(a.channels, {"x"})
