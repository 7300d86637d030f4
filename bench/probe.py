"""Where does a server spend memory per connection and CPU per delivery?  (A diagnostic, not a benchmark.)

Runs the server *in this process* (Soketify through ``soketify.tap.makeService``, or the floor), drives it
with one bench/loadgen.mjs process, and prints:

  memory  tracemalloc: what the server allocated for N idle connections, grouped by source line
          (only Python allocations; RSS also holds allocator slack and kernel-side buffers), plus the
          instance dicts of the protocol objects
  cpu     CPU per connection / delivery / REST request without a profiler (and the garbage
          collector's share), then cProfile while N connections open, while it fans out E events to
          S subscribers, and for R REST triggers (Soketify): top functions by own time

Usage:  .venv/bin/python bench/probe.py [--server soketify|floor] [--connections 2000]
                                         [--subscribers 1000] [--events 100] [--rest 2000] [--top 25]
Figures here are slowed by tracemalloc/cProfile; use bench/run.py for numbers.
"""

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import tempfile
import time
import tracemalloc

from twisted.internet import defer, protocol, task

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)


class LoadgenProcess(protocol.ProcessProtocol):
    """bench/loadgen.mjs over stdin/stdout, one command at a time."""

    def __init__(self):
        self.buffer = b""
        self.waiting = []
        self.exited = defer.Deferred()

    def call(self, cmd, **args):
        d = defer.Deferred()
        self.waiting.append(d)
        self.transport.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        return d

    def outReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply = json.loads(line)
            d = self.waiting.pop(0)
            if reply.get("ok"):
                d.callback(reply)
            else:
                d.errback(RuntimeError(reply.get("error")))

    def errReceived(self, data):
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason):
        self.exited.callback(None)


def start_soketify(reactor, port):
    from soketify.tap import Options, makeService
    conf = os.path.join(tempfile.mkdtemp(prefix="probe-"), "soketify.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nactivity_timeout = 120\n'
                '[[apps]]\nid = "app-id"\nkey = "app-key"\nsecret = "app-secret"\n')
    options = Options()
    options.parseOptions(["--config", conf])
    root = makeService(options, reactor)
    root.startService()
    service = root.getServiceNamed("soketify")
    if os.environ.get("PROBE_CONSOLE_VIEWER") == "1":
        # One debug-console stream attached, its entries encoded as the stream does, then dropped.
        from soketify.console_feed import Viewer
        def write(entries, skipped):
            ("\n".join(json.dumps(e, separators=(",", ":"), default=str) for e in entries)).encode()
        service.hub.feed.attach(Viewer(reactor, write))
    target = {"kind": "pusher", "port": port, "app_id": "app-id", "key": "app-key",
              "secret": "app-secret"}
    return target, lambda: next(iter(service.hub.connections), None)


def start_floor(reactor, port, http_port):
    import floor_server
    from twisted.web import resource, server
    factory = floor_server.FloorFactory(f"ws://127.0.0.1:{port}")
    root = resource.Resource()
    root.putChild(b"pub", floor_server.Pub(factory))
    site = server.Site(root)
    site.log = lambda request: None
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.listenTCP(http_port, site, interface="127.0.0.1")
    return {"kind": "floor", "port": http_port}, lambda: next(iter(factory.subscribers), None)


class GcTimer:
    """Time spent in the cyclic garbage collector (cProfile charges it to whatever allocated)."""

    def __init__(self):
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1
            self._start = None

    def reset(self):
        self.seconds = 0.0
        self.collections = [0, 0, 0]

    def line(self):
        return (f"garbage collector: {self.seconds:.3f} s in {sum(self.collections)} collections "
                f"(by generation {self.collections[0]}/{self.collections[1]}/{self.collections[2]})")


GC = GcTimer()


