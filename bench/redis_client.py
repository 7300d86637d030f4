"""Pub/sub receive path: CPU per received message, soketify's RedisProtocol against txredisapi.

Starts its own redis-server; a separate publisher process PUBLISHes MESSAGES messages of ~200 bytes as
fast as Redis takes them, and one subscribed connection in this process receives them. The figure is this
process's CPU time (not wall time) from the start of publishing to the last message received, divided by
the number of messages. Each client runs twice, alternating.

    .venv/bin/python bench/redis_client.py [MESSAGES] [--paced N]

By default the publisher pipelines everything, so the subscriber reads full 64 KB buffers: the parsing cost.
With --paced N it waits for the replies to every N messages, so reads hold few messages and the per-read
reactor cost shows too.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

import hiredis
import txredisapi
from twisted.internet import defer, endpoints, task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from soketify.cluster.redis_client import RedisClient, parse_redis_url  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

PAYLOAD = b'{"origin":"node-1","except":"123.456","frame":"'.ljust(198, b"x") + b'"}'  # 200 bytes
TIMEOUT = 120  # seconds for one run


def publish(port: int, channel: str, count: int, paced: int):
    """The publisher process: connect, wait for "go" on stdin, PUBLISH (in paced batches), read the replies."""
    sock = socket.create_connection(("127.0.0.1", port))
    print("ready", flush=True)
    sys.stdin.readline()
    size = paced or 1000
    batch = hiredis.pack_command(("PUBLISH", channel, PAYLOAD)) * size
    for _ in range(count // size):
        sock.sendall(batch)
        if paced:
            _read_replies(sock, paced)
    if not paced:
        _read_replies(sock, count)


def _read_replies(sock, count):
    expected, received = count * len(b":1\r\n"), 0
    while received < expected:
        received += len(sock.recv(1 << 20))


class Counter:
    """Fires `done` with this process's CPU time when the last message arrives."""

    def __init__(self, count: int):
        self.remaining = count
        self.done = defer.Deferred()

    def __call__(self):
        self.remaining -= 1
        if not self.remaining:
            self.done.callback((time.process_time(), time.perf_counter()))


async def soketify_subscriber(reactor, port, channel, counter):
    connected = defer.Deferred()
    client = RedisClient(reactor, parse_redis_url(f"redis://127.0.0.1:{port}"), connected.callback,
                         lambda push: counter(), lambda reason: None)
    client.startService()
    redis = await connected
    await redis.execute("SUBSCRIBE", channel)
    return client.stopService


def txredisapi_subscriber(charset="utf-8", convertNumbers=True):
    async def subscriber(reactor, port, channel, counter):
        class Subscriber(txredisapi.SubscriberProtocol):
            def messageReceived(self, pattern, channel, message):
                counter()

        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        redis = await endpoints.connectProtocol(endpoint, Subscriber(charset=charset,
                                                                     convertNumbers=convertNumbers))
        await redis.subscribe(channel)
        return redis.transport.loseConnection
    return subscriber


async def measure(reactor, port, make_subscriber, channel, count, paced):
    counter = Counter(count)
    stop = await make_subscriber(reactor, port, channel, counter)
    publisher = subprocess.Popen([sys.executable, __file__, "--publish", str(port), channel, str(count), str(paced)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    publisher.stdout.readline()  # "ready": connected (blocking here is before the measurement starts)
    cpu, wall = time.process_time(), time.perf_counter()
    publisher.stdin.write(b"go\n")
    publisher.stdin.flush()
    cpu_end, wall_end = await counter.done.addTimeout(TIMEOUT, reactor)
    await defer.maybeDeferred(stop)
    publisher.wait(TIMEOUT)  # it has sent everything and read its replies by now
    return (cpu_end - cpu) / count * 1e6, count / (wall_end - wall)


CLIENTS = [
    ("soketify RedisProtocol (RESP3, hiredis)", soketify_subscriber),
    ("txredisapi SubscriberProtocol, defaults", txredisapi_subscriber()),
    ("txredisapi, charset=None convertNumbers=False", txredisapi_subscriber(None, False)),
]


async def main(reactor, count, paced):
    uses_hiredis = txredisapi.RedisProtocol is txredisapi.HiredisProtocol
    print(f"txredisapi {txredisapi.__version__ if hasattr(txredisapi, '__version__') else ''} parses with "
          f"{'hiredis ' + hiredis.__version__ if uses_hiredis else 'its pure-Python parser'}", file=sys.stderr)
    # Publishing outpaces the subscriber: lift the pub/sub output limit so Redis keeps what is not read yet.
    server = RedisServer(reactor, extra_args=["--client-output-buffer-limit", "pubsub 0 0 0"])
    await server.start()
    results = {name: [] for name, _ in CLIENTS}
    try:
        for run in range(2):
            for name, make_subscriber in CLIENTS:
                print(f"run {run + 1}: {name}", file=sys.stderr)
                results[name].append(await measure(reactor, server.port, make_subscriber, f"bench{run}", count, paced))
    finally:
        await server.close()
    pacing = f"waiting for replies every {paced} messages" if paced else "pipelining everything"
    print(f"\n{count:,} messages of {len(PAYLOAD)} bytes to one subscribed connection; the publisher, in another "
          f"process, is {pacing}\n")
    print("| client | CPU us/message (run 1, run 2) | messages/s wall (run 1, run 2) |")
    print("|---|---|---|")
    for name, runs in results.items():
        cpu = ", ".join(f"{us:.2f}" for us, _ in runs)
        rate = ", ".join(f"{per_second:,.0f}" for _, per_second in runs)
        print(f"| {name} | {cpu} | {rate} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--publish"]:
        publish(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        parser = argparse.ArgumentParser(description="CPU per received pub/sub message")
        parser.add_argument("messages", nargs="?", type=int, default=200_000)
        parser.add_argument("--paced", type=int, default=0, metavar="N",
                            help="publisher waits for the replies to every N messages (divides MESSAGES)")
        options = parser.parse_args()
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, options.messages, options.paced)))
