"""Soketify cluster benchmark: the Redis engine against one node, in one run.

Usage (from the repository root):

    .venv/bin/python bench/cluster.py [--phases cost,cross,presence] [--quick]
    .venv/bin/python bench/cluster.py --phases workers [--server-workers N] [--loadgens K]

Starts its own redis-server (`redis-server` must be installed) and Soketify nodes on free loopback
ports, and drives them with bench/loadgen.mjs:

  cost      one node with `engine = "local"` against one node with `engine = "redis"`, back to back,
            twice each: server CPU per connection (5,000 idle connections), memory per connection,
            server CPU per delivery (1,000 subscribers, saturated fan-out). Target: redis <= 1.2x.
  cross     fan-out to 1,000 subscribers spread over two Redis nodes, events triggered through one of
            them, against the same load on one local node: paced at 20 events/s (20,000
            deliveries/s) for latency p50/p99 (target: p99 at most 5 ms more), and saturated for
            deliveries/s.
  presence  1,000 presence joins spread over three Redis nodes, with one watching member per node:
            joins/s, and for each join the time from its subscription_succeeded until the watchers
            on every node have its member_added (target: p99 under 100 ms).
  peer      two Soketify nodes against two Soketi 1.6.1 nodes with its Redis adapter (each pair on
            its own redis-server; Soketi from ../shared/peers/setup-soketi.sh): the cross-node
            fan-out above, and the presence joins over the two nodes.
  single    one Soketify node (local engine) against one Soketi node: connection cost, paced and
            saturated fan-out (not in the default phases; --phases single).
  workers   `[server] workers = 2` (a supervisor and two worker processes on one SO_REUSEPORT
            port, engine local: every event goes through the supervisor) against `workers = 1`
            (one plain process), back to back, twice each; CPU and memory are summed over the
            supervisor and all its workers. 5,000 idle connections: CPU and memory per connection
            (target <= 1.15x) and connections per worker max/min (target < 1.3); saturated fan-out
            to 10,000 subscribers with 1 KB events: deliveries/s and CPU per delivery (target
            <= 1.15x); paced fan-out, 20 events/s to 1,000 subscribers: latency p50/p99 (target:
            p99 at most 2 ms more); no lost or duplicated delivery. About 2.5-3 minutes, so not
            in the default phases (--phases workers); --server-workers N compares N workers.

Prints a Markdown table; writes JSON to bench/results/cluster-<time>.json.
"""

import argparse
import asyncio
import collections
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the single-server benchmark's pieces)
from run import (APP_KEY, APP_SECRET, Loadgen, Meter, Server, free_port, log,  # noqa: E402
                 percentiles, proc_rss_kb, settle, split, wait_quiet)

PROFILE = {
    "connect_n": 5000,
    "fanout_subscribers": 1000,
    "fanout_events": 300,
    "paced_events": 200,
    "paced_rate": 20,
    "presence_joins": 1000,
    "repeats": 2,
    "sub_workers": 2,
    # the workers phase
    "server_workers": 2,            # compared against workers = 1
    "workers_fanout_subscribers": 10000,
    "workers_fanout_events": 100,
    "workers_payload": 1024,        # bytes of event data in the workers phase (saturated and paced)
}


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


PEERS = os.environ.get("PEERS", os.path.expanduser("~/.cache/soketify-peers"))
START_SOKETI = os.path.join(run.ROOT, "..", "shared", "peers", "start-soketi.sh")


class SoketiNode(Server):
    """Soketi 1.6.1 with its Redis adapter (../shared/peers), driven like a Soketify node."""

    def __init__(self, name, logdir, redis=None):
        super().__init__(name, logdir)
        self.redis = redis  # None: one node with Soketi's local (in-memory) adapter

    def _configure(self):
        self.ws_port = self.http_port = free_port()
        self.cmd = ["bash", START_SOKETI, str(self.ws_port)]
        self.env = dict(os.environ, SOKETI_METRICS_SERVER_PORT=str(free_port()),
                        SOKETI_PRESENCE_MAX_MEMBERS="5000", SOKETI_DEFAULT_APP_ID=run.APP_ID,
                        SOKETI_DEFAULT_APP_KEY=APP_KEY, SOKETI_DEFAULT_APP_SECRET=APP_SECRET)
        if self.redis is not None:
            self.env.update(SOKETI_ADAPTER_DRIVER="redis", SOKETI_DB_REDIS_HOST="127.0.0.1",
                            SOKETI_DB_REDIS_PORT=str(self.redis.port))
        self.target = {"kind": "pusher", "port": self.ws_port, "app_id": run.APP_ID, "key": APP_KEY,
                       "secret": APP_SECRET}
        self.url = f"ws://127.0.0.1:{self.ws_port}/app/{APP_KEY}{run.WS_QUERY}"
        self.ready_url = f"http://127.0.0.1:{self.ws_port}/ready"


