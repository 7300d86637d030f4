"""pusher_internal:subscription_count, with the 5-second throttle on busy channels."""

import json

from twisted.internet.task import Clock
from twisted.trial import unittest

from soketify.subscription_counts import SubscriptionCountAnnouncer
from tests.support import APP, Rig, make_config
from tests.test_presence import join


class AnnouncerTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.sent = []
        self.counts = {}
        self.announcer = SubscriptionCountAnnouncer(
            self.clock, lambda app, channel: self.sent.append(self.counts[channel]))

    def change(self, count):
        self.counts["c"] = count
        self.announcer.changed("a", "c", count)

    def test_quiet_channels_hear_every_change(self):
        """Up to 100 subscribers every change is announced at once."""
        for count in (1, 2, 3, 2):
            self.change(count)
        self.assertEqual(self.sent, [1, 2, 3, 2])

    def test_busy_channels_hear_at_most_every_5_seconds_and_always_the_last_count(self):
        """Over 100 subscribers: one announcement per 5 s, and the final count after the wait."""
        self.change(101)
        self.change(102)
        self.change(103)
        self.assertEqual(self.sent, [101])
        self.clock.advance(4.9)
        self.assertEqual(self.sent, [101])
        self.clock.advance(0.1)
        self.assertEqual(self.sent, [101, 103])
        self.clock.advance(10)
        self.change(104)
        self.assertEqual(self.sent, [101, 103, 104])

    def test_vacated_channel_cancels_its_pending_announcement(self):
        """A channel that empties while an announcement waits sends nothing more."""
        self.change(150)
        self.change(151)
        self.change(0)
        self.clock.advance(10)
        self.assertEqual(self.sent, [150])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HubSubscriptionCountTests(unittest.TestCase):
    def counts(self, client):
        return [json.loads(f["data"])["subscription_count"] for f in client.events()
                if f["event"] == "pusher_internal:subscription_count"]

    def test_subscribers_hear_the_count_when_it_changes(self):
        """With subscription_count on, joins, leaves and disconnects are announced to everyone."""
        rig = Rig(self, make_config(apps=[dict(APP, subscription_count=True)]))
        first, second = rig.connect(), rig.connect()
        first.subscribe("news")
        self.assertEqual(self.counts(first), [1])
        second.subscribe("news")
        self.assertEqual(self.counts(first), [2])
        self.assertEqual(self.counts(second), [2])
        second.send("pusher:unsubscribe", {"channel": "news"})
        self.assertEqual(self.counts(first), [1])
        third = rig.connect()
        third.subscribe("news")
        third.close()
        rig.advance(2)
        self.assertEqual(self.counts(first), [2, 1])

    def test_off_by_default_and_never_on_presence(self):
        """Apps without the setting get no counts; presence channels never get them."""
        rig = Rig(self)
        client = rig.connect()
        client.subscribe("news")
        self.assertEqual(self.counts(client), [])
        rig = Rig(self, make_config(apps=[dict(APP, subscription_count=True)]))
        first, second = rig.connect(), rig.connect()
        join(first, "presence-room", "alice")
        join(second, "presence-room", "bob")
        self.assertEqual(self.counts(first), [])
        self.assertEqual(self.counts(second), [])

    def test_repeat_subscribe_is_not_a_change(self):
        """Subscribing twice on one connection does not announce a new count."""
        rig = Rig(self, make_config(apps=[dict(APP, subscription_count=True)]))
        client = rig.connect()
        client.subscribe("news")
        client.events()
        client.subscribe("news")
        self.assertEqual(self.counts(client), [])
