"""SIGHUP reload (issue 11): the config file read again and applied with every connection kept; a
file with problems changes nothing; restart-only settings are named and kept. The real service on
a fake reactor, reading a real file; tests/interop/reload.test.mjs does it with twistd and pusher-js."""

import os
import tempfile

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from soketify import logs, protocol, signing, tap
from soketify.config import load
from soketify.reload import Reloader, keep_running_settings, restart_only_changes
from soketify.systemd import SystemdStatus
from tests.support import Rig
from tests.test_systemd import Listener
from tests.test_webhooks import Receiver, settle, synchronous_outbox

A = {"id": "a", "key": "a-key", "secret": "a-secret"}
B = {"id": "b", "key": "b-key", "secret": "b-secret"}
C = {"id": "c", "key": "c-key", "secret": "c-secret"}


class Raw(str):
    """TOML written as it is: an app's [[apps.webhooks]] tables (after its plain keys)."""


def toml(apps, extra=""):
    tables = []
    for app in apps:
        lines = ["[[apps]]"]
        for key, value in app.items():
            if isinstance(value, Raw):
                lines.append(value)
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
        tables.append("\n".join(lines))
    return extra + "\n" + "\n\n".join(tables) + "\n"


class ReloadRig(Rig):
    """A Rig serving the config in a file, with the Reloader twistd would have."""

    def __init__(self, test_case, text, **service_kwargs):
        directory = tempfile.mkdtemp()
        self.path = os.path.join(directory, "soketify.toml")
        self.state_dir = os.path.join(directory, "state")
        self.write(text)
        super().__init__(test_case, load(self.path), service_kwargs=service_kwargs)
        self.reloader = Reloader(self.service, self.reactor, tap.config_problems)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        test_case.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(f'[server]\nstate_dir = "{self.state_dir}"\n' + text)

    def reload(self, text):
        self.write(text)
        self.logged.clear()
        done = self.reloader.reload()
        self.advance(0.1, step=0.05)
        return done

    def lines(self, level=None):
        return [formatEvent(event) for event in self.logged
                if level is None or event.get("log_level").name == level]

    def trigger(self, app, channel="news", data="hi"):
        return self.signed("POST", f"/apps/{app['id']}/events",
                           {"name": "e", "channels": [channel], "data": data}, app=app)


def closed_with(client):
    events = client.events()
    errors = [e for e in events if e.get("event") == "pusher:error"]
    return (errors[-1]["data"]["code"] if errors else None), client.close_code


