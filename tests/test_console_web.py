"""The debug console over HTTP (issue 12): sign-in, sessions and CSRF, the NDJSON stream for
scripts, the inspector and the actions, on the real service with in-memory connections."""

import json
from http.cookies import SimpleCookie

from twisted.internet.defer import succeed
from twisted.trial import unittest

from soketify import signing
from soketify.console_auth import hash_password, password_matches
from tests.support import APP, HttpClient, HttpResponse, Rig, make_config

TOKEN = "t" * 24
JSON = {"Content-Type": "application/json"}


def console_rig(test_case, **console):
    settings = dict({"enabled": True, "password": "s3cret", "api_token": TOKEN}, **console)
    rig = Rig(test_case, make_config(console=settings))
    # scrypt runs on a thread in the daemon; inline here, where the reactor is a fake one.
    rig.service.console.run_check = lambda check, *args: succeed(check(*args))
    return rig


class Stream:
    """GET /console/api/stream kept open: the entries written so far."""

    def __init__(self, rig, path="/console/api/stream", headers=None):
        self.rig = rig
        self.client = HttpClient(rig)
        self.response = self.client.request("GET", path, headers=headers)

    def entries(self):
        self.rig.reactor.advance(0)
        raw = self.client.transport.value()
        body = HttpResponse(raw).body
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def close(self):
        self.client.transport.loseConnection()
        self.rig.advance(0.1)


def sign_in(rig, password="s3cret"):
    answer = rig.http("POST", "/console/api/login", json.dumps({"password": password}).encode(), JSON)
    cookie = SimpleCookie(answer.headers.get("set-cookie", ""))
    return answer, cookie


