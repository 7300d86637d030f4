"""SIGHUP: read the config file again and apply it to the running daemon, keeping every connection.

A file with any problem changes nothing: every problem is logged (the lines a start-up would print)
and the running config stays. Otherwise apps, [limits], [webhooks], [log] and most of [server] take
effect at once (see ``SoketifyService.apply``); the settings a running process cannot change
(``RESTART_ONLY``) are named in a warning and keep their running values, so the config in force is
always one a fresh start of the old file plus the live changes would give.

Under systemd the reload is announced (RELOADING=1, then READY=1), as ``ExecReload`` expects.
"""

from __future__ import annotations

import copy
import signal

from twisted.application import service
from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger

from soketify.config import Config, ConfigError, load, parse

log = Logger()

# Settings that need a new process: the ports, where state lives, the process layout, the cluster
# engine, how frames are read and how metrics are named. (section, key); key None: every key.
RESTART_ONLY = (
    ("server", "listen"),
    ("server", "state_dir"),
    ("server", "workers"),
    ("server", "max_message_size"),
    ("cluster", None),
    ("metrics", "prefix"),
    ("console", "enabled"),
)


def _value(document: dict, section: str, key: str | None):
    table = document.get(section)
    if not isinstance(table, dict):
        return None
    return table if key is None else table.get(key)


def restart_only_changes(running: Config, new: Config) -> list[str]:
    """The restart-only settings whose value differs between the two configs ("server.listen")."""
    changed = []
    for section, key in RESTART_ONLY:
        if key is None:
            if getattr(running, section) != getattr(new, section):
                changed.append(f"[{section}]")
        elif getattr(getattr(running, section), key) != getattr(getattr(new, section), key):
            changed.append(f"{section}.{key}")
    return changed


def keep_running_settings(running: Config, new: Config) -> Config:
    """``new``, with the restart-only settings as ``running`` has them. Built from the TOML
    document, so that the document handed to workers (and to a worker started later) is the same."""
    document = copy.deepcopy(new.document or {})
    old = running.document or {}
    for section, key in RESTART_ONLY:
        value = _value(old, section, key)
        if key is None:
            if value is None:
                document.pop(section, None)
            else:
                document[section] = copy.deepcopy(value)
            continue
        table = document.setdefault(section, {})  # a table: parse() refused anything else
        if value is None:
            table.pop(key, None)
        else:
            table[key] = copy.deepcopy(value)
        if not table:
            del document[section]
    return parse(document, new.source)


def read_again(running: Config, problems) -> tuple[Config, Config]:
    """The config file ``running`` came from, read again: (the file's config, the one to apply:
    with the running restart-only settings), the latter checked as at start-up (``problems(config)``:
    what else is wrong with it). Raises ConfigError."""
    new = load(running.source)
    effective = keep_running_settings(running, new)
    found = problems(effective)
    if found:
        raise ConfigError(found)
    return new, effective


def app_changes(running: Config, new: Config) -> str:
    """A summary for the log: "apps: 1 added (b), 1 removed (c), 1 changed (a)"."""
    before = {app.id: app for app in running.apps}
    after = {app.id: app for app in new.apps}
    parts = []
    for what, ids in (("added", [i for i in after if i not in before]),
                      ("removed", [i for i in before if i not in after]),
                      ("changed", [i for i in after if i in before and after[i] != before[i]])):
        if ids:
            parts.append(f"{len(ids)} {what} ({', '.join(ids)})")
    return "apps: " + (", ".join(parts) if parts else "unchanged")


class Reloader(service.Service):
    """Installs the SIGHUP handler while running; ``reload()`` does the work on the reactor thread.

    ``target`` has ``config`` and ``apply(config)`` (may return a Deferred); ``problems(config)``
    lists what a start-up would refuse beyond the file's own rules; ``systemd`` (a
    ``systemd.SystemdStatus``, or None when not under systemd) announces the reload."""

    def __init__(self, target, reactor, problems, systemd=None):
        self._target = target
        self._reactor = reactor
        self._problems = problems
        self._systemd = systemd
        self.reloading = None  # the Deferred of a reload under way
        self._again = False  # a SIGHUP came during it: read the file once more when it is done

    def startService(self):
        super().startService()
        signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self):
        # A SIGHUP while stopping must not kill the process (the default action) or reload it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return super().stopService()

    def _signalled(self, signum, frame):
        # Signal handlers interrupt whatever the reactor is doing: do the work on its next turn.
        self._reactor.callFromThread(self.reload)

    def reload(self):
        """Read the file again and apply it; a Deferred that fires when done (never fails)."""
        if self.reloading is not None:
            log.info("A reload is under way; the file is read again once it is done")
            self._again = True
            return self.reloading
        running = self._target.config
        if running.is_development_default:
            log.warn("SIGHUP: no config file to read again (serving the development defaults); "
                     "start with --config to use one")
            return succeed(None)
        if self._systemd is not None:
            self._systemd.reloading(f"Reloading {running.source}")
        log.info("SIGHUP: reading {source} again", source=running.source)
        try:
            new, effective = read_again(running, self._problems)
        except ConfigError as e:
            for problem in e.problems:
                log.error("{problem}", problem=problem)
            log.error("Reload refused: {count} problem{s} in {source}; the running config is "
                      "unchanged", count=len(e.problems), s="s" if len(e.problems) != 1 else "",
                      source=running.source)
            self._done()
            return succeed(None)
        restart = restart_only_changes(running, new)
        if restart:
            log.warn("Changed settings that need a restart, kept as they were until then: {names}",
                     names=", ".join(restart))
        summary = app_changes(running, effective)
        self.reloading = maybeDeferred(self._target.apply, effective)

        def applied(_):
            log.info("Reloaded {source} ({summary})", source=running.source, summary=summary)

        def failed(failure):
            log.failure("Reload failed part way", failure)
        self.reloading.addCallbacks(applied, failed)
        return self.reloading.addBoth(lambda _: self._done())

    def _done(self):
        self.reloading = None
        if self._systemd is not None:
            self._systemd.reloaded()
        if self._again:
            self._again = False
            self._reactor.callLater(0, self.reload)
