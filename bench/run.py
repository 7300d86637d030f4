"""Soketify benchmark: Soketify side by side with another server, in interleaved rounds.

Usage (from the repository root):

    .venv/bin/python bench/run.py                          # against the "floor" (make bench)
    .venv/bin/python bench/run.py --peer soketi            # against Soketi 1.6.1 (../shared/peers)
    .venv/bin/python bench/run.py --peer-command 'CMD {port}' [--peer-name NAME]
    .venv/bin/python bench/run.py --peer floor,soketi      # both, one table each

Every round starts fresh server processes (Soketify and each other server) on free loopback
ports, warms them up, then runs each scenario on Soketify and then on the other server(s), back
to back, with the same Node load generator (bench/loadgen.mjs). After the rounds (2 by default)
each figure is the median over the rounds, and Soketify's is reported as a ratio to the other
server's, with the targets of that comparison. Two sets of scenarios:

  floor profile (the default against the floor alone): connect 5,000 idle connections; saturated
      fan-out 1,000 subs x 300 and 10,000 subs x 120 events of 128 B; REST triggers (Soketify only,
      the floor has no REST API).
  peer profile (against any other Pusher-protocol server): connect 5,000; REST trigger without
      subscribers, 16 in flight; 1,000 presence joins; paced fan-out, 20 events/s to 1,000
      subscribers; saturated fan-out 1,000 subs x 64 B and 10,000 subs x 1 KB.

Server CPU and memory are summed over the server's process tree (utime + stime, VmRSS from /proc).
Prints a Markdown table and writes it with JSON to bench/results/. See bench/README.md.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
TWISTD = os.path.join(VENV_BIN, "twistd")
LOADGEN = os.path.join(BENCH, "loadgen.mjs")
CLK_TCK = os.sysconf("SC_CLK_TCK")

APP_ID, APP_KEY, APP_SECRET = "app-id", "app-key", "app-secret"
WS_QUERY = "?protocol=7&client=js&version=8.6.0"

PEERS_DIR = os.path.join(ROOT, "..", "shared", "peers")
PEERS_CACHE = os.environ.get("PEERS", os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "soketify-peers"))

# Targets: {comparison: {(scenario kind, figure): (op, bound)}}, ratio = soketify / other server.
TARGETS = {
    "floor": {
        ("connect", "cpu_us_per_conn"): ("<=", 0.7),
        ("connect", "kb_per_conn"): ("<=", 0.5),
        ("fanout", "deliveries_per_s"): (">=", 0.8),
    },
    # issue 9: ahead of the peer (Soketi) on every row
    "peer": {
        ("connect", "cpu_us_per_conn"): ("<=", 1.0),
        ("connect", "kb_per_conn"): ("<=", 1.0),
        ("paced", "cpu_us_per_delivery"): ("<=", 0.8),
        ("paced", "latency_p50_ms"): ("<=", 1.0),
        ("paced", "latency_p99_ms"): ("<=", 1.0),
        ("rest", "cpu_us_per_request"): ("<=", 0.8),
        ("rest", "p99_ms"): ("<=", 1.0),
        ("fanout", "deliveries_per_s"): (">=", 1.3),
        ("presence", "joins_per_s"): (">=", 1.0),
    },
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid):
    """/proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu(pid):
    """utime + stime of a process, in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy():
    """Busy CPU seconds of the whole machine (all cores, everything but idle/iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return (sum(v) - v[3] - v[4]) / CLK_TCK


def tree_cpu(pids):
    """utime + stime summed over the given processes (not their children)."""
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu(pid)
        except OSError:
            pass
    return total


def tree_pids(root):
    """`root`, its descendants (by parent pid), and every process of its session.

    Servers start in their own session (start_new_session), so a wrapper script and whatever it
    starts are found even when a process is reparented; /proc/PID/task/*/children is not in every
    kernel, so the tree is built from every process's parent in /proc/*/stat."""
    children, session = {}, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        if int(fields[3]) == root:
            session.append(pid)
    out, todo = set(), [root] + session
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += children.get(p, [])
    return sorted(out)


def server_cpu(root):
    """CPU seconds of a server's whole process tree: utime + stime of each process, plus
    cutime + cstime (children that ended and were waited for stay counted)."""
    total = 0.0
    for pid in tree_pids(root):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK_TCK
    return total


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tree_rss_kb(root):
    total = 0
    for pid in tree_pids(root):
        try:
            total += proc_rss_kb(pid)
        except (OSError, RuntimeError):
            pass
    return total


class Meter:
    """CPU of the server (its whole process tree), of our load generators and of everything
    else, over a phase."""

    def __init__(self, server, gens):
        self.server, self.gens = server, gens
        self.t = time.monotonic()
        self.s = server_cpu(server.pid)
        self.g = tree_cpu([w.proc.pid for w in gens])
        self.m = machine_busy()

    def done(self):
        wall = time.monotonic() - self.t
        s = server_cpu(self.server.pid) - self.s
        g = tree_cpu([w.proc.pid for w in self.gens]) - self.g
        m = machine_busy() - self.m
        return {"server_cpu_s": s, "wall_s": wall,
                # kernel work not charged to a process (loopback softirq) lands here too,
                # so a quiet machine still shows a little
                "other_cpu_util": max(0.0, (m - s - g) / wall) if wall > 0 else 0.0}


START = time.monotonic()


async def wait_quiet(limit=0.3, max_wait=20):
    """Wait until the machine (nothing of ours is busy now) uses < `limit` cores."""
    waited = 0.0
    while True:
        m0, t0 = machine_busy(), time.monotonic()
        await asyncio.sleep(0.5)
        busy = (machine_busy() - m0) / (time.monotonic() - t0)
        if busy < limit or waited >= max_wait:
            if waited:
                log(f"  waited {waited:.0f}s for other load to stop (now {busy:.2f} cores busy)")
            return busy
        if not waited:
            log(f"  machine busy ({busy:.2f} cores used by something else); waiting up to {max_wait}s")
        await asyncio.sleep(1)
        waited += 1.5


CONSOLE_TOKEN = "bench-console-token-0123456789"

class Server:
    """One server under test: its command, ports and trigger target (new ports at each start).

    kind "soketify" (twistd with a generated config; the default for any name but "floor"),
    "floor" (bench/floor_server.py) or "command" (any Pusher-protocol server started by a shell
    command template with "{port}"; the development app; ready when GET `ready_path` answers)."""

    def __init__(self, name, logdir, extra_config="", kind=None, command=None, ready_path="/",
                 env_fn=None, console_viewer=False):
        self.name = name
        # Soketify with its debug console on and one script reading GET /console/api/stream for
        # the whole time it runs (issue 12: what a viewer costs).
        self.console_viewer = console_viewer
        self.viewer = None
        if console_viewer:
            extra_config += ('[console]\nenabled = true\npassword = "bench"\n'
                             f'api_token = "{CONSOLE_TOKEN}"\n')
        self.logdir = logdir
        self.extra_config = extra_config  # more TOML for Soketify (e.g. a [cluster] table)
        self.kind = kind or ("floor" if name == "floor" else "soketify")
        self.command = command
        self.ready_path = ready_path
        self.env_fn = env_fn  # () -> extra environment for a command server, at each start
        self.proc = None
        self.starts = 0
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{name}-")
        # how long idle connections are held for the memory figure (see idle_rss): a server of
        # unknown make may run on a runtime that gives memory back late (Soketi's V8 does)
        self.memory_wait_s = 35 if self.kind == "command" else 5

    @property
    def supports(self):
        """Scenario kinds this server can take part in."""
        if self.kind == "floor":
            return {"connect", "fanout", "paced"}
        return {"connect", "fanout", "paced", "rest", "presence"}

    def describe(self):
        if self.kind == "command":
            return self.command
        return " ".join(self.cmd) if getattr(self, "cmd", None) else self.kind

    def _configure(self):
        self.ws_port = free_port()
        env = dict(os.environ)
        if self.kind == "floor":
            self.http_port = free_port()
            self.cmd = [PYTHON, os.path.join(BENCH, "floor_server.py"),
                        "--port", str(self.ws_port), "--http-port", str(self.http_port)]
            self.target = {"kind": "floor", "port": self.http_port}
            self.ready_url = f"http://127.0.0.1:{self.http_port}/ready"
        elif self.kind == "command":
            self.http_port = self.ws_port
            self.cmd = ["bash", "-c", self.command.replace("{port}", str(self.ws_port))]
            env.update(BENCH_PORT=str(self.ws_port), BENCH_APP_ID=APP_ID, BENCH_APP_KEY=APP_KEY,
                       BENCH_APP_SECRET=APP_SECRET)
            if self.env_fn:
                env.update(self.env_fn())
            self.target = {"kind": "pusher", "port": self.ws_port,
                           "app_id": APP_ID, "key": APP_KEY, "secret": APP_SECRET}
            self.ready_url = f"http://127.0.0.1:{self.http_port}{self.ready_path}"
        else:
            self.http_port = self.ws_port
            conf = os.path.join(self.tmp, "soketify.toml")
            with open(conf, "w") as f:
                f.write(
                    "[server]\n"
                    f'listen = ["tcp:{self.ws_port}:interface=127.0.0.1"]\n'
                    "activity_timeout = 120\n"
                    + self.extra_config +
                    "[[apps]]\n"
                    f'id = "{APP_ID}"\nkey = "{APP_KEY}"\nsecret = "{APP_SECRET}"\n'
                )
            self.cmd = [TWISTD, "-n", "--pidfile=", "soketify", "--config", conf]
            self.target = {"kind": "pusher", "port": self.ws_port,
                           "app_id": APP_ID, "key": APP_KEY, "secret": APP_SECRET}
            # twistd finds the plugin in ROOT/twisted/plugins even without an install
            env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            self.ready_url = f"http://127.0.0.1:{self.http_port}/ready"
        self.env = env
        self.url = f"ws://127.0.0.1:{self.ws_port}/app/{APP_KEY}{WS_QUERY}"

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _answers(self):
        """True once GET ready_url answers: 2xx/3xx, or any status below 500 from a server that is
        not Soketify or the floor (a peer may well answer 404 on "/"); 503 means "not yet"."""
        try:
            with urllib.request.urlopen(self.ready_url, timeout=1) as r:
                return r.status < 400 or self.kind == "command"
        except urllib.error.HTTPError as e:
            return self.kind == "command" and e.code < 500
        except OSError:
            return False

    def start(self, timeout=30):
        self._configure()
        self.starts += 1
        self.logpath = os.path.join(self.logdir, f"{self.name}-{self.starts}.log")
        self.logfile = open(self.logpath, "wb")
        log(f"{self.name}: starting ({' '.join(self.cmd)})")
        # Its own session and process group, so that stop() reaches any process it starts (Soketi
        # does) and server_cpu() finds them.
        self.proc = subprocess.Popen(self.cmd, cwd=self.tmp, env=self.env,
                                     stdout=self.logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.logpath}")
            if self._answers():
                if self.console_viewer:
                    self._start_viewer()
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.logpath}")

    def _start_viewer(self):
        """curl reading the console's stream (not in the server's process group: its CPU is not
        the server's); what it received goes to a log beside the server's."""
        self.viewer_log = self.logpath.replace(".log", "-viewer.ndjson")
        self.viewer = subprocess.Popen(
            ["curl", "-sN", "-H", f"Authorization: Bearer {CONSOLE_TOKEN}", "-o", self.viewer_log,
             f"http://127.0.0.1:{self.http_port}/console/api/stream"],
            stdin=subprocess.DEVNULL, start_new_session=True)

    def _stop_viewer(self):
        if self.viewer is not None and self.viewer.poll() is None:
            self.viewer.terminate()
            self.viewer.wait()
            with open(self.viewer_log, "rb") as f:
                log(f"{self.name}: the console viewer received {sum(1 for _ in f)} lines")
        self.viewer = None

    def signal_stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout=15):
        self._stop_viewer()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout}s; killing")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left behind
            except ProcessLookupError:
                pass
        if self.proc:
            self.logfile.close()
            self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def soketi_server(logdir):
    """Soketi 1.6.1 from ../shared/peers (start-soketi.sh PORT; ready when GET / answers OK)."""
    start = os.path.abspath(os.path.join(PEERS_DIR, "start-soketi.sh"))
    return Server("soketi", logdir, kind="command", command=f"exec bash {shlex.quote(start)} {{port}}",
                  ready_path="/",
                  # a metrics port of its own (two Soketis on the machine must not share one), and
                  # room for the presence scenario's 1,000 members (its default limit is 100)
                  env_fn=lambda: {"SOKETI_METRICS_SERVER_PORT": str(free_port()),
                                  "SOKETI_PRESENCE_MAX_MEMBERS": "5000"})