class AuthTests(unittest.TestCase):
    def test_stream_needs_the_token_or_a_session(self):
        rig = console_rig(self)
        self.assertEqual(rig.http("GET", "/console/api/stream").status, 401)
        self.assertEqual(rig.http("GET", "/console/api/stream",
                                  headers={"Authorization": "Bearer wrong-token-wrong-token"}).status, 401)
        stream = Stream(rig, headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(stream.entries()[0]["type"], "stream_opened")
        stream.close()

    def test_sign_in_sets_an_httponly_samesite_cookie_and_gives_a_csrf_token(self):
        rig = console_rig(self)
        answer, cookie = sign_in(rig)
        self.assertEqual(answer.status, 200)
        morsel = cookie["soketify_console"]
        self.assertTrue(morsel["httponly"])
        self.assertEqual(morsel["samesite"], "Strict")
        self.assertEqual(morsel["path"], "/console")
        csrf = answer.json()["csrf"]
        session = dict(JSON, Cookie=f"soketify_console={morsel.value}")
        body = json.dumps({"app": "app-id", "channels": ["news"], "name": "e", "data": "x"}).encode()
        # An action needs the session's CSRF token too.
        self.assertEqual(rig.http("POST", "/console/api/trigger", body, session).status, 403)
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  dict(session, **{"X-CSRF-Token": csrf})).status, 200)
        # The token alone (a script) may read but not act.
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  dict(JSON, Authorization=f"Bearer {TOKEN}")).status, 401)

    def test_wrong_passwords_are_refused_and_slow_the_next_attempts(self):
        rig = console_rig(self)
        for _ in range(3):
            self.assertEqual(sign_in(rig, "wrong")[0].status, 401)
        throttled = sign_in(rig)[0]  # even the right one waits a second now
        self.assertEqual(throttled.status, 429)
        self.assertIn("retry-after", throttled.headers)
        rig.advance(1.1)
        self.assertEqual(sign_in(rig, "wrong")[0].status, 401)
        rig.advance(1.1)
        self.assertEqual(sign_in(rig)[0].status, 429)  # then 2 s
        rig.advance(1)
        self.assertEqual(sign_in(rig)[0].status, 200)

    def test_scrypt_hash_and_plain_password(self):
        stored = hash_password("pw", salt=b"0123456789abcdef")
        self.assertTrue(stored.startswith("scrypt:16384:8:1:"))
        self.assertTrue(password_matches("pw", "", stored))
        self.assertFalse(password_matches("pW", "", stored))
        self.assertTrue(password_matches("pw", "pw", ""))
        self.assertFalse(password_matches("", "", ""))
        rig = console_rig(self, password="", password_hash=stored)
        self.assertEqual(sign_in(rig, "pw")[0].status, 200)

    def test_a_cookie_that_is_not_ours_is_no_session_and_no_error(self):
        rig = console_rig(self)
        for value in ("1.x.\u00e9", "\u00ff\u00fe", "....", "9999999999.a.b"):
            raw = value.encode("latin-1")
            answer = rig.http("GET", "/console/api/session",
                              headers={"Cookie": "soketify_console=" + raw.decode("latin-1")})
            self.assertEqual((answer.status, answer.json()["signed_in"]), (200, False), value)
        self.assertEqual(self.flushLoggedErrors(), [])  # no traceback logged

    def test_a_hash_that_cannot_be_checked_is_a_config_problem(self):
        from soketify.config import ConfigError
        good = hash_password("pw")
        for bad, problem in ((good.replace("scrypt:16384", "scrypt:16385"), "power of 2"),
                             (good[:-4] + "!!!!", "base64"),
                             ("scrypt:1048576:8:1:YWFh:YWFh", "more than 256 MB")):
            with self.assertRaises(ConfigError) as caught:
                make_config(console={"enabled": True, "password_hash": bad})
            self.assertIn(problem, caught.exception.problems[0])

    def test_a_body_over_the_limit_is_413_and_not_a_wrong_password(self):
        rig = Rig(self, make_config(console={"enabled": True, "password": "s3cret"},
                                    limits={"max_request_body_bytes": 1024}))
        rig.service.console.run_check = lambda check, *args: succeed(check(*args))
        big = json.dumps({"password": "x" * 4000}).encode()
        for _ in range(5):
            answer = rig.http("POST", "/console/api/login", big, JSON)
            self.assertEqual(answer.status, 413)
        self.assertEqual(sign_in(rig)[0].status, 200)  # never throttled

    def test_the_session_never_shows_a_secret(self):
        rig = console_rig(self)
        _, cookie = sign_in(rig)
        answer = rig.http("GET", "/console/api/session",
                          headers={"Cookie": f"soketify_console={cookie['soketify_console'].value}"})
        self.assertTrue(answer.json()["signed_in"])
        self.assertNotIn(APP["secret"], answer.body.decode())

    def test_config_needs_a_password_when_enabled_and_known_apps(self):
        from soketify.config import ConfigError
        with self.assertRaises(ConfigError) as caught:
            make_config(console={"enabled": True, "apps": ["nope"]})
        text = "\n".join(caught.exception.problems)
        self.assertIn("console.enabled: needs console.password or console.password_hash", text)
        self.assertIn("console.apps: no [[apps]] has id 'nope'", text)
        with self.assertRaises(ConfigError) as caught:
            make_config(console={"api_token": "short"})
        self.assertIn("console.api_token: must be at least 16 characters", caught.exception.problems[0])

    def test_off_unless_configured(self):
        rig = Rig(self)
        self.assertEqual(rig.http("GET", "/console").status, 404)