def node(name, logdir, redis=None, prefix="bench", workers=None):
    extra = "[limits]\nmax_presence_members = 5000\n"
    if workers is not None:
        extra = f"workers = {workers}\n" + extra  # still in the [server] table
    if redis is not None:
        extra += f'[cluster]\nengine = "redis"\nredis_url = "{redis.url}"\nprefix = "{prefix}"\n'
    return Server(name, logdir, extra)


def url_of(server):
    return server.url


async def open_spread(subs, servers, n, subscribe=True):
    """n connections, worker i connecting to servers[i % len(servers)]."""
    shares = split(n, len(subs))
    replies = await asyncio.gather(*(
        w.call("connect", url=servers[i % len(servers)].url, n=k, concurrency=16,
               subscribe=subscribe)
        for i, (w, k) in enumerate(zip(subs, shares))))
    return sum(r["opened"] for r in replies)


async def fanout(servers, publish_through, subs, pub, events, rate=0, inflight=2, subscribers=None,
                 size=128, meter=Meter):
    """Subscribers spread over `servers`, events triggered through `publish_through`."""
    opened = await open_spread(subs, servers, subscribers or PROFILE["fanout_subscribers"])
    await asyncio.gather(*(w.call("expect", events=events) for w in subs))
    await asyncio.sleep(0.5)
    await wait_quiet()
    meters = [meter(s, subs + [pub]) for s in servers]
    p = await pub.call("publish", target=publish_through.target, events=events, inflight=inflight,
                       rate=rate, size=size)
    cols = await asyncio.gather(*(w.call("collect", idle_ms=5000) for w in subs))
    done = [m.done() for m in meters]
    cpu = sum(d["server_cpu_s"] for d in done)
    await asyncio.gather(*(w.call("close") for w in subs))
    received = sum(c["received"] for c in cols)
    wall = (max(c["last_recv"] for c in cols) - p["t0"]) / 1e6
    pct = percentiles([c["hist"] for c in cols], [0.5, 0.99])
    return {"subscribers": opened, "received": received, "expected": sum(c["expected"] for c in cols),
            "lost": sum(c["lost"] for c in cols), "dup": sum(c["dup"] for c in cols),
            "publish_errors": p["errors"], "deliveries_per_s": received / wall,
            "p50_ms": pct[0.5] / 1e3, "p99_ms": pct[0.99] / 1e3,
            "cpu_us_per_delivery": cpu * 1e6 / max(1, received),
            "root_cpu_share": (sum(d["root_cpu_s"] for d in done) / cpu
                               if cpu and all("root_cpu_s" in d for d in done) else None),
            "other_cpu_util": max(d["other_cpu_util"] for d in done)}


async def connect_cost(server, subs):
    await settle(server.pid, 3)
    await wait_quiet()
    rss0 = proc_rss_kb(server.pid)
    meter = Meter(server, subs)
    opened = await open_spread(subs, [server], PROFILE["connect_n"], subscribe=False)
    m = meter.done()
    await settle(server.pid, 5)
    rss1 = proc_rss_kb(server.pid)
    await asyncio.gather(*(w.call("close") for w in subs))
    return {"connections": opened, "cpu_us_per_conn": m["server_cpu_s"] * 1e6 / max(1, opened),
            "kb_per_conn": (rss1 - rss0) / max(1, opened)}


async def warm(servers, subs, pub):
    for server in servers:
        await subs[0].call("connect", url=server.url, n=50, concurrency=8, subscribe=True)
        await subs[0].call("expect", events=5)
        await pub.call("publish", target=server.target, events=5, inflight=1, size=128)
        await subs[0].call("collect", idle_ms=2000)
        await subs[0].call("close")


async def phase_cost(logdir, redis, subs, pub):
    local, clustered = node("local", logdir), node("redis", logdir, redis, "cost")
    out = {"local": [], "redis": []}
    try:
        for server in (local, clustered):
            server.start()
        await warm([local, clustered], subs, pub)
        for _ in range(PROFILE["repeats"]):
            for name, server in (("local", local), ("redis", clustered)):
                connect = await connect_cost(server, subs)
                fan = await fanout([server], server, subs, pub, PROFILE["fanout_events"])
                log(f"  cost {name}: {connect['cpu_us_per_conn']:.0f} us/conn, "
                    f"{connect['kb_per_conn']:.2f} KB/conn, {fan['cpu_us_per_delivery']:.2f} us/delivery, "
                    f"{fan['deliveries_per_s']:.0f} deliveries/s, lost {fan['lost']} dup {fan['dup']}")
                out[name].append({"connect": connect, "fanout": fan})
    finally:
        local.cleanup()
        clustered.cleanup()
    return out


