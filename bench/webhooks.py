"""Webhook pipeline throughput: events handed to the webhooks layer until all are acknowledged.

Runs the real outbox (SQLite on its own thread, in a temporary directory) and the real delivery queue
in-process, with a receiver that acknowledges at once, so the figure is Soketify's own cost per webhook
event (encoding, outbox write and delete, batching, signing), not the network's.

    .venv/bin/python bench/webhooks.py [EVENTS]
"""

import json
import os
import sys
import tempfile
import time

from twisted.internet import defer, reactor, task

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soketify.config import parse  # noqa: E402
from soketify.outbox import Outbox  # noqa: E402
from soketify.webhooks import Webhooks  # noqa: E402

EVENT = {"name": "client_event", "channel": "private-a", "event": "client-x", "data": "{}",
         "socket_id": "1.1"}


@defer.inlineCallbacks
def measure(count: int):
    config = parse({"apps": [{"id": "1", "key": "k", "secret": "s",
                              "webhooks": [{"url": "http://receiver.invalid/hook"}]}]})
    directory = tempfile.TemporaryDirectory()
    outbox = Outbox.on_thread(os.path.join(directory.name, "webhooks.sqlite3"), reactor)
    delivered = [0]

    def acknowledge(url, body, headers, timeout):
        delivered[0] += len(json.loads(body)["events"])
        return defer.succeed(200)

    webhooks = Webhooks(config.apps, config.webhooks, reactor, outbox, acknowledge)
    yield outbox.open()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        webhooks.emit("1", EVENT)
    while delivered[0] < count:
        yield task.deferLater(reactor, 0.01, lambda: None)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{count} webhook events acknowledged in {seconds:.2f} s: {count / seconds:,.0f} events/s, "
          f"{cpu / count * 1e6:.1f} us CPU per event (both threads)")
    yield webhooks.stop()
    directory.cleanup()


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    task.react(lambda _: measure(count))


if __name__ == "__main__":
    main()