class StreamTests(unittest.TestCase):
    def test_entries_as_ndjson_with_time_node_app_and_type(self):
        rig = console_rig(self)
        stream = Stream(rig, "/console/api/stream?app=app-id", {"Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(stream.response.headers["content-type"], "application/x-ndjson")
        client = rig.connect()
        client.subscribe("news")
        self.assertEqual(rig.signed("POST", "/apps/app-id/events",
                                    {"name": "e", "channels": ["news"], "data": "hi"}).status, 200)
        entries = stream.entries()
        self.assertEqual([e["type"] for e in entries[1:]],
                         ["connection_opened", "subscribed", "channel_occupied", "api_message"])
        for entry in entries[1:]:
            self.assertEqual(set(entry) >= {"time", "node", "app_id", "type"}, True)
        stream.close()
        self.assertFalse(rig.hub.feed.watching)

    def test_a_reader_that_does_not_read_gets_a_skipped_count(self):
        rig = console_rig(self)
        stream = Stream(rig, "/console/api/stream", {"Authorization": f"Bearer {TOKEN}"})
        viewer = rig.hub.feed._viewers[0]
        viewer.pause()  # as the transport does when the reader stops reading
        for n in range(2100):
            rig.hub.feed.add("app-id", "api_message", n=n)
        viewer.resume()
        entries = stream.entries()
        self.assertEqual(entries[-1]["type"], "skipped")
        self.assertEqual(entries[-1]["count"], 100)
        stream.close()


class InspectorAndActionTests(unittest.TestCase):
    def test_presence_members_with_user_info_and_channel_counts(self):
        rig = Rig(self, make_config(console={"enabled": True, "password": "p"}))
        rig.service.console.open_to_all = True  # as the development default
        client = rig.connect()
        data = '{"user_id":"alice","user_info":{"name":"Alice"}}'
        client.subscribe("presence-room", channel_data=data, auth=signing.channel_auth(
            "app-key", "app-secret", client.socket_id, "presence-room", data))
        rig.advance(0.1)
        channels = rig.http("GET", "/console/api/channels?app=app-id").json()["channels"]
        self.assertEqual(channels, [{"name": "presence-room", "subscription_count": 1, "user_count": 1}])
        detail = rig.http("GET", "/console/api/channel?app=app-id&channel=presence-room").json()
        self.assertEqual(detail["members"], [{"id": "alice", "user_info": {"name": "Alice"}}])
        # A public channel whose name merely holds "cache-" has no cache to show.
        public = rig.http("GET", "/console/api/channel?app=app-id&channel=my-cache-x").json()
        self.assertEqual(public, {"name": "my-cache-x"})

    def test_trigger_takes_the_rest_path_and_terminate_closes_4009(self):
        rig = Rig(self, make_config(console={"enabled": True, "password": "p"}))
        rig.service.console.open_to_all = True
        client = rig.connect()
        client.subscribe("news")
        body = json.dumps({"app": "app-id", "channels": ["news"], "name": "from-console",
                           "data": "{\"a\":1}"}).encode()
        self.assertEqual(rig.http("POST", "/console/api/trigger", body, JSON).status, 200)
        self.assertEqual(client.next_event()["event"], "from-console")
        too_big = json.dumps({"app": "app-id", "channels": ["news"], "name": "e",
                              "data": "x" * 20000}).encode()
        watching = Stream(rig)  # open to all: no token needed
        answer = rig.http("POST", "/console/api/trigger", too_big, JSON)
        self.assertEqual(answer.status, 413)
        self.assertIn("error", answer.json())
        [refused] = [e for e in watching.entries() if e["type"] == "refused"]
        self.assertEqual((refused["code"], refused["limit"]), (413, "event_payload"))
        watching.close()
        user_data = '{"id":"u1"}'
        client.send("pusher:signin", {"user_data": user_data, "auth": signing.user_auth(
            "app-key", "app-secret", client.socket_id, user_data)})
        client.events()
        user = rig.http("GET", "/console/api/user?app=app-id&user_id=u1").json()
        self.assertEqual([c["socket_id"] for c in user["connections"]], [client.socket_id])
        answer = rig.http("POST", "/console/api/terminate",
                          json.dumps({"app": "app-id", "user_id": "u1"}).encode(), JSON)
        self.assertEqual(answer.status, 200)
        client.events()
        self.assertEqual(client.close_code, 4009)

    def test_apps_not_shown_are_not_found(self):
        rig = Rig(self, make_config(apps=[APP, {"id": "b", "key": "bk", "secret": "bs"}],
                                    console={"enabled": True, "password": "p", "apps": ["b"]}))
        rig.service.console.open_to_all = True
        self.assertEqual(rig.http("GET", "/console/api/channels?app=app-id").status, 404)
        self.assertEqual(rig.http("GET", "/console/api/channels?app=b").status, 200)


class BrowserGuardTests(unittest.TestCase):
    """What keeps other sites and other uses out, with or without a password."""

    def open_rig(self):
        rig = Rig(self, make_config(console={"enabled": True, "password": "p"}))
        rig.service.console.open_to_all = True  # as the development default: no password
        return rig

    def test_actions_need_json_from_this_origin_even_without_a_password(self):
        rig = self.open_rig()
        body = json.dumps({"app": "app-id", "channels": ["x"], "name": "e", "data": "d"}).encode()
        # What a form on another site can send without asking first.
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  {"Content-Type": "text/plain"}).status, 415)
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  dict(JSON, Origin="https://evil.example")).status, 403)
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  dict(JSON, **{"Sec-Fetch-Site": "cross-site"})).status, 403)
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  dict(JSON, Origin="http://localhost")).status, 200)

    def test_only_the_page_and_its_two_files_are_served_with_their_headers(self):
        rig = self.open_rig()
        page = rig.http("GET", "/console")
        self.assertEqual(page.status, 200)
        self.assertIn("frame-ancestors 'none'", page.headers["content-security-policy"])
        script = rig.http("GET", "/console/static/console.js")
        self.assertEqual((script.status, script.headers["x-content-type-options"]), (200, "nosniff"))
        for path in ("/console/static/", "/console/static/index.html", "/console/static/../tap.py"):
            self.assertEqual(rig.http("GET", path).status, 404, path)

    def test_without_a_password_only_requests_for_an_address_or_localhost_are_answered(self):
        """A page of another site rebound to this address (DNS rebinding) asks by its own name."""
        rig = self.open_rig()
        for host in ("localhost:6001", "127.0.0.1:6001", "[::1]:6001", "10.0.0.5"):
            answer = rig.http("GET", "/console/api/session", headers={"Host": host})
            self.assertEqual((answer.status, answer.json()["signed_in"]), (200, True), host)
        rebound = {"Host": "evil.example:6001"}
        body = json.dumps({"app": "app-id", "channels": ["x"], "name": "e", "data": "d"}).encode()
        self.assertEqual(rig.http("GET", "/console/api/session", headers=rebound).status, 403)
        self.assertEqual(rig.http("GET", "/console/api/channels?app=app-id", headers=rebound).status,
                         401)
        self.assertEqual(rig.http("POST", "/console/api/trigger", body,
                                  dict(JSON, **rebound)).status, 403)
        self.assertEqual(rig.http("POST", "/console/api/login", b'{"password":""}',
                                  dict(JSON, **rebound)).status, 403)

    def test_a_head_request_does_not_open_a_stream(self):
        rig = self.open_rig()
        self.assertEqual(rig.http("HEAD", "/console/api/stream").status, 405)
        self.assertFalse(rig.hub.feed.watching)

    def test_a_changed_password_signs_everyone_out(self):
        rig = console_rig(self)
        _, cookie = sign_in(rig)
        session = {"Cookie": f"soketify_console={cookie['soketify_console'].value}"}
        self.assertTrue(rig.http("GET", "/console/api/session", headers=session).json()["signed_in"])
        stream = Stream(rig, headers=session)
        from dataclasses import replace
        console = rig.service.console
        console.reconfigure(replace(console.settings, password="new one"))
        rig.advance(0.1)
        self.assertFalse(rig.http("GET", "/console/api/session", headers=session).json()["signed_in"])
        self.assertFalse(rig.hub.feed.watching)
        stream.close()

    def test_a_reload_that_changes_the_apps_shown_ends_the_open_streams(self):
        rig = console_rig(self)
        stream = Stream(rig, headers={"Authorization": f"Bearer {TOKEN}"})
        self.assertTrue(rig.hub.feed.watching)
        from dataclasses import replace
        console = rig.service.console
        console.reconfigure(replace(console.settings, apps=("other",)))
        rig.advance(0.1)
        self.assertFalse(rig.hub.feed.watching)
        stream.close()

    def test_webhook_targets_are_shown_without_credentials_or_query(self):
        from soketify.webhooks import shown_url
        self.assertEqual(shown_url("https://user:pw@hooks.example:8443/p?token=s"),
                         "https://hooks.example:8443/p")
        self.assertEqual(shown_url("http://[::1]:9/x"), "http://[::1]:9/x")

    def test_a_session_is_valid_on_every_worker_of_the_host_and_nowhere_else(self):
        """Workers share the supervisor's key: a cookie signed on one is valid on another."""
        from twisted.internet.task import Clock
        from soketify.console_auth import Sessions
        clock = Clock()
        key = b"k" * 32
        one, two, elsewhere = Sessions(clock, key, "pw"), Sessions(clock, key, "pw"), Sessions(clock)
        session, csrf = one.open()
        self.assertEqual(two.csrf_of(session), csrf)
        self.assertIsNone(elsewhere.csrf_of(session))
        self.assertIsNone(two.csrf_of(session[:-1] + ("0" if session[-1] != "0" else "1")))
        two.rekey("new password")
        self.assertIsNone(two.csrf_of(session))
        clock.advance(13 * 3600)
        self.assertIsNone(one.csrf_of(session))
