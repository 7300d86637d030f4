"""The REST API fed with raw HTTP through the real switch and Site, no sockets."""

import json

from twisted.trial import unittest

from soketify import rest
from tests.support import APP, Rig, make_config


class StatusTests(unittest.TestCase):
    def test_root_health_and_ready(self):
        """GET /, /health and /ready answer 200 with JSON while running."""
        rig = Rig(self)
        for path in ("/", "/health", "/ready"):
            response = rig.http("GET", path)
            self.assertEqual(response.status, 200, path)
            self.assertEqual(response.headers["content-type"], "application/json")
            response.json()

    def test_ready_is_503_while_stopping(self):
        """/ready turns 503 as soon as a stop begins, so load balancers move traffic away."""
        rig = Rig(self)
        rig.service.stopService()
        self.assertEqual(rig.http("GET", "/ready").status, 503)

    def test_metrics_answer_carries_its_length(self):
        """/metrics is Prometheus text with a Content-Length (not chunked), like every answer."""
        response = Rig(self).http("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/plain"))
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        self.assertIn(b"soketify_connected", response.body)

    def test_unknown_route_is_json_404(self):
        """An unknown path answers 404 with a JSON error body."""
        response = Rig(self).http("GET", "/nothing/here")
        self.assertEqual(response.status, 404)
        self.assertIn("error", response.json())


class SigningTests(unittest.TestCase):
    def test_signed_trigger_is_accepted(self):
        """A correctly signed trigger answers 200 {}."""
        rig = Rig(self)
        response = rig.signed("POST", "/apps/app-id/events",
                              {"name": "e", "channels": ["a"], "data": "x"})
        self.assertEqual((response.status, response.json()), (200, {}))

    def test_bad_signature_is_401(self):
        """A request signed with the wrong secret is refused with 401 and a JSON reason."""
        rig = Rig(self)
        response = rig.signed("POST", "/apps/app-id/events", {"name": "e", "channel": "a", "data": "x"},
                              app=dict(APP, secret="wrong"))
        self.assertEqual(response.status, 401)
        self.assertIn("signature", response.json()["error"])

    def test_wrong_key_stale_timestamp_and_body_md5_are_401(self):
        """Another app's key, a timestamp over 600 s off, or a body not matching body_md5 are refused."""
        rig = Rig(self)
        body = {"name": "e", "channel": "a", "data": "x"}
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", body,
                                    app=dict(APP, key="other")).status, 401)
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", body,
                                    timestamp=rig.reactor.seconds() - 601).status, 401)
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", body,
                                    timestamp=rig.reactor.seconds() + 601).status, 401)
        self.assertEqual(rig.signed("POST", "/apps/app-id/events", body,
                                    params={"body_md5": "0" * 32}).status, 401)

    def test_unknown_app_is_404(self):
        """An unknown app id answers 404."""
        rig = Rig(self)
        response = rig.signed("POST", "/apps/nope/events", {"name": "e", "channel": "a", "data": "x"})
        self.assertEqual(response.status, 404)

    def test_disabled_app_is_403(self):
        """A disabled app's correctly signed requests answer 403."""
        rig = Rig(self, make_config(apps=[dict(APP, enabled=False)]))
        response = rig.signed("POST", "/apps/app-id/events", {"name": "e", "channel": "a", "data": "x"})
        self.assertEqual(response.status, 403)

    def test_get_with_empty_body_md5_is_accepted(self):
        """The Python SDK sends the MD5 of the empty body on GET; that is fine."""
        rig = Rig(self)
        response = rig.signed("GET", "/apps/app-id/channels",
                              params={"body_md5": "d41d8cd98f00b204e9800998ecf8427e"})
        self.assertEqual(response.status, 200)


class EventValidationTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)

    def post(self, body, path="/apps/app-id/events"):
        return self.rig.signed("POST", path, body)

    def test_limits(self):
        """Each documented limit answers the documented status with a JSON error."""
        cases = [
            ({"name": "e", "channel": "a", "data": "x" * 10241}, 413),
            ({"name": "e", "channels": [f"c{i}" for i in range(101)], "data": "x"}, 400),
            ({"name": "x" * 201, "channel": "a", "data": "x"}, 400),
            ({"name": "e", "channel": "bad name", "data": "x"}, 400),
            ({"name": "e", "channel": "a" * 201, "data": "x"}, 400),
            ({"name": "e", "channel": "a", "data": {"not": "a string"}}, 400),
            ({"name": "", "channel": "a", "data": "x"}, 400),
            ({"channel": "a", "data": "x"}, 400),
            ({"name": "e", "data": "x"}, 400),
            ({"name": "e", "channel": "a", "data": "x", "socket_id": "nope"}, 400),
            ({"name": "e", "channel": "a", "data": "x", "info": "bogus"}, 400),
            ({"name": "e", "channels": ["private-encrypted-a", "b"], "data": "x"}, 400),
            ([1, 2], 400),
        ]
        for body, status in cases:
            response = self.post(body)
            self.assertEqual(response.status, status, body)
            self.assertIsInstance(response.json()["error"], str)

    def test_data_at_the_limit_is_accepted(self):
        """Exactly 10240 bytes of data and exactly 100 channels are allowed."""
        self.assertEqual(self.post({"name": "e", "channel": "a", "data": "x" * 10240}).status, 200)
        self.assertEqual(self.post({"name": "e", "channels": [f"c{i}" for i in range(100)],
                                    "data": "x"}).status, 200)

    def test_malformed_json_is_400(self):
        """A body that is not JSON answers 400."""
        response = self.rig.signed("POST", "/apps/app-id/events", b"{nope")
        self.assertEqual(response.status, 400)

    def test_body_over_the_request_limit_is_413(self):
        """A body over limits.max_request_body_bytes is not buffered and answers 413."""
        rig = Rig(self, make_config(limits={"max_request_body_bytes": 1000}))
        response = rig.signed("POST", "/apps/app-id/events",
                              {"name": "e", "channel": "a", "data": "x" * 2000})
        self.assertEqual(response.status, 413)

    def test_batch_limits(self):
        """Batches over 10 events are 400; one bad event refuses the whole batch."""
        events = [{"name": "e", "channel": "a", "data": "x"}] * 11
        self.assertEqual(self.post({"batch": events}, "/apps/app-id/batch_events").status, 400)
        client = self.rig.connect()
        client.subscribe("a")
        response = self.post({"batch": [{"name": "e", "channel": "a", "data": "1"},
                                        {"name": "e", "channel": "bad name", "data": "2"}]},
                             "/apps/app-id/batch_events")
        self.assertEqual(response.status, 400)
        self.assertEqual(client.events(), [])

    def test_wrong_method_is_json_405(self):
        """GET on /events answers 405 with a JSON body."""
        response = self.rig.signed("GET", "/apps/app-id/events")
        self.assertEqual(response.status, 405)
        self.assertIn("error", response.json())


