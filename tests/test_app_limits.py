"""Limits per app (issue 10): each [[apps]] key overrides its [limits] value for that app alone, every
refusal says why, and /metrics counts it by limit."""


from twisted.trial import unittest

from soketify import config, signing
from tests.support import APP, Rig, make_config
from tests.test_presence import join

OTHER = {"id": "other-id", "key": "other-key", "secret": "other-secret"}


def rig_with(test_case, **app_limits) -> Rig:
    """A service whose app-id has these limits of its own and whose other-id has none."""
    return Rig(test_case, make_config(apps=[dict(APP, **app_limits), OTHER]))


def event(channels=("news",), data="x", **extra) -> dict:
    return dict({"name": "e", "channels": list(channels), "data": data}, **extra)


def refusals(rig) -> dict:
    """soketify_limit_refusals_total by (app_id, limit), from /metrics."""
    counts = {}
    for line in rig.http("GET", "/metrics").body.decode().splitlines():
        if line.startswith("soketify_limit_refusals_total{"):
            labels, value = line[len("soketify_limit_refusals_total{"):].split("} ")
            parts = dict(item.split("=") for item in labels.split(","))
            counts[(parts["app_id"].strip('"'), parts["limit"].strip('"'))] = float(value)
    return counts


class ConfigTests(unittest.TestCase):
    def test_app_keys_override_limits_for_that_app_only(self):
        """An app's own values (KB converted to bytes) replace [limits]; 0 and other apps keep them."""
        cfg = make_config(limits={"max_presence_members": 7, "max_event_data_bytes": 5000},
                          apps=[dict(APP, max_event_payload_kb=2, max_presence_member_size_kb=3,
                                     max_event_channels_at_once=4, max_presence_members=0), OTHER])
        limited, other = cfg.apps
        self.assertEqual((limited.limits.max_event_data_bytes, limited.limits.max_user_info_bytes,
                          limited.limits.max_channels_per_event, limited.limits.max_presence_members),
                         (2048, 3072, 4, 7))
        self.assertEqual((other.limits.max_event_data_bytes, other.limits.max_presence_members),
                         (5000, 7))

    def test_every_app_limit_is_documented_in_the_sample_config(self):
        with open("etc/soketify.toml") as sample:
            text = sample.read()
        self.assertEqual([key for key in config.APP_LIMITS if f"# {key} = " not in text], [])


class RestLimitTests(unittest.TestCase):
    def test_backend_events_per_second_counts_batch_events_and_answers_429(self):
        """3 events a second: a trigger and a batch of 2 fit, the next is 429 with a JSON error;
        the next second they fit again; another app is not limited."""
        rig = rig_with(self, max_backend_events_per_second=3)
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event()).status, 200)
        batch = {"batch": [{"name": "e", "channel": "a", "data": "x"}] * 2}
        self.assertEqual(rig.signed("POST", "/apps/app-id/batch_events", batch).status, 200)
        refused = rig.signed("POST", "/apps/app-id/events", event())
        self.assertEqual(refused.status, 429)
        self.assertIn("3 events per second", refused.json()["error"])
        for _ in range(5):
            self.assertEqual(rig.signed("POST", "/apps/other-id/events", event(),
                                        app=OTHER).status, 200)
        rig.advance(1)
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event()).status, 200)
        self.assertEqual(refusals(rig), {("app-id", "backend_events_per_second"): 1.0})

    def test_read_requests_per_second(self):
        rig = rig_with(self, max_read_requests_per_second=2)
        statuses = [rig.signed("GET", "/apps/app-id/channels").status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", event()).status, 200)
        self.assertEqual(refusals(rig), {("app-id", "read_requests_per_second"): 1.0})

    def test_payload_channels_batch_size_and_channel_name(self):
        """Each size limit of the app refuses with its status and a message naming the limit."""
        rig = rig_with(self, max_event_payload_kb=1, max_event_channels_at_once=2,
                       max_event_batch_size=2, max_channel_name_length=10)
        cases = [
            ("events", event(data="x" * 1025), 413, "1024 bytes"),
            ("events", event(channels=("a", "b", "c")), 400, "more than 2 channels"),
            ("batch_events", {"batch": [{"name": "e", "channel": "a", "data": "x"}] * 3}, 400,
             "more than 2 events"),
            ("events", event(channels=("a" * 11,)), 400, "longer than 10"),
        ]
        for endpoint, body, status, why in cases:
            response = rig.signed("POST", f"/apps/app-id/{endpoint}", body)
            self.assertEqual(response.status, status, body)
            self.assertIn(why, response.json()["error"])
        self.assertEqual(rig.signed("POST", "/apps/other-id/events", event(data="x" * 1025),
                                    app=OTHER).status, 200)
        self.assertEqual(refusals(rig), {
            ("app-id", "event_payload"): 1.0, ("app-id", "event_channels_at_once"): 1.0,
            ("app-id", "event_batch_size"): 1.0, ("app-id", "channel_name_length"): 1.0})


class WebSocketLimitTests(unittest.TestCase):
    def test_client_events_per_second(self):
        """The app's own rate for client events: the third in a second gets 4301."""
        rig = rig_with(self, max_client_events_per_second=2)
        sender, receiver = rig.connect(), rig.connect()
        for client in (sender, receiver):
            auth = signing.channel_auth("app-key", "app-secret", client.socket_id, "private-c")
            client.subscribe("private-c", auth=auth)
        for _ in range(3):
            sender.send("client-x", {"n": 1}, channel="private-c")
        errors = [e for e in sender.events() if e["event"] == "pusher:error"]
        self.assertEqual([e["data"]["code"] for e in errors], [4301])
        self.assertEqual(len(receiver.events()), 2)
        self.assertEqual(refusals(rig), {("app-id", "client_events_per_second"): 1.0})

    def test_presence_members_member_size_and_channel_name(self):
        rig = rig_with(self, max_presence_members=1, max_presence_member_size_kb=1,
                       max_channel_name_length=12)
        a, b, c = rig.connect(), rig.connect(), rig.connect()
        self.assertEqual(join(a, "presence-x", "a")["event"], "pusher_internal:subscription_succeeded")
        full = join(b, "presence-x", "b")
        self.assertEqual(full["data"]["type"], "LimitReached")
        big = join(c, "presence-y", "c", {"bio": "x" * 1100})
        self.assertEqual(big["data"]["type"], "LimitReached")
        self.assertIn("1024 allowed", big["data"]["error"])
        long_name = c.subscribe("channel-name-too-long")
        self.assertEqual(long_name["data"]["type"], "InvalidChannel")
        self.assertEqual(refusals(rig), {
            ("app-id", "presence_members"): 1.0, ("app-id", "presence_member_size"): 1.0,
            ("app-id", "channel_name_length"): 1.0})
