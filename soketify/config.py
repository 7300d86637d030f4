"""Configuration: a TOML file (or a dict in tests) turned into frozen dataclasses.

Every problem is reported as ``"<file>: <key>: <what is wrong>"``; all problems are collected before
giving up, so a user fixes their file in one pass. This module never writes the file.

Each setting declares its rules where it is defined (``setting(default, check, ...)``); one generic
reader (``_Reader.table``) turns any section into its dataclass by type and those rules.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from soketify.console_auth import parse_hash

DEFAULT_CONFIG_PATH = "/etc/soketify/soketify.toml"

# The public development app used when no config file exists at all.
DEV_APP = {"id": "app-id", "key": "app-key", "secret": "app-secret"}

# Headers the HTTP client itself must set; a webhook target may not send its own.
TRANSPORT_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "content-encoding",
                               "host", "keep-alive", "upgrade", "te", "trailer"))

WEBHOOK_EVENT_TYPES = ("channel_occupied", "channel_vacated", "member_added", "member_removed",
                       "client_event", "cache_miss", "subscription_count")


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# A check takes a value of the right type and returns what is wrong with it, or None.
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Rules:
    """What a setting's value must satisfy beyond its type; kept in the field's metadata."""

    check: Check | None = None      # the whole value, given or default
    each: Check | None = None       # every item of a list, or every key of a table (reported at that key)
    unique: tuple[str, ...] = ()    # keys whose values must differ between the tables of an array
    expected: str | None = None     # how a type problem names the value, e.g. "an http:// or https:// URL"
    under: str | None = None        # the sub-table holding this key, e.g. "filter"


def setting(default: Any = MISSING, check: Check | None = None, *, factory: Any = MISSING,
            **rules: Any) -> Any:
    """A dataclass field read from the config file, with the rules its value must follow."""
    return field(default=default, default_factory=factory, metadata={"rules": Rules(check, **rules)})


# The checks settings declare.

def non_negative(value: int) -> str | None:
    return f"must not be negative, not {value}" if value < 0 else None


def positive(value: int) -> str | None:
    return non_negative(value) or ("must be greater than 0" if value == 0 else None)


def not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def printable_word(value: str) -> str | None:
    """Ids and keys appear in URLs, Redis keys and log lines: no spaces or control characters."""
    if not value:
        return "must not be empty"
    if not value.isprintable() or any(c.isspace() for c in value):
        return f"must not contain spaces or control characters, not {value!r}"
    return None


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(map(repr, choices))}, not {value!r}"
        return None
    return check


def _hide_password(url: str) -> str:
    """url as shown in a problem line: any user:password@ becomes ***@ (a lone user may be a password)."""
    credentials, at, address = url.rpartition("@")
    if not at:
        return url
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", credentials)
    return f"{scheme.group() if scheme else ''}***@{address}"


def valid_http_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
        fine = parts.scheme in ("http", "https") and parts.hostname and not any(c.isspace() for c in value)
    except ValueError:  # e.g. an unclosed [IPv6 address
        fine = False
    return None if fine else f"must be an http:// or https:// URL, not {_hide_password(value)!r}"


def _host_and_port(address: str) -> tuple[str, str | None]:
    """("host", "port") from "host:port", "[::1]:port" or without ":port" (port None); "" if no host."""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        return host, rest[1:] if rest else None
    host, colon, port = address.partition(":")
    return host, port if colon else None


def valid_redis_url(value: str) -> str | None:
    """redis://[user:password@]host[:port][/db], or rediss:// for TLS.

    No message quotes the value: a mistyped URL such as redis://user:password (no @host) puts the
    password where the host or port belongs.
    """
    scheme, separator, rest = value.partition("://")
    if scheme not in ("redis", "rediss") or not separator:
        return "must start with redis:// or rediss://"
    if any(c.isspace() for c in value):
        return "must not contain spaces"
    credentials, _, address = rest.rpartition("@")
    # Unencoded, these would end the user:password part early for URL parsers (urllib, redis-py).
    if any(c in credentials for c in "/?#[]"):
        return "user and password must percent-encode / ? # [ ] (as %2F %3F %23 %5B %5D)"
    if "?" in address or "#" in address:
        return "takes no ?query or #fragment after the database number"
    host_port, _, database = address.partition("/")
    host, port = _host_and_port(host_port)
    if not host:
        return "must name a host, as in redis://127.0.0.1:6379/0"
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return "port (after the host's :) must be a number from 1 to 65535"
    if database and not (database.isascii() and database.isdigit()):
        return "database (after the /) must be a non-negative integer"
    return None


def valid_key_prefix(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
        return f"may only hold letters, digits and _ . : -, not {value!r}"
    return None


def known_event_type(name: str) -> str | None:
    if name not in WEBHOOK_EVENT_TYPES:
        return f"unknown event type {name!r}; known: " + ", ".join(WEBHOOK_EVENT_TYPES)
    return None


def settable_header(name: str) -> str | None:
    if name.lower() in TRANSPORT_HEADERS:
        return "is set by the HTTP client and cannot be configured"
    return None


def worker_count(value: int | str) -> str | None:
    if isinstance(value, bool) or value != "auto" and not (isinstance(value, int) and value >= 1):
        return 'must be a positive integer or "auto"'
    return None


def at_least_one_app(apps: tuple) -> str | None:
    return None if apps else "at least one [[apps]] table is required"


# The sections. Only fields declared with setting() are read from the file.

@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = setting(("tcp:6001",))
    activity_timeout: int = setting(120, positive)
    # How long the server waits for any frame after its own pusher:ping before closing 4201.
    pong_timeout: int = setting(30, positive)
    max_message_size: int = setting(65536, positive)
    # Unsent bytes a slow client may have queued before it is disconnected.
    max_send_buffer: int = setting(4 * 1024 * 1024, positive)
    shutdown_timeout: int = setting(10, positive)
    state_dir: str = setting("/var/lib/soketify", not_empty)
    # Worker processes sharing the listening ports: 1 is one process; "auto" is one per CPU core.
    workers: int | str = setting(1, worker_count, expected='a positive integer or "auto"')
    # Per client IP address and node; 0: no limit. Over them a WebSocket client gets 4100.
    max_connections_per_ip: int = setting(0, non_negative)
    max_handshakes_per_ip_per_second: int = setting(0, non_negative)

    @property
    def worker_count(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else self.workers


@dataclass(frozen=True)
class LimitsConfig:
    max_event_data_bytes: int = setting(10240, positive)
    max_channels_per_event: int = setting(100, positive)
    max_batch_events: int = setting(10, positive)
    max_channel_name_length: int = setting(200, positive)
    max_event_name_length: int = setting(200, positive)
    max_request_body_bytes: int = setting(1024 * 1024, positive)
    max_timestamp_skew: int = setting(600, positive)
    max_presence_members: int = setting(100, positive)
    max_user_info_bytes: int = setting(1024, positive)
    max_user_id_length: int = setting(128, positive)
    max_client_events_per_second: int = setting(10, positive)
    max_watchlist_size: int = setting(100, positive)
    cache_ttl: int = setting(1800, positive)
    max_bad_frames_per_minute: int = setting(60, non_negative)
    # Per app and node, in one-second windows; 0: no limit. Over them: HTTP 429.
    max_backend_events_per_second: int = setting(0, non_negative)
    max_read_requests_per_second: int = setting(0, non_negative)


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are delivered, for every target."""

    # Events for one URL within this window share one POST.
    batch_window_ms: int = setting(50, positive)
    max_events_per_request: int = setting(50, positive)
    request_timeout: int = setting(10, positive)
    # Failed deliveries are retried with exponential back-off for this long, then dropped.
    retry_for: int = setting(300, positive)
    # channel_vacated and member_removed wait this long and vanish if the channel or member returns.
    grace: int = setting(3, non_negative)


