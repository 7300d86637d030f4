"""Config parsing: every problem named as file: key: what is wrong."""

import os
import subprocess
import tempfile
import sys
from dataclasses import fields, replace
from urllib.parse import urlsplit

from twisted.trial import unittest

from soketify import config


def problems_of(text: str, tmp_dir: str) -> list[str]:
    path = os.path.join(tmp_dir, "soketify.toml")
    with open(path, "w") as f:
        f.write(text)
    try:
        config.load(path)
    except config.ConfigError as e:
        return [p.replace(path, "FILE") for p in e.problems]
    return []


GOOD = '''
[server]
listen = ["tcp:6001", "tcp:6002:interface=127.0.0.1"]
activity_timeout = 60
[limits]
max_event_data_bytes = 20000
[[apps]]
id = "1"
key = "k1"
secret = "s1"
max_connections = 5
client_events = false
[[apps]]
id = "2"
key = "k2"
secret = "s2"
enabled = false
'''


class ConfigTests(unittest.TestCase):
    def setUp(self):
        temporary = tempfile.TemporaryDirectory()
        self.addCleanup(temporary.cleanup)
        self.dir = temporary.name

    def test_valid_file_becomes_settings(self):
        """A valid file yields the listed endpoints, limits and apps with defaults filled in."""
        path = os.path.join(self.dir, "c.toml")
        with open(path, "w") as f:
            f.write(GOOD)
        loaded = config.load(path)
        self.assertEqual(loaded.server.listen, ("tcp:6001", "tcp:6002:interface=127.0.0.1"))
        self.assertEqual(loaded.server.activity_timeout, 60)
        self.assertEqual(loaded.limits.max_event_data_bytes, 20000)
        self.assertEqual(loaded.limits.max_channels_per_event, 100)
        self.assertEqual([a.id for a in loaded.apps], ["1", "2"])
        self.assertEqual(loaded.apps[0].max_connections, 5)
        self.assertFalse(loaded.apps[0].client_events)
        self.assertFalse(loaded.apps[1].enabled)
        self.assertTrue(loaded.apps[1].client_events)

    def test_each_problem_is_one_line_naming_file_and_key(self):
        """Unknown keys, wrong types, duplicates and missing secrets are all reported together."""
        text = '''
bogus = 1
[server]
activity_timeout = "soon"
listen = []
colour = "blue"
[[apps]]
id = "1"
key = "k"
secret = "s"
enabled = "yes"
[[apps]]
id = "1"
key = "k"
[[apps]]
id = "3"
key = "k3"
secret = "s"
max_connections = -1
'''
        problems = problems_of(text, self.dir)
        expected = [
            "FILE: bogus: unknown key",
            "FILE: server.activity_timeout: must be an integer, not 'soon'",
            "FILE: server.listen: must be a non-empty list of strings",
            "FILE: server.colour: unknown key",
            "FILE: apps[0].enabled: must be a boolean, not 'yes'",
            "FILE: apps[1].secret: missing",
            "FILE: apps[1].id: duplicate id '1' (also apps[0])",
            "FILE: apps[1].key: duplicate key 'k' (also apps[0])",
            "FILE: apps[2].max_connections: must not be negative, not -1",
        ]
        self.assertEqual(sorted(problems), sorted(expected))

    def test_syntax_error_names_the_file(self):
        """A TOML syntax error is one line with the file and the position."""
        problems = problems_of("[server\nlisten=", self.dir)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("FILE: syntax: "), problems)

    def test_app_ids_and_keys_have_no_spaces_or_control_characters(self):
        """An app id or key with a space or a newline is refused (they go into URLs and Redis keys)."""
        problems = problems_of('[[apps]]\nid = "a b"\nkey = "k\\n1"\nsecret = "s"\n', self.dir)
        self.assertEqual(problems, [
            "FILE: apps[0].id: must not contain spaces or control characters, not 'a b'",
            "FILE: apps[0].key: must not contain spaces or control characters, not 'k\\n1'"])

    def test_booleans_are_not_numbers(self):
        """true where a number is expected is refused, not read as 1."""
        problems = problems_of('[server]\nactivity_timeout = true\n[[apps]]\nid="a"\nkey="b"\nsecret="c"\n',
                               self.dir)
        self.assertEqual(problems, ["FILE: server.activity_timeout: must be an integer, not True"])

    def test_zero_timeout_is_refused(self):
        """activity_timeout 0 would make pusher-js throw; it is refused."""
        problems = problems_of('[server]\nactivity_timeout = 0\n[[apps]]\nid="a"\nkey="b"\nsecret="c"\n',
                               self.dir)
        self.assertEqual(problems, ["FILE: server.activity_timeout: must be greater than 0"])

    def test_missing_file_is_reported(self):
        """A config path that does not exist is one clear line."""
        with self.assertRaises(config.ConfigError) as caught:
            config.load(os.path.join(self.dir, "absent.toml"))
        self.assertIn("cannot read", caught.exception.problems[0])

    def test_no_config_means_development_app(self):
        """Without a file the development app is served on tcp:6001 and flagged as such."""
        if os.path.exists(config.DEFAULT_CONFIG_PATH):
            raise unittest.SkipTest(f"{config.DEFAULT_CONFIG_PATH} exists on this machine")
        loaded = config.load_default(None)
        self.assertTrue(loaded.is_development_default)
        self.assertEqual(loaded.server.listen, ("tcp:6001",))
        self.assertEqual((loaded.apps[0].id, loaded.apps[0].key, loaded.apps[0].secret),
                         ("app-id", "app-key", "app-secret"))

    def test_sample_config_in_repo_is_valid(self):
        """etc/soketify.toml, the documented sample, parses."""
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config.load(os.path.join(here, "etc", "soketify.toml"))

    def test_daemon_refuses_bad_config_with_exit_1_and_problem_lines(self):
        """twistd soketify with a bad config exits non-zero, prints one line per problem, no traceback."""
        path = os.path.join(self.dir, "bad.toml")
        with open(path, "w") as f:
            f.write('[server]\nlisten = ["tcp:0"]\nnope = 1\n[[apps]]\nid = "a"\nkey = "b"\n')
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "-n", "--pidfile=", "soketify", "--config", path],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(sorted(result.stderr.strip().splitlines()),
                         [f"{path}: apps[0].secret: missing", f"{path}: server.nope: unknown key"])
        self.assertNotIn("Traceback", result.stdout + result.stderr)