class AppChangeTests(unittest.TestCase):
    def test_added_removed_disabled_and_changed_apps_take_effect_and_nobody_else_is_dropped(self):
        rig = ReloadRig(self, toml([A, B, C]))
        a, b, c = (rig.connect(f"/app/{app['key']}?protocol=7") for app in (A, B, C))
        a.subscribe("news")
        d = dict(id="d", key="d-key", secret="d-secret")
        rotated = dict(A, secret="a-rotated")
        rig.reload(toml([rotated, dict(C, enabled=False), d]))

        self.assertEqual(closed_with(b), (protocol.APP_NOT_FOUND, protocol.APP_NOT_FOUND))
        self.assertEqual(closed_with(c), (protocol.APP_DISABLED, protocol.APP_DISABLED))
        self.assertIsNone(a.close_code)
        # The rotated secret signs from now on; the old one is refused.
        self.assertEqual(rig.trigger(A).status, 401)
        self.assertEqual(rig.trigger(rotated).status, 200)
        self.assertEqual(a.next_event()["data"], "hi")
        # The new app serves WebSocket and REST; the removed one neither.
        new = rig.connect("/app/d-key?protocol=7")
        new.subscribe("news")
        self.assertEqual(rig.trigger(d).status, 200)
        self.assertEqual(new.next_event()["data"], "hi")
        self.assertEqual(rig.trigger(B).status, 404)
        refused = rig.connect("/app/b-key?protocol=7", established=False)
        self.assertEqual(refused.next_event()["data"]["code"], protocol.APP_NOT_FOUND)
        self.assertIn("apps: 1 added (d), 1 removed (b), 2 changed (a, c)", " ".join(rig.lines()))
        # /metrics follows the apps.
        metrics = rig.http("GET", "/metrics").body.decode()
        self.assertIn('soketify_connected{app_id="d"} 1.0', metrics)
        self.assertNotIn('app_id="b"', metrics)

    def test_a_changed_app_limit_and_client_events_apply_to_open_connections(self):
        rig = ReloadRig(self, toml([A]))
        client = rig.connect("/app/a-key?protocol=7")
        client.subscribe("news")
        self.assertEqual(rig.trigger(A, data="x" * 2000).status, 200)
        client.events()
        rig.reload(toml([dict(A, max_event_payload_kb=1, client_events=False)]))
        answer = rig.trigger(A, data="x" * 2000)
        self.assertEqual(answer.status, 413)
        self.assertIn("1024", answer.json()["error"])
        sub = client.subscribe("private-room", auth=signing.channel_auth(
            A["key"], A["secret"], client.socket_id, "private-room"))
        self.assertEqual(sub["event"], "pusher_internal:subscription_succeeded")
        client.send("client-hello", {"x": 1}, channel="private-room")
        self.assertEqual(client.next_event()["event"], "pusher:error")

    def test_authorized_connections_turned_on_gives_open_connections_the_whole_timeout(self):
        rig = ReloadRig(self, toml([A]))
        client = rig.connect("/app/a-key?protocol=7")
        rig.advance(100)
        rig.reload(toml([dict(A, authorized_connections=True, authorization_timeout=30)]))
        rig.advance(25)
        client.events()
        self.assertIsNone(client.close_code)
        rig.advance(10)
        self.assertEqual(closed_with(client), (protocol.UNAUTHORIZED, protocol.UNAUTHORIZED))

    def test_limits_and_server_limits_apply_at_once(self):
        rig = ReloadRig(self, toml([A]))
        self.assertEqual(rig.trigger(A, channel="c" * 150).status, 200)
        rig.reload('[limits]\nmax_channel_name_length = 100\nmax_request_body_bytes = 200\n'
                   + toml([A]))
        self.assertEqual(rig.trigger(A, channel="c" * 150).status, 400)
        self.assertEqual(rig.trigger(A, data="y" * 300).status, 413)
        self.assertEqual(rig.service.sessions.limits.max_channel_name_length, 100)


class RefusedReloadTests(unittest.TestCase):
    def test_a_file_with_problems_is_reported_in_full_and_changes_nothing(self):
        rig = ReloadRig(self, toml([A]))
        client = rig.connect("/app/a-key?protocol=7")
        running = rig.service.config
        rig.reload('[limits]\nmax_batch_events = -1\n' + toml([A, dict(B, key="a-key")]))
        self.assertIs(rig.service.config, running)
        errors = rig.lines("error")
        self.assertTrue(any("limits.max_batch_events: must not be negative" in e for e in errors), errors)
        self.assertTrue(any("apps[1].key: duplicate key 'a-key'" in e for e in errors), errors)
        self.assertTrue(any("Reload refused: 2 problems" in e for e in errors), errors)
        self.assertIsNone(client.close_code)
        self.assertEqual(rig.trigger(A).status, 200)

    def test_a_syntax_error_changes_nothing(self):
        rig = ReloadRig(self, toml([A]))
        rig.reload("[[apps]\n")
        self.assertTrue(any("syntax" in e for e in rig.lines("error")))
        self.assertEqual(rig.trigger(A).status, 200)

    def test_restart_only_settings_are_named_and_kept(self):
        rig = ReloadRig(self, toml([A]))
        rig.reload('listen = ["tcp:7777"]\nworkers = 2\n[cluster]\nengine = "redis"\n'
                   '[metrics]\nprefix = "x_"\n' + toml([A, B]))
        warnings = " ".join(rig.lines("warn"))
        for name in ("server.listen", "server.workers", "[cluster]", "metrics.prefix"):
            self.assertIn(name, warnings)
        config = rig.service.config
        self.assertEqual((config.server.listen, config.server.workers, config.cluster.engine,
                          config.metrics.prefix), (("tcp:6001",), 1, "local", "soketify_"))
        self.assertEqual([app.id for app in config.apps], ["a", "b"])
        # The document handed to workers (and to a worker started later) says the same.
        self.assertNotIn("cluster", config.document)
        self.assertNotIn("listen", config.document["server"])

    def test_keep_running_settings_is_the_identity_without_restart_only_changes(self):
        old = load_text(self, toml([A]))
        new = load_text(self, '[limits]\nmax_batch_events = 3\n' + toml([A, B]))
        self.assertEqual(restart_only_changes(old, new), [])
        self.assertEqual(keep_running_settings(old, new), new)

    def test_development_defaults_have_no_file_to_read(self):
        rig = Rig(self)
        from soketify.config import load_default
        rig.service.config = load_default(None) if not os.path.exists(
            "/etc/soketify/soketify.toml") else rig.service.config
        if not rig.service.config.is_development_default:
            raise unittest.SkipTest("an installed /etc/soketify/soketify.toml exists here")
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        Reloader(rig.service, rig.reactor, tap.config_problems).reload()
        self.assertTrue(any("no config file" in formatEvent(e) for e in logged))


