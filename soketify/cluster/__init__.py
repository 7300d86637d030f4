"""The cluster engines behind one interface (``interfaces.ICluster``), chosen by ``[cluster] engine``."""

from __future__ import annotations

from soketify.cluster.interfaces import ICluster
from soketify.cluster.local import LocalCluster


def make_cluster(config, reactor) -> ICluster:
    """The engine the config asks for."""
    if config.cluster.engine == "redis":
        from soketify.cluster.redis import RedisCluster  # needs hiredis, only for this engine
        return RedisCluster(reactor, config.apps, config.limits, config.cluster, config.webhooks.grace)
    return LocalCluster(reactor, config.limits, config.webhooks.grace)


__all__ = ["ICluster", "LocalCluster", "make_cluster"]
