#!/usr/bin/env python3
"""Memory per idle WebSocket: worker RSS of Corsac, uvicorn and Granian.

For each server, serving apps/ws_echo.py with one worker:
  1. start it, wait until it answers HTTP, open a few WebSockets that each
     echo one message and close (so one-time costs such as lazy imports are
     paid), wait --settle seconds and read the worker's RSS (**before**);
  2. open --connections (10,000) WebSockets, each doing the opening handshake
     and one echo round-trip, and leave them open and idle;
  3. wait --settle seconds, read the worker's RSS (**after**);
  4. check that every connection still echoes, then close them all.
Reports (after - before) / connections in KiB.

RSS is VmRSS from /proc/PID/status of the process that serves requests: the
server's process tree is followed down while there is a single child (Corsac's
worker, Granian's worker; uvicorn with one worker serves in its own process).
The client is this script: asyncio protocols on raw sockets, no WebSocket
library. The soft RLIMIT_NOFILE is raised to the hard limit here, and the
servers inherit it (the worker's limit is read back from /proc and printed).
The script only prints numbers; it never fails on a bad result.
"""

import argparse
import asyncio
import base64
import os
import resource
import struct
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
import benchlib as bl  # noqa: E402

APP = "ws_echo:app"
SERVERS = ["corsac", "uvicorn", "granian-asgi", "uvicorn-wsproto", "hypercorn"]
DEFAULT_SERVERS = "corsac,uvicorn,granian-asgi"
MESSAGE = b"idle-check-0123456789abcdef"


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=DEFAULT_SERVERS,
                   help="comma-separated servers: " + ", ".join(SERVERS))
    p.add_argument("--connections", type=int, default=10_000,
                   help="idle WebSockets to open")
    p.add_argument("--parallel", type=int, default=200,
                   help="handshakes in progress at once while opening")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to wait before each RSS reading")
    p.add_argument("--server-cpu", default="0",
                   help="CPU list for the server (taskset -c); '' = no pinning")
    p.add_argument("--corsac-python", default=None,
                   help="interpreter for `-m corsac` (default: this one if it can "
                   "import corsac, else <repo>/.venv/bin/python)")
    p.add_argument("--start-timeout", type=float, default=30)
    p.add_argument("-v", "--verbose", action="store_true", help="print commands")
    return p


# ------------------------------------------------------------ the client

def frame(opcode, payload):
    """One masked client frame with FIN set."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class WsClient(asyncio.Protocol):
    """A minimal RFC 6455 client connection: handshake, echo, pong, close."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.echo = None
        self.buf = b""
        self.is_open = False
        self.lost = False
        self.closed_by_server = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((
            "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n" % (self.host, self.port, key)).encode())

    def data_received(self, data):
        self.buf += data
        if not self.is_open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
            status = head.split(b"\r\n", 1)[0]
            if not status.startswith(b"HTTP/1.1 101") or \
                    b"\nsec-websocket-accept:" not in head.lower():
                self._fail("not a WebSocket: %s" % status.decode("latin-1")[:100])
                return
            self.is_open = True
            if not self.opened.done():
                self.opened.set_result(True)
        self._frames()

    def _frames(self):
        buf = self.buf
        while len(buf) >= 2:
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            hdr = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, hdr = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, hdr = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < hdr + n:
                break
            payload, buf = buf[hdr:hdr + n], buf[hdr + n:]
            if op == 9:
                self.transport.write(frame(10, payload))
            elif op == 8:
                self.closed_by_server = struct.unpack("!H", payload[:2])[0] if n >= 2 else 1005
                self.transport.close()
            elif op in (0, 1, 2):
                if self.echo is not None and not self.echo.done():
                    self.echo.set_result(payload)
        self.buf = buf

    def _fail(self, why):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        if self.echo is not None and not self.echo.done():
            self.echo.set_exception(ConnectionError(why))
        if self.transport:
            self.transport.close()

    def connection_lost(self, exc):
        self.lost = True
        self.is_open = False
        self._fail("connection lost" + (": %s" % exc if exc else ""))

    async def roundtrip(self, payload=MESSAGE, timeout=10.0):
        self.echo = asyncio.get_running_loop().create_future()
        self.transport.write(frame(1, payload))
        got = await asyncio.wait_for(self.echo, timeout)
        if got != payload:
            raise ConnectionError("echo differs: %r" % got[:40])


async def open_ws(host, port, timeout=30.0):
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(host, port), host, port), timeout)
    try:
        await asyncio.wait_for(proto.opened, timeout)
        await proto.roundtrip(timeout=timeout)
    except BaseException:
        if proto.transport:
            proto.transport.abort()
        raise
    return proto