def ensure_soketi():
    """Set Soketi up with ../shared/peers/setup-soketi.sh unless it already is; None or why not."""
    if os.path.exists(os.path.join(PEERS_CACHE, "soketi", "node_modules", "@soketi", "soketi")):
        return None
    setup = os.path.join(PEERS_DIR, "setup-soketi.sh")
    if not os.path.exists(setup):
        return f"{setup} does not exist"
    log(f"soketi: not set up under {PEERS_CACHE}; running {setup} (about 30 s)")
    p = subprocess.run(["bash", setup], capture_output=True, text=True)
    if p.returncode != 0:
        return f"setup-soketi.sh failed ({p.returncode}): {(p.stderr or p.stdout)[-300:]}"
    return None


class Loadgen:
    """One Node load-generator process (bench/loadgen.mjs), one command at a time."""

    def __init__(self, name, logdir):
        self.name = name
        self.logdir = logdir

    async def start(self):
        self.errlog = open(os.path.join(self.logdir, f"loadgen-{self.name}.log"), "ab")
        self.proc = await asyncio.create_subprocess_exec(
            "node", LOADGEN, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self.errlog, limit=1 << 24)

    async def call(self, cmd, **args):
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"loadgen {self.name} died (see its log)")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"loadgen {self.name} {cmd}: {reply.get('error')}")
        return reply

    async def stop(self):
        try:
            await asyncio.wait_for(self.call("exit"), 15)
        except (RuntimeError, ConnectionError, asyncio.TimeoutError):
            pass
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.errlog.close()


# ---------------------------------------------------------------- statistics

SUB = 64


def bucket_value(idx):
    """Middle of a loadgen.mjs histogram bucket, in microseconds."""
    if idx < SUB:
        return float(idx)
    e = idx // SUB + 5
    width = 1 << (e - 6)
    return ((SUB + idx % SUB) << (e - 6)) + width / 2


def percentiles(pair_lists, ps):
    counts = {}
    for pairs in pair_lists:
        for idx, n in pairs:
            counts[idx] = counts.get(idx, 0) + n
    total = sum(counts.values())
    out = {}
    if not total:
        return {p: None for p in ps}
    items = sorted(counts.items())
    for p in ps:
        rank, acc = p * total, 0
        for idx, n in items:
            acc += n
            if acc >= rank:
                out[p] = bucket_value(idx)
                break
    return out


