"""sd_notify: READY=1 once serving, STATUS= while running, STOPPING=1 when a stop begins; only the
main process speaks. Datagrams go to a real Unix socket, as systemd's."""

import os
import signal
import socket
import subprocess
import sys
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from soketify import systemd, tap
from soketify.systemd import Notifier, SystemdStatus, environment_for_children, systemd_status
from tests.support import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, test_case, abstract=False):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.address = f"@soketify-test-{os.getpid()}-{id(self)}"
            self.socket.bind("\0" + self.address[1:])
        else:
            directory = tempfile.mkdtemp()
            self.address = os.path.join(directory, "notify")
            self.socket.bind(self.address)
        self.socket.settimeout(20)
        test_case.addCleanup(self.socket.close)

    def messages(self) -> list[str]:
        """Every datagram waiting now."""
        received = []
        self.socket.setblocking(False)
        try:
            while True:
                received.append(self.socket.recv(65536).decode())
        except BlockingIOError:
            pass
        finally:
            self.socket.settimeout(20)
        return received

    def next(self) -> str:
        return self.socket.recv(65536).decode()


class NotifierTests(unittest.TestCase):
    def test_path_and_abstract_sockets(self):
        for abstract in (False, True):
            listener = Listener(self, abstract)
            notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
            self.addCleanup(notifier.close)
            notifier.send("READY=1", "STATUS=hello")
            self.assertEqual(listener.next(), "READY=1\nSTATUS=hello")

    def test_nothing_without_notify_socket(self):
        self.assertIsNone(Notifier.from_environment({}))
        self.assertIsNone(systemd_status(Clock(), lambda: (True, ""), {}))

    def test_a_vanished_socket_is_logged_once_not_raised(self):
        notifier = Notifier("/nonexistent/notify")
        self.addCleanup(notifier.close)
        notifier.send("READY=1")
        notifier.send("STATUS=x")
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_workers_do_not_get_the_socket(self):
        self.assertEqual(environment_for_children({"NOTIFY_SOCKET": "/run/x", "PATH": "/bin"}),
                         {"PATH": "/bin"})


class SystemdStatusTests(unittest.TestCase):
    def test_ready_once_serving_status_when_it_changes_stopping_at_stop(self):
        listener = Listener(self)
        notifier = Notifier(listener.address)
        self.addCleanup(notifier.close)
        clock = Clock()
        state = {"serving": False, "text": "Not serving: starting"}
        status = SystemdStatus(notifier, clock, lambda: (state["serving"], state["text"]))
        status.startService()
        self.assertEqual(listener.messages(), [], "nothing until the reactor runs")
        clock.advance(0)
        self.assertEqual(listener.messages(), ["STATUS=Not serving: starting"])
        state.update(serving=True, text="Serving 0 connections")
        clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(listener.messages(), ["READY=1\nSTATUS=Serving 0 connections"])
        clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(listener.messages(), [])  # nothing new to say
        state["text"] = "Serving 3 connections"
        clock.advance(systemd.STATUS_INTERVAL)
        self.assertEqual(listener.messages(), ["STATUS=Serving 3 connections"])
        status.stopService()
        self.assertEqual(listener.messages(),
                         ["STOPPING=1\nSTATUS=Stopping: asking clients to reconnect elsewhere"])

    def test_make_service_speaks_for_the_daemon(self):
        """makeService with $NOTIFY_SOCKET: READY=1 with the daemon's own status once it serves;
        STOPPING=1 first when it stops."""
        listener = Listener(self)
        reactor = MemoryReactorClock()
        root = tap.makeService({"loaded": make_config()}, reactor,
                               {"NOTIFY_SOCKET": listener.address})
        root.startService()
        self.addCleanup(lambda: root.running and root.stopService())
        reactor.advance(systemd.STATUS_INTERVAL)
        messages = listener.messages()
        self.assertEqual(messages[-1].splitlines()[0], "READY=1")
        self.assertIn("STATUS=Serving 0 connections for 1 app on tcp:6001", messages[-1])
        root.stopService()
        self.assertTrue(listener.messages()[0].startswith("STOPPING=1"))


def start_daemon(test_case, listener, output=None):
    """twistd soketify on a free port of 127.0.0.1, notifying ``listener``; returns its port once
    it sent READY=1. ``output`` (a file) gets its log as the journal would; the process is
    ``test_case.daemon``."""
    config = os.path.join(tempfile.mkdtemp(), "soketify.toml")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                '[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\n')
    env = dict(os.environ, NOTIFY_SOCKET=listener.address, PYTHONPATH=ROOT)
    if output is not None:
        # Standard output is "the journal": $JOURNAL_STREAM names its device and inode.
        stat = os.fstat(output.fileno())
        env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    daemon = test_case.daemon = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
         "--logger", "soketify.logs.make_observer", "soketify", "--config", config],
        cwd=tempfile.mkdtemp(), env=env, stdout=output or subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    test_case.addCleanup(lambda: daemon.poll() is None and daemon.kill())
    ready = listener.next()
    test_case.assertTrue(ready.startswith("READY=1"), ready)
    return port


class RealDaemonTests(unittest.TestCase):
    def test_the_daemon_notifies_ready_then_stopping(self):
        """twistd soketify under a notify socket, logging to the journal: READY=1 once it listens,
        STOPPING=1 on SIGTERM, every log line with its priority."""
        listener = Listener(self)
        output = tempfile.TemporaryFile("w+")
        self.addCleanup(output.close)
        port = start_daemon(self, listener, output)
        daemon = self.daemon
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it really listens
        daemon.send_signal(signal.SIGTERM)
        self.assertTrue(listener.next().startswith("STOPPING=1"))
        # twistd ends with the signal that stopped it, once the graceful stop is done.
        self.assertIn(daemon.wait(20), (0, -signal.SIGTERM))
        output.seek(0)
        lines = output.read().splitlines()
        self.assertTrue(lines, "the daemon logged nothing")
        self.assertEqual([line for line in lines if not line[:3] in ("<6>", "<4>", "<3>", "<7>")],
                         [], "every line has a journal priority and no timestamp of its own")
        self.assertTrue(any("Soketify listening on" in line for line in lines))