async def open_many(host, port, n, parallel):
    """Open n echoing WebSockets, at most `parallel` handshakes at a time.

    Returns (clients, errors: {reason: count}, seconds)."""
    sem = asyncio.Semaphore(parallel)
    clients, errors = [], {}

    async def one():
        async with sem:
            try:
                clients.append(await open_ws(host, port))
            except (OSError, asyncio.TimeoutError, ConnectionError) as e:
                why = "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__
                errors[why] = errors.get(why, 0) + 1

    t = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    return clients, errors, time.monotonic() - t


async def check_all(clients, parallel=1000):
    """How many clients still echo (and the first failure)."""
    sem = asyncio.Semaphore(parallel)
    ok, first = 0, None

    async def one(c):
        nonlocal ok, first
        async with sem:
            try:
                if c.lost:
                    raise ConnectionError("closed by the server (code %s)" % c.closed_by_server
                                          if c.closed_by_server else "connection lost")
                await c.roundtrip()
                ok += 1
            except (OSError, asyncio.TimeoutError, ConnectionError) as e:
                if first is None:
                    first = "%s: %s" % (type(e).__name__, e)

    await asyncio.gather(*(one(c) for c in clients))
    return ok, first


def close_all(clients):
    for c in clients:
        if c.transport and not c.lost:
            c.transport.abort()


# ------------------------------------------------------------ the servers

def command(server, args, port):
    if server == "corsac":
        py = bl.corsac_python(args.corsac_python)
        if not py:
            raise bl.Skip("corsac not importable (tried %s)" % (
                args.corsac_python or "this python and <repo>/.venv/bin/python"))
        helptext = bl.corsac_help(py)
        loop = "uvloop" if "--loop" in helptext and bl.python_can_import(py, "uvloop") else None
        cmd = bl.corsac_cmd(py, APP, port, threads=1, workers=1, interface="asgi", loop=loop)
        if "--ws-per-message-deflate" in helptext:  # a boolean flag: --no-... turns it off
            cmd.append("--no-ws-per-message-deflate")
        return cmd
    if server in ("uvicorn", "uvicorn-wsproto"):
        u = bl.find_tool("uvicorn")
        if not u:
            raise bl.Skip("uvicorn not installed (pip install 'uvicorn[standard]')")
        impl = "websockets" if server == "uvicorn" else "wsproto"
        if not bl.script_can_import(u, impl):
            raise bl.Skip("%s not installed next to uvicorn" % impl)
        cmd = bl.uvicorn_cmd(u, APP, port, workers=1)
        return cmd[:-1] + ["--ws", impl, "--ws-per-message-deflate", "false",
                           "--backlog", "4096"] + cmd[-1:]
    if server == "granian-asgi":
        g = bl.find_tool("granian")
        if not g:
            raise bl.Skip("granian not installed (pip install granian)")
        loop = "uvloop" if bl.script_can_import(g, "uvloop") else None
        cmd = bl.granian_cmd(g, APP, port, None, False, workers=1, interface="asgi",
                             loop=loop)
        cmd = ["--ws" if x == "--no-ws" else x for x in cmd]
        # Granian handles at most --backpressure connections at once per
        # worker (default backlog/workers = 1024): allow them all.
        n = str(args.connections + 100)
        return cmd[:-1] + ["--backlog", n, "--backpressure", n] + cmd[-1:]
    if server == "hypercorn":
        h = bl.find_tool("hypercorn")
        if not h:
            raise bl.Skip("hypercorn not installed (pip install hypercorn)")
        k = "uvloop" if bl.script_can_import(h, "uvloop") else "asyncio"
        cmd = bl.hypercorn_cmd(h, APP, port, k, workers=1)
        return cmd[:-1] + ["--backlog", "4096"] + cmd[-1:]
    raise AssertionError(server)


def find_worker(leader, timeout=10.0):
    """The serving process: descend while there is a single child (the
    largest one when there are several)."""
    deadline = time.monotonic() + timeout
    pid = leader
    while True:
        kids = [k for k in bl.children_of(pid) if bl.rss_kib(k)]
        if not kids:
            return pid
        pid = kids[0] if len(kids) == 1 else max(kids, key=lambda k: bl.rss_kib(k) or 0)
        if time.monotonic() > deadline:
            return pid


def nofile_limit(pid):
    try:
        with open("/proc/%d/limits" % pid) as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def kib(v):
    return "-" if v is None else "{:,.0f} KiB".format(v)