@dataclass(frozen=True)
class WebhookConfig:
    url: str = setting(check=valid_http_url, expected="an http:// or https:// URL")
    event_types: tuple[str, ...] = setting(WEBHOOK_EVENT_TYPES, each=known_event_type,
                                           expected="a non-empty list of event type names")
    channel_name_starts_with: str = setting("", under="filter")
    channel_name_ends_with: str = setting("", under="filter")
    headers: dict[str, str] = setting(factory=dict, each=settable_header,
                                      expected="a table of string header values")


@dataclass(frozen=True)
class AppConfig:
    id: str = setting(check=printable_word)
    key: str = setting(check=printable_word)
    secret: str = setting(check=not_empty)
    enabled: bool = setting(True)
    max_connections: int = setting(0, non_negative)
    client_events: bool = setting(True)
    authorized_connections: bool = setting(False)
    # Seconds a connection of an app with authorized_connections has to sign in (or join a private
    # or presence channel) before it is closed with 4009.
    authorization_timeout: int = setting(30, positive)
    subscription_count: bool = setting(False)
    webhooks: tuple[WebhookConfig, ...] = setting(())
    # Browser origins (the Origin header) that may connect: exact ("https://example.com") or with
    # "*" ("https://*.example.com"); empty: any. Clients that send no Origin are not browsers.
    allowed_origins: tuple[str, ...] = setting((), expected="a non-empty list of origins")
    # The app's own limits, with the names Soketi uses; 0 keeps the [limits] value (APP_LIMITS).
    max_backend_events_per_second: int = setting(0, non_negative)
    max_read_requests_per_second: int = setting(0, non_negative)
    max_client_events_per_second: int = setting(0, non_negative)
    max_presence_members: int = setting(0, non_negative)
    max_presence_member_size_kb: int = setting(0, non_negative)
    max_event_payload_kb: int = setting(0, non_negative)
    max_event_channels_at_once: int = setting(0, non_negative)
    max_event_batch_size: int = setting(0, non_negative)
    max_channel_name_length: int = setting(0, non_negative)
    # Every limit this app's clients and API calls get: [limits] with the app's own values (set
    # when the config is read; an AppConfig made in code gets the [limits] defaults).
    limits: "LimitsConfig" = field(default_factory=lambda: LimitsConfig(), compare=False, repr=False)

    def with_limits(self, node: "LimitsConfig") -> "AppConfig":
        """This app with ``limits`` = the node's [limits] and the app's own values over them."""
        own = {limit: getattr(self, key) * scale for key, (limit, scale) in APP_LIMITS.items()
               if getattr(self, key)}
        return replace(self, limits=replace(node, **own))


