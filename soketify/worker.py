"""One worker process of a supervisor (``[server] workers``): ``python -m soketify.worker``.

The supervisor starts it with its end of an AMP link as a file descriptor; the worker links up, takes
the config the supervisor loaded (never the file as it may be now), then opens every listen endpoint
itself (SO_REUSEPORT) and serves like a single Soketify process. It stops gracefully on SIGTERM, and on its own if the supervisor is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from dataclasses import dataclass

# Exit statuses the supervisor tells apart.
EXIT_CONFIG = 2       # the supervisor's config was refused (a different version of Soketify?)
EXIT_LISTEN = 3       # a listen endpoint could not be opened


@dataclass
class WorkerRole:
    """What makes a SoketifyService a worker: its number, its link, and its engine if ``amp``."""

    index: int
    supervision: object  # amp_worker.Supervision
    cluster: object | None  # amp_worker.AmpCluster under engine "local", else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soketify.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    args = parser.parse_args(argv)

    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner

    from soketify import logs
    output = logs.observer  # the journal's format when stdout is the journal, as the supervisor's

    def observe(event):
        event.setdefault("log_system", f"worker {args.index}")
        output(event)
    globalLogBeginner.beginLoggingTo([observe], redirectStandardIO=False)
    log = Logger()

    from twisted.internet.defer import gatherResults

    from soketify.cluster.amp_worker import AmpCluster, Supervision
    from soketify.config import ConfigError, from_document
    from soketify.tap import SoketifyService, freeze_startup_objects

    status = [0]

    def stop(code: int = 0):
        # Once stopping, a further SIGTERM (the supervisor's, or systemd's to the whole group) has
        # nothing left to start; the supervisor kills a worker that overruns its stop.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status[0] = status[0] or code
        if reactor.running:
            reactor.stop()

    def supervisor_gone():
        log.warn("The supervisor is gone: stopping")
        stop()

    supervision = Supervision(args.index, supervisor_gone)
    reactor.adoptStreamConnection(args.link_fd, socket.AF_UNIX, supervision.factory())
    os.close(args.link_fd)

    def cannot_listen(failure):
        log.error("Cannot listen: {why}", why=failure.getErrorMessage())
        stop(EXIT_LISTEN)

    def start(_):
        # The supervisor's config, as it loaded it: every worker serves the same one.
        try:
            config = from_document(supervision.config)
        except ConfigError as e:
            for problem in e.problems:
                log.error("{problem}", problem=problem)
            return stop(EXIT_CONFIG)
        logs.configure(config.log.format, config.log.level)
        cluster = AmpCluster(config.apps, supervision) if config.cluster.engine == "local" else None
        key = supervision.config.get("console_key")
        server = SoketifyService(config, reactor, worker=WorkerRole(args.index, supervision, cluster),
                                 console_key=bytes.fromhex(key) if key else None)
        # A reload reaches workers from the supervisor, which read and checked the file.
        supervision.apply_config = lambda sent: server.apply(from_document(sent))
        server.startService()
        reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
        listening = gatherResults([listener.listening for listener in server.listeners],
                                  consumeErrors=True)
        listening.addCallbacks(lambda _: supervision.report_listening(),
                               lambda failure: cannot_listen(failure.value.subFailure))
        freeze_startup_objects()
    reactor.callWhenRunning(lambda: supervision.when_registered().addCallback(start))
    # SIGHUP goes to the supervisor (systemctl reload); one sent to the whole group must not end
    # a worker (the default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reactor.addSystemEventTrigger("before", "shutdown", signal.signal, signal.SIGTERM,
                                  signal.SIG_IGN)
    reactor.run()
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
