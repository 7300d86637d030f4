"""The systemd units shipped in debian/: notify type, the journal logger, a stop timeout longer than
the graceful stop, reload by SIGHUP, its hardening as systemd-analyze scores it, and the socket unit
for socket activation (shipped disabled, documented in README.Debian)."""

import os
import re
import shutil
import subprocess
import tempfile

from twisted.trial import unittest

from soketify import tap
from soketify.config import ServerConfig

DEBIAN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "debian")
UNIT = os.path.join(DEBIAN, "soketify.service")
SOCKET = os.path.join(DEBIAN, "soketify.socket")


def settings(path: str = UNIT) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with open(path) as unit:
        for line in unit:
            if "=" in line and not line.startswith("#"):
                key, _, value = line.strip().partition("=")
                found.setdefault(key, []).append(value)
    return found


class UnitTests(unittest.TestCase):
    def test_notify_logger_and_stop_timeout(self):
        unit = settings()
        self.assertEqual((unit["Type"], unit["NotifyAccess"]), (["notify"], ["main"]))
        self.assertIn("--logger soketify.logs.make_observer", unit["ExecStart"][0])
        self.assertGreater(int(unit["TimeoutStopSec"][0]), ServerConfig().shutdown_timeout + 5)

    def test_reload_sends_sighup_to_the_main_process(self):
        """systemctl reload: SIGHUP to the main process, which reads its config again."""
        self.assertEqual(settings()["ExecReload"], ["/bin/kill -HUP $MAINPID"])

    def test_socket_unit(self):
        """soketify.socket listens where the default config does, on IPv6 and IPv4 (the daemon's
        listen = ["systemd:domain=INET6:index=0"]), with the daemon's backlog; it is installed
        but not enabled, and README.Debian says how to switch to it."""
        socket_unit = settings(SOCKET)
        self.assertEqual(socket_unit["ListenStream"], ["6001"])
        self.assertEqual(socket_unit["BindIPv6Only"], ["both"])
        self.assertEqual(socket_unit["Backlog"], [str(tap.DEFAULT_BACKLOG)])
        self.assertEqual(socket_unit["WantedBy"], ["sockets.target"])
        self.assertEqual(ServerConfig().listen, ("tcp:6001",))
        with open(os.path.join(DEBIAN, "rules")) as rules:
            self.assertIn("dh_installsystemd --no-enable --no-start --no-stop-on-upgrade "
                          "soketify.socket", rules.read())
        with open(os.path.join(DEBIAN, "README.Debian")) as readme:
            text = readme.read()
        self.assertIn('listen = ["systemd:domain=INET6:index=0"]', text)
        self.assertIn("systemctl enable --now soketify.socket", text)

    def test_hardening_score(self):
        """systemd-analyze rates the unit OK (exposure 2.0 at most; it was 8.6 before hardening)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed (package systemd)")
        copy = os.path.join(tempfile.mkdtemp(), "soketify.service")
        shutil.copy(UNIT, copy)
        result = subprocess.run([analyze, "security", "--offline=true", copy],
                                capture_output=True, text=True, timeout=60)
        score = re.search(r"Overall exposure level for soketify.service: ([\d.]+)", result.stdout)
        self.assertIsNotNone(score, result.stdout + result.stderr)
        self.assertLessEqual(float(score.group(1)), 2.0, result.stdout)
        # The socket unit next to it: verify checks both, and the service the socket starts.
        shutil.copy(SOCKET, os.path.dirname(copy))
        verify = subprocess.run([analyze, "verify", copy, copy.replace(".service", ".socket")],
                                capture_output=True, text=True, timeout=60)
        problems = [line for line in (verify.stdout + verify.stderr).splitlines()
                    if line and "is not executable" not in line]  # not installed on this machine
        self.assertEqual(problems, [])