async def phase_cross(logdir, redis, subs, pub):
    single = node("single", logdir)
    a, b = node("node-a", logdir, redis, "cross"), node("node-b", logdir, redis, "cross")
    out = {"one node": [], "two nodes": []}
    try:
        for server in (single, a, b):
            server.start()
        await warm([single, a, b], subs, pub)
        for _ in range(PROFILE["repeats"]):
            for name, servers in (("one node", [single]), ("two nodes", [a, b])):
                paced = await fanout(servers, servers[0], subs, pub, PROFILE["paced_events"],
                                     rate=PROFILE["paced_rate"])
                saturated = await fanout(servers, servers[0], subs, pub, PROFILE["fanout_events"])
                log(f"  cross {name}: paced p50 {paced['p50_ms']:.1f} p99 {paced['p99_ms']:.1f} ms, "
                    f"saturated {saturated['deliveries_per_s']:.0f}/s, lost {paced['lost'] + saturated['lost']}"
                    f" dup {paced['dup'] + saturated['dup']}")
                out[name].append({"paced": paced, "saturated": saturated})
    finally:
        for server in (single, a, b):
            server.cleanup()
    return out


async def phase_peer(logdir, redis, subs, pub):
    """Two Soketify nodes against two Soketi nodes (Redis adapter), each pair on its own Redis."""
    if not os.path.exists(os.path.join(PEERS, "soketi", "node_modules")):
        log("  peer: Soketi is not set up (run ../shared/peers/setup-soketi.sh); skipped")
        return None
    soketi_redis = RedisServer()
    pairs = {"soketify": [node(f"soketify-{i}", logdir, redis, "peer") for i in range(2)],
             "soketi": [SoketiNode(f"soketi-{i}", logdir, soketi_redis) for i in range(2)]}
    out = {name: [] for name in pairs}
    try:
        for servers in pairs.values():
            for server in servers:
                server.start()
            await warm(servers, subs, pub)
        for _ in range(PROFILE["repeats"]):
            for name, servers in pairs.items():
                paced = await fanout(servers, servers[0], subs, pub, PROFILE["paced_events"],
                                     rate=PROFILE["paced_rate"])
                saturated = await fanout(servers, servers[0], subs, pub, PROFILE["fanout_events"])
                log(f"  peer {name}: paced p50 {paced['p50_ms']:.1f} p99 {paced['p99_ms']:.1f} ms "
                    f"{paced['cpu_us_per_delivery']:.1f} us/delivery, saturated "
                    f"{saturated['deliveries_per_s']:.0f}/s, lost {paced['lost'] + saturated['lost']} "
                    f"dup {paced['dup'] + saturated['dup']}")
                out[name].append({"paced": paced, "saturated": saturated})
        for name, servers in pairs.items():
            out[name + " presence"] = await presence_joins(servers, subs, pub, name)
    finally:
        for servers in pairs.values():
            for server in servers:
                server.cleanup()
        soketi_redis.stop()
    return out


async def phase_single(logdir, redis, subs, pub):
    """One Soketify node (local engine) against one Soketi node, same load, back to back."""
    if not os.path.exists(os.path.join(PEERS, "soketi", "node_modules")):
        log("  single: Soketi is not set up (run ../shared/peers/setup-soketi.sh); skipped")
        return None
    servers = {"soketify": node("soketify", logdir), "soketi": SoketiNode("soketi", logdir)}
    out = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
        await warm(list(servers.values()), subs, pub)
        for _ in range(PROFILE["repeats"]):
            for name, server in servers.items():
                connect = await connect_cost(server, subs)
                paced = await fanout([server], server, subs, pub, PROFILE["paced_events"],
                                     rate=PROFILE["paced_rate"])
                saturated = await fanout([server], server, subs, pub, PROFILE["fanout_events"])
                log(f"  single {name}: {connect['cpu_us_per_conn']:.0f} us/conn, "
                    f"{connect['kb_per_conn']:.2f} KB/conn, paced p99 {paced['p99_ms']:.1f} ms "
                    f"{paced['cpu_us_per_delivery']:.1f} us/delivery, saturated "
                    f"{saturated['deliveries_per_s']:.0f}/s")
                out[name].append({"connect": connect, "paced": paced, "saturated": saturated})
    finally:
        for server in servers.values():
            server.cleanup()
    return out