# [[apps]] key -> ([limits] field it overrides, the factor from the app's unit to the field's).
APP_LIMITS = {
    "max_backend_events_per_second": ("max_backend_events_per_second", 1),
    "max_read_requests_per_second": ("max_read_requests_per_second", 1),
    "max_client_events_per_second": ("max_client_events_per_second", 1),
    "max_presence_members": ("max_presence_members", 1),
    "max_presence_member_size_kb": ("max_user_info_bytes", 1024),
    "max_event_payload_kb": ("max_event_data_bytes", 1024),
    "max_event_channels_at_once": ("max_channels_per_event", 1),
    "max_event_batch_size": ("max_batch_events", 1),
    "max_channel_name_length": ("max_channel_name_length", 1),
}


@dataclass(frozen=True)
class ClusterConfig:
    """Which engine shares state between nodes; every node of a cluster uses the same values."""

    engine: str = setting("local", one_of("local", "redis"))
    redis_url: str = setting("redis://127.0.0.1:6379/0", valid_redis_url)
    # Every Redis key and pub/sub channel starts with it.
    prefix: str = setting("soketify", valid_key_prefix)
    # Seconds of silence after which a node counts as dead.
    node_timeout: int = setting(5, positive)


def metric_prefix(value: str) -> str | None:
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", value):
        return "must be letters, digits, _ and : (not starting with a digit)"
    return None


@dataclass(frozen=True)
class MetricsConfig:
    # Every name in /metrics starts with it; with "soketi_", dashboards made for Soketi work as
    # they are (same names after the prefix, label app_id).
    prefix: str = setting("soketify_", metric_prefix)


@dataclass(frozen=True)
class LogConfig:
    """How log lines are written when twistd runs with --logger soketify.logs.make_observer."""

    format: str = setting("text", one_of("text", "json"))
    level: str = setting("info", one_of("debug", "info", "warn", "error"))


def password_hash_format(value: str) -> str | None:
    """"scrypt:N:r:p:salt:hash" (salt and hash in base64), as `python -m soketify.console_auth`
    prints it, that can be checked; empty: none."""
    if not value:
        return None
    try:
        parse_hash(value)
    except ValueError as problem:
        return str(problem)
    return None


