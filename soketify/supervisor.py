"""The supervisor of ``[server] workers = N``: starts N worker processes, links to each over AMP,
restarts any that ends, and stops them all gracefully on SIGTERM.

Under ``engine = "local"`` it also holds the host's cluster state (``AmpHost``) and sends every
webhook from its one durable outbox (``state_dir/webhooks.sqlite3``). Under ``engine = "redis"`` each
worker is a Redis node with its own outbox (``webhooks-worker-<n>.sqlite3``, resumed by the worker
that replaces it) and the supervisor only supervises. The supervisor never accepts a client.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from soketify import logs
from soketify.cluster import amp_commands as cmd
from soketify.cluster.amp_host import AmpHost
from soketify.console_feed import ConsoleFeed
from soketify.metrics import Metrics
from soketify.outbox import Outbox
from soketify.systemd import environment_for_children
from soketify.tap import outbox_path
from soketify.webhooks import Webhooks, treq_post
from soketify.hub import NoWebhooks
from soketify.worker import EXIT_CONFIG, EXIT_LISTEN

log = Logger()

# A worker that ran at least this long is restarted at once; one that ends sooner waits 1 s, 2 s,
# 4 s ... (at most RESTART_DELAY_MAX) so that a worker that cannot start does not spin.
STABLE_AFTER = 10.0
RESTART_DELAY_MAX = 30.0
# Beyond shutdown_timeout, how long a stopping worker may take before it is killed.
KILL_AFTER_EXTRA = 5.0


# The supervisor asks each worker for a round trip this often, and kills one silent for this long.
LIVENESS_INTERVAL = 2.0
LIVENESS_TIMEOUT = 10.0


def signal_process(process: "WorkerProcess", name: str) -> None:
    try:
        process.transport.signalProcess(name)
    except ProcessExitedAlready:
        pass  # its end is being reported


class WorkerProcess(ProcessProtocol):
    def __init__(self, supervisor: "SupervisorService", index: int):
        self.supervisor = supervisor
        self.index = index
        self.started_at = supervisor.reactor.seconds()
        self.ended = Deferred()

    def processEnded(self, reason):
        self.supervisor.worker_ended(self, reason.value.exitCode, reason.value.signal)
        self.ended.callback(None)


class SupervisorService(service.Service):
    def __init__(self, config, reactor):
        self.config = config
        self.reactor = reactor
        self.wanted = config.server.worker_count
        self.metrics = Metrics(prefix=config.metrics.prefix)
        self.outbox = None
        self.webhooks = NoWebhooks()
        # Its webhook attempts, for the workers' consoles (it has no viewers of its own).
        self.feed = ConsoleFeed(reactor, f"{socket.gethostname()}/{os.getpid()}")
        self._make_webhooks(config)
        # Every worker signs and checks debug-console sessions with it.
        self.console_key = secrets.token_bytes(32)
        self.host = AmpHost(reactor, config.apps, config.limits, config.webhooks.grace, self.webhooks,
                            self.wanted, metrics=lambda: succeed(self.metrics.render().decode()),
                            worker_config=self.worker_config(config))
        self.host.share_console(self.feed)
        self._liveness = LoopingCall(self.check_liveness)
        self._liveness.clock = reactor
        self.processes: dict[int, WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, object] = {}
        self._stopping = False
        self._started = False

    def _make_webhooks(self, config) -> bool:
        """The one outbox of the amp engine, once some app has webhooks (at start, or from the
        reload that adds the first). True if it was made now."""
        if (self.outbox is not None or config.cluster.engine != "local"
                or not any(app.webhooks for app in config.apps)):
            return False
        self.outbox = Outbox.on_thread(outbox_path(config), self.reactor)
        self.webhooks = Webhooks(config.apps, config.webhooks, self.reactor, self.outbox,
                                 treq_post(self.reactor), counts=self.metrics, feed=self.feed)
        return True

    def apply(self, config) -> Deferred:
        """Serve ``config`` from now on (a reload): the state and outbox here, then every worker,
        which applies it as a single process would. Fires once every worker has."""
        logs.configure(config.log.format, config.log.level)
        self.config = config
        if self._make_webhooks(config):
            self.host.webhooks = self.webhooks
            self.webhooks.start()
        elif self.outbox is not None:
            self.webhooks.reconfigure(config.apps, config.webhooks)
        return self.host.reconfigure(config.apps, config.limits, config.webhooks.grace,
                                     self.worker_config(config))

    def worker_config(self, config) -> dict:
        """What each worker serves (Hello's and Reload's answer): the config and the console key."""
        return dict(config.as_document(), console_key=self.console_key.hex())

    def startService(self):
        super().startService()
        probed = self.probe_ports()
        if isinstance(probed, str):
            log.error("{problem}; stopping", problem=probed)
            self.reactor.callWhenRunning(self.fail)
            return
        if self.outbox is not None:
            self.webhooks.start()
        self.host.start()
        self._started = True
        log.info("Starting {count} workers (engine {engine}) on {listen}", count=self.wanted,
                 engine=self.config.cluster.engine, listen=", ".join(self.config.server.listen))
        probed.addCallback(lambda _: self.spawn_all())

    def spawn_all(self) -> None:
        if self._stopping:
            return
        for index in range(self.wanted):
            self.spawn(index)
        self._liveness.start(LIVENESS_INTERVAL, now=False)

    def probe_ports(self) -> str | Deferred:
        """Workers bind with SO_REUSEPORT, which would let them join the ports of another Soketify
        of the same user, splitting clients between two servers that share no state. Binding once
        without it first fails as a single process does if a port is taken. Returns what is wrong,
        or a Deferred that fires once the probes have closed again."""
        closed = []
        for description in self.config.server.listen:
            failed = []
            listening = serverFromString(self.reactor, description).listen(Factory())
            # TCP endpoints answer at once.
            listening.addCallbacks(lambda port: closed.append(port.stopListening()),
                                   lambda failure: failed.append(failure.getErrorMessage()))
            if failed:
                return f"Cannot listen on {description}: {failed[0]}"
        return DeferredList([d for d in closed if d is not None])

    def fail(self) -> None:
        """Stop with a status systemd sees (twistd itself always exits 0)."""
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def check_liveness(self) -> None:
        """A worker that stops answering (stuck in a loop, say) still holds its share of the port:
        after LIVENESS_TIMEOUT without an answer it is killed, and restarted."""
        now = self.reactor.seconds()
        for link in list(self.host.links):
            if link.ping_sent_at is not None:
                if now - link.ping_sent_at >= LIVENESS_TIMEOUT:
                    process = self.processes.get(link.index)
                    log.error("Worker {index} has not answered for {seconds:.0f} s: killing it",
                              index=link.index, seconds=now - link.ping_sent_at)
                    if process is not None:
                        signal_process(process, "KILL")
                continue
            link.ping_sent_at = now

            def answered(_, link=link):
                link.ping_sent_at = None
            link.callRemote(cmd.Sync).addCallbacks(answered, lambda _: None)

    def spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, self.host.factory())
        ours.close()
        args = [sys.executable, "-m", "soketify.worker", "--index", str(index), "--link-fd", "3"]
        process = WorkerProcess(self, index)
        self.reactor.spawnProcess(process, sys.executable, args, env=environment_for_children(),
                                  childFDs={1: 1, 2: 2, 3: theirs.fileno()})
        theirs.close()
        self.processes[index] = process

    def worker_ended(self, process: WorkerProcess, code, signal) -> None:
        if self.processes.get(process.index) is process:
            del self.processes[process.index]
        how = f"signal {signal}" if signal is not None else f"status {code}"
        if self._stopping:
            log.info("Worker {index} stopped ({how})", index=process.index, how=how)
            return
        if not self.host.ever_served and code in (EXIT_LISTEN, EXIT_CONFIG):
            # What fails at start-up will not work by retrying: fail like a single process would.
            log.error("Worker {index} cannot start; stopping", index=process.index)
            self.fail()
            return
        ran = self.reactor.seconds() - process.started_at
        delay = 0.0 if ran >= STABLE_AFTER else min(
            RESTART_DELAY_MAX, max(1.0, 2 * self._delays.get(process.index, 0.5)))
        self._delays[process.index] = delay
        log.warn("Worker {index} ended ({how}) after {ran:.1f} s; restarting it in {delay:.0f} s",
                 index=process.index, how=how, ran=ran, delay=delay)
        self._restarts[process.index] = self.reactor.callLater(delay, self.spawn, process.index)

    def systemd_status(self) -> tuple[bool, str]:
        """Whether every worker is up, and a line for systemctl status."""
        up = sum(1 for link in self.host.links if link.listening)
        text = (f"{up} of {self.wanted} workers up, {len(self.config.apps)} "
                f"app{'s' if len(self.config.apps) != 1 else ''}, on {', '.join(self.config.server.listen)}")
        return self.host.serving, text

    def stopService(self):
        """Every worker stops gracefully (its clients get 4200), then the state and outbox close."""
        super().stopService()
        if self._stopping:
            return None
        self._stopping = True
        self.host.stopping()
        if self._liveness.running:
            self._liveness.stop()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        processes = list(self.processes.values())
        for process in processes:
            signal_process(process, "TERM")
        kill_after = self.config.server.shutdown_timeout + KILL_AFTER_EXTRA

        def kill_stragglers():
            for process in list(self.processes.values()):
                log.warn("Worker {index} did not stop in time: killing it", index=process.index)
                signal_process(process, "KILL")
        killing = self.reactor.callLater(kill_after, kill_stragglers)
        ended = DeferredList([process.ended for process in processes])

        def all_ended(_):
            if killing.active():
                killing.cancel()
            if not self._started:
                return None  # a port was taken: nothing had started
            self.host.stop()
            if self.outbox is not None:
                return self.webhooks.stop()
        return ended.addCallback(all_ended)
