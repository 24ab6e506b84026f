#!/usr/bin/env python3
"""Memory benchmark: worker RSS of Corsac against gunicorn's sync worker.

For each server, serving bench/apps/hello.py with one worker:
  * idle RSS: after start-up and a single readiness request, then a pause;
  * RSS after ~10,000 keep-alive requests (wrk);
  * RSS at later checkpoints, up to --requests (default 1,000,000);
  * growth from the 10k checkpoint to the last one, in percent.

RSS is VmRSS from /proc/PID/status of the worker process (for a pre-fork
server, the worker child, not the arbiter). The script only prints numbers;
it never fails on a bad result. See bench/README.md.
"""

import argparse
import math
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
import benchlib as bl  # noqa: E402

COUNT_LUA = os.path.join(bl.BENCH_DIR, "count.lua")
SERVERS = ["corsac", "gunicorn-sync", "gunicorn-gthread", "granian"]
DEFAULT_SERVERS = "corsac,gunicorn-sync"
FIRST_CHECKPOINT = 10_000
GROWTH_TARGET_PCT = 5.0
PEER_DEFAULT = 100_000


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=DEFAULT_SERVERS,
                   help="comma-separated servers: " + ", ".join(SERVERS))
    p.add_argument("--requests", type=int, default=1_000_000,
                   help="total keep-alive requests per server (last checkpoint)")
    p.add_argument("--peer-requests", type=int, default=None,
                   help="total requests for the non-Corsac servers (default: "
                   "min(--requests, %s); gunicorn sync without keep-alive "
                   "needs minutes for 1M)" % "{:,}".format(PEER_DEFAULT))
    p.add_argument("--checkpoints", type=int, default=4,
                   help="number of RSS readings after the 10k one")
    p.add_argument("--connections", type=int, default=64, help="wrk -c")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds to wait before each RSS reading")
    p.add_argument("--server-cpu", default="0",
                   help="CPU list for the server (taskset -c); '' = no pinning")
    p.add_argument("--wrk-cpu", default="1",
                   help="CPU list for wrk (taskset -c); '' = no pinning")
    p.add_argument("--corsac-python", default=None,
                   help="interpreter for `-m corsac` (default: this one if it can "
                   "import corsac, else <repo>/.venv/bin/python)")
    p.add_argument("--start-timeout", type=float, default=30)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print commands and raw wrk output")
    return p


def checkpoints(total, n):
    """10k, then n roughly log-spaced cumulative targets ending at total."""
    if total <= FIRST_CHECKPOINT:
        return [total]
    pts = [FIRST_CHECKPOINT]
    ratio = (total / FIRST_CHECKPOINT) ** (1.0 / max(n, 1))
    for i in range(1, max(n, 1) + 1):
        v = int(round(FIRST_CHECKPOINT * ratio ** i, -3)) if i < n else total
        if v > pts[-1]:
            pts.append(v)
    return pts