APP = {"id": "1", "key": "k", "secret": "s"}
SECTIONS = {"server": config.ServerConfig, "limits": config.LimitsConfig,
            "webhooks": config.WebhookSettings, "cluster": config.ClusterConfig}


def parse_problems(data: dict) -> list[str]:
    try:
        config.parse(data, "F")
    except config.ConfigError as e:
        return e.problems
    return []


def cluster_problems(**cluster) -> list[str]:
    return parse_problems({"apps": [APP], "cluster": cluster})


def webhook_problems(hook) -> list[str]:
    return parse_problems({"apps": [dict(APP, webhooks=[hook])]})


def int_fields(cls) -> list[str]:
    return [f.name for f in fields(cls) if f.type == "int"]


class ClusterConfigTests(unittest.TestCase):
    def test_without_cluster_section_the_local_engine_is_used(self):
        """No [cluster] means the local engine and the documented Redis defaults."""
        cluster = config.parse({"apps": [APP]}).cluster
        self.assertEqual(cluster, config.ClusterConfig(engine="local", redis_url="redis://127.0.0.1:6379/0",
                                                       prefix="soketify", node_timeout=5))
        self.assertEqual(config.Config().cluster, cluster)

    def test_cluster_section_is_read(self):
        """[cluster] values from a file become Config.cluster."""
        temporary = tempfile.TemporaryDirectory()
        self.addCleanup(temporary.cleanup)
        path = os.path.join(temporary.name, "soketify.toml")
        with open(path, "w") as f:
            f.write('[cluster]\nengine = "redis"\nredis_url = "rediss://u:p@redis.internal:6380/2"\n'
                    'prefix = "eu-1:soketify"\nnode_timeout = 3\n[[apps]]\nid="a"\nkey="b"\nsecret="c"\n')
        self.assertEqual(config.load(path).cluster,
                         config.ClusterConfig(engine="redis", redis_url="rediss://u:p@redis.internal:6380/2",
                                              prefix="eu-1:soketify", node_timeout=3))

    def test_accepted_redis_urls_parse_alike_with_urllib(self):
        """Host, optional port, /db and user:password are accepted; urllib reads the same host and port."""
        for url, host, port in [("redis://h", "h", None), ("redis://h:6379", "h", 6379),
                                ("redis://h/", "h", None), ("rediss://user:pw@h:6380/2", "h", 6380),
                                ("redis://:p%2Fw@10.0.0.1/15", "10.0.0.1", None),
                                ("redis://u:p@w@h:1/0", "h", 1), ("redis://[::1]:65535/0", "::1", 65535)]:
            self.assertEqual(cluster_problems(redis_url=url), [], url)
            self.assertEqual((urlsplit(url).hostname, urlsplit(url).port), (host, port), url)

    def test_each_cluster_rule_is_refused_with_one_line(self):
        """Every cluster rule refuses a bad value with one line saying what is wrong."""
        no_host = "must name a host, as in redis://127.0.0.1:6379/0"
        port = "port (after the host's :) must be a number from 1 to 65535"
        database = "database (after the /) must be a non-negative integer"
        cases = [
            ({"engine": "memcached"}, "cluster.engine: must be one of 'local', 'redis', not 'memcached'"),
            ({"engine": 1}, "cluster.engine: must be a string, not 1"),
            ({"redis_url": "http://h:6379"}, "cluster.redis_url: must start with redis:// or rediss://"),
            ({"redis_url": "127.0.0.1:6379"}, "cluster.redis_url: must start with redis:// or rediss://"),
            ({"redis_url": "redis://h /0"}, "cluster.redis_url: must not contain spaces"),
            ({"redis_url": "redis:///0"}, f"cluster.redis_url: {no_host}"),
            ({"redis_url": "redis://[::1/0"}, f"cluster.redis_url: {no_host}"),
            ({"redis_url": "redis://h:0"}, f"cluster.redis_url: {port}"),
            ({"redis_url": "redis://h:65536"}, f"cluster.redis_url: {port}"),
            ({"redis_url": "redis://h:port/0"}, f"cluster.redis_url: {port}"),
            ({"redis_url": "redis://h/-1"}, f"cluster.redis_url: {database}"),
            ({"redis_url": "redis://h/db"}, f"cluster.redis_url: {database}"),
            ({"redis_url": "redis://h/0/1"}, f"cluster.redis_url: {database}"),
            ({"redis_url": "redis://h/0?ssl=true"}, "cluster.redis_url: takes no ?query or #fragment "
                                                    "after the database number"),
            ({"redis_url": "redis://u:p/w@h"}, "cluster.redis_url: user and password must percent-encode "
                                               "/ ? # [ ] (as %2F %3F %23 %5B %5D)"),
            ({"prefix": ""}, "cluster.prefix: must not be empty"),
            ({"prefix": "sok etify"}, "cluster.prefix: may only hold letters, digits and _ . : -, "
                                      "not 'sok etify'"),
            ({"prefix": "a/b"}, "cluster.prefix: may only hold letters, digits and _ . : -, not 'a/b'"),
            ({"node_timeout": 0}, "cluster.node_timeout: must be greater than 0"),
            ({"node_timeout": -5}, "cluster.node_timeout: must not be negative, not -5"),
            ({"node_timeout": 1.5}, "cluster.node_timeout: must be an integer, not 1.5"),
            ({"nodes": 3}, "cluster.nodes: unknown key"),
        ]
        for cluster, expected in cases:
            self.assertEqual(cluster_problems(**cluster), ["F: " + expected], cluster)

    def test_redis_password_never_appears_in_a_problem(self):
        """A bad redis_url is one problem line that never shows the password, whatever is wrong."""
        for url in ["http://user:s3cret@h", "user:s3cret@h:6379", "redis://:s3cret@", "redis://:s3cret",
                    "redis://default:s3cret", "redis://u:s3cret@h:99999", "redis://u:s3cret@h/x",
                    "redis://u:s3/cret@h", "redis://u:s3cret@h/0?x=1", "redis://u:s3cret@ h"]:
            problems = cluster_problems(redis_url=url)
            self.assertEqual(len(problems), 1, url)
            self.assertNotIn("s3", problems[0])

    def test_webhook_url_problem_hides_its_password(self):
        """A bad webhook URL is quoted with its user:password@ shown as ***@."""
        self.assertEqual(webhook_problems({"url": "ftp://user:s3cret@h/x"}),
                         ["F: apps[0].webhooks[0].url: must be an http:// or https:// URL, "
                          "not 'ftp://***@h/x'"])


