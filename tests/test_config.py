"""Config parsing: every problem named as file: key: what is wrong."""

import os
import subprocess
import tempfile
import sys

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


class BacklogTests(unittest.TestCase):
    def test_tcp_and_ssl_get_a_large_backlog_unless_set(self):
        """Listeners absorb connection bursts: backlog 1024 by default, the user's value otherwise."""
        from soketify.tap import with_default_backlog
        self.assertEqual(with_default_backlog("tcp:6001"), "tcp:6001:backlog=1024")
        self.assertEqual(with_default_backlog("ssl:443:privateKey=k.pem"),
                         "ssl:443:privateKey=k.pem:backlog=1024")
        self.assertEqual(with_default_backlog("tcp:6001:backlog=10"), "tcp:6001:backlog=10")
        self.assertEqual(with_default_backlog("unix:/run/s.sock"), "unix:/run/s.sock")
