"""Command line and wiring: the only place that builds and connects the parts."""

from __future__ import annotations

import gc
import os
import socket
import sys

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage

from soketify import autobahn_tuning, logs, protocol
from soketify.activity import ActivityMonitor
from soketify.address_limits import AddressLimits
from soketify.apps import AppRegistry
from soketify.cluster import make_cluster
from soketify.cluster.amp_worker import ForwardedWebhooks
from soketify.config import Config, ConfigError, load_default
from soketify.console_feed import ConsoleFeed, Stats
from soketify.console_web import Console
from soketify.hub import Hub
from soketify.metrics import Metrics
from soketify.outbox import Outbox, adopt_strays
from soketify.rest import RestApi
from soketify.reload import Reloader
from soketify.systemd import systemd_status
from soketify.session import Sessions
from soketify.listening import (REUSABLE_ENDPOINTS, EndpointListener, ReusePortReactor,
                                listening_endpoint)
from soketify.web import ApiSite, SwitchFactory
from soketify.webhooks import Webhooks, treq_post
from soketify.frames import text_frame
from soketify.websocket import PusherServerFactory, write_to_subscribers

log = Logger()


# Twisted's default listen backlog of 50 drops bursts of connections (every client reconnecting at
# once after a restart) and makes them retry a second later; the kernel still caps it (somaxconn).
DEFAULT_BACKLOG = 1024