class WebhookConfigTests(unittest.TestCase):
    def test_webhook_table_is_read_including_filter_and_headers(self):
        """url, event_types, the filter table and headers become one WebhookConfig."""
        app = config.parse({"apps": [dict(APP, webhooks=[{
            "url": "https://hooks.test/p", "event_types": ["member_added"],
            "filter": {"channel_name_starts_with": "presence-", "channel_name_ends_with": ""},
            "headers": {"X-Custom": "yes"}}, {"url": "http://hooks.test/all"}])]}).apps[0]
        self.assertEqual(app.webhooks, (
            config.WebhookConfig("https://hooks.test/p", ("member_added",), "presence-", "",
                                 {"X-Custom": "yes"}),
            config.WebhookConfig("http://hooks.test/all", config.WEBHOOK_EVENT_TYPES, "", "", {})))

    def test_webhook_problems_keep_their_wording(self):
        """Each webhook problem is the same one line as before the generic reader."""
        known = ", ".join(config.WEBHOOK_EVENT_TYPES)
        at = "F: apps[0].webhooks[0]"
        cases = [
            ({}, [f"{at}.url: missing"]),
            ({"url": "ftp://x"}, [f"{at}.url: must be an http:// or https:// URL, not 'ftp://x'"]),
            ({"url": 5}, [f"{at}.url: must be an http:// or https:// URL, not 5"]),
            ({"url": "http://[::1"}, [f"{at}.url: must be an http:// or https:// URL, not 'http://[::1'"]),
            ({"url": "http://ok", "colour": 1}, [f"{at}.colour: unknown key"]),
            ({"url": "http://ok", "event_types": []},
             [f"{at}.event_types: must be a non-empty list of event type names"]),
            ({"url": "http://ok", "event_types": "member_added"},
             [f"{at}.event_types: must be a non-empty list of event type names"]),
            ({"url": "http://ok", "event_types": ["nope", "member_added", "gone"]},
             [f"{at}.event_types: unknown event type 'nope'; known: {known}",
              f"{at}.event_types: unknown event type 'gone'; known: {known}"]),
            ({"url": "http://ok", "filter": "presence-"}, [f"{at}.filter: must be a table"]),
            ({"url": "http://ok", "filter": {"starts": "x"}}, [f"{at}.filter.starts: unknown key"]),
            ({"url": "http://ok", "filter": {"channel_name_ends_with": 1}},
             [f"{at}.filter.channel_name_ends_with: must be a string, not 1"]),
            ({"url": "http://ok", "headers": {"X-Number": 1}},
             [f"{at}.headers: must be a table of string header values"]),
            ({"url": "http://ok", "headers": {"Content-Length": "5", "X-Ok": "1", "host": "h"}},
             [f"{at}.headers.Content-Length: is set by the HTTP client and cannot be configured",
              f"{at}.headers.host: is set by the HTTP client and cannot be configured"]),
            ("http://ok", ["F: apps[0].webhooks[0]: must be a table"]),
        ]
        for hook, expected in cases:
            self.assertEqual(webhook_problems(hook), expected, hook)
        self.assertEqual(parse_problems({"apps": [dict(APP, webhooks={"url": "http://ok"})]}),
                         ["F: apps[0].webhooks: must be an array of tables ([[apps.webhooks]])"])


