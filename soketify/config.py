"""Configuration: a TOML file (or a dict in tests) turned into frozen dataclasses.

Every problem is reported as ``"<file>: <key>: <what is wrong>"``; all problems are collected before
giving up, so a user fixes their file in one pass. This module never writes the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

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


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    apps: tuple[AppConfig, ...] = ()
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

    def section(self, cls: type, table: Any, where: str, required: tuple[str, ...] = ()) -> Any:
        if not isinstance(table, dict):
            self.problem(where, "must be a table")
            return None
        known = {f.name: f for f in fields(cls)}
        before = len(self.problems)
        values: dict[str, Any] = {}
        for key, value in table.items():
            spot = f"{where}.{key}"
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


_POSITIVE = ("activity_timeout", "pong_timeout", "max_message_size", "max_send_buffer",
             "shutdown_timeout")


def parse(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from an already-parsed TOML document; raise ConfigError listing every problem."""
    reader = _Reader(source)
    for key in data:
        if key not in ("server", "limits", "apps"):
            reader.problem(key, "unknown key")
    server = reader.section(ServerConfig, data.get("server", {}), "server")
    limits = reader.section(LimitsConfig, data.get("limits", {}), "limits")
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
        app = reader.section(AppConfig, raw, where, required=("id", "key", "secret"))
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
    return Config(server=server, limits=limits, apps=tuple(apps), source=source)


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
    return Config(server=config.server, limits=config.limits, apps=config.apps,
                  source=config.source, is_development_default=True)