def with_default_backlog(description: str) -> str:
    """The endpoint description with a large listen backlog unless it sets one itself."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = ("Run Soketify, a Pusher Channels compatible server. Without --config it reads "
                "/etc/soketify/soketify.toml, or serves a public development app on tcp:6001.")
    optParameters = [["config", "c", None, "Path of the TOML config file."]]

    def postOptions(self):
        try:
            self["loaded"] = load_default(self["config"])
            problems = listen_problems(self["loaded"]) + config_problems(self["loaded"])
            if problems:
                raise ConfigError(problems)
        except ConfigError as e:
            # One line per problem, no usage text and no traceback; nothing has started listening.
            for problem in e.problems:
                print(problem, file=sys.stderr)
            raise SystemExit(1)


class SoketifyService(service.MultiService):
    """The listeners plus graceful stop: refuse new work, move every client (4200), then stop."""

    def __init__(self, config: Config, reactor, webhook_post=None, outbox=None, worker=None,
                 console_key: bytes | None = None):
        """``webhook_post`` and ``outbox`` replace treq and the SQLite file thread in tests.
        ``worker`` (a ``worker.WorkerRole``): this process is one of a supervisor's workers."""
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.ready = False
        server = config.server
        autobahn_tuning.apply()
        self.supervision = worker.supervision if worker is not None else None
        self.metrics = Metrics(self.supervision.host_metrics if worker is not None else None,
                               config.metrics.prefix)
        if worker is not None:
            self.supervision.local_metrics = lambda: self.metrics.render().decode()
        self.worker = worker
        self._outbox_given, self._webhook_post = outbox, webhook_post
        # Named so that two of one host's processes are told apart in a cluster's console.
        self.feed = ConsoleFeed(reactor, f"{socket.gethostname()}/{os.getpid()}")
        self.outbox = None
        self.webhooks = None
        if worker is not None and worker.cluster is not None:
            # The amp engine: the supervisor keeps the one outbox and sends every webhook.
            self.cluster = worker.cluster
        else:
            self.cluster = make_cluster(config, reactor)
        self._make_webhooks(config)
        self.hub = Hub(AppRegistry(config.apps), self.cluster, text_frame, config.limits, reactor,
                       webhooks=self.webhooks, write_each=write_to_subscribers,
                       on_refusal=self.metrics.refused, feed=self.feed)
        self.metrics.watch_hub(self.hub)
        self.hub.delivered_in = self.metrics.publish_to_write.observe
        self.cluster.share_console(self.feed, reactor)
        self.cluster.round_trip = self.metrics.round_trips(
            "amp" if worker is not None and worker.cluster is not None else config.cluster.engine)
        self.sessions = Sessions(self.hub, config.limits, reactor)
        self.address_limits = AddressLimits(reactor, server.max_connections_per_ip,
                                            server.max_handshakes_per_ip_per_second)
        self.websocket = PusherServerFactory(
            self.hub, self.sessions, reactor, server.activity_timeout, server.max_message_size,
            server.max_send_buffer, self.address_limits)
        autobahn_tuning.options_on_class(self.websocket)
        self.activity = ActivityMonitor(reactor, self.hub.connections,
                                        server.activity_timeout, server.pong_timeout,
                                        self.hub.authorization_overdue,
                                        shortest_authorization_timeout(config))
        self.api = RestApi(self.hub, reactor, config.limits, self.unready_reason, self.metrics)
        self.stats = self.console = None
        if config.console.enabled:
            self.stats = Stats(reactor, self.hub, lambda: self.feed.has_viewers)
            self.console = Console(config.console, self.hub, self.api, self.feed, self.stats,
                                   reactor, config.is_development_default, console_key)
        self.site = ApiSite(self.api.resource(self.console and self.console.resource()),
                            config.limits.max_request_body_bytes, reactor=reactor,
                            counted=self.api.count_request)
        self.listeners = []
        self.tls = []  # the ssl: listeners' certificates, read again on reload
        switch = SwitchFactory(self.websocket, self.site, self.api)
        for description in server.listen:
            description = with_default_backlog(description)
            if worker is not None:
                # Every worker opens the same ports (SO_REUSEPORT): the kernel spreads clients.
                endpoint, tls = listening_endpoint(description, ReusePortReactor(reactor))
                listener = EndpointListener(endpoint, switch)
            else:
                endpoint, tls = listening_endpoint(description, reactor)
                listener = StreamServerEndpointService(endpoint, switch)
                listener._raiseSynchronously = True  # as strports.service: a taken port fails the start
            if tls is not None:
                self.tls.append(tls)
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def _make_webhooks(self, config: Config) -> None:
        """The webhook sink, once some app has webhooks (at start, or from the reload that adds
        the first): the supervisor's outbox under the amp engine, else this process's own."""
        if self.webhooks is not None or not any(app.webhooks for app in config.apps):
            return
        if self.worker is not None and self.worker.cluster is not None:
            self.webhooks = ForwardedWebhooks(self.supervision, config.apps)
            return
        path = outbox_path(config, self.worker.index if self.worker is not None else None)
        self.outbox = self._outbox_given or Outbox.on_thread(path, self.reactor)
        self.webhooks = Webhooks(config.apps, config.webhooks, self.reactor, self.outbox,
                                 self._webhook_post or treq_post(self.reactor),
                                 counts=self.metrics, feed=self.feed)

    def apply(self, config: Config) -> None:
        """Serve ``config`` from now on, keeping every connection (a reload; the restart-only
        settings in it are the running ones, see soketify.reload)."""
        server, limits = config.server, config.limits
        for tls in self.tls:
            try:
                tls.reload()
            except Exception as e:
                log.error("{listen}: cannot read the TLS key or certificate again ({why}); new "
                          "connections keep the previous ones", listen=tls.description, why=e)
        logs.configure(config.log.format, config.log.level)
        self.config = config
        if self.webhooks is not None:
            self.webhooks.reconfigure(config.apps, config.webhooks)
        else:
            self._make_webhooks(config)
            if self.webhooks is not None:
                self.hub.webhooks = self.webhooks
                if self.outbox is not None:
                    self.webhooks.start()
        # After the webhooks: the Redis engine stores which events each app's webhooks want.
        self.cluster.reconfigure(config.apps, limits, config.webhooks.grace)
        self.hub.apps.update(config.apps)
        self.hub.reconfigure(limits)
        self.sessions.reconfigure(limits)
        self.api.limits = limits
        self.site.max_request_body = limits.max_request_body_bytes
        self.address_limits.reconfigure(server.max_connections_per_ip,
                                        server.max_handshakes_per_ip_per_second)
        if self.console is not None:
            self.console.reconfigure(config.console)
        self.websocket.activity_timeout = server.activity_timeout
        self.websocket.max_send_buffer = server.max_send_buffer
        self.activity.reconfigure(server.activity_timeout, server.pong_timeout,
                                  shortest_authorization_timeout(config))

    def startService(self):
        if self.config.is_development_default:
            log.warn("No config file: serving the development app (id 'app-id', key 'app-key', "
                     "secret 'app-secret'), and the debug console at /console without a "
                     "password. These credentials are public; do not use them in production.")
        self.cluster.startService()
        super().startService()
        if self.outbox is not None:  # a worker of the amp engine forwards webhooks instead
            self.webhooks.start()
        self.activity.start()
        if self.stats is not None:
            self.stats.start()
        self.ready = True
        log.info("Soketify listening on {listen}", listen=", ".join(self.config.server.listen))

    def unready_reason(self) -> str | None:
        """Why /ready answers 503, or None while the node serves as part of its cluster."""
        if not self.ready:
            return "Server is starting or shutting down"
        if self.supervision is not None and not self.supervision.serving:
            return "Fewer workers are up than configured, or the server is stopping"
        if not self.cluster.ready:
            return "Server is not connected to its cluster"
        return None

    def systemd_status(self) -> tuple[bool, str]:
        """Whether the node serves, and a line for systemctl status."""
        reason = self.unready_reason()
        apps = len(self.config.apps)
        if reason is not None:
            return False, f"Not serving: {reason}"
        connections = len(self.hub.connections)
        return True, (f"Serving {connections} connection{'s' if connections != 1 else ''} for "
                      f"{apps} app{'s' if apps != 1 else ''} on {', '.join(self.config.server.listen)}")

    def stopService(self):
        self.ready = False
        self.websocket.stopping = True
        self.activity.stop()
        if self.stats is not None:
            self.stats.stop()
        # Each listener's stopService answers once its port has really stopped listening; one that
        # fails is logged and the stop goes on (clients still move, webhooks still reach the outbox).
        stopped = DeferredList([maybeDeferred(listener.stopService).addErrback(
            lambda f: log.failure("A listener did not stop cleanly", f))
            for listener in self.listeners])
        stopped.addCallback(lambda _: self.cluster.draining())
        stopped.addCallback(lambda _: self._move_clients())
        # Only once every client is gone: their vacated/member_removed events are decided, not lost.
        stopped.addCallback(lambda _: self.hub.stop())
        stopped.addCallback(lambda _: self.cluster.stopService())
        if self.outbox is not None:
            stopped.addCallback(lambda _: self.webhooks.stop())
        stopped.addCallback(lambda _: service.Service.stopService(self))
        return stopped

    def _move_clients(self) -> Deferred:
        """Send every client 4200 so pusher-js reconnects at once; abort stragglers after a bound."""
        connections = self.hub.connections
        gone = self.hub.when_no_connections()
        if not connections:
            return gone
        log.info("Asking {count} clients to reconnect elsewhere", count=len(connections))
        error = protocol.error(protocol.RECONNECT_NOW, "Server is shutting down")
        for connection in list(connections):
            connection.send(error)
            connection.close(protocol.RECONNECT_NOW, "Server is shutting down")

        def abort_stragglers():
            # Aborted connections report their loss on a later turn; `gone` fires then.
            for connection in list(connections):
                connection.transport.abortConnection()
        straggling = self.reactor.callLater(self.config.server.shutdown_timeout, abort_stragglers)

        def all_gone(result):
            if straggling.active():
                straggling.cancel()
            return result
        return gone.addBoth(all_gone)