def load_text(test_case, text):
    path = os.path.join(tempfile.mkdtemp(), "soketify.toml")
    with open(path, "w") as f:
        f.write(text)
    return load(path)


class WebhookReloadTests(unittest.TestCase):
    def rig(self, text):
        receiver = Receiver()
        return ReloadRig(self, text, webhook_post=receiver.post,
                         outbox=synchronous_outbox()), receiver

    def test_webhooks_added_by_a_reload_are_sent(self):
        """An app without webhooks gets one: the outbox opens and events go out."""
        rig, receiver = self.rig(toml([A]))
        self.assertIsNone(rig.service.webhooks)
        rig.reload(toml([dict(A, hooks=Raw('[[apps.webhooks]]\nurl = "http://hooks.test/a"\n'
                                           'event_types = ["channel_occupied"]'))]))
        rig.connect("/app/a-key?protocol=7").subscribe("news")
        settle(rig)
        self.assertEqual(receiver.events(), [{"name": "channel_occupied", "channel": "news"}])

    def test_a_target_removed_while_its_batch_is_in_flight_is_forgotten(self):
        """Its answer (a failure here) is neither retried nor counted, and nothing of it stays in
        the outbox."""
        hooks = Raw('[[apps.webhooks]]\nurl = "http://hooks.test/a"\nevent_types = ["channel_occupied"]')
        rig, receiver = self.rig(toml([dict(A, hooks=hooks)]))
        receiver.hold = True
        rig.connect("/app/a-key?protocol=7").subscribe("news")
        settle(rig)
        self.assertEqual(len(receiver.pending), 1)
        rig.reload(toml([A]))
        receiver.pending[0].callback(500)
        rig.advance(40)
        self.assertEqual(len(receiver.requests), 1)
        self.assertEqual(rig.service.outbox._pending(), [])
        metrics = rig.http("GET", "/metrics").body.decode()
        self.assertNotIn("soketify_webhook_events_failed_total{", metrics)
        self.assertNotIn("soketify_webhook_events_dropped_total{", metrics)

    def test_a_rotated_secret_signs_webhooks_and_a_removed_target_stops(self):
        hooks = Raw('[[apps.webhooks]]\nurl = "http://hooks.test/a"\nevent_types = ["channel_occupied"]\n'
                 '[[apps.webhooks]]\nurl = "http://hooks.test/b"\nevent_types = ["channel_occupied"]')
        rig, receiver = self.rig(toml([dict(A, hooks=hooks)]))
        rig.reload('[webhooks]\nbatch_window_ms = 10\n' + toml([dict(
            A, secret="rotated", hooks=Raw(hooks.split("\n[[apps.webhooks]]")[0]))]))
        rig.connect("/app/a-key?protocol=7").subscribe("news")
        settle(rig)
        [request] = receiver.requests
        self.assertEqual(request["url"], "http://hooks.test/a")
        self.assertEqual(request["headers"]["X-Pusher-Signature"],
                         signing.webhook_signature("rotated", request["body"]))
        self.assertEqual(rig.service.webhooks._targets["a"][0].settings.batch_window_ms, 10)