async def phase_presence(logdir, redis, subs, pub):
    nodes = [node(f"node-{i}", logdir, redis, "presence") for i in range(3)]
    try:
        for server in nodes:
            server.start()
        return await presence_joins(nodes, subs, pub, "soketify")
    finally:
        for server in nodes:
            server.cleanup()


async def presence_joins(nodes, subs, pub, label):
    """1,000 joins spread over the nodes, one watching member per node."""
    workers = subs + [pub]
    if True:
        auth = {"key": APP_KEY, "secret": APP_SECRET, "channel": f"presence-bench-{label}"}
        for i, server in enumerate(nodes):
            await workers[i % len(workers)].call("watch", url=server.url, user=f"watcher-{i}", **auth)
        await asyncio.sleep(0.5)
        await wait_quiet()
        users = [f"user-{i}" for i in range(PROFILE["presence_joins"])]
        shares = [users[i::len(nodes)] for i in range(len(nodes))]
        t0 = time.monotonic()
        replies = await asyncio.gather(*(
            workers[i % len(workers)].call("join", url=server.url, users=share, concurrency=16, **auth)
            for i, (server, share) in enumerate(zip(nodes, shares))))
        seconds = time.monotonic() - t0
        await asyncio.sleep(1)
        seen = [w for r in await asyncio.gather(*(w.call("watched") for w in workers))
                for w in r["seen"]]
        agree = []
        missing = 0
        for reply in replies:
            for user, _, succeeded in reply["joined"]:
                times = [w.get(user) for w in seen]
                if None in times:
                    missing += 1
                else:
                    agree.append(max(0.0, max(times) - succeeded) / 1e3)
        agree.sort()
        joined = sum(len(r["joined"]) for r in replies)
        pick = lambda p: agree[min(len(agree) - 1, int(p * len(agree)))] if agree else None  # noqa: E731
        res = {"joins": joined, "joins_per_s": joined / seconds, "agree_p50_ms": pick(0.5),
               "agree_p99_ms": pick(0.99), "agree_max_ms": pick(1.0), "missing": missing,
               "watchers": len(seen)}
        log(f"  presence {label}: {res}")
        await asyncio.gather(*(w.call("close") for w in workers))
        return res


# ---------------------------------------------------------------- workers = N on one host

def tree_pids(pid):
    """`pid` and its descendants: a supervisor (`workers = N`) and its worker processes.

    /proc/PID/task/*/children needs CONFIG_PROC_CHILDREN, which not every kernel has (this VM's
    does not), so the tree is built from every process's parent in /proc/*/stat."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_map(pid):
    out = {}
    for p in tree_pids(pid):
        try:
            out[p] = run.proc_cpu(p)
        except OSError:
            pass
    return out


def tree_rss_kb(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            total += proc_rss_kb(p)
        except (OSError, RuntimeError):
            pass
    return total


def socket_counts(pid):
    """{pid: open socket file descriptors} for every process of the tree."""
    out = {}
    for p in tree_pids(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        n = 0
        for fd in fds:
            try:
                n += os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        out[p] = n
    return out


class TreeMeter:
    """run.Meter over a server's whole process tree: CPU of the supervisor and of every worker."""

    def __init__(self, server, gens):
        self.server, self.gens = server, gens
        self.t = time.monotonic()
        self.s = tree_cpu_map(server.pid)
        self.g = run.tree_cpu([w.proc.pid for w in gens])
        self.m = run.machine_busy()

    def done(self):
        wall = time.monotonic() - self.t
        after = tree_cpu_map(self.server.pid)
        gone = sorted(set(self.s) - set(after))
        if gone:
            log(f"  {self.server.name}: process(es) {gone} ended during the measurement; "
                "their CPU since the start is not counted")
        s = sum(cpu - self.s.get(p, 0.0) for p, cpu in after.items())
        g = run.tree_cpu([w.proc.pid for w in self.gens]) - self.g
        m = run.machine_busy() - self.m
        root = self.server.pid
        return {"server_cpu_s": s, "wall_s": wall, "processes": len(after),
                # the twistd process itself: with workers > 1, the supervisor's share
                "root_cpu_s": after.get(root, 0.0) - self.s.get(root, 0.0),
                "other_cpu_util": max(0.0, (m - s - g) / wall) if wall > 0 else 0.0}


async def settle_tree(pid, seconds):
    """Sleep until the summed RSS of the process tree stops moving (or `seconds` pass)."""
    end = time.monotonic() + seconds
    last = tree_rss_kb(pid)
    await asyncio.sleep(0.5)
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        now = tree_rss_kb(pid)
        if now == last:
            break
        last = now