def outbox_path(config: Config, worker_index: int | None = None) -> str:
    """The webhook outbox: one per process that sends webhooks (each worker of a Redis cluster
    has its own, kept under its number so that its replacement resumes it)."""
    name = "webhooks.sqlite3" if worker_index is None else f"webhooks-worker-{worker_index}.sqlite3"
    return os.path.join(config.server.state_dir, name)


def adopt_stray_outboxes(config: Config) -> None:
    """Events waiting in outbox files this start does not use (another ``workers`` count or engine
    wrote them) move into one it does, so they are sent rather than left behind."""
    if not any(app.webhooks for app in config.apps):
        return
    paths = [outbox_path(config)]
    if config.server.worker_count > 1 and config.cluster.engine == "redis":
        paths = [outbox_path(config, index) for index in range(config.server.worker_count)]
    used = {os.path.basename(path) for path in paths}
    moved = adopt_strays(config.server.state_dir, os.path.basename(paths[0]), used)
    if moved:
        log.info("Moved {count} webhook events from outbox files no longer in use to {path}",
                 count=moved, path=paths[0])


def shortest_authorization_timeout(config: Config) -> int | None:
    timeouts = [app.authorization_timeout for app in config.apps if app.authorized_connections]
    return min(timeouts) if timeouts else None


