"""The cluster contract against the one-process engine, on a Clock."""

from dataclasses import replace

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from soketify.cluster.local import LocalCluster
from soketify.config import LimitsConfig
from tests.cluster_contract import GRACE, ClusterContract, Node


class LocalClusterTests(ClusterContract, unittest.TestCase):
    def make_nodes(self, count, **limits):
        """One engine is the whole cluster: every 'node' is the same one."""
        self.clock = Clock()
        cluster = LocalCluster(self.clock, replace(LimitsConfig(), **limits), GRACE)
        node = Node(cluster)
        cluster.attach(node.listener)
        cluster.startService()
        self.addCleanup(cluster.stopService)
        return succeed([node] * count)

    def elapse(self, seconds):
        self.clock.advance(seconds)
        return succeed(None)

    def settle(self, nodes):
        return succeed(None)