def long_enough_token(value: str) -> str | None:
    if value and len(value) < 16:
        return "must be at least 16 characters (or empty: no stream for scripts)"
    return None


@dataclass(frozen=True)
class ConsoleConfig:
    """The debug console at /console on the server's own port."""

    enabled: bool = setting(False)
    password: str = setting("")
    password_hash: str = setting("", password_hash_format)
    # For scripts: GET /console/api/stream with "Authorization: Bearer <api_token>".
    api_token: str = setting("", long_enough_token)
    # The app ids it shows; empty: every app.
    apps: tuple[str, ...] = setting((), expected="a non-empty list of app ids")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = setting(factory=ServerConfig)
    log: LogConfig = setting(factory=LogConfig)
    metrics: MetricsConfig = setting(factory=MetricsConfig)
    limits: LimitsConfig = setting(factory=LimitsConfig)
    apps: tuple[AppConfig, ...] = setting((), at_least_one_app, unique=("id", "key"))
    webhooks: WebhookSettings = setting(factory=WebhookSettings)
    cluster: ClusterConfig = setting(factory=ClusterConfig)
    console: ConsoleConfig = setting(factory=ConsoleConfig)
    source: str = "<defaults>"
    is_development_default: bool = False
    # The parsed TOML it was read from: a supervisor hands it to its workers.
    document: dict | None = field(default=None, compare=False, repr=False)

    def as_document(self) -> dict:
        """What ``from_document`` turns back into this config."""
        return {"document": self.document, "source": self.source,
                "development": self.is_development_default}


# The reader.

_INVALID = object()  # a value already reported as a problem


@functools.cache
def _settings(cls: type) -> tuple[tuple[Any, Any, Rules], ...]:
    """(field, type, rules) for every field of cls declared with setting()."""
    types = get_type_hints(cls)
    return tuple((f, types[f.name], f.metadata["rules"]) for f in fields(cls) if "rules" in f.metadata)


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _type_name(kind: type) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string"}.get(kind, kind.__name__)