class TriggerTests(unittest.TestCase):
    def test_trigger_reaches_subscribers_of_each_channel(self):
        """A trigger to several channels reaches each channel's subscribers with the data as given."""
        rig = Rig(self)
        a, b = rig.connect(), rig.connect()
        a.subscribe("one")
        b.subscribe("two")
        rig.signed("POST", "/apps/app-id/events",
                   {"name": "e", "channels": ["one", "two"], "data": '{"n":1}'})
        self.assertEqual(a.events(), [{"event": "e", "channel": "one", "data": '{"n":1}'}])
        self.assertEqual(b.events(), [{"event": "e", "channel": "two", "data": '{"n":1}'}])

    def test_socket_id_is_excluded(self):
        """socket_id in the trigger excludes that connection only."""
        rig = Rig(self)
        sender, other = rig.connect(), rig.connect()
        sender.subscribe("a")
        other.subscribe("a")
        rig.signed("POST", "/apps/app-id/events",
                   {"name": "e", "channel": "a", "data": "x", "socket_id": sender.socket_id})
        self.assertEqual(sender.events(), [])
        self.assertEqual(len(other.events()), 1)

    def test_info_subscription_count_per_channel(self):
        """info=subscription_count answers the count of each triggered channel."""
        rig = Rig(self)
        for _ in range(2):
            rig.connect().subscribe("a")
        response = rig.signed("POST", "/apps/app-id/events",
                              {"name": "e", "channels": ["a", "b"], "data": "x",
                               "info": "subscription_count"})
        self.assertEqual(response.json(), {"channels": {"a": {"subscription_count": 2},
                                                        "b": {"subscription_count": 0}}})

    def test_batch_delivers_in_order_and_answers_info_per_event(self):
        """batch_events publishes each event in order; info is answered per event."""
        rig = Rig(self)
        client = rig.connect()
        client.subscribe("a")
        response = rig.signed("POST", "/apps/app-id/batch_events", {"batch": [
            {"name": "e1", "channel": "a", "data": "1", "info": "subscription_count"},
            {"name": "e2", "channel": "b", "data": "2"},
            {"name": "e3", "channel": "a", "data": "3"}]})
        self.assertEqual(response.json(), {"batch": [{"subscription_count": 1}, {}, {}]})
        self.assertEqual([f["event"] for f in client.events()], ["e1", "e3"])

    def test_apps_are_isolated(self):
        """A trigger on one app never reaches another app's subscriber of the same channel name."""
        other = {"id": "other-id", "key": "other-key", "secret": "other-secret"}
        rig = Rig(self, make_config(apps=[dict(APP), other]))
        mine = rig.connect()
        theirs = rig.connect("/app/other-key?protocol=7")
        mine.subscribe("a")
        theirs.subscribe("a")
        rig.signed("POST", "/apps/app-id/events", {"name": "e", "channel": "a", "data": "x"})
        self.assertEqual(len(mine.events()), 1)
        self.assertEqual(theirs.events(), [])
        self.assertEqual(rig.signed("POST", "/apps/other-id/events",
                                    {"name": "e", "channel": "a", "data": "x"}).status, 401)


class ChannelQueryTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)
        for name in ("news", "news", "sport", "presence-room"):
            self.rig.connect().subscribe(name)

    def test_channels_lists_occupied_channels_with_prefix_filter(self):
        """GET /channels lists occupied channels; filter_by_prefix narrows them."""
        response = self.rig.signed("GET", "/apps/app-id/channels")
        self.assertEqual(set(response.json()["channels"]), {"news", "sport"})
        response = self.rig.signed("GET", "/apps/app-id/channels", params={"filter_by_prefix": "sp"})
        self.assertEqual(response.json(), {"channels": {"sport": {}}})
        response = self.rig.signed("GET", "/apps/app-id/channels",
                                   params={"info": "subscription_count"})
        self.assertEqual(response.json()["channels"]["news"], {"subscription_count": 2})

    def test_user_count_needs_a_presence_prefix(self):
        """info=user_count on /channels without a presence- prefix is 400."""
        response = self.rig.signed("GET", "/apps/app-id/channels", params={"info": "user_count"})
        self.assertEqual(response.status, 400)

    def test_channel_answers_occupied_and_counts(self):
        """GET /channels/{name} answers occupied and, when asked, subscription_count."""
        response = self.rig.signed("GET", "/apps/app-id/channels/news",
                                   params={"info": "subscription_count"})
        self.assertEqual(response.json(), {"occupied": True, "subscription_count": 2})
        response = self.rig.signed("GET", "/apps/app-id/channels/empty")
        self.assertEqual(response.json(), {"occupied": False})

    def test_channel_with_invalid_name_or_info_is_400(self):
        """A bad channel name or info attribute in the query is 400."""
        self.assertEqual(self.rig.signed("GET", "/apps/app-id/channels/a%20b").status, 400)
        self.assertEqual(self.rig.signed("GET", "/apps/app-id/channels/news",
                                         params={"info": "user_count"}).status, 400)
        self.assertEqual(self.rig.signed("GET", "/apps/app-id/channels/news",
                                         params={"info": "nonsense"}).status, 400)

    def test_channel_names_with_reserved_characters(self):
        """Names with = @ , ; . are addressable and signed on the path as sent."""
        self.rig.connect().subscribe("a=b@c,d;e.f")
        response = self.rig.signed("GET", "/apps/app-id/channels/a=b@c,d;e.f")
        self.assertEqual(response.json(), {"occupied": True})
        json.dumps(response.json())


class QueryParsingTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)

    def test_query_that_is_not_utf8_is_400(self):
        """A query whose percent-decoded bytes are not UTF-8 is refused with 400, not patched up."""
        response = self.rig.http("GET", "/apps/app-id/channels?auth_key=app-key&filter_by_prefix=%FF")
        self.assertEqual(response.status, 400)
        self.assertIn("UTF-8", response.json()["error"])

    def test_repeated_auth_parameter_is_400(self):
        """An auth parameter given twice (in any letter case) is 400 with an error naming it."""
        for query in ("auth_key=app-key&auth_key=other", "auth_signature=a&auth_signature=b",
                      "auth_timestamp=1&AUTH_TIMESTAMP=2"):
            response = self.rig.http("GET", f"/apps/app-id/channels?{query}")
            self.assertEqual(response.status, 400, query)
            self.assertIn("auth_", response.json()["error"].lower(), query)

    def test_query_is_percent_decoded_once(self):
        """A value is percent-decoded exactly once: filter_by_prefix a%41 does not match aAx."""
        self.rig.connect().subscribe("aAx")
        once = self.rig.signed("GET", "/apps/app-id/channels", params={"filter_by_prefix": "a%41"})
        self.assertEqual((once.status, once.json()), (200, {"channels": {}}))
        plain = self.rig.signed("GET", "/apps/app-id/channels", params={"filter_by_prefix": "aA"})
        self.assertEqual(plain.json(), {"channels": {"aAx": {}}})

    def test_utf8_query_values_are_signed_decoded(self):
        """Non-ASCII query values are checked against the signature in their decoded UTF-8 form."""
        response = self.rig.signed("GET", "/apps/app-id/channels",
                                   params={"filter_by_prefix": "presence-\u00e9", "info": "user_count"})
        self.assertEqual((response.status, response.json()), (200, {"channels": {}}))

    def test_parse_query_reads_plus_blanks_and_escaped_plus(self):
        """parse_query reads + as a space, keeps blank values and decodes %2B to a plus sign."""
        self.assertEqual(rest.parse_query(b"a=1+2&b=&c&&d=%2B"),
                         {"a": "1 2", "b": "", "c": "", "d": "+"})


class ClusterUnavailableTests(unittest.TestCase):
    def setUp(self):
        self.rig = Rig(self)
        self.client = self.rig.connect()
        self.client.subscribe("a")
        self.patch(self.rig.service.cluster, "ready", False)

    def assertRefused(self, response):
        self.assertEqual(response.status, 503)
        self.assertEqual(response.json(), {"error": "The server cannot reach its cluster; try again"})
        self.assertEqual(self.client.events(), [])

    def test_trigger_is_503_while_the_cluster_is_unreachable(self):
        """POST /events answers 503 and publishes nothing while the cluster engine is not ready."""
        self.assertRefused(self.rig.signed("POST", "/apps/app-id/events",
                                           {"name": "e", "channel": "a", "data": "x"}))

    def test_batch_is_503_while_the_cluster_is_unreachable(self):
        """POST /batch_events answers 503 and publishes none of its events while not ready."""
        self.assertRefused(self.rig.signed("POST", "/apps/app-id/batch_events", {"batch": [
            {"name": "e1", "channel": "a", "data": "1"}, {"name": "e2", "channel": "a", "data": "2"}]}))


class ContentLengthTests(unittest.TestCase):
    def test_json_answers_carry_content_length(self):
        """Every JSON answer, success or error, sync or async handler, has a Content-Length, unchunked."""
        rig = Rig(self)
        responses = [
            rig.http("GET", "/health"),
            rig.http("GET", "/nothing/here"),
            rig.signed("GET", "/apps/app-id/channels"),
            rig.signed("GET", "/apps/app-id/channels/a", params={"info": "nonsense"}),
            rig.signed("POST", "/apps/app-id/events",
                       {"name": "e", "channel": "a", "data": "x", "info": "subscription_count"}),
            rig.signed("POST", "/apps/app-id/events", {"name": "e"}, app=dict(APP, secret="wrong")),
        ]
        for response in responses:
            self.assertNotIn("transfer-encoding", response.headers)
            self.assertEqual(int(response.headers["content-length"]), len(response.body))
            response.json()