async def connect_tree(server, subs):
    """5,000 idle connections: CPU and RSS summed over the tree, and how they spread over workers."""
    await settle_tree(server.pid, 3)
    await wait_quiet()
    rss0 = tree_rss_kb(server.pid)
    sockets0 = socket_counts(server.pid)
    meter = TreeMeter(server, subs)
    replies = await asyncio.gather(*(
        w.call("connect", url=server.url, n=k, concurrency=16, subscribe=False)
        for w, k in zip(subs, split(PROFILE["connect_n"], len(subs))) if k))
    m = meter.done()
    await settle_tree(server.pid, 5)
    rss1 = tree_rss_kb(server.pid)
    sockets1 = socket_counts(server.pid)
    await asyncio.gather(*(w.call("close") for w in subs))
    opened = sum(r["opened"] for r in replies)
    prefixes = collections.Counter()
    for r in replies:
        prefixes.update(r["prefixes"])
    per_worker = sorted(prefixes.values(), reverse=True)
    per_worker += [0] * (server.workers - len(per_worker))
    fd_delta = sorted((sockets1.get(p, 0) - sockets0.get(p, 0) for p in sockets1), reverse=True)
    return {"connections": opened, "failed": sum(r["failed"] for r in replies),
            "cpu_us_per_conn": m["server_cpu_s"] * 1e6 / max(1, opened),
            "kb_per_conn": (rss1 - rss0) / max(1, opened),
            "per_worker": per_worker, "by_prefix": dict(prefixes),
            "spread": per_worker[0] / per_worker[-1] if per_worker[-1] else float("inf"),
            "socket_fds_per_process": fd_delta[:len(per_worker)], "processes": m["processes"],
            "root_cpu_share": m["root_cpu_s"] / m["server_cpu_s"] if m["server_cpu_s"] else None,
            "other_cpu_util": m["other_cpu_util"]}


async def phase_workers(logdir, redis, subs, pub):
    """`workers = N` (supervisor + N workers, engine local) against `workers = 1`, back to back."""
    n = PROFILE["server_workers"]
    servers = {1: node("workers-1", logdir, workers=1), n: node(f"workers-{n}", logdir, workers=n)}
    out = {"workers": [1, n], "runs": {str(k): [] for k in servers}}
    size = PROFILE["workers_payload"]
    try:
        for repeat in range(PROFILE["repeats"]):
            # Fresh processes at each repeat: memory per connection needs a fresh baseline (a
            # process that once held 10,000 connections reuses that memory for the next ones).
            for k, server in servers.items():
                server.workers = k
                server.stop()
                server.start()
                processes = len(tree_pids(server.pid))
                expected = 1 if k == 1 else k + 1
                if processes != expected:
                    raise RuntimeError(f"{server.name}: {processes} processes, expected {expected}; "
                                       f"see {server.logpath}")
            await warm(list(servers.values()), subs, pub)
            for k, server in servers.items():
                connect = await connect_tree(server, subs)
                saturated = await fanout([server], server, subs, pub, PROFILE["workers_fanout_events"],
                                         subscribers=PROFILE["workers_fanout_subscribers"],
                                         size=size, meter=TreeMeter)
                paced = await fanout([server], server, subs, pub, PROFILE["paced_events"],
                                     rate=PROFILE["paced_rate"], size=size, meter=TreeMeter)
                share = " ".join(f"{x['root_cpu_share']:.0%}" for x in (connect, saturated, paced)
                                 if x["root_cpu_share"] is not None)
                log(f"  workers {k} (run {repeat + 1}): {connect['cpu_us_per_conn']:.0f} us/conn, "
                    f"{connect['kb_per_conn']:.2f} KB/conn, per worker {connect['per_worker']} "
                    f"(socket fds {connect['socket_fds_per_process']}); saturated "
                    f"{saturated['deliveries_per_s']:.0f}/s {saturated['cpu_us_per_delivery']:.2f} "
                    f"us/delivery; paced p50 {paced['p50_ms']:.1f} p99 {paced['p99_ms']:.1f} ms; lost "
                    f"{saturated['lost'] + paced['lost']} dup {saturated['dup'] + paced['dup']}"
                    + (f"; supervisor's share of the CPU (connect, saturated, paced) {share}"
                       if k > 1 else ""))
                out["runs"][str(k)].append({"connect": connect, "saturated": saturated, "paced": paced})
    finally:
        for server in servers.values():
            server.cleanup()
    return out