class _Reader:
    """Collects problems while turning TOML tables into dataclasses."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def problem(self, spot: str, what: str) -> None:
        self.problems.append(f"{self.source}: {spot}: {what}")

    def table(self, cls: type, raw: Any, where: str) -> Any:
        """Any settings dataclass from its TOML table, or None once what is wrong is reported."""
        if not isinstance(raw, dict):
            self.problem(where, "must be a table")
            return None
        before = len(self.problems)
        tables = self.key_tables(cls, raw, where)
        values = {}
        for f, kind, rules in _settings(cls):
            table, spot = tables[rules.under], _join(where, rules.under, f.name)
            if f.name in table:
                value = self.value(kind, table[f.name], spot, rules)
            elif f.default is MISSING and f.default_factory is MISSING:
                self.problem(spot, "missing")
                continue
            else:
                # Defaults follow the rules too: the empty default of Config.apps is how
                # "at least one [[apps]]" is enforced.
                value = f.default if f.default is not MISSING else f.default_factory()
            if value is not _INVALID and self.follows_rules(value, spot, rules):
                values[f.name] = value
        return cls(**values) if len(self.problems) == before else None

    def key_tables(self, cls: type, raw: dict, where: str) -> dict[str | None, dict]:
        """raw (as None) and each sub-table some fields live in (such as "filter"); unknown keys reported."""
        tables: dict[str | None, dict] = {None: raw}
        for name in {rules.under for _, _, rules in _settings(cls) if rules.under}:
            tables[name] = raw.get(name, {})
            if not isinstance(tables[name], dict):
                self.problem(_join(where, name), "must be a table")
                tables[name] = {}
        for under, table in tables.items():
            known = {f.name for f, _, rules in _settings(cls) if rules.under == under}
            if under is None:
                known |= {name for name in tables if name}
            for key in table:
                if key not in known:
                    self.problem(_join(where, under, key), "unknown key")
        return tables

    def value(self, kind: Any, raw: Any, spot: str, rules: Rules) -> Any:
        """raw as a value of type kind, or _INVALID once the problem is reported."""
        if is_dataclass(kind):
            section = self.table(kind, raw, spot)
            return _INVALID if section is None else section
        origin, args = get_origin(kind), get_args(kind)
        if origin is tuple and is_dataclass(args[0]):
            return self.array_of_tables(args[0], raw, spot, rules)
        if origin is tuple:
            if isinstance(raw, list) and raw and all(isinstance(v, str) and v for v in raw):
                return tuple(raw)
            return self.wrong_type(spot, rules.expected or "a non-empty list of strings")
        if origin is dict:
            if isinstance(raw, dict) and all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in raw.items()):
                return dict(raw)
            return self.wrong_type(spot, rules.expected or "a table of strings")
        # bool is a subclass of int: refuse true/false where a number is expected.
        if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
            return raw
        return self.wrong_type(spot, f"{rules.expected or _type_name(kind)}, not {raw!r}")

    def wrong_type(self, spot: str, expected: str) -> Any:
        self.problem(spot, f"must be {expected}")
        return _INVALID

    def array_of_tables(self, cls: type, raw: Any, spot: str, rules: Rules) -> Any:
        """[[apps]] and the like: every table read, and the rules' unique keys compared between them."""
        if not isinstance(raw, list):
            # "apps[0].webhooks" is written [[apps.webhooks]] in the file.
            written = re.sub(r"\[\d+\]", "", spot)
            return self.wrong_type(spot, f"an array of tables ([[{written}]])")
        items = [self.table(cls, item, f"{spot}[{index}]") for index, item in enumerate(raw)]
        for key in rules.unique:
            self.report_duplicates(raw, spot, key)
        return _INVALID if any(item is None for item in items) else tuple(items)

    def report_duplicates(self, tables: list, spot: str, key: str) -> None:
        # Compared on the raw tables, so a duplicate is reported even beside another problem.
        first: dict[str, int] = {}
        for index, table in enumerate(tables):
            value = table.get(key) if isinstance(table, dict) else None
            if not isinstance(value, str) or not value:
                continue
            if value in first:
                self.problem(f"{spot}[{index}].{key}",
                             f"duplicate {key} {value!r} (also {spot}[{first[value]}])")
            else:
                first[value] = index

    def follows_rules(self, value: Any, spot: str, rules: Rules) -> bool:
        """Apply the field's declared checks; False once a problem is reported."""
        before = len(self.problems)
        if rules.check and (what := rules.check(value)):
            self.problem(spot, what)
        for item in value if rules.each else ():
            if what := rules.each(item):
                self.problem(_join(spot, item) if isinstance(value, dict) else spot, what)
        return len(self.problems) == before


def parse(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from an already-parsed TOML document; raise ConfigError listing every problem."""
    reader = _Reader(source)
    config = reader.table(Config, data, "")
    if config is not None:
        console = config.console
        if console.enabled and not (console.password or console.password_hash):
            reader.problem("console.enabled", "needs console.password or console.password_hash")
        ids = {app.id for app in config.apps}
        for app_id in console.apps:
            if app_id not in ids:
                reader.problem("console.apps", f"no [[apps]] has id {app_id!r}")
    if config is None or reader.problems:
        raise ConfigError(reader.problems)
    apps = tuple(app.with_limits(config.limits) for app in config.apps)
    return replace(config, apps=apps, source=source, document=data)


def from_document(sent: dict) -> Config:
    """A config passed on by ``Config.as_document`` (from a supervisor to its workers)."""
    config = parse(sent["document"], sent["source"])
    return as_development_default(config) if sent["development"] else config


def load(path: str) -> Config:
    """Read and parse a TOML config file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"])
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: syntax: {e}"])
    return parse(data, path)


def load_default(path: str | None) -> Config:
    """The config for the command line: the given path, else the installed file, else the dev app."""
    if path is not None:
        return load(path)
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return load(DEFAULT_CONFIG_PATH)
    return as_development_default(parse({"apps": [DEV_APP]}, "<development defaults>"))


def as_development_default(config: Config) -> Config:
    """The config of a server started without a file: on your own machine the console is on and
    needs no password (the start-up warning says so)."""
    return replace(config, is_development_default=True,
                   console=replace(config.console, enabled=True))
