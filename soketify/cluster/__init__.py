"""The node-to-node layer. Every backend offers the same small interface as ``LocalCluster``:

- ``attach(hub)``: the hub whose connections this node serves;
- ``publish(app_id, channel, frame, except_socket_id)``: deliver one framed event on every node;
- ``channel_stats(app_id, names)``: Deferred of {name: ChannelStats} for the named channels, cluster-wide;
- ``occupied_channels(app_id, prefix)``: Deferred of {name: ChannelStats} for occupied channels;
- ``channel_members(app_id, name)``: Deferred of the user ids on a presence channel;
- ``terminate_user(app_id, user_id)``: close that user's connections on every node.
"""

from soketify.cluster.local import LocalCluster

__all__ = ["LocalCluster"]