def measure(server, args, tmpdir):
    port = bl.free_port()
    cmd = command(server, args, port)
    if args.verbose:
        print("   $ " + " ".join(cmd), flush=True)
    srv = bl.Server(server, cmd, port, os.path.join(tmpdir, server + ".log"),
                    cpu=args.server_cpu)
    clients = []
    try:
        try:
            srv.wait_ready("/", b"ws echo", args.start_timeout)
        except RuntimeError as e:
            tail = srv.log_tail()
            return {"error": str(e) + ("\n" + tail if tail else "")}
        worker = find_worker(srv.pid)
        limit = nofile_limit(worker)
        print("   worker pid %d (open files limit %s): %s"
              % (worker, limit, bl.process_name(worker)[:90]), flush=True)
        if limit is not None and limit < args.connections + 50:
            print("   warning: the worker may run out of file descriptors", flush=True)

        loop = asyncio.new_event_loop()
        try:
            # One-time costs first: a few WebSockets that echo and close.
            warm, errs, _ = loop.run_until_complete(
                open_many(bl.HOST, port, 20, 20))
            close_all(warm)
            if not warm:
                return {"error": "no WebSocket could be opened: %s" % "; ".join(
                    "%s (%d)" % kv for kv in errs.items())}
            loop.run_until_complete(asyncio.sleep(args.settle))
            before = bl.rss_kib(worker)
            print("   before: %s" % kib(before), flush=True)

            clients, errs, secs = loop.run_until_complete(
                open_many(bl.HOST, port, args.connections, args.parallel))
            print("   opened %d WebSockets in %.1f s (%.0f/s)%s" % (
                len(clients), secs, len(clients) / secs if secs else 0,
                "; failures: " + "; ".join("%s (%d)" % kv for kv in errs.items())
                if errs else ""), flush=True)
            loop.run_until_complete(asyncio.sleep(args.settle))
            after = bl.rss_kib(worker)
            alive, first = loop.run_until_complete(check_all(clients))
            print("   after:  %s; %d of %d still echo%s" % (
                kib(after), alive, len(clients),
                "" if first is None else " (first failure: %s)" % first), flush=True)
            close_all(clients)
            loop.run_until_complete(asyncio.sleep(0.2))
        finally:
            loop.close()
        if srv.proc.poll() is not None or after is None:
            return {"error": "the server exited during the run\n" + srv.log_tail()}
        n = len(clients)
        return {"worker": worker, "before": before, "after": after, "open": n,
                "alive": alive, "failed": sum(errs.values()), "open_s": secs,
                "per_conn": (after - before) / n if n else None}
    finally:
        close_all(clients)
        srv.stop()


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def main(argv=None):
    args = build_args().parse_args(argv)
    servers = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            raise SystemExit("unknown server %r (choose from: %s)" % (s, ", ".join(SERVERS)))
    if args.connections < 1:
        raise SystemExit("--connections must be positive")
    limit = raise_nofile(args.connections + 200)
    if limit < args.connections + 200:
        n = max(1, limit - 200)
        print("warning: RLIMIT_NOFILE hard limit is %d; opening %d connections instead "
              "of %d (raise it with `ulimit -Hn` as root)" % (limit, n, args.connections),
              file=sys.stderr)
        args.connections = n
    bl.install_signal_handlers()
    print("corsac idle WebSocket memory: python %s, %s connections, open files limit %d, %s"
          % (sys.executable, "{:,}".format(args.connections), limit,
             time.strftime("%Y-%m-%d %H:%M:%S")))
    results = {}
    with tempfile.TemporaryDirectory(prefix="corsac-wsidle-") as tmpdir:
        try:
            for server in servers:
                print("\n-- %s" % server, flush=True)
                try:
                    res = measure(server, args, tmpdir)
                except bl.Skip as e:
                    res = {"skip": str(e)}
                    print("   skipped: %s" % e)
                except RuntimeError as e:
                    res = {"error": str(e)}
                if "error" in res:
                    print("   FAILED: " + res["error"].replace("\n", "\n   "))
                results[server] = res
        except KeyboardInterrupt:
            print("\ninterrupted; servers stopped", file=sys.stderr)
            return 130
        finally:
            bl.stop_all()
    summary(results)
    return 0


def summary(results):
    rows = []
    for server, r in results.items():
        if "per_conn" not in r:
            continue
        rows.append([server, kib(r["before"]), kib(r["after"]),
                     "{:,}".format(r["open"]),
                     "-" if r["per_conn"] is None else "%.1f" % r["per_conn"],
                     "{:,}".format(r["alive"]), str(r["failed"])])
    if not rows:
        print("\nno results")
        return
    print("\n== worker RSS with idle WebSockets (VmRSS of the serving process)")
    print(bl.fmt_table(["server", "before", "after", "open", "KiB/conn", "still echo",
                        "failed opens"], rows, align="lrrrrrr"))
    c = results.get("corsac", {}).get("per_conn")
    for server, r in results.items():
        if server == "corsac" or not r.get("per_conn") or not c:
            continue
        print("   corsac KiB per idle WebSocket / %s: %.2fx (below 1.00x: less memory)"
              % (server, c / r["per_conn"]))
    for server, r in results.items():
        if "skip" in r:
            print("   note: %s skipped - %s" % (server, r["skip"]))
        elif "error" in r:
            print("   note: %s FAILED (see above)" % server)


if __name__ == "__main__":
    sys.exit(main())
