"""The app registry: apps found by id or key, with their settings and limits."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from soketify.config import AppConfig


def origin_allowed(allowed: tuple[str, ...], origin: str | None) -> bool:
    """Whether a connection with this Origin header may open, for an app with these
    allowed_origins: an empty list, or no Origin at all (not a browser), allows it; "*" in a
    pattern stands for any characters (nothing else is special); case does not matter."""
    if not allowed or origin is None:
        return True
    return _origins_pattern(allowed).fullmatch(origin) is not None


@lru_cache(maxsize=256)
def _origins_pattern(allowed: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(re.escape(pattern).replace(r"\*", ".*") for pattern in allowed),
                      re.IGNORECASE)


class AppRegistry:
    def __init__(self, apps: Iterable[AppConfig]):
        self.update(apps)

    def update(self, apps: Iterable[AppConfig]) -> None:
        """Serve these apps from now on (a reload)."""
        self._by_id = {app.id: app for app in apps}
        self._by_key = {app.key: app for app in self._by_id.values()}

    def by_id(self, app_id: str) -> AppConfig | None:
        return self._by_id.get(app_id)

    def by_key(self, key: str) -> AppConfig | None:
        return self._by_key.get(key)

    def __iter__(self):
        return iter(self._by_id.values())