class DeclaredRulesTests(unittest.TestCase):
    def test_negative_numbers_are_refused_in_every_section(self):
        """The non-negative rule declared on each numeric field is applied in every section and app."""
        data = {name: {key: -1 for key in int_fields(cls)} for name, cls in SECTIONS.items()}
        data["apps"] = [dict(APP, **{key: -1 for key in int_fields(config.AppConfig)})]
        expected = [f"F: {name}.{key}: must not be negative, not -1"
                    for name, cls in SECTIONS.items() for key in int_fields(cls)]
        expected += [f"F: apps[0].{key}: must not be negative, not -1"
                     for key in int_fields(config.AppConfig)]
        self.assertEqual(sorted(parse_problems(data)), sorted(expected))
        self.assertIn("F: cluster.node_timeout: must not be negative, not -1", expected)

    def test_zero_is_refused_only_where_a_field_declares_positive(self):
        """0 is refused for every positive field; max_connections, grace, the rate limits and the
        apps' own limits (0: the [limits] value) declare 0 as allowed."""
        data = {name: {key: 0 for key in int_fields(cls)} for name, cls in SECTIONS.items()}
        data["apps"] = [dict(APP, **{key: 0 for key in int_fields(config.AppConfig)})]
        spots = [f"{name}.{key}" for name, cls in SECTIONS.items() for key in int_fields(cls)]
        spots += [f"apps[0].{key}" for key in int_fields(config.AppConfig)]
        zero_allowed = ("apps[0].max_connections", "webhooks.grace", "limits.max_bad_frames_per_minute",
                        "limits.max_backend_events_per_second", "limits.max_read_requests_per_second",
                        "server.max_connections_per_ip", "server.max_handshakes_per_ip_per_second",
                        *(f"apps[0].{key}" for key in config.APP_LIMITS))
        positive = [spot for spot in spots if spot not in zero_allowed]
        self.assertEqual(len(positive), len(spots) - len(zero_allowed))
        self.assertEqual(sorted(parse_problems(data)),
                         sorted(f"F: {spot}: must be greater than 0" for spot in positive))

    def test_section_and_array_problems_keep_their_wording(self):
        """Sections that are not tables, [[apps]] that is not an array or empty: one line each."""
        cases = [
            ({"apps": [APP], "server": 5}, ["F: server: must be a table"]),
            ({"apps": [APP], "cluster": []}, ["F: cluster: must be a table"]),
            ({"apps": 5}, ["F: apps: must be an array of tables ([[apps]])"]),
            ({"apps": []}, ["F: apps: at least one [[apps]] table is required"]),
            ({}, ["F: apps: at least one [[apps]] table is required"]),
            ({"apps": [5]}, ["F: apps[0]: must be a table"]),
            ({"apps": [dict(APP, id="")]}, ["F: apps[0].id: must not be empty"]),
            ({"apps": [APP], "server": {"listen": ["tcp:6001", ""]}},
             ["F: server.listen: must be a non-empty list of strings"]),
        ]
        for data, expected in cases:
            self.assertEqual(parse_problems(data), expected, data)