class LogAndSystemdTests(unittest.TestCase):
    def test_log_level_applies_at_once(self):
        rig = ReloadRig(self, toml([A]))
        self.addCleanup(logs.configure, "text", "info")
        rig.reload('[log]\nlevel = "warn"\nformat = "json"\n' + toml([A]))
        self.assertEqual(logs.observer.level.name, "warn")
        self.assertEqual(logs.observer.format, "json")

    def test_systemd_hears_reloading_then_ready(self):
        listener = Listener(self)
        rig = ReloadRig(self, toml([A]))
        from soketify.systemd import Notifier
        notifier = Notifier(listener.address)
        self.addCleanup(notifier.close)
        status = SystemdStatus(notifier, rig.reactor, rig.service.systemd_status)
        status.startService()
        rig.advance(0.1)
        self.assertTrue(listener.messages()[0].startswith("READY=1"))
        rig.reloader = Reloader(rig.service, rig.reactor, tap.config_problems, status)
        rig.reload(toml([A, B]))
        reloading, ready = listener.messages()
        self.assertEqual(reloading.splitlines()[0], "RELOADING=1")
        self.assertRegex(reloading.splitlines()[1], r"^MONOTONIC_USEC=\d+$")
        self.assertEqual(ready.splitlines()[0], "READY=1")
        self.assertIn("for 2 apps", ready)
        # A refused reload is announced the same way (systemctl reload does not hang).
        rig.reload("[[apps]\n")
        self.assertEqual([m.splitlines()[0] for m in listener.messages()], ["RELOADING=1", "READY=1"])


class SlowApply:
    """A target whose apply takes a while, as a supervisor waiting for its workers."""

    def __init__(self, config):
        self.config = config
        self.applied = []
        self.pending = []

    def apply(self, config):
        from twisted.internet.defer import Deferred
        self.applied.append(config)
        self.config = config
        self.pending.append(Deferred())
        return self.pending[-1]


class ReloadFlowTests(unittest.TestCase):
    def test_a_sighup_during_a_reload_reads_the_file_again_after_it(self):
        from twisted.internet.task import Clock
        path = os.path.join(tempfile.mkdtemp(), "soketify.toml")
        with open(path, "w") as f:
            f.write(toml([A]))
        target = SlowApply(load(path))
        clock = Clock()
        reloader = Reloader(target, clock, lambda config: [])
        with open(path, "w") as f:
            f.write(toml([A, B]))
        reloader.reload()
        with open(path, "w") as f:
            f.write(toml([A, B, C]))
        reloader.reload()  # while the first waits for its workers
        self.assertEqual(len(target.applied), 1)
        target.pending[0].callback(None)
        clock.advance(0)
        self.assertEqual([app.id for app in target.applied[-1].apps], ["a", "b", "c"])

    def test_a_reload_before_serving_does_not_say_ready(self):
        listener = Listener(self)
        from soketify.systemd import Notifier
        notifier = Notifier(listener.address)
        self.addCleanup(notifier.close)
        from twisted.internet.task import Clock
        status = SystemdStatus(notifier, Clock(), lambda: (False, "Not serving: starting"))
        status.reloading("Reloading x")
        status.reloaded()
        messages = listener.messages()
        self.assertEqual([m.splitlines()[0] for m in messages], ["RELOADING=1", "STATUS=Not serving: starting"])