def print_profile(profiler, title, top):
    out = io.StringIO()
    st = pstats.Stats(profiler, stream=out)
    print(f"\n## {title}; cProfile: {st.total_tt:.2f} s in all, top {top} by own time")
    print(f"{GC.line()}\n")
    st.sort_stats("tottime").print_stats(top)
    text = out.getvalue().replace(ROOT + "/", "")
    print(text[text.find("   ncalls"):] if "   ncalls" in text else text)


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def main(reactor, args):
    from run import free_port
    port = free_port()
    if args.server == "soketify":
        target, sample = start_soketify(reactor, port)
    else:
        target, sample = start_floor(reactor, port, free_port())
    url = f"ws://127.0.0.1:{port}/app/app-key?protocol=7&client=js&version=8.6.0"

    gen = LoadgenProcess()
    reactor.spawnProcess(gen, "node", ["node", os.path.join(BENCH, "loadgen.mjs")], env=os.environ)
    # warm-up: lazy imports and first-use paths
    await gen.call("connect", url=url, n=100, concurrency=16, subscribe=True)
    await gen.call("expect", events=5)
    await gen.call("publish", target=target, events=5)
    await gen.call("collect", idle_ms=2000)
    await gen.call("close")
    await sleep(reactor, 0.5)

    # ---- memory
    n = args.connections
    gc.collect()
    tracemalloc.start(args.frames)
    before = tracemalloc.take_snapshot()
    await gen.call("connect", url=url, n=n, concurrency=32, subscribe=False)
    await sleep(reactor, 1)
    gc.collect()
    after = tracemalloc.take_snapshot()
    conn = sample()
    tracemalloc.stop()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    total = sum(d.size_diff for d in diff)
    print(f"\n## memory: {n} idle connections, Python allocations {total / n:.0f} B per connection "
          f"(tracemalloc)\n")
    for d in sorted(diff, key=lambda d: -d.size_diff)[:args.top]:
        if d.size_diff <= 0:
            break
        frame = d.traceback[0]
        print(f"{d.size_diff / n:8.0f} B/conn {d.count_diff / n:6.2f} blocks/conn  "
              f"{os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(ROOT) else frame.filename}"
              f":{frame.lineno}")
    if conn is not None:
        print(f"\nsample protocol object {type(conn).__module__}.{type(conn).__name__}: "
              f"{sys.getsizeof(conn)} B object, {sys.getsizeof(conn.__dict__)} B __dict__ "
              f"with {len(conn.__dict__)} attributes:")
        print("  " + ", ".join(sorted(conn.__dict__)))
        t = getattr(conn, "transport", None)
        if t is not None and hasattr(t, "__dict__"):
            print(f"  transport {type(t).__name__}: {sys.getsizeof(t.__dict__)} B __dict__, "
                  f"{len(t.__dict__)} attributes")
    await gen.call("close")
    await sleep(reactor, 0.5)

    # ---- cpu: handshakes, first without the profiler
    GC.reset()
    cpu0 = time.process_time()
    await gen.call("connect", url=url, n=n, concurrency=32, subscribe=False)
    cpu = time.process_time() - cpu0
    await gen.call("close")
    print(f"\n## cpu: opening {n} connections without profiler: {cpu * 1e6 / n:.0f} us CPU per "
          f"connection (this process), of which {GC.seconds * 1e6 / n:.0f} us in the {GC.line()}")
    await sleep(reactor, 0.5)
    profiler = cProfile.Profile()
    GC.reset()
    profiler.enable()
    await gen.call("connect", url=url, n=n, concurrency=32, subscribe=False)
    profiler.disable()
    await gen.call("close")
    print_profile(profiler, f"cpu: opening {n} connections", args.top)
    await sleep(reactor, 0.5)

    # ---- cpu: fan-out
    s, e = args.subscribers, args.events
    await gen.call("connect", url=url, n=s, concurrency=32, subscribe=True)
    await gen.call("expect", events=e)
    GC.reset()
    cpu0 = time.process_time()
    await gen.call("publish", target=target, events=e, inflight=2)
    col = await gen.call("collect", idle_ms=3000)
    cpu = time.process_time() - cpu0
    print(f"\n## cpu: {s} subscribers x {e} events without profiler: {cpu * 1e6 / max(1, col['received']):.2f} "
          f"us CPU per delivery (this process), of which {GC.seconds * 1e6 / max(1, col['received']):.2f} us "
          f"in the {GC.line()}")
    await gen.call("expect", events=e)
    profiler = cProfile.Profile()
    GC.reset()
    profiler.enable()
    await gen.call("publish", target=target, events=e, inflight=2)
    col = await gen.call("collect", idle_ms=3000)
    profiler.disable()
    print_profile(profiler, f"cpu: {s} subscribers x {e} events, {col['received']} delivered "
                  f"(lost {col['lost']}, dup {col['dup']})", args.top)
    await gen.call("close")

    # ---- cpu: REST triggers (Soketify only)
    if args.server == "soketify" and args.rest:
        GC.reset()
        cpu0 = time.process_time()
        r = await gen.call("rest", target=target, requests=args.rest, concurrency=32)
        cpu = time.process_time() - cpu0
        print(f"\n## cpu: {args.rest} REST triggers without profiler: {cpu * 1e6 / args.rest:.0f} us CPU "
              f"per request ({r['errors']} errors), of which {GC.seconds * 1e6 / args.rest:.0f} us in the "
              f"{GC.line()}")
        profiler = cProfile.Profile()
        GC.reset()
        profiler.enable()
        await gen.call("rest", target=target, requests=args.rest, concurrency=32)
        profiler.disable()
        print_profile(profiler, f"cpu: {args.rest} REST triggers", args.top)
    gen.transport.closeStdin()
    await gen.exited


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=["soketify", "floor"], default="soketify")
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100)
    ap.add_argument("--rest", type=int, default=2000, help="REST triggers to profile (0: none)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1)
    args = ap.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))