class BacklogTests(unittest.TestCase):
    def test_tcp_and_ssl_get_a_large_backlog_unless_set(self):
        """Listeners absorb connection bursts: backlog 1024 by default, the user's value otherwise."""
        from soketify.tap import with_default_backlog
        self.assertEqual(with_default_backlog("tcp:6001"), "tcp:6001:backlog=1024")
        self.assertEqual(with_default_backlog("ssl:443:privateKey=k.pem"),
                         "ssl:443:privateKey=k.pem:backlog=1024")
        self.assertEqual(with_default_backlog("tcp:6001:backlog=10"), "tcp:6001:backlog=10")
        self.assertEqual(with_default_backlog("unix:/run/s.sock"), "unix:/run/s.sock")


class WorkersTests(unittest.TestCase):
    def test_workers_is_a_positive_count_or_auto(self):
        """workers = N or "auto" (one per core); anything else is one clear problem."""
        from soketify.config import parse
        self.assertEqual(parse({"apps": [APP]}).server.worker_count, 1)
        self.assertEqual(parse({"apps": [APP], "server": {"workers": 3}}).server.worker_count, 3)
        self.assertEqual(parse({"apps": [APP], "server": {"workers": "auto"}}).server.worker_count,
                         os.cpu_count())
        for wrong in (0, -2, True, "all", 1.5):
            self.assertEqual(parse_problems({"apps": [APP], "server": {"workers": wrong}}),
                             ["F: server.workers: must be a positive integer or \"auto\""
                              + (f", not {wrong!r}" if isinstance(wrong, float) else "")], wrong)

    def test_workers_need_listeners_that_can_share_their_port(self):
        """More than one worker is refused at start-up with a unix: listener (no SO_REUSEPORT)."""
        from soketify.config import parse
        from soketify.tap import workers_problem
        shared = parse({"apps": [APP], "server": {"workers": 2,
                                                  "listen": ["tcp:6001", "ssl:6002:privateKey=k"]}})
        self.assertIsNone(workers_problem(shared))
        unix = parse({"apps": [APP], "server": {"workers": 2, "listen": ["unix:/run/s.sock"]}})
        self.assertIn("server.workers: more than one worker needs tcp:, tcp6: or ssl:",
                      workers_problem(unix))
        one = parse({"apps": [APP], "server": {"listen": ["unix:/run/s.sock"]}})
        self.assertIsNone(workers_problem(one))

    def test_workers_serve_the_config_their_supervisor_loaded(self):
        """The supervisor hands its loaded config to each worker (JSON over its link): the worker's
        copy is the same config, even if the file has changed since."""
        import json
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "soketify.toml")
            with open(path, "w") as f:
                f.write(GOOD)
            loaded = config.load(path)
            sent = json.loads(json.dumps(loaded.as_document()))
            with open(path, "w") as f:
                f.write("this is no longer TOML")
            self.assertEqual(config.from_document(sent), loaded)
            self.assertEqual(config.from_document(sent).source, path)
        development = replace(config.parse({"apps": [config.DEV_APP]}), is_development_default=True)
        copy = config.from_document(json.loads(json.dumps(development.as_document())))
        self.assertTrue(copy.is_development_default)
        self.assertEqual(copy.apps, development.apps)
