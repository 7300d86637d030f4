"""The single-node cluster: every question is answered from this node's own state."""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred, succeed


class LocalCluster:
    def __init__(self) -> None:
        self._hub = None

    def attach(self, hub) -> None:
        self._hub = hub

    def publish(self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None) -> None:
        self._hub.deliver(app_id, channel, frame, except_socket_id)

    def channel_stats(self, app_id: str, names: Iterable[str]) -> Deferred:
        return succeed(self._hub.local_channel_stats(app_id, names))

    def occupied_channels(self, app_id: str, prefix: str) -> Deferred:
        return succeed(self._hub.local_occupied_channels(app_id, prefix))

    def channel_members(self, app_id: str, name: str) -> Deferred:
        return succeed(self._hub.local_channel_members(app_id, name))

    def terminate_user(self, app_id: str, user_id: str) -> Deferred:
        return succeed(self._hub.local_terminate_user(app_id, user_id))