def workers_command():
    return ".venv/bin/python bench/cluster.py --phases workers --server-workers N --loadgens N"


def report_workers(res):
    one, many = (res["runs"][str(k)] for k in res["workers"])
    n = res["workers"][1]
    subs, events = PROFILE["workers_fanout_subscribers"], PROFILE["workers_fanout_events"]
    size = PROFILE["workers_payload"]
    size_label = f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"
    lines = ["", f"| `workers = {n}` against `workers = 1` (engine local, one port; best of "
             f"{len(one)}) | 1 worker | {n} workers | ratio | target | result |",
             "|---|---:|---:|---:|---|---|"]

    def verdict(ok):
        return "**pass**" if ok else "**FAIL**"

    def ratio_row(label, mode, key, pick=min, bound=None, digits=2):
        a, b = pick(r[mode][key] for r in one), pick(r[mode][key] for r in many)
        ratio = b / a if a else float("inf")
        target = f"<= {bound}x" if bound else ""
        result = verdict(ratio <= bound) if bound else ""
        lines.append(f"| {label} | {a:,.{digits}f} | {b:,.{digits}f} | {ratio:.2f}x | {target} | {result} |")

    c = PROFILE["connect_n"]
    ratio_row(f"{c:,} idle connections: server CPU per connection (us)", "connect", "cpu_us_per_conn",
              bound=1.15, digits=0)
    ratio_row(f"{c:,} idle connections: memory per connection (KB)", "connect", "kb_per_conn",
              bound=1.15)
    worst = max(many, key=lambda r: r["connect"]["spread"])["connect"]
    spread = worst["spread"]
    counts = " / ".join(f"{x:,}" for x in worst["per_worker"])
    lines.append(f"| {c:,} idle connections: per worker max/min (worst run; counts) | 1.00 | "
                 f"{spread:.2f} ({counts}) | | < 1.3 | {verdict(spread < 1.3)} |")
    label = f"saturated fan-out {subs:,} subs x {events} events of {size_label}"
    ratio_row(f"{label}: deliveries/s", "saturated", "deliveries_per_s", pick=max, digits=0)
    ratio_row(f"{label}: server CPU per delivery (us)", "saturated", "cpu_us_per_delivery", bound=1.15)
    ratio_row(f"{label}: latency p99 (ms)", "saturated", "p99_ms", digits=1)
    label = f"paced {PROFILE['paced_rate']} events/s to {PROFILE['fanout_subscribers']:,} subs"
    ratio_row(f"{label}: latency p50 (ms)", "paced", "p50_ms", digits=1)
    a, b = min(r["paced"]["p99_ms"] for r in one), min(r["paced"]["p99_ms"] for r in many)
    lines.append(f"| {label}: latency p99 (ms) | {a:,.1f} | {b:,.1f} | {b / a:.2f}x ({b - a:+.1f} ms) | "
                 f"<= +2 ms | {verdict(b - a <= 2.0)} |")
    ratio_row(f"{label}: server CPU per delivery (us)", "paced", "cpu_us_per_delivery")
    cells = []
    bad = 0
    for runs in (one, many):
        lost = sum(r[m]["lost"] for r in runs for m in ("saturated", "paced"))
        dup = sum(r[m]["dup"] for r in runs for m in ("saturated", "paced"))
        wanted = {"saturated": PROFILE["workers_fanout_subscribers"],
                  "paced": PROFILE["fanout_subscribers"]}
        errors = sum(r[m]["publish_errors"] + wanted[m] - r[m]["subscribers"]
                     for r in runs for m in ("saturated", "paced"))
        bad += lost + dup + errors
        cells.append(f"{lost} / {dup}" + (f" ({errors} other)" if errors else ""))
    lines.append(f"| lost / duplicated deliveries (all runs) | {cells[0]} | {cells[1]} | | 0 / 0 | "
                 f"{verdict(bad == 0)} |")
    lines += ["", "Connections per worker in each run (socket-id prefixes; socket fds opened per "
              "process, from /proc): " + "; ".join(
                  f"{' / '.join(map(str, r['connect']['per_worker']))} "
                  f"({' / '.join(map(str, r['connect']['socket_fds_per_process']))})" for r in many)]
    shares = [f"{m} {min(r[m]['root_cpu_share'] for r in many):.0%}-"
              f"{max(r[m]['root_cpu_share'] for r in many):.0%}" for m in ("connect", "saturated", "paced")]
    lines += ["", f"With {n} workers, the supervisor's share of the server CPU (lowest-highest over "
              "the runs): " + ", ".join(shares)]
    noisy = [f"{k} worker{'s' if k > 1 else ''} run {i + 1} {m} ({r[m]['other_cpu_util']:.2f} cores)"
             for k in res["workers"] for i, r in enumerate(res["runs"][str(k)])
             for m in ("connect", "saturated", "paced") if r[m]["other_cpu_util"] > 0.15]
    if noisy:
        lines += ["", "**Warning**: more than 0.15 cores used outside the server and the load "
                  "generators (other processes, and kernel loopback work not charged to a process) "
                  "during: " + ", ".join(noisy)]
    lines += ["", "On an N-core host, N workers should carry about N x the one-worker figures; "
              f"measure there with: {workers_command()}"]
    return lines


