"""How evenly do connections spread over N Twisted worker processes sharing one port?

Usage (from the repository root; needs only Twisted, so the project's venv):

    .venv/bin/python bench/spread.py [--workers 2,3] [--connections 3000] [--bursts 1,32,256]
                                     [--work-us 150]

Two ways for N processes to accept on one port, measured back to back:

  shared     the driver opens one listening socket and passes it to every worker, which adopts it
             with reactor.adoptStreamPort: every worker's epoll watches the same socket, and
             whichever wakes first accepts (Twisted accepts in a loop until the backlog is empty).
  reuseport  every worker listens itself, through a tcp.Port subclass that sets SO_REUSEPORT in
             createInternetSocket (what soketify/listening.py does): the kernel gives each worker
             its own accept queue and hashes every new connection to one of them.

Each worker accepts, burns about --work-us microseconds of CPU when the client's first bytes arrive
(a WebSocket handshake's worth) and answers with its worker number. For every worker count and
burst size, the driver opens --connections connections, --bursts B at a time (B in flight, the
next burst once all of them answered), keeps them open to the end, and prints the connections
each worker got and max/min (1.00 is perfectly even). Takes well under a minute.
"""

import argparse
import asyncio
import collections
import os
import socket
import subprocess
import sys
import time

BACKLOG = 1024


# ---------------------------------------------------------------- worker (--serve)

def serve(mode, ident, port, fd, work_us):
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import protocol, reactor, tcp

    class Handshake(protocol.Protocol):
        answered = False

        def dataReceived(self, data):
            if self.answered:
                return
            self.answered = True
            end = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < end:  # a handshake's worth of CPU
                pass
            self.transport.write(b"%d\n" % ident)

    class ReusePortTCP(tcp.Port):
        def createInternetSocket(self):
            sock = super().createInternetSocket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            return sock

    factory = protocol.Factory.forProtocol(Handshake)
    if mode == "shared":
        reactor.adoptStreamPort(fd, socket.AF_INET, factory)
        os.close(fd)  # the reactor holds its own duplicate
    else:
        ReusePortTCP(port, factory, BACKLOG, "127.0.0.1", reactor).startListening()
    reactor.callWhenRunning(lambda: (sys.stdout.write("ready\n"), sys.stdout.flush()))
    reactor.run()


# ---------------------------------------------------------------- driver

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(mode, n, work_us):
    port = free_port()
    listener = None
    if mode == "shared":
        listener = socket.socket()
        listener.bind(("127.0.0.1", port))
        listener.listen(BACKLOG)
        listener.setblocking(False)
    fd = listener.fileno() if listener else -1
    procs = [subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", mode, str(i), str(port), str(fd),
         str(work_us)], stdout=subprocess.PIPE, pass_fds=(fd,) if listener else ())
        for i in range(n)]
    if listener:
        listener.close()  # the workers hold it now
    for p in procs:
        if p.stdout.readline().strip() != b"ready":
            stop_workers(procs)
            raise RuntimeError(f"a {mode} worker did not start")
    return port, procs


def stop_workers(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


async def measure(port, n_workers, connections, burst):
    counts = collections.Counter({str(i): 0 for i in range(n_workers)})
    held = []

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        counts[(await reader.readline()).decode().strip()] += 1
        held.append(writer)

    for start in range(0, connections, burst):
        await asyncio.gather(*(one() for _ in range(min(burst, connections - start))))
    for writer in held:
        writer.close()
    return [counts[str(i)] for i in range(n_workers)]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        mode, ident, port, fd, work_us = sys.argv[2:7]
        serve(mode, int(ident), int(port), int(fd), float(work_us))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="2,3", help="worker counts, comma-separated (default 2,3)")
    ap.add_argument("--connections", type=int, default=3000, help="connections per measurement")
    ap.add_argument("--bursts", default="1,32,256",
                    help="burst sizes (connections in flight), comma-separated (default 1,32,256)")
    ap.add_argument("--work-us", type=float, default=150, help="CPU per connection in a worker")
    args = ap.parse_args()
    workers = [int(x) for x in args.workers.split(",")]
    bursts = [int(x) for x in args.bursts.split(",")]

    print(f"{os.cpu_count()} CPUs; {args.connections:,} connections per row, "
          f"{args.work_us:.0f} us of CPU per connection in the worker\n")
    print("| workers | burst | mode | connections per worker | max/min |")
    print("|---:|---:|---|---|---:|")
    worst = collections.defaultdict(float)
    for n in workers:
        for burst in bursts:
            for mode in ("shared", "reuseport"):
                port, procs = start_workers(mode, n, args.work_us)
                try:
                    counts = asyncio.run(measure(port, n, args.connections, burst))
                finally:
                    stop_workers(procs)
                spread = max(counts) / min(counts) if min(counts) else float("inf")
                worst[mode] = max(worst[mode], spread)
                print(f"| {n} | {burst} | {mode} | {' / '.join(f'{c:,}' for c in counts)} | "
                      f"{spread:.2f} |", flush=True)
    print("\nWorst max/min: " + ", ".join(f"{mode} {v:.2f}" for mode, v in worst.items()))


if __name__ == "__main__":
    main()
