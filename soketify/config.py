"""Configuration: a TOML file (or a dict in tests) turned into frozen dataclasses.

Every problem is reported as ``"<file>: <key>: <what is wrong>"``; all problems are collected before
giving up, so a user fixes their file in one pass. This module never writes the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = "/etc/soketify/soketify.toml"

# The public development app used when no config file exists at all.
DEV_APP = {"id": "app-id", "key": "app-key", "secret": "app-secret"}


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, ...] = ("tcp:6001",)
    activity_timeout: int = 120
    # How long the server waits for any frame after its own pusher:ping before closing 4201.
    pong_timeout: int = 30
    max_message_size: int = 65536
    # Unsent bytes a slow client may have queued before it is disconnected.
    max_send_buffer: int = 4 * 1024 * 1024
    shutdown_timeout: int = 10
    state_dir: str = "/var/lib/soketify"


@dataclass(frozen=True)
class LimitsConfig:
    max_event_data_bytes: int = 10240
    max_channels_per_event: int = 100
    max_batch_events: int = 10
    max_channel_name_length: int = 200
    max_event_name_length: int = 200
    max_request_body_bytes: int = 1024 * 1024
    max_timestamp_skew: int = 600
    max_presence_members: int = 100
    max_user_info_bytes: int = 1024
    max_user_id_length: int = 128
    max_client_events_per_second: int = 10
    max_watchlist_size: int = 100
    cache_ttl: int = 1800


# Headers the HTTP client itself must set; a webhook target may not send its own.
TRANSPORT_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "content-encoding",
                               "host", "keep-alive", "upgrade", "te", "trailer"))

WEBHOOK_EVENT_TYPES = ("channel_occupied", "channel_vacated", "member_added", "member_removed",
                       "client_event", "cache_miss", "subscription_count")


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are delivered, for every target."""

    # Events for one URL within this window share one POST.
    batch_window_ms: int = 50
    max_events_per_request: int = 50
    request_timeout: int = 10
    # Failed deliveries are retried with exponential back-off for this long, then dropped.
    retry_for: int = 300
    # channel_vacated and member_removed wait this long and vanish if the channel or member returns.
    grace: int = 3


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    event_types: tuple[str, ...] = WEBHOOK_EVENT_TYPES
    channel_name_starts_with: str = ""
    channel_name_ends_with: str = ""
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AppConfig:
    id: str
    key: str
    secret: str
    enabled: bool = True
    max_connections: int = 0
    client_events: bool = True
    authorized_connections: bool = False
    # Seconds a connection of an app with authorized_connections has to sign in (or join a private
    # or presence channel) before it is closed with 4009.
    authorization_timeout: int = 30
    subscription_count: bool = False
    webhooks: tuple[WebhookConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    apps: tuple[AppConfig, ...] = ()
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    source: str = "<defaults>"
    is_development_default: bool = False


def _type_name(kind: type) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string"}.get(kind, kind.__name__)


class _Reader:
    """Collects problems while turning TOML tables into dataclasses."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def problem(self, key: str, what: str) -> None:
        self.problems.append(f"{self.source}: {key}: {what}")

    def section(self, cls: type, table: Any, where: str, required: tuple[str, ...] = (),
                skip: tuple[str, ...] = ()) -> Any:
        if not isinstance(table, dict):
            self.problem(where, "must be a table")
            return None
        known = {f.name: f for f in fields(cls)}
        before = len(self.problems)
        values: dict[str, Any] = {}
        for key, value in table.items():
            spot = f"{where}.{key}"
            if key in skip:
                continue
            if key not in known:
                self.problem(spot, "unknown key")
                continue
            checked = self.value(spot, known[key].type, value)
            if checked is not None:
                values[key] = checked
        for key in required:
            if key not in table:
                self.problem(f"{where}.{key}", "missing")
        if len(self.problems) > before:
            return None
        return cls(**values)

    def value(self, spot: str, annotation: str, value: Any) -> Any:
        if annotation == "tuple[str, ...]":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                self.problem(spot, "must be a non-empty list of strings")
                return None
            return tuple(value)
        kind = {"bool": bool, "int": int, "str": str}[annotation]
        # bool is a subclass of int: refuse true/false where a number is expected.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(spot, f"must be {_type_name(kind)}, not {value!r}")
            return None
        if kind is int and value < 0:
            self.problem(spot, f"must not be negative, not {value}")
            return None
        if kind is str and not value:
            self.problem(spot, "must not be empty")
            return None
        return value


    def webhook(self, raw: Any, where: str) -> WebhookConfig | None:
        """One [[apps.webhooks]] table: url, event_types, filter and headers."""
        if not isinstance(raw, dict):
            self.problem(where, "must be a table")
            return None
        before = len(self.problems)
        for key in raw:
            if key not in ("url", "event_types", "filter", "headers"):
                self.problem(f"{where}.{key}", "unknown key")
        url = raw.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if url is None:
            self.problem(f"{where}.url", "missing")
        elif (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
              or any(c.isspace() for c in url)):
            self.problem(f"{where}.url", f"must be an http:// or https:// URL, not {url!r}")
        values: dict[str, Any] = {"url": url}
        if "event_types" in raw:
            types = raw["event_types"]
            if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
                self.problem(f"{where}.event_types", "must be a non-empty list of event type names")
            else:
                for kind in types:
                    if kind not in WEBHOOK_EVENT_TYPES:
                        self.problem(f"{where}.event_types", f"unknown event type {kind!r}; known: "
                                     + ", ".join(WEBHOOK_EVENT_TYPES))
                values["event_types"] = tuple(types)
        channel_filter = raw.get("filter", {})
        if not isinstance(channel_filter, dict):
            self.problem(f"{where}.filter", "must be a table")
            channel_filter = {}
        for key, value in channel_filter.items():
            if key not in ("channel_name_starts_with", "channel_name_ends_with"):
                self.problem(f"{where}.filter.{key}", "unknown key")
            elif not isinstance(value, str):
                self.problem(f"{where}.filter.{key}", f"must be a string, not {value!r}")
            else:
                values[key] = value
        headers = raw.get("headers", {})
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            self.problem(f"{where}.headers", "must be a table of string header values")
        else:
            for name in headers:
                if name.lower() in TRANSPORT_HEADERS:
                    self.problem(f"{where}.headers.{name}",
                                 "is set by the HTTP client and cannot be configured")
            values["headers"] = dict(headers)
        if len(self.problems) > before:
            return None
        return WebhookConfig(**values)


_POSITIVE = ("activity_timeout", "pong_timeout", "max_message_size", "max_send_buffer",
             "shutdown_timeout")


def parse(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from an already-parsed TOML document; raise ConfigError listing every problem."""
    reader = _Reader(source)
    for key in data:
        if key not in ("server", "limits", "apps", "webhooks"):
            reader.problem(key, "unknown key")
    server = reader.section(ServerConfig, data.get("server", {}), "server")
    limits = reader.section(LimitsConfig, data.get("limits", {}), "limits")
    webhooks = reader.section(WebhookSettings, data.get("webhooks", {}), "webhooks")
    if webhooks is not None:
        for f in fields(WebhookSettings):
            if f.name != "grace" and getattr(webhooks, f.name) <= 0:
                reader.problem(f"webhooks.{f.name}", "must be greater than 0")
    for name in _POSITIVE:
        if server is not None and getattr(server, name) <= 0:
            reader.problem(f"server.{name}", "must be greater than 0")
    if limits is not None:
        for f in fields(LimitsConfig):
            if getattr(limits, f.name) <= 0:
                reader.problem(f"limits.{f.name}", "must be greater than 0")
    apps: list[AppConfig] = []
    raw_apps = data.get("apps", [])
    if not isinstance(raw_apps, list):
        reader.problem("apps", "must be an array of tables ([[apps]])")
        raw_apps = []
    seen: dict[str, dict[str, int]] = {"id": {}, "key": {}}
    for index, raw in enumerate(raw_apps):
        where = f"apps[{index}]"
        app = reader.section(AppConfig, raw, where, required=("id", "key", "secret"),
                             skip=("webhooks",))
        raw_hooks = raw.get("webhooks", []) if isinstance(raw, dict) else []
        if not isinstance(raw_hooks, list):
            reader.problem(f"{where}.webhooks", "must be an array of tables ([[apps.webhooks]])")
            raw_hooks = []
        hooks = [reader.webhook(h, f"{where}.webhooks[{i}]") for i, h in enumerate(raw_hooks)]
        if app is not None and app.authorization_timeout <= 0:
            reader.problem(f"{where}.authorization_timeout", "must be greater than 0")
        if app is not None and all(h is not None for h in hooks):
            app = replace(app, webhooks=tuple(hooks))
        if isinstance(raw, dict):
            for attr in ("id", "key"):
                value = raw.get(attr)
                if isinstance(value, str) and value:
                    if value in seen[attr]:
                        reader.problem(f"{where}.{attr}",
                                       f"duplicate {attr} {value!r} (also apps[{seen[attr][value]}])")
                    else:
                        seen[attr][value] = index
        if app is not None:
            apps.append(app)
    if not raw_apps:
        reader.problem("apps", "at least one [[apps]] table is required")
    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(server=server, limits=limits, apps=tuple(apps), webhooks=webhooks, source=source)


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
    config = parse({"apps": [DEV_APP]}, "<development defaults>")
    return replace(config, is_development_default=True)