def best(runs, key, pick=min):
    return pick(r[key] for r in runs)


def paired(rows, left, right):
    """(label, mode, key, left best, right best) for each (label, mode, key, pick) row."""
    for label, mode, key, pick in rows:
        yield label, mode, key, pick(r[mode][key] for r in left), pick(r[mode][key] for r in right)


def report(results):
    lines = []
    cost = results.get("cost")
    if cost:
        lines += ["| figure | one node (local) | Redis engine | ratio | target |", "|---|---:|---:|---:|---|"]
        for label, path, target in (
                ("connect 5,000: server CPU per connection (us)", ("connect", "cpu_us_per_conn"), "<= 1.2x"),
                ("connect 5,000: memory per idle connection (KB)", ("connect", "kb_per_conn"), ""),
                ("fan-out 1,000 subs: server CPU per delivery (us)", ("fanout", "cpu_us_per_delivery"), "<= 1.2x"),
                ("fan-out 1,000 subs: deliveries/s", ("fanout", "deliveries_per_s"), "")):
            pick = max if "deliveries" in label else min
            lo = pick(r[path[0]][path[1]] for r in cost["local"])
            hi = pick(r[path[0]][path[1]] for r in cost["redis"])
            lines.append(f"| {label} | {lo:,.2f} | {hi:,.2f} | {hi / lo:.2f}x | {target} |")
    cross = results.get("cross")
    if cross:
        lines += ["", "| cross-node fan-out, 1,000 subscribers | one local node | two Redis nodes | difference | target |",
                  "|---|---:|---:|---:|---|"]
        for label, mode, key, one, two in paired((
                ("paced 20 events/s: latency p50 (ms)", "paced", "p50_ms", min),
                ("paced 20 events/s: latency p99 (ms)", "paced", "p99_ms", min),
                ("paced: server CPU per delivery, all nodes (us)", "paced", "cpu_us_per_delivery", min),
                ("saturated: deliveries/s", "saturated", "deliveries_per_s", max),
                ("saturated: latency p99 (ms)", "saturated", "p99_ms", min)),
                cross["one node"], cross["two nodes"]):
            target = "<= +5 ms" if key == "p99_ms" and mode == "paced" else ""
            lines.append(f"| {label} | {one:,.2f} | {two:,.2f} | {two - one:+,.2f} | {target} |")
        problems = sum(r[m]["lost"] + r[m]["dup"] for runs in cross.values() for r in runs
                       for m in ("paced", "saturated"))
        lines.append(f"| lost + duplicated deliveries (all runs) | | | {problems} | 0 |")
    presence = results.get("presence")
    if presence:
        lines += ["", "| presence, 1,000 joins over 3 Redis nodes | value | target |", "|---|---:|---|",
                  f"| joins/s | {presence['joins_per_s']:,.0f} | |",
                  f"| member lists agree, p50 (ms) | {presence['agree_p50_ms']:.1f} | |",
                  f"| member lists agree, p99 (ms) | {presence['agree_p99_ms']:.1f} | < 100 |",
                  f"| member lists agree, max (ms) | {presence['agree_max_ms']:.1f} | |",
                  f"| joins a watcher never saw | {presence['missing']} | 0 |"]
    peer = results.get("peer")
    if peer:
        lines += ["", "| two nodes on Redis, 1,000 subscribers | Soketify | Soketi 1.6.1 | ratio |",
                  "|---|---:|---:|---:|"]
        for label, _, _, ours, theirs in paired((
                ("paced 20 events/s: latency p50 (ms)", "paced", "p50_ms", min),
                ("paced 20 events/s: latency p99 (ms)", "paced", "p99_ms", min),
                ("paced: server CPU per delivery, both nodes (us)", "paced", "cpu_us_per_delivery", min),
                ("saturated: deliveries/s", "saturated", "deliveries_per_s", max),
                ("saturated: server CPU per delivery (us)", "saturated", "cpu_us_per_delivery", min)),
                peer["soketify"], peer["soketi"]):
            lines.append(f"| {label} | {ours:,.2f} | {theirs:,.2f} | {ours / theirs:.2f}x |")
        for key, label in (("joins_per_s", "presence, 1,000 joins: joins/s"),
                           ("agree_p99_ms", "presence: member lists agree, p99 (ms)"),
                           ("missing", "presence: joins a watcher never saw")):
            ours, theirs = peer["soketify presence"][key], peer["soketi presence"][key]
            ratio = f"{ours / theirs:.2f}x" if theirs else ""
            lines.append(f"| {label} | {ours:,.1f} | {theirs:,.1f} | {ratio} |")
        problems = {name: sum(r[m]["lost"] + r[m]["dup"] for r in peer[name] for m in ("paced", "saturated"))
                    for name in ("soketify", "soketi")}
        lines.append(f"| lost + duplicated deliveries | {problems['soketify']} | {problems['soketi']} | |")
    single = results.get("single")
    if single:
        lines += ["", "| one node, 1,000 subscribers | Soketify | Soketi 1.6.1 | ratio |", "|---|---:|---:|---:|"]
        for label, _, _, ours, theirs in paired((
                ("connect 5,000: server CPU per connection (us)", "connect", "cpu_us_per_conn", min),
                ("connect 5,000: memory per idle connection (KB)", "connect", "kb_per_conn", min),
                ("paced 20 events/s: latency p50 (ms)", "paced", "p50_ms", min),
                ("paced 20 events/s: latency p99 (ms)", "paced", "p99_ms", min),
                ("paced: server CPU per delivery (us)", "paced", "cpu_us_per_delivery", min),
                ("saturated: deliveries/s", "saturated", "deliveries_per_s", max)),
                single["soketify"], single["soketi"]):
            lines.append(f"| {label} | {ours:,.2f} | {theirs:,.2f} | {ours / theirs:.2f}x |")
    if results.get("workers"):
        lines += report_workers(results["workers"])
    return "\n".join(lines)