def listen_problems(config: Config) -> list[str]:
    """Listen endpoints that cannot be made: a typo, an ssl: key or certificate that cannot be
    read, a systemd: socket that systemd did not pass. Checked at start-up only (listen needs a
    restart anyway)."""
    problems = []
    for description in config.server.listen:
        try:
            serverFromString(None, description)  # parsing needs no reactor
        except Exception as e:
            why = f"{type(e).__name__}: {e}" if isinstance(e, LookupError) else str(e)
            if description.lower().startswith("systemd:") and isinstance(e, LookupError):
                why = (f"systemd passed no such socket ({why}); enable and start the socket unit "
                       "(soketify.socket), or listen on tcp:")
            problems.append(f"{config.source}: server.listen: {description!r}: {why}")
    return problems


def config_problems(config: Config) -> list[str]:
    """What a start-up (or a reload) refuses beyond the file's own rules."""
    return [problem for problem in (state_dir_problem(config), workers_problem(config)) if problem]


def state_dir_problem(config: Config) -> str | None:
    """Webhooks need a writable state directory for their outbox; say so before anything starts."""
    if not any(app.webhooks for app in config.apps):
        return None
    state_dir = config.server.state_dir
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as e:
        return f"{config.source}: server.state_dir: cannot create {state_dir}: {e.strerror}"
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return f"{config.source}: server.state_dir: {state_dir} is not writable (webhook outbox)"
    return None


def workers_problem(config: Config) -> str | None:
    """Workers share their ports through SO_REUSEPORT, which only TCP listeners have."""
    if config.server.worker_count == 1:
        return None
    for description in config.server.listen:
        if description.split(":", 1)[0].lower() not in REUSABLE_ENDPOINTS:
            return (f"{config.source}: server.workers: more than one worker needs tcp:, tcp6: or "
                    f"ssl: listen endpoints, not {description!r}")
    return None


def makeService(options, reactor=None, environ=None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor
    config = options["loaded"] if "loaded" in options else load_default(options.get("config"))
    logs.configure(config.log.format, config.log.level)
    adopt_stray_outboxes(config)
    if config.server.worker_count > 1:
        from soketify.supervisor import SupervisorService
        main = SupervisorService(config, reactor)
    else:
        reactor.callWhenRunning(freeze_startup_objects)
        main = SoketifyService(config, reactor)
    # Stopped in the reverse order: SIGHUP is ignored first, then STOPPING=1 goes out.
    root = service.MultiService()
    main.setName("soketify")
    main.setServiceParent(root)
    status = systemd_status(reactor, main.systemd_status, environ)
    if status is not None:
        status.setServiceParent(root)
    Reloader(main, reactor, config_problems, status).setServiceParent(root)
    return root


def freeze_startup_objects() -> None:
    """Start-up objects live forever: keep the cyclic collector from scanning them again and again.
    Handshakes allocate many short-lived objects that reference counting frees; collecting the
    youngest generation every 700 allocations cost about 15 % of a handshake in profiles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