def split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- scenarios

async def settle(pid, seconds, rss=proc_rss_kb):
    """Sleep until the server's RSS stops moving (or `seconds` pass)."""
    end = time.monotonic() + seconds
    last = rss(pid)
    await asyncio.sleep(0.5)
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        now = rss(pid)
        if now == last:
            break
        last = now


async def open_all(subs, url, n, concurrency, subscribe):
    shares = split(n, len(subs))
    conc = max(1, concurrency // len(subs))
    replies = await asyncio.gather(*(
        w.call("connect", url=url, n=k, concurrency=conc, subscribe=subscribe)
        for w, k in zip(subs, shares) if k))
    opened = sum(r["opened"] for r in replies)
    failed = sum(r["failed"] for r in replies)
    t0 = min(r["t0"] for r in replies)
    t1 = max(r["t1"] for r in replies)
    if failed:
        log(f"  {failed} of {n} connections failed")
    return {"opened": opened, "failed": failed, "seconds": (t1 - t0) / 1e6,
            "per_s": opened / ((t1 - t0) / 1e6),
            "open_p99_ms": max(r["open_p99_us"] or 0 for r in replies) / 1e3,
            "open_max_ms": max(r["open_max_us"] or 0 for r in replies) / 1e3}


async def close_all(subs):
    await asyncio.gather(*(w.call("close") for w in subs))


def loadgen_utils(after, before):
    return [(a["cpu"] - b["cpu"]) / (a["now"] - b["now"]) for a, b in zip(after, before)]


def cpu_utils(m, wall, after, before) -> dict:
    """The cores each side used during a scenario: server, each load generator, everything else."""
    return {"server_cpu_util": m["server_cpu_s"] / wall,
            "loadgen_cpu_util": loadgen_utils(after, before),
            "other_cpu_util": m["other_cpu_util"]}


async def idle_rss(pid, rss0, wait_s):
    """RSS of a server holding idle connections: (first plateau, final value, samples).

    The first plateau is the first time RSS stays the same over 0.5 s (at most 5 s), which is
    where a CPython server's RSS stays. A runtime with a tracing collector (V8) keeps the garbage of
    the handshakes for a while and gives memory back some 10-25 s later, in one step; with
    wait_s > 5 the connections stay open until RSS has dropped by a quarter of its growth and
    then held for 2 s, or for wait_s, and the final value is that RSS."""
    t0 = time.monotonic()
    samples, plateau, dropped = [], None, None
    while True:
        await asyncio.sleep(0.5)
        t, kb = time.monotonic() - t0, tree_rss_kb(pid)
        samples.append([round(t, 1), kb])
        if plateau is None and (len(samples) >= 2 and kb == samples[-2][1] or t >= 5):
            plateau = kb
            if wait_s <= 5:
                break
        if plateau is not None and dropped is None and kb < plateau - 0.25 * max(0, plateau - rss0):
            dropped = t
        if dropped is not None and t - dropped >= 2 or t >= wait_s:
            break
    return plateau, samples[-1][1], samples, dropped


async def idle_baseline(server, wait_s):
    """Before the memory baseline of a runtime that gives memory back late: hold the server idle
    until its RSS drops (the warm-up's garbage given back; then 1 s more), at most until wait_s
    after its warm-up ended. Returns (seconds waited here, whether a drop was seen)."""
    t0 = time.monotonic()
    if wait_s <= 5:
        return 0.0, None
    start = getattr(server, "idle_since", None) or t0
    peak, dropped = tree_rss_kb(server.pid), None
    while time.monotonic() - start < wait_s:
        await asyncio.sleep(0.5)
        kb = tree_rss_kb(server.pid)
        peak = max(peak, kb)
        if dropped is None and kb < peak - max(4096, 0.03 * peak):
            dropped = time.monotonic()
        if dropped is not None and time.monotonic() - dropped >= 1:
            break
    return time.monotonic() - t0, dropped is not None


async def scenario_connect(server, subs, prof, sc):
    n = sc["n"]
    pid = server.pid
    wait_s = prof.get("memory_wait_s") or server.memory_wait_s
    baseline_wait, baseline_drop = await idle_baseline(server, wait_s)
    await settle(pid, 3, tree_rss_kb)
    await wait_quiet()
    rss0 = tree_rss_kb(pid)
    before = await asyncio.gather(*(w.call("stats") for w in subs))
    meter = Meter(server, subs)
    r = await open_all(subs, server.url, n, prof["connect_concurrency"], subscribe=False)
    m = meter.done()
    after = await asyncio.gather(*(w.call("stats") for w in subs))
    plateau, rss1, samples, dropped = await idle_rss(pid, rss0, wait_s)
    await close_all(subs)
    wall = r["seconds"]
    opened = max(1, r["opened"])
    res = {
        "connections": r["opened"], "failed": r["failed"],
        "conns_per_s": r["per_s"],
        "cpu_us_per_conn": m["server_cpu_s"] * 1e6 / opened,
        "kb_per_conn": (rss1 - rss0) / opened,
        "kb_per_conn_plateau": (plateau - rss0) / opened,
        "memory_wait_s": wait_s, "memory_released_after_s": dropped, "rss_samples_kb": samples,
        "baseline_wait_s": baseline_wait, "baseline_released": baseline_drop,
        "rss_before_kb": rss0, "rss_after_kb": rss1,
        "open_p99_ms": r["open_p99_ms"], "open_max_ms": r["open_max_ms"],
        **cpu_utils(m, wall, after, before),
    }
    log(f"  {server.name} connect {n}: {res['conns_per_s']:.0f}/s, {res['cpu_us_per_conn']:.0f} us CPU/conn, "
        f"{res['kb_per_conn']:.2f} KB/conn (first plateau {res['kb_per_conn_plateau']:.2f}"
        + (f", memory given back after {dropped:.1f} s" if dropped is not None else "")
        + (f"; baseline after {baseline_wait:.0f} s idle, "
           f"{'memory given back' if baseline_drop else 'no memory given back'}"
           if baseline_drop is not None else "")
        + f"), {utils_line(res)}")
    return res


async def scenario_fanout(server, subs, pub, prof, sc):
    """Saturated (rate 0: `inflight` triggers in flight, as fast as the server answers) or paced."""
    n, events = sc["subs"], sc["events"]
    c = await open_all(subs, server.url, n, prof["connect_concurrency"], subscribe=True)
    await asyncio.gather(*(w.call("expect", events=events) for w in subs))
    await asyncio.sleep(0.5)
    await wait_quiet()
    before = await asyncio.gather(*(w.call("stats") for w in subs + [pub]))
    meter = Meter(server, subs + [pub])
    p = await pub.call("publish", target=server.target, events=events, rate=sc.get("rate", 0),
                       inflight=prof["publish_inflight"], size=sc["size"])
    cols = await asyncio.gather(*(w.call("collect", idle_ms=prof["idle_ms"]) for w in subs))
    m = meter.done()
    after = await asyncio.gather(*(w.call("stats") for w in subs + [pub]))
    await close_all(subs)
    received = sum(x["received"] for x in cols)
    last = max(x["last_recv"] for x in cols)
    wall = (last - p["t0"]) / 1e6
    pct = percentiles([x["hist"] for x in cols], [0.5, 0.99])
    res = {
        "subscribers": c["opened"], "subscribe_failed": c["failed"],
        "subscribes_per_s": c["per_s"],
        "events": events, "publish_accepted": p["accepted"], "publish_errors": p["errors"],
        "publish_error_samples": p["error_samples"],
        "expected": sum(x["expected"] for x in cols), "received": received,
        "lost": sum(x["lost"] for x in cols), "dup": sum(x["dup"] for x in cols),
        "bad": sum(x["bad"] for x in cols), "pings": sum(x["pings"] for x in cols),
        "seconds": wall,
        "deliveries_per_s": received / wall if wall > 0 else 0.0,
        "latency_p50_ms": pct[0.5] / 1e3 if pct[0.5] is not None else None,
        "latency_p99_ms": pct[0.99] / 1e3 if pct[0.99] is not None else None,
        "cpu_us_per_delivery": m["server_cpu_s"] * 1e6 / max(1, received),
        **cpu_utils(m, m["wall_s"], after, before),
    }
    if p["errors"]:
        log(f"  publish errors: {p['errors']} e.g. {p['error_samples']}")
    log(f"  {server.name} {sc['id']}: {res['deliveries_per_s']:.0f} deliveries/s, "
        f"p50 {fmt(res['latency_p50_ms'], 1)} ms, p99 {fmt(res['latency_p99_ms'], 1)} ms, "
        f"lost {res['lost']} dup {res['dup']} bad {res['bad']}, "
        f"{res['cpu_us_per_delivery']:.2f} us CPU/delivery, {utils_line(res)}")
    return res


async def scenario_rest(server, pub, prof, sc):
    await wait_quiet()
    before = await pub.call("stats")
    meter = Meter(server, [pub])
    r = await pub.call("rest", target=server.target, requests=sc["requests"],
                       concurrency=sc["concurrency"], size=sc["size"])
    m = meter.done()
    wall = (r["t1"] - r["t0"]) / 1e6
    res = {
        "requests": sc["requests"], "concurrency": sc["concurrency"],
        "accepted": r["accepted"], "errors": r["errors"], "error_samples": r["error_samples"],
        "requests_per_s": r["accepted"] / wall,
        "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
        "cpu_us_per_request": m["server_cpu_s"] * 1e6 / max(1, r["accepted"]),
        "json_answers": r["json_answers"], "json_with_length": r["json_with_length"],
        "chunked": r["chunked"], "header_sample": r["header_sample"],
        "server_cpu_util": m["server_cpu_s"] / wall,
        "loadgen_cpu_util": [(r["cpu"] - before["cpu"]) / (r["now"] - before["now"])],
        "other_cpu_util": m["other_cpu_util"],
    }
    log(f"  {server.name} rest: {res['requests_per_s']:.0f} req/s ({res['errors']} errors), "
        f"{res['cpu_us_per_request']:.0f} us CPU/request, p99 {res['p99_ms']:.1f} ms, JSON answers "
        f"with Content-Length {res['json_with_length']}/{res['json_answers']}, {utils_line(res)}")
    return res


async def scenario_presence(server, subs, prof, sc, channel="presence-bench"):
    """`joins` members join one presence channel, `concurrency` subscribes in flight over the
    subscriber load generators; every join also sends member_added to the members already in."""
    await wait_quiet()
    users = [f"user-{i}" for i in range(sc["joins"])]
    shares = [users[i::len(subs)] for i in range(len(subs))]
    conc = max(1, sc["concurrency"] // len(subs))
    before = await asyncio.gather(*(w.call("stats") for w in subs))
    meter = Meter(server, subs)
    t0 = time.monotonic()
    replies = await asyncio.gather(*(
        w.call("join", url=server.url, users=share, concurrency=conc, channel=channel,
               key=APP_KEY, secret=APP_SECRET)
        for w, share in zip(subs, shares) if share))
    seconds = time.monotonic() - t0
    m = meter.done()
    after = await asyncio.gather(*(w.call("stats") for w in subs))
    await close_all(subs)
    lat = sorted((ok - sent) / 1e3 for r in replies for _, sent, ok in r["joined"])
    joined = len(lat)
    pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None  # noqa: E731
    res = {
        "joins": sc["joins"], "joined": joined, "failed": sc["joins"] - joined,
        "joins_per_s": joined / seconds if seconds > 0 else 0.0,
        "cpu_us_per_join": m["server_cpu_s"] * 1e6 / max(1, joined),
        "join_p50_ms": pick(0.5), "join_p99_ms": pick(0.99),
        "frames_after_join": sum(r["frames_after_join"] for r in replies),
        "join_errors": [e for r in replies for e in r.get("errors", [])][:3],
        **cpu_utils(m, m["wall_s"], after, before),
    }
    if res["failed"]:
        log(f"  {server.name} presence: {res['failed']} joins failed, e.g. {res['join_errors']}")
    log(f"  {server.name} presence: {joined}/{sc['joins']} joined, {res['joins_per_s']:.0f} joins/s, "
        f"{res['cpu_us_per_join']:.0f} us CPU/join, join p99 {fmt(res['join_p99_ms'], 1)} ms, "
        f"{utils_line(res)}")
    # the closes make the server send member_removed to the members still in: let that finish
    await asyncio.sleep(0.5)
    return res


async def run_scenario(server, subs, pub, prof, sc):
    kind = sc["kind"]
    if kind == "connect":
        return await scenario_connect(server, subs, prof, sc)
    if kind in ("fanout", "paced"):
        return await scenario_fanout(server, subs, pub, prof, sc)
    if kind == "rest":
        return await scenario_rest(server, pub, prof, sc)
    if kind == "presence":
        return await scenario_presence(server, subs, prof, sc)
    raise ValueError(kind)


async def warm_up(server, subs, pub, prof, kinds=("rest",)):
    """Load lazy imports and first-use code paths before anything is measured."""
    w = subs[0]
    await w.call("connect", url=server.url, n=prof["warmup_n"], concurrency=16, subscribe=True)
    await w.call("expect", events=10)
    await pub.call("publish", target=server.target, events=10, inflight=2, size=prof["payload_size"])
    col = await w.call("collect", idle_ms=2000)
    await w.call("close")
    if col["received"] != col["expected"]:
        raise RuntimeError(f"warm-up: {col['received']} of {col['expected']} deliveries "
                           f"(bad {col['bad']}); is the server working?")
    if "rest" in kinds and "rest" in server.supports:
        r = await pub.call("rest", target=server.target, requests=50, concurrency=4,
                           size=prof["payload_size"])
        if r["errors"]:
            raise RuntimeError(f"warm-up REST errors: {r['error_samples']}")
    if "presence" in kinds and "presence" in server.supports:
        r = await w.call("join", url=server.url, users=[f"warm-{i}" for i in range(20)],
                         concurrency=4, channel="presence-warm", key=APP_KEY, secret=APP_SECRET)
        await w.call("close")
        if r["failed"]:
            raise RuntimeError(f"warm-up: {r['failed']} of 20 presence joins failed")


async def quietest(label, prof, measure, again=None):
    """Run a phase; if other processes used the CPU meanwhile, run it again and keep the quietest.

    `again` (optional) prepares a repeat, e.g. restarts the server for a fresh memory baseline.
    """
    tries = []
    for attempt in range(1 + prof["noisy_retries"]):
        if attempt and again is not None:
            await again()
        await asyncio.sleep(1)
        res = await measure()
        tries.append(res)
        if res["other_cpu_util"] <= prof["noise_limit"]:
            break
        if time.monotonic() - START > prof["retry_budget_s"]:
            log(f"  something else used {res['other_cpu_util']:.2f} cores during {label}; "
                "no time left to measure again")
            break
        log(f"  something else used {res['other_cpu_util']:.2f} cores during {label}"
            + ("; measuring again" if attempt < prof["noisy_retries"] else "; keeping the quietest"))
    best = min(tries, key=lambda r: r["other_cpu_util"])
    best["attempts"] = len(tries)
    return best


class Bench:
    """The servers and load generators of one run, round after round."""

    def __init__(self, servers, prof, logdir):
        self.servers = servers  # Soketify first, when it is measured
        self.prof = prof
        self.logdir = logdir
        self.subs = [Loadgen(f"sub{i}", logdir) for i in range(prof["sub_workers"])]
        self.pub = Loadgen("pub", logdir)

    async def start_loadgens(self):
        for w in self.subs + [self.pub]:
            await w.start()

    async def stop_loadgens(self):
        for w in self.subs + [self.pub]:
            if getattr(w, "proc", None):
                await w.stop()
                w.proc = None

    async def reset_loadgens(self):
        """After a failed command a generator may still hold connections or owe a reply."""
        for w in self.subs + [self.pub]:
            if getattr(w, "proc", None) and w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
                w.errlog.close()
            w.proc = None
        await self.start_loadgens()

    async def start_server(self, server):
        server.stop()
        server.start()
        await warm_up(server, self.subs, self.pub, self.prof, self.prof["kinds"])
        server.idle_since = time.monotonic()

    def stop_all(self):
        for server in self.servers:
            server.signal_stop()  # SIGTERM to all at once: Soketi takes a few seconds to stop
        for server in self.servers:
            server.stop()

    async def run(self):
        prof = self.prof
        out = {s.name: {"server": s.name, "kind": s.kind, "command": None, "rounds": []}
               for s in self.servers}
        await self.start_loadgens()
        try:
            for rnd in range(prof["rounds"]):
                log(f"round {rnd + 1} of {prof['rounds']}")
                for s in self.servers:
                    out[s.name]["rounds"].append({})
                # the other servers first: one whose runtime gives memory back late (see
                # idle_baseline) has then been idle the longest when its connect comes
                for s in self.servers[1:] + self.servers[:1]:
                    try:
                        await self.start_server(s)
                        out[s.name]["command"] = s.describe()
                    except Exception as e:  # noqa: BLE001 - recorded, the others go on
                        log(f"  {s.name}: could not start: {e}")
                        out[s.name]["rounds"][rnd]["error"] = f"start: {e}"
                        s.stop()
                        await self.reset_loadgens()
                for sc in prof["scenarios"]:
                    for s in self.servers:
                        if sc["kind"] not in s.supports or not s.alive():
                            continue
                        again = None
                        if sc["kind"] == "connect":  # a fresh memory baseline for a repeat
                            again = (lambda s=s: self.start_server(s))
                        try:
                            res = await quietest(
                                f"{s.name} {sc['id']} (round {rnd + 1})", prof,
                                lambda s=s, sc=sc: run_scenario(s, self.subs, self.pub, prof, sc),
                                again=again)
                        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                            died = "" if s.alive() else f" ({s.name} exited; see {s.logpath})"
                            log(f"  {s.name} {sc['id']} failed: {e!r}{died}")
                            res = {"error": f"{e}{died}"[:500]}
                            await self.reset_loadgens()
                        out[s.name]["rounds"][rnd][sc["id"]] = res
                for s in self.servers:
                    if s.alive():
                        out[s.name]["rounds"][rnd]["rss_end_kb"] = tree_rss_kb(s.pid)
                self.stop_all()
        finally:
            await self.stop_loadgens()
            for s in self.servers:
                s.cleanup()
        for name, r in out.items():
            r["median"] = medians(r["rounds"], prof["scenarios"])
        return out


# ---------------------------------------------------------------- figures

# Per scenario kind: (key, how the rounds are combined). "sum": added up over the rounds.
FIGURES = {
    "connect": [("conns_per_s", "median"), ("cpu_us_per_conn", "median"), ("kb_per_conn", "median"),
                ("kb_per_conn_plateau", "median"), ("failed", "sum")],
    "fanout": [("deliveries_per_s", "median"), ("latency_p50_ms", "median"),
               ("latency_p99_ms", "median"), ("cpu_us_per_delivery", "median"),
               ("lost", "sum"), ("dup", "sum"), ("bad", "sum"), ("publish_errors", "sum"),
               ("subscribe_failed", "sum")],
    "rest": [("requests_per_s", "median"), ("cpu_us_per_request", "median"), ("p50_ms", "median"),
             ("p99_ms", "median"), ("errors", "sum"), ("json_answers", "sum"),
             ("json_with_length", "sum")],
    "presence": [("joins_per_s", "median"), ("cpu_us_per_join", "median"), ("join_p50_ms", "median"),
                 ("join_p99_ms", "median"), ("failed", "sum")],
}
FIGURES["paced"] = FIGURES["fanout"]
UTIL_KEYS = ("server_cpu_util", "other_cpu_util")


def medians(rounds, scenarios):
    out = {}
    for sc in scenarios:
        runs = [r[sc["id"]] for r in rounds if sc["id"] in r and "error" not in r[sc["id"]]]
        if not runs:
            continue
        m = {"rounds": len(runs)}
        for key, how in FIGURES[sc["kind"]] + [(k, "median") for k in UTIL_KEYS]:
            vals = [r.get(key) for r in runs]
            m[key] = sum(v or 0 for v in vals) if how == "sum" else median(vals)
        gens = [r["loadgen_cpu_util"] for r in runs]
        m["loadgen_cpu_util"] = [median(col) for col in zip(*gens)]
        out[sc["id"]] = m
    return out


# ---------------------------------------------------------------- report

def fmt_utils(us):
    return "/".join(f"{u:.2f}" for u in us)


def utils_line(res):
    return (f"server {res['server_cpu_util']:.2f}, loadgen {fmt_utils(res['loadgen_cpu_util'])}, "
            f"other {res['other_cpu_util']:.2f}")


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_ratio(ratio, target):
    if ratio is None:
        return "n/a"
    # near a bound, two decimals could show a failing 0.803 as "0.80"
    if target and abs(ratio - target[1]) < 0.006:
        return f"{ratio:.3f}x"
    return f"{ratio:.2f}x"


def fmt_target(target):
    return f"{target[0]} {target[1]:g}x" if target else ""


def ratio_of(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def scenario_label(sc):
    def size(b):
        return f"{b // 1024} KB" if b % 1024 == 0 else f"{b} B"
    if sc["kind"] == "connect":
        return f"connect {sc['n']:,}"
    if sc["kind"] == "fanout":
        return f"saturated fan-out {sc['subs']:,} subs x {sc['events']} events of {size(sc['size'])}"
    if sc["kind"] == "paced":
        return (f"paced fan-out {sc['rate']:g} events/s to {sc['subs']:,} subs "
                f"({sc['events']} events of {size(sc['size'])})")
    if sc["kind"] == "rest":
        return f"REST trigger, no subscribers, {sc['concurrency']} in flight"
    if sc["kind"] == "presence":
        return f"presence joins {sc['joins']:,} ({sc['concurrency']} in flight)"
    return sc["id"]


# rows per scenario kind: (label, key, digits, is a target figure)
ROWS = {
    "connect": [("connections/s", "conns_per_s", 0), ("server CPU per connection (us)", "cpu_us_per_conn", 0),
                ("memory per idle connection (KB)", "kb_per_conn", 2),
                ("memory per idle connection, first plateau (KB)", "kb_per_conn_plateau", 2)],
    "fanout": [("deliveries/s", "deliveries_per_s", 0), ("latency p50 (ms)", "latency_p50_ms", 1),
               ("latency p99 (ms)", "latency_p99_ms", 1),
               ("server CPU per delivery (us)", "cpu_us_per_delivery", 2)],
    "rest": [("requests/s", "requests_per_s", 0), ("server CPU per request (us)", "cpu_us_per_request", 0),
             ("latency p50 (ms)", "p50_ms", 1), ("latency p99 (ms)", "p99_ms", 1)],
    "presence": [("joins/s", "joins_per_s", 0), ("server CPU per join (us)", "cpu_us_per_join", 0),
                 ("join latency p50 (ms)", "join_p50_ms", 1), ("join latency p99 (ms)", "join_p99_ms", 1)],
}
ROWS["paced"] = ROWS["fanout"]


def delivery_problems(m):
    """Everything that means an event did not reach a subscriber exactly once."""
    return {k: m[k] for k in ("lost", "dup", "bad", "publish_errors", "subscribe_failed") if m.get(k)}


def delivery_cell(m):
    if not m:
        return "n/a"
    extra = {k: v for k, v in delivery_problems(m).items() if k not in ("lost", "dup")}
    cell = f"{m['lost']:,} / {m['dup']:,}"
    if extra:
        cell += " (" + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in extra.items()) + ")"
    return cell


def report_pair(results, other, comparison, prof):
    """One Markdown table: Soketify against `other`, medians over the rounds."""
    sk, ot = results.get("soketify"), results.get(other)
    targets = TARGETS[comparison]
    rows, checks = [], []

    def med(r, sc_id):
        return (r or {}).get("median", {}).get(sc_id)

    def per_round(sc_id, key):
        if not sk or not ot:
            return ""
        cells = []
        for a, b in zip(sk["rounds"], ot["rounds"]):
            ra = ratio_of((a.get(sc_id) or {}).get(key), (b.get(sc_id) or {}).get(key))
            cells.append(f"{ra:.2f}" if ra is not None else "-")
        return " / ".join(cells)

    for sc in prof["scenarios"]:
        lbl = scenario_label(sc)
        ms, mo = med(sk, sc["id"]), med(ot, sc["id"])
        for name, key, digits in ROWS[sc["kind"]]:
            s = ms.get(key) if ms else None
            o = mo.get(key) if mo else None
            if key == "kb_per_conn_plateau" and all(
                    m is None or m.get(key) == m.get("kb_per_conn") for m in (ms, mo)):
                continue  # no server here gives memory back late: the same as the row above
            ratio = ratio_of(s, o)
            target = targets.get((sc["kind"], key))
            verdict = ""
            # a figure of a run where requests, joins or connections failed is not comparable
            broken = [n for n, m in (("soketify", ms), (other, mo))
                      if m and m.get({"rest": "errors"}.get(sc["kind"], "failed"))]
            if target:
                op, bound = target
                if broken:
                    verdict = f"**invalid** (failures on {', '.join(broken)})"
                    checks.append({"figure": f"{lbl}: {name}", "ratio": ratio,
                                   "target": fmt_target(target), "pass": False, "invalid": broken})
                elif ratio is None:
                    verdict = "not measured"
                    checks.append({"figure": f"{lbl}: {name}", "target": fmt_target(target),
                                   "pass": False, "ratio": None})
                else:
                    ok = ratio <= bound if op == "<=" else ratio >= bound
                    verdict = "**pass**" if ok else "**FAIL**"
                    checks.append({"figure": f"{lbl}: {name}", "ratio": ratio,
                                   "target": fmt_target(target), "pass": ok,
                                   "soketify": s, other: o})
            rows.append([f"{lbl}: {name}", fmt(s, digits), fmt(o, digits), fmt_ratio(ratio, target),
                         per_round(sc["id"], key), fmt_target(target), verdict])
        if sc["kind"] in ("fanout", "paced"):
            # lost / duplicated: absolute, summed over the rounds; must be 0 for Soketify (the
            # other server's are a sanity check of the benchmark)
            verdict = "not measured"
            if ms:
                ok = not delivery_problems(ms)
                verdict = "**pass**" if ok else "**FAIL**"
                checks.append({"figure": f"{lbl}: lost/dup", "pass": ok})
            rows.append([f"{lbl}: lost / duplicated (all rounds)", delivery_cell(ms), delivery_cell(mo),
                         "", "", "0 / 0", verdict])
        if sc["kind"] == "rest":
            cells = [f"{m['json_with_length']:,} of {m['json_answers']:,}" if m else "n/a" for m in (ms, mo)]
            verdict = "not measured"
            if ms:
                ok = ms["json_answers"] > 0 and ms["json_with_length"] == ms["json_answers"]
                verdict = "**pass**" if ok else "**FAIL**"
                checks.append({"figure": f"{lbl}: JSON answers with Content-Length", "pass": ok})
            rows.append([f"{lbl}: JSON answers with a Content-Length (all rounds)", cells[0], cells[1],
                         "", "", "all", verdict])
            errs = [f"{m['errors']:,} errors" if m and m["errors"] else "" for m in (ms, mo)]
            if any(errs):
                rows.append([f"{lbl}: failed requests", errs[0] or "0", errs[1] or "0", "", "", "", ""])
        if sc["kind"] == "presence":
            fails = [m["failed"] if m else None for m in (ms, mo)]
            if any(fails):
                rows.append([f"{lbl}: joins refused or failed (all rounds)", fmt(fails[0]),
                             fmt(fails[1]), "", "", "", ""])

    rounds = f"{prof['rounds']} round" + ("s" if prof["rounds"] != 1 else "")
    head = [f"| figure (median of {rounds}) | soketify | {other} | ratio | ratio per round "
            "| target | result |", "|---|---:|---:|---:|---:|---|---|"]
    return head + ["| " + " | ".join(r) + " |" for r in rows], checks


def report(results, prof, comparisons, skipped):
    lines, checks = [], []
    for other, comparison in comparisons:
        if other not in results and other not in skipped:
            continue
        if lines:
            lines.append("")
        lines.append(f"### Soketify against {other} (ratio = soketify / {other})")
        lines.append("")
        table, c = report_pair(results, other, comparison, prof)
        lines += table
        checks += [dict(x, against=other) for x in c]

    util = ["", "CPU use per scenario, in cores, medians over the rounds (1.00 = one core busy for the "
            "whole measurement): the server (its process tree), each load-generator process "
            "(subscriber workers, then the publisher), and everything else on the machine (includes "
            "kernel loopback work not charged to a process):", ""]
    for sc in prof["scenarios"]:
        parts = []
        for name, r in results.items():
            m = r.get("median", {}).get(sc["id"])
            if m:
                parts.append(f"{name} {utils_line(m)}")
        if parts:
            util.append(f"- {sc['id']}: " + "; ".join(parts))
    noisy, errors, failures = [], [], []
    for name, r in results.items():
        for i, rnd in enumerate(r["rounds"]):
            for sc_id, res in rnd.items():
                if sc_id == "error":  # the server did not start in that round
                    errors.append(f"{name} round {i + 1}: {res}")
                if not isinstance(res, dict):
                    continue
                if "error" in res:
                    errors.append(f"{name} {sc_id} round {i + 1}: {res['error']}")
                    continue
                samples = (res.get("join_errors") or res.get("error_samples")
                           or res.get("publish_error_samples"))
                if samples:
                    failures.append(f"{name} {sc_id} round {i + 1}: e.g. {samples[0][:300]}")
                elif res.get("other_cpu_util", 0) > prof["noise_limit"]:
                    noisy.append(f"{name} {sc_id} round {i + 1} ({res['other_cpu_util']:.2f} cores)")
    if noisy:
        util += ["", "**Warning**: other processes used the CPU during: " + ", ".join(noisy)
                 + "; those figures are less trustworthy (run again on a quiet machine)."]
    if errors:
        util += ["", "**Not measured**:"] + [f"- {e}" for e in errors]
    if failures:
        util += ["", "**Failed requests or joins**:"] + [f"- {e}" for e in failures]
    return "\n".join(lines + util), checks


# ---------------------------------------------------------------- main

PROFILE = {
    "connect_concurrency": 32,     # handshakes in flight (Twisted's listen backlog is 50)
    "warmup_n": 200,
    "rounds": 2,                   # interleaved rounds; each figure is the median over them
    "publish_inflight": 2,         # trigger requests in flight
    "payload_size": 128,           # bytes of the warm-up events' data string
    "idle_ms": 5000,               # give up waiting for deliveries after this long with none
    "sub_workers": 2,              # subscriber load-generator processes
    "noise_limit": 0.15,           # cores used by other processes before a measurement is redone
    "noisy_retries": 1,
    "retry_budget_s": 180,         # no more repeats once the run is this old
}

SCENARIOS = {
    # today's comparison with the floor (make bench)
    "floor": [
        {"id": "connect", "kind": "connect", "n": 5000},
        {"id": "fanout-1000", "kind": "fanout", "subs": 1000, "events": 300, "size": 128},
        {"id": "fanout-10000", "kind": "fanout", "subs": 10000, "events": 120, "size": 128},
        {"id": "rest", "kind": "rest", "requests": 8000, "concurrency": 32, "size": 128},
    ],
    # issue 9's scenarios, against any other Pusher-protocol server
    "peer": [
        {"id": "connect", "kind": "connect", "n": 5000},
        {"id": "rest", "kind": "rest", "requests": 8000, "concurrency": 16, "size": 128},
        {"id": "presence", "kind": "presence", "joins": 1000, "concurrency": 16},
        {"id": "paced", "kind": "paced", "subs": 1000, "events": 200, "rate": 20, "size": 128},
        {"id": "fanout-1000", "kind": "fanout", "subs": 1000, "events": 300, "size": 64},
        {"id": "fanout-10000", "kind": "fanout", "subs": 10000, "events": 60, "size": 1024},
    ],
}

QUICK = {
    "floor": {"connect": {"n": 500}, "fanout-1000": {"subs": 100, "events": 50},
              "fanout-10000": {"subs": 1000, "events": 20}, "rest": {"requests": 500}},
    "peer": {"connect": {"n": 500}, "rest": {"requests": 500}, "presence": {"joins": 100},
             "paced": {"subs": 100, "events": 40}, "fanout-1000": {"subs": 100, "events": 50},
             "fanout-10000": {"subs": 1000, "events": 20}},
}


def soketify_available():
    if not os.path.exists(os.path.join(ROOT, "soketify", "tap.py")):
        return "soketify/tap.py does not exist"
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        p = subprocess.run([TWISTD, "soketify", "--help"], cwd=ROOT, env=env,
                           capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "twistd soketify --help timed out"
    if p.returncode != 0:
        return "twistd soketify --help failed: " + p.stderr.decode(errors="replace")[-300:]
    return None


def versions(servers):
    out = {"python": platform.python_version(), "cpus": os.cpu_count(), "kernel": platform.release()}
    try:
        import autobahn
        import twisted
        out["twisted"] = twisted.__version__
        out["autobahn"] = autobahn.__version__
    except ImportError:
        pass
    out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    try:
        with open(os.path.join(ROOT, "node_modules", "ws", "package.json")) as f:
            out["ws"] = json.load(f)["version"]
    except OSError:
        pass
    if "soketi" in servers:
        try:
            with open(os.path.join(PEERS_CACHE, "soketi", "node_modules", "@soketi", "soketi",
                                   "package.json")) as f:
                out["soketi"] = json.load(f)["version"]
        except OSError:
            pass
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True)
    out["git"] = rev.stdout.strip() or None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "soketify"],
                           cwd=ROOT, capture_output=True, text=True)
    out["soketify_modified"] = bool(dirty.stdout.strip())
    return out