def fmt_count(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return "%dM" % (n // 1_000_000)
    if n >= 1000 and n % 1000 == 0:
        return "%dk" % (n // 1000)
    return "{:,}".format(n)


def mib(kib):
    return "-" if kib is None else "%.1f MiB" % (kib / 1024.0)


def pct(new, old):
    if new is None or not old:
        return None
    return (new - old) * 100.0 / old


def find_worker(leader, timeout=10.0):
    """The process that serves requests: descend while there is a single child.

    gunicorn: arbiter -> worker. A server without a master process: itself.
    With several children the one with the largest RSS is taken.
    """
    deadline = time.monotonic() + timeout
    pid = leader
    while True:
        kids = [k for k in bl.children_of(pid) if bl.rss_kib(k)]
        if not kids:
            return pid
        if len(kids) == 1:
            pid = kids[0]
        else:
            pid = max(kids, key=lambda k: bl.rss_kib(k) or 0)
        if time.monotonic() > deadline:
            return pid


def tree_pids(leader):
    out, todo = [], [leader]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(bl.children_of(p))
    return out


class Driver:
    def __init__(self, args, wrk):
        self.args, self.wrk = args, wrk
        self.rate = None  # req/s measured on an unlimited stretch

    def drive(self, port, count):
        """Send `count` more keep-alive requests; returns (done, errors dict)."""
        done, errs = 0, {}
        while done < count:
            remaining = count - done
            if self.rate:
                dur = min(600, max(1, math.ceil(remaining / self.rate * 1.1)))
            else:
                dur = 1
            cmd = bl.wrk_cmd(self.wrk, "http://%s:%d/" % (bl.HOST, port), dur,
                             self.args.connections, 1, lua=COUNT_LUA,
                             lua_args=[remaining], cpu=self.args.wrk_cpu)
            if self.args.verbose:
                print("    $ " + " ".join(cmd), flush=True)
            res, raw = bl.run_wrk(cmd)
            if self.args.verbose:
                print("\n".join("    | " + l for l in raw.rstrip().splitlines()), flush=True)
            n = res["requests"]
            if n < remaining and res["elapsed_s"]:
                # The limit was not reached, so wrk was busy the whole time.
                self.rate = max(n / res["elapsed_s"], 1.0)
            if n == 0:
                raise RuntimeError("wrk completed no requests:\n" + raw)
            done += n
            for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non2xx"):
                errs[k] = errs.get(k, 0) + res[k]
        return done, errs


def measure(server, args, runner_cmd, tmpdir, wrk, total):
    port = bl.free_port()
    cmd = runner_cmd(port)
    log = os.path.join(tmpdir, server + ".log")
    if args.verbose:
        print("    $ " + " ".join(cmd), flush=True)
    srv = bl.Server(server, cmd, port, log, cpu=args.server_cpu)
    try:
        try:
            srv.wait_ready("/", b"Hello, World!", args.start_timeout)
        except RuntimeError as e:
            tail = srv.log_tail()
            return {"error": str(e) + ("\n" + tail if tail else "")}
        worker = find_worker(srv.pid)
        time.sleep(args.settle)
        idle = bl.rss_kib(worker)
        tree_idle = sum(bl.rss_kib(p) or 0 for p in tree_pids(srv.pid))
        print("   worker pid %d: %s" % (worker, bl.process_name(worker)[:100]))
        print("   %-10s %12s %12s %9s" % ("checkpoint", "requests", "worker RSS", "vs 10k"))
        print("   %-10s %12s %12s %9s" % ("idle", "1", mib(idle), ""), flush=True)
        driver = Driver(args, wrk)
        points, sent, errs_total = [], 0, {}
        for target in checkpoints(total, args.checkpoints):
            n, errs = driver.drive(port, target - sent)
            sent += n
            for k, v in errs.items():
                errs_total[k] = errs_total.get(k, 0) + v
            time.sleep(args.settle)
            if srv.proc.poll() is not None or bl.rss_kib(worker) is None:
                return {"error": "worker %d exited during the run\n%s"
                        % (worker, srv.log_tail())}
            rss = bl.rss_kib(worker)
            points.append((target, sent, rss))
            g = pct(rss, points[0][2])
            print("   %-10s %12s %12s %9s" % (
                fmt_count(target), "{:,}".format(sent), mib(rss),
                "" if len(points) == 1 else "%+.1f%%" % g), flush=True)
            if len(points) == 1 and driver.rate and total > sent:
                print("   (~%.0f req/s: about %.0f s to go)"
                      % (driver.rate, (total - sent) / driver.rate), flush=True)
        return {"worker": worker, "idle": idle, "tree_idle": tree_idle,
                "points": points, "errors": errs_total}
    finally:
        srv.stop()


def main(argv=None):
    args = build_args().parse_args(argv)
    servers = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            raise SystemExit("unknown server %r (choose from: %s)" % (s, ", ".join(SERVERS)))
    if args.requests < 1:
        raise SystemExit("--requests must be positive")
    bl.install_signal_handlers()
    wrk = bl.find_tool("wrk")
    if not wrk:
        raise SystemExit("wrk not found (apt-get install wrk)")

    print("corsac memory bench: python %s, hello app, wrk -t1 -c%d keep-alive, %s"
          % (sys.executable, args.connections, time.strftime("%Y-%m-%d %H:%M:%S")))
    results = {}
    with tempfile.TemporaryDirectory(prefix="corsac-mem-") as tmpdir:
        try:
            for server in servers:
                total = args.requests
                if server != "corsac":
                    total = (args.peer_requests if args.peer_requests
                             else min(args.requests, PEER_DEFAULT))
                print("\n-- %s (%s requests)" % (server, "{:,}".format(total)), flush=True)
                try:
                    make = command_factory(server, args)
                except bl.Skip as e:
                    print("   skipped: %s" % e)
                    results[server] = {"skip": str(e)}
                    continue
                try:
                    res = measure(server, args, make, tmpdir, wrk, total)
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


def command_factory(server, args):
    if server == "corsac":
        py = bl.corsac_python(args.corsac_python)
        if not py:
            raise bl.Skip("corsac not importable (tried %s)" % (
                args.corsac_python or "this python and <repo>/.venv/bin/python"))
        return lambda port: bl.corsac_cmd(py, "hello:app", port, threads=1)
    if server.startswith("gunicorn"):
        g = bl.find_tool("gunicorn")
        if not g:
            raise bl.Skip("gunicorn not installed (pip install gunicorn)")
        if server == "gunicorn-sync":
            return lambda port: bl.gunicorn_cmd(g, "hello:app", port, "sync")
        return lambda port: bl.gunicorn_cmd(g, "hello:app", port, "gthread", 4)
    if server == "granian":
        g = bl.find_tool("granian")
        if not g:
            raise bl.Skip("granian not installed (pip install granian)")
        return lambda port: bl.granian_cmd(g, "hello:app", port, 2)
    raise AssertionError(server)


def summary(results):
    rows = []
    for server, r in results.items():
        if "points" not in r:
            continue
        first, last = r["points"][0], r["points"][-1]
        err = sum(r["errors"].values())
        rows.append([server, mib(r["idle"]), mib(first[2]),
                     "%s (%s)" % (mib(last[2]), fmt_count(last[0])),
                     "-" if len(r["points"]) < 2 else "%+.1f%%" % pct(last[2], first[2]),
                     str(err)])
    if not rows:
        print("\nno results")
        return
    print("\n== worker RSS (VmRSS of the process serving requests)")
    print(bl.fmt_table(["server", "idle", "after 10k", "after last", "growth 10k->last",
                        "errors"], rows, align="lrrrrr"))
    c, g = results.get("corsac", {}), results.get("gunicorn-sync", {})
    if "points" in c:
        if "points" in g and g["idle"]:
            r = c["idle"] / g["idle"]
            print("   corsac idle RSS / gunicorn-sync worker idle RSS: %.2fx "
                  "(want <= 1.0x: %s)" % (r, "met" if r <= 1.0 else "not met"))
        if len(c["points"]) >= 2:
            growth = pct(c["points"][-1][2], c["points"][0][2])
            print("   corsac RSS growth 10k -> %s: %+.1f%% (want within %.0f%%: %s)"
                  % (fmt_count(c["points"][-1][0]), growth, GROWTH_TARGET_PCT,
                     "met" if abs(growth) <= GROWTH_TARGET_PCT else "not met"))
    for server, r in results.items():
        if "skip" in r:
            print("   note: %s skipped - %s" % (server, r["skip"]))
        elif "error" in r:
            print("   note: %s FAILED (see above)" % server)


if __name__ == "__main__":
    sys.exit(main())