async def main_async(phases, logdir):
    redis = RedisServer()
    subs = [Loadgen(f"sub{i}", logdir) for i in range(PROFILE["sub_workers"])]
    pub = Loadgen("pub", logdir)
    results = {}
    try:
        for w in subs + [pub]:
            await w.start()
        if "cost" in phases:
            results["cost"] = await phase_cost(logdir, redis, subs, pub)
        if "cross" in phases:
            results["cross"] = await phase_cross(logdir, redis, subs, pub)
        if "presence" in phases:
            results["presence"] = await phase_presence(logdir, redis, subs, pub)
        if "peer" in phases:
            results["peer"] = await phase_peer(logdir, redis, subs, pub)
        if "single" in phases:
            results["single"] = await phase_single(logdir, redis, subs, pub)
        if "workers" in phases:
            results["workers"] = await phase_workers(logdir, redis, subs, pub)
    finally:
        for w in subs + [pub]:
            await w.stop()
        redis.stop()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phases", default="cost,cross,presence,peer")
    ap.add_argument("--quick", action="store_true", help="small smoke profile; figures not meaningful")
    ap.add_argument("--server-workers", type=int, default=PROFILE["server_workers"],
                    help="workers phase: compare `workers = N` against `workers = 1` (default 2)")
    ap.add_argument("--loadgens", type=int, default=PROFILE["sub_workers"],
                    help="subscriber load-generator processes (default 2)")
    args = ap.parse_args()
    PROFILE.update(server_workers=args.server_workers, sub_workers=args.loadgens)
    if args.quick:
        PROFILE.update(connect_n=300, fanout_subscribers=100, fanout_events=20, paced_events=20,
                       presence_joins=60, repeats=1, workers_fanout_subscribers=200,
                       workers_fanout_events=20)
    run.resource.setrlimit(run.resource.RLIMIT_NOFILE, (65536, 65536)) if run.resource.getrlimit(
        run.resource.RLIMIT_NOFILE)[1] >= 65536 else None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(run.RESULTS, f"cluster-logs-{stamp}")
    os.makedirs(logdir, exist_ok=True)
    t0 = time.monotonic()
    results = asyncio.run(main_async([p.strip() for p in args.phases.split(",")], logdir))
    path = os.path.join(run.RESULTS, f"cluster-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"time": stamp, "profile": PROFILE, "results": results}, f, indent=1)
    print(f"## Soketify cluster benchmark {stamp} ({os.cpu_count()} CPUs)\n")
    print(report(results))
    print(f"\nJSON: {os.path.relpath(path, run.ROOT)}; total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