def parse_fanout(text):
    """subs:events[:bytes],... -> saturated fan-out scenarios."""
    out = []
    for part in text.split(","):
        bits = [int(x) for x in part.split(":")]
        subs, events = bits[0], bits[1]
        size = bits[2] if len(bits) > 2 else None
        out.append((subs, events, size))
    return out


def command_line():
    argv = list(sys.argv)
    argv[0] = os.path.relpath(os.path.abspath(argv[0]), ROOT)
    exe = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else sys.executable
    return shlex.join([exe] + argv)


def main():
    ap = argparse.ArgumentParser(description="Soketify side by side with another server (see bench/README.md)")
    ap.add_argument("--peer", default=None,
                    help="the other server(s), comma-separated, from floor,soketi (default floor)")
    ap.add_argument("--peer-command", action="append", default=[], metavar="CMD",
                    help="another server speaking the Pusher protocol with the development app, "
                         "started as `bash -c CMD` with {port} replaced by a free port (repeatable)")
    ap.add_argument("--peer-name", action="append", default=[],
                    help="name of each --peer-command in the report (default peer, peer2, ...)")
    ap.add_argument("--peer-ready", default="/",
                    help="a --peer-command is ready when GET this path answers (default /)")
    ap.add_argument("--servers", default=None,
                    help="measure only these (comma-separated names, e.g. floor or soketi), "
                         "e.g. to skip Soketify")
    ap.add_argument("--profile", choices=sorted(SCENARIOS),
                    help="scenario set (default: floor against the floor alone, else peer)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 2); figures are medians")
    ap.add_argument("--repeats", type=int, help=argparse.SUPPRESS)  # the old name of --rounds
    ap.add_argument("--phases", default=None,
                    help="comma-separated scenario kinds or ids: connect,fanout,paced,rest,presence "
                         "(fanout = the saturated ones; default all of the profile)")
    ap.add_argument("--workers", type=int, help="subscriber load-generator processes (default 2)")
    ap.add_argument("--connect-n", type=int)
    ap.add_argument("--memory-wait", type=float,
                    help="seconds the idle connections are held for the memory figure, for every "
                         "server (default 5 for Soketify and the floor, 35 for other servers)")
    ap.add_argument("--fanout", help="saturated fan-outs, subs:events[:bytes],... e.g. 1000:300:64")
    ap.add_argument("--paced", help="paced fan-out subs:events:rate[:bytes], e.g. 1000:200:20")
    ap.add_argument("--rest-requests", type=int)
    ap.add_argument("--rest-concurrency", type=int, help="REST requests in flight")
    ap.add_argument("--presence-joins", type=int)
    ap.add_argument("--quick", action="store_true", help="small profile for a smoke test (1 round)")
    ap.add_argument("--console-viewer", action="store_true",
                    help="Soketify with its debug console on and one stream reader attached")
    ap.add_argument("--strict", action="store_true",
                    help="exit with status 1 if a target fails or is not measured")
    args = ap.parse_args()

    # ---- which servers
    peers = [p.strip() for p in (args.peer or ("" if args.peer_command else "floor")).split(",") if p.strip()]
    for p in peers:
        if p not in ("floor", "soketi"):
            sys.exit(f"--peer {p}: unknown (floor or soketi; use --peer-command for anything else)")
    commands = []
    for i, cmd in enumerate(args.peer_command):
        name = args.peer_name[i] if i < len(args.peer_name) else ("peer" if i == 0 else f"peer{i + 1}")
        if name in ("soketify", "floor", "soketi") or name in [n for n, _ in commands]:
            sys.exit(f"--peer-name {name}: taken")
        commands.append((name, cmd))
    others = peers + [n for n, _ in commands]
    names = ["soketify"] + others
    if args.servers:
        keep = {s.strip() for s in args.servers.split(",") if s.strip()}
        names = [n for n in names if n in keep]

    # ---- what to run
    prof = json.loads(json.dumps(PROFILE))
    profile = args.profile or ("floor" if others == ["floor"] else "peer")
    prof["profile"] = profile
    scenarios = json.loads(json.dumps(SCENARIOS[profile]))
    rounds = args.rounds or args.repeats
    if args.quick:
        for sc in scenarios:
            sc.update(QUICK[profile].get(sc["id"], {}))
        prof["rounds"] = 1
    if rounds:
        prof["rounds"] = rounds
    if args.connect_n:
        for sc in scenarios:
            if sc["kind"] == "connect":
                sc["n"] = args.connect_n
    if args.fanout:
        default_size = 128 if profile == "floor" else 64
        rest = [sc for sc in scenarios if sc["kind"] != "fanout"]
        scenarios = rest + [{"id": "fanout", "kind": "fanout", "subs": subs, "events": events,
                             "size": size or default_size}
                            for subs, events, size in parse_fanout(args.fanout)]
    if args.paced:
        bits = [int(float(x)) if i != 2 else float(x) for i, x in enumerate(args.paced.split(":"))]
        paced = {"id": "paced", "kind": "paced", "subs": bits[0], "events": bits[1], "rate": bits[2],
                 "size": bits[3] if len(bits) > 3 else 128}
        if any(sc["kind"] == "paced" for sc in scenarios):
            scenarios = [paced if sc["kind"] == "paced" else sc for sc in scenarios]
        else:
            scenarios.append(paced)
    for sc in scenarios:
        if sc["kind"] == "rest":
            sc["requests"] = args.rest_requests or sc["requests"]
            sc["concurrency"] = args.rest_concurrency or sc["concurrency"]
        if sc["kind"] == "presence" and args.presence_joins:
            sc["joins"] = args.presence_joins
    if args.phases:
        want = {p.strip() for p in args.phases.split(",") if p.strip()}
        scenarios = [sc for sc in scenarios if sc["kind"] in want or sc["id"] in want]
    seen = set()
    for sc in scenarios:  # saturated fan-outs are named after their subscribers (after --quick)
        if sc["kind"] == "fanout":
            sc["id"] = f"fanout-{sc['subs']}"
            while sc["id"] in seen:
                sc["id"] += "b"
        seen.add(sc["id"])
    prof["scenarios"] = scenarios
    prof["kinds"] = sorted({sc["kind"] for sc in scenarios})
    if args.workers:
        prof["sub_workers"] = args.workers
    if args.memory_wait:
        prof["memory_wait_s"] = args.memory_wait
    # a run against a peer takes longer (more scenarios); retries stay possible for most of it
    prof["retry_budget_s"] = 180 if profile == "floor" else 300

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max([sc.get("subs", 0) for sc in scenarios] + [sc.get("n", 0) for sc in scenarios]
               + [sc.get("joins", 0) for sc in scenarios]) + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        sys.exit(f"open-file limit {soft} < {want} needed; raise it (ulimit -n)")

    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    os.makedirs(RESULTS, exist_ok=True)
    logdir = os.path.join(RESULTS, f"logs-{stamp}")
    os.makedirs(logdir)
    cmdline = command_line()
    log(f"{cmdline}: profile {profile}, {prof['rounds']} round(s), servers {', '.join(names)}")

    skipped = {}
    t0 = time.monotonic()
    for name, unavailable in (("soketify", soketify_available), ("soketi", ensure_soketi)):
        why = unavailable() if name in names else None
        if why:
            log(f"{name} skipped: {why}")
            skipped[name] = why
            names.remove(name)
    servers = []
    for name in names:
        if name == "soketify":
            # room for the presence scenario's members (the default limit is 100, as Pusher's)
            servers.append(Server("soketify", logdir, "[limits]\nmax_presence_members = 5000\n",
                                  console_viewer=args.console_viewer))
        elif name == "floor":
            servers.append(Server("floor", logdir))
        elif name == "soketi":
            servers.append(soketi_server(logdir))
        else:
            servers.append(Server(name, logdir, kind="command", command=dict(commands)[name],
                                  ready_path=args.peer_ready))
    results = {}
    if servers:
        try:
            results = asyncio.run(Bench(servers, prof, logdir).run())
        except Exception as e:  # report why nothing was measured
            log(f"benchmark failed: {e!r}")
            skipped.update({s.name: repr(e) for s in servers})

    comparisons = [(o, "floor" if o == "floor" else "peer") for o in others]
    table, checks = report(results, prof, comparisons, skipped)
    seconds = time.monotonic() - t0
    v = versions(names)
    doc = {"time": stamp, "date": now.isoformat(timespec="seconds"), "command": cmdline,
           "profile": prof, "versions": v,
           "servers": {s.name: {"kind": s.kind, "command": s.describe()} for s in servers},
           "results": results, "skipped": skipped, "checks": checks, "seconds": seconds}
    path = os.path.join(RESULTS, f"bench-{stamp}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)

    out = [f"## Soketify benchmark {now:%Y-%m-%d %H:%M}", "",
           f"Command: `{cmdline}` ({prof['rounds']} interleaved round(s), profile {profile}, "
           f"total {seconds:.0f} s)", "",
           f"{v.get('cpus')} CPUs, Python {v.get('python')}, Twisted {v.get('twisted')}, "
           f"Autobahn {v.get('autobahn')}, Node {v.get('node')}, ws {v.get('ws')}"
           + (f", Soketi {v['soketi']}" if v.get("soketi") else "")
           + f"; git {v.get('git')}" + (" with soketify/ modified" if v.get("soketify_modified") else "")
           + f"; {prof['sub_workers']} subscriber load-generator processes"
           + "".join(f"; {s.name}: `{s.describe()}`" for s in servers if s.name != "soketify"),
           "", table]
    for name, why in skipped.items():
        out.append(f"\n{name}: not measured ({why})")
    if checks:
        for other, _ in comparisons:
            mine = [c for c in checks if c["against"] == other]
            failed = [c["figure"] for c in mine if not c["pass"]]
            if mine:
                out.append(f"\nTargets against {other}: {len(mine) - len(failed)} of {len(mine)} pass"
                           + (f"; failing: {', '.join(failed)}" if failed else ""))
    md_path = os.path.join(RESULTS, f"bench-{stamp}.md")
    out.append(f"\nJSON: {os.path.relpath(path, ROOT)}; table: {os.path.relpath(md_path, ROOT)}; "
               f"logs: {os.path.relpath(logdir, ROOT)}/")
    text = "\n".join(out)
    with open(md_path, "w") as f:
        f.write(text + "\n")
    print(text)
    if args.strict and (not checks or skipped or not all(c["pass"] for c in checks)):
        sys.exit(1)


if __name__ == "__main__":
    main()
