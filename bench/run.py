#!/usr/bin/env python3
"""Throughput/latency benchmark: Corsac against other Python app servers.

Runs the same apps on Corsac and its peers: gunicorn (sync and gthread) and
Granian for the WSGI scenarios; uvicorn, Granian and Hypercorn for the ASGI
scenarios; and, as a ceiling for the hello scenarios, nginx answering from
its config. Every server gets one worker process pinned to one CPU; wrk is
pinned to another CPU. Servers run one after another, never concurrently.

The script only prints numbers and ratios; it never fails on a slow result.
See bench/README.md.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
import benchlib as bl  # noqa: E402
import ws_run  # noqa: E402

SCENARIOS = {
    "hello": {
        "app": "hello:app", "path": "/", "expect": b"Hello, World!",
        "interface": "wsgi", "pipeline": False, "nginx": True,
        "about": "GET / on a bare WSGI app (13-byte text body), keep-alive",
    },
    "hello-pipelined": {
        "app": "hello:app", "path": "/", "expect": b"Hello, World!",
        "interface": "wsgi", "pipeline": True, "nginx": True,
        "about": "same app, HTTP/1.1 pipelining: {depth} requests per write",
    },
    "flask-json": {
        "app": "flask_json:app", "path": "/json", "expect": b"Hello, World!",
        "interface": "wsgi", "pipeline": False, "nginx": False,
        "about": "GET /json on a Flask app returning jsonify(...)",
    },
    "asgi-hello": {
        "app": "asgi_hello:app", "path": "/", "expect": b"Hello, World!",
        "interface": "asgi", "pipeline": False, "nginx": True,
        "about": "GET / on a raw ASGI app (13-byte text body), keep-alive",
    },
    "asgi-hello-pipelined": {
        "app": "asgi_hello:app", "path": "/", "expect": b"Hello, World!",
        "interface": "asgi", "pipeline": True, "nginx": True,
        "about": "same ASGI app, HTTP/1.1 pipelining: {depth} requests per write",
    },
    "fastapi-json": {
        "app": "fastapi_json:app", "path": "/json", "expect": b"Hello, World!",
        "interface": "asgi", "pipeline": False, "nginx": False,
        "about": "GET /json on a FastAPI app returning a dict (async endpoint)",
    },
    # Run by ws_run.py (its own load generator, bench/wsload.c), not by wrk.
    "ws-echo": {
        "app": ws_run.APP, "interface": "ws", "pipeline": False, "nginx": False,
        "about": "WebSocket echo round-trips (bench/ws_run.py)",
    },
}

# Which interfaces each server speaks; a server only runs the scenarios of its
# interfaces. nginx answers from its config and runs wherever sc["nginx"].
# "ws" is the WebSocket scenario (ws-echo): uvicorn there runs --ws websockets.
INTERFACES = {
    "corsac": ("wsgi", "asgi", "ws"),
    "corsac-asyncio": ("asgi", "ws"),
    "gunicorn-sync": ("wsgi",),
    "gunicorn-gthread": ("wsgi",),
    "granian": ("wsgi",),
    "granian-asgi": ("asgi", "ws"),
    "uvicorn": ("asgi", "ws"),
    "uvicorn-wsproto": ("ws",),
    "hypercorn": ("asgi", "ws"),
    "nginx": ("wsgi", "asgi"),
}
SERVERS = list(INTERFACES)
INTERFACE_ALIASES = ("wsgi", "asgi", "ws")
ALIASES = {"gunicorn": ["gunicorn-sync", "gunicorn-gthread"],
           "all": SERVERS}
ALIASES.update({i: [s for s in SERVERS if i in INTERFACES[s]] for i in INTERFACE_ALIASES})

# Targets from the project plan (printed for information only). For each
# scenario: ratio wanted against each peer (corsac req/s / peer req/s), and
# the groups of peers of which one must be met entirely ("any_of").
TARGETS = {
    "hello": {
        "title": ">= 1.5x granian and >= 3x gunicorn-sync, or >= 0.9x nginx",
        "want": {"granian": 1.5, "gunicorn-sync": 3.0, "nginx": 0.9},
        "any_of": [["granian", "gunicorn-sync"], ["nginx"]],
    },
    "asgi-hello": {
        "title": ">= 1.5x uvicorn and >= 1.5x granian-asgi",
        "want": {"uvicorn": 1.5, "granian-asgi": 1.5},
        "any_of": [["uvicorn", "granian-asgi"]],
    },
    "fastapi-json": {
        "title": "ahead of every peer",
        "want": {"uvicorn": 1.0, "granian-asgi": 1.0, "hypercorn": 1.0},
        "strict": True,  # "ahead": more than 1.00x
        "any_of": [["uvicorn", "granian-asgi", "hypercorn"]],
    },
}
MAX_OVER_AVG_TARGET = 3.0


def serves(server, sc):
    """Whether server is run at all on scenario sc (nginx: see Runner.command)."""
    return sc["interface"] in INTERFACES[server]


def parse_list(text, known, aliases=None, what="name"):
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        names = (aliases or {}).get(item, [item])
        for n in names:
            if n not in known:
                raise SystemExit("unknown %s %r (choose from: %s)"
                                 % (what, n, ", ".join(list(known) + list(aliases or {}))))
            if n not in out:
                out.append(n)
    return out


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a table per scenario.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default="all",
                   help="comma-separated servers: " + ", ".join(SERVERS)
                   + " ('gunicorn' = both gunicorn variants, 'wsgi' / 'asgi' / 'ws' = "
                   "the scenarios of that interface and their servers); each scenario "
                   "runs only the servers that speak its interface")
    p.add_argument("--scenario", default=",".join(SCENARIOS),
                   help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    p.add_argument("--duration", type=int, default=10,
                   help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of unmeasured wrk load before each run (0 = none)")
    p.add_argument("--connections", type=int, default=64, help="wrk -c")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    p.add_argument("--depth", type=int, default=16,
                   help="requests per write in hello-pipelined")
    p.add_argument("--server-cpu", default="0",
                   help="CPU list for the server (taskset -c); '' = no pinning")
    p.add_argument("--wrk-cpu", default="1",
                   help="CPU list for wrk (taskset -c); '' = no pinning")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes for corsac, gunicorn, granian, uvicorn and "
                   "hypercorn (nginx keeps one)")
    p.add_argument("--gthread-threads", type=int, default=4,
                   help="threads for gunicorn's gthread worker")
    p.add_argument("--granian-blocking-threads", type=int, default=2,
                   help="Granian --blocking-threads (threads running the WSGI app); "
                   "0 = Granian's own default (backpressure/2)")
    p.add_argument("--granian-pipeline-flush", action="store_true",
                   help="pass --http1-pipeline-flush to Granian in the pipelined "
                   "scenarios (experimental in Granian)")
    p.add_argument("--corsac-python", default=None,
                   help="interpreter for `-m corsac` (default: this one if it can "
                   "import corsac, else <repo>/.venv/bin/python)")
    p.add_argument("--start-timeout", type=float, default=30,
                   help="seconds to wait for a server to answer")
    ws_run.add_ws_options(p)
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print commands and raw wrk output")
    return p


class Runner:
    def __init__(self, args, tmpdir):
        self.args = args
        self.tmpdir = tmpdir
        self.wrk = bl.find_tool("wrk")
        self._tools = {}

    def tool(self, name):
        if name not in self._tools:
            if name == "corsac":
                self._tools[name] = bl.corsac_python(self.args.corsac_python)
            elif name == "nginx":
                self._tools[name] = bl.nginx_binary()
            else:
                self._tools[name] = bl.find_tool(name)
        return self._tools[name]

    def command(self, server, sc, port):
        """(command line, note or None) for server on scenario sc.

        Raises bl.Skip when the server cannot be run here.
        """
        a = self.args
        asgi = sc["interface"] == "asgi"
        flush = a.granian_pipeline_flush and sc["pipeline"]
        if server in ("corsac", "corsac-asyncio"):
            py = self.tool("corsac")
            if not py:
                raise bl.Skip("corsac not importable (tried %s)" % (
                    a.corsac_python or "this python and <repo>/.venv/bin/python"))
            if not asgi:
                return bl.corsac_cmd(py, sc["app"], port, threads=1, workers=a.workers), None
            has_loop = "--loop" in bl.corsac_help(py)
            note = None
            if server == "corsac-asyncio":
                if not has_loop:
                    raise bl.Skip("this corsac has no --loop option (corsac runs its default loop)")
                loop = "asyncio"
            elif not has_loop:
                loop = None
            elif bl.python_can_import(py, "uvloop"):
                loop = "uvloop"
            else:
                loop, note = None, "uvloop not importable: corsac ran with its default --loop"
            return bl.corsac_cmd(py, sc["app"], port, threads=1, workers=a.workers,
                                 interface="asgi", loop=loop), note
        if server in ("gunicorn-sync", "gunicorn-gthread"):
            g = self.tool("gunicorn")
            if not g:
                raise bl.Skip("gunicorn not installed (pip install gunicorn)")
            if server == "gunicorn-sync":
                return bl.gunicorn_cmd(g, sc["app"], port, "sync", workers=a.workers), None
            return bl.gunicorn_cmd(g, sc["app"], port, "gthread", a.gthread_threads,
                                   workers=a.workers), None
        if server in ("granian", "granian-asgi"):
            g = self.tool("granian")
            if not g:
                raise bl.Skip("granian not installed (pip install granian)")
            if server == "granian":
                return bl.granian_cmd(g, sc["app"], port, a.granian_blocking_threads,
                                      flush, workers=a.workers), None
            # Same event loop as uvicorn and hypercorn when Granian offers it.
            loop = None
            if "uvloop" in bl.tool_help([g]) and bl.script_can_import(g, "uvloop"):
                loop = "uvloop"
            return bl.granian_cmd(g, sc["app"], port, None, flush, workers=a.workers,
                                  interface="asgi", loop=loop), None
        if server == "uvicorn":
            u = self.tool("uvicorn")
            if not u:
                raise bl.Skip("uvicorn not installed (pip install 'uvicorn[standard]')")
            return bl.uvicorn_cmd(u, sc["app"], port, workers=a.workers), None
        if server == "hypercorn":
            h = self.tool("hypercorn")
            if not h:
                raise bl.Skip("hypercorn not installed (pip install hypercorn)")
            if bl.script_can_import(h, "uvloop"):
                return bl.hypercorn_cmd(h, sc["app"], port, "uvloop", workers=a.workers), None
            return (bl.hypercorn_cmd(h, sc["app"], port, "asyncio", workers=a.workers),
                    "uvloop not importable: hypercorn ran its asyncio worker")
        if server == "nginx":
            if not sc["nginx"]:
                raise bl.Skip("nginx only serves the static hello scenarios")
            n = self.tool("nginx")
            if not n:
                raise bl.Skip("nginx not installed (apt-get install nginx-light)")
            d = tempfile.mkdtemp(prefix="nginx-", dir=self.tmpdir)
            return bl.nginx_cmd(n, port, d), None
        raise AssertionError(server)

    def wrk_run(self, sc, port, duration):
        a = self.args
        url = "http://%s:%d%s" % (bl.HOST, port, sc["path"])
        cmd = bl.wrk_cmd(self.wrk, url, duration, a.connections, a.wrk_threads,
                         lua=bl.PIPELINE_LUA if sc["pipeline"] else None,
                         lua_args=[a.depth] if sc["pipeline"] else (),
                         cpu=a.wrk_cpu)
        if a.verbose:
            print("    $ " + " ".join(cmd), flush=True)
        res, raw = bl.run_wrk(cmd)
        if a.verbose:
            print("\n".join("    | " + l for l in raw.rstrip().splitlines()), flush=True)
        return res

    def bench_one(self, server, sc_name):
        """Returns a result dict, or {'skip': reason} / {'error': reason}."""
        sc = SCENARIOS[sc_name]
        port = bl.free_port()
        try:
            cmd, note = self.command(server, sc, port)
        except bl.Skip as e:
            return {"skip": str(e)}
        log = os.path.join(self.tmpdir, "%s-%s.log" % (server, sc_name))
        if self.args.verbose:
            print("    $ " + " ".join(cmd), flush=True)
        srv = bl.Server(server, cmd, port, log, cpu=self.args.server_cpu)
        try:
            try:
                srv.wait_ready(sc["path"], sc["expect"], self.args.start_timeout)
            except RuntimeError as e:
                tail = srv.log_tail()
                return {"error": str(e) + ("\n" + tail if tail else ""),
                        "failed_start": True}
            if self.args.warmup > 0:
                self.wrk_run(sc, port, self.args.warmup)
            res = self.wrk_run(sc, port, self.args.duration)
            notes = [note] if note else []
            if srv.proc.poll() is not None:
                notes.append("server exited during the run")
            if notes:
                res["note"] = "; ".join(notes)
            return res
        except RuntimeError as e:
            return {"error": str(e)}
        finally:
            srv.stop()


def ratio(a, b):
    if not a or not b:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else "%.2fx" % r


def print_scenario(sc_name, results, args):
    sc = SCENARIOS[sc_name]
    corsac = results.get("corsac", {})
    c_rps = corsac.get("rps")
    rows, notes = [], []
    for server, res in results.items():
        if "skip" in res:
            notes.append("%s: skipped - %s" % (server, res["skip"]))
            continue
        if "error" in res:
            notes.append("%s: %s - %s" % (
                server, "failed to start" if res.get("failed_start") else "FAILED",
                res["error"]))
            continue
        mx_avg = ratio(res["lat_max_ms"], res["lat_avg_ms"])
        rows.append([
            server,
            "{:,.0f}".format(res["rps"]),
            bl.fmt_ms(res["lat_avg_ms"]),
            # wrk's percentile table is not trustworthy with pipelining.
            "-" if sc["pipeline"] else bl.fmt_ms(res["percentiles_ms"].get(99)),
            bl.fmt_ms(res["lat_max_ms"]),
            fmt_ratio(mx_avg),
            bl.error_summary(res),
            "-" if server == "corsac" else fmt_ratio(ratio(c_rps, res["rps"])),
        ])
        if res.get("note"):
            notes.append("%s: %s" % (server, res["note"]))
        if res.get("no_latency"):
            notes.append("%s: wrk recorded no latency (the server closed each "
                         "connection before answering a whole pipeline batch)" % server)
    print()
    print("== %s: %s" % (sc_name, sc["about"].format(depth=args.depth)))
    print("   wrk -t%d -c%d -d%ds (+%ds warm-up), server on CPU %s, wrk on CPU %s"
          % (args.wrk_threads, args.connections, args.duration, args.warmup,
             args.server_cpu or "any", args.wrk_cpu or "any"))
    if rows:
        print(bl.fmt_table(["server", "req/s", "avg lat", "p99 lat", "max lat",
                            "max/avg", "errors", "corsac/peer"], rows,
                           align="lrrrrrlr"))
    for n in notes:
        print("   note: " + n.replace("\n", "\n         "))
    target = TARGETS.get(sc_name)
    if c_rps and target:
        print_targets(target, c_rps, results)
    elif target and "corsac" in results:
        print("   targets (%s): undecided (corsac not measured)" % target["title"])
    for server in ("corsac", "corsac-asyncio"):
        res = results.get(server, {})
        r = ratio(res.get("lat_max_ms"), res.get("lat_avg_ms"))
        if r is not None:
            print("   %s max/avg latency %.2fx (want <= %.0fx: %s)"
                  % (server, r, MAX_OVER_AVG_TARGET,
                     "met" if r <= MAX_OVER_AVG_TARGET else "not met"))
    sys.stdout.flush()


def print_targets(target, c_rps, results):
    strict = target.get("strict", False)
    met, lines = {}, []
    for peer, want in target["want"].items():
        r = ratio(c_rps, results.get(peer, {}).get("rps"))
        if r is None:
            continue
        met[peer] = r > want if strict else r >= want
        lines.append("     corsac vs %s %.2fx (want %s %.1fx: %s)"
                     % (peer, r, ">" if strict else ">=", want,
                        "met" if met[peer] else "not met"))
    if not lines:
        return
    print("   targets (%s):" % target["title"])
    print("\n".join(lines))
    groups = target["any_of"]
    if any(all(met.get(p) for p in g) for g in groups):
        overall = "met"
    elif all(any(met.get(p) is False for p in g) for g in groups):
        overall = "not met"
    else:
        missing = sorted({p for g in groups for p in g if p not in met})
        overall = "undecided (not measured: %s)" % ", ".join(missing)
    print("     overall: " + overall)


def outcome(res):
    """One word or number for the progress line."""
    if "skip" in res:
        return "skipped"
    if "error" in res:
        return "failed to start" if res.get("failed_start") else "FAILED"
    return "{:,.0f} req/s".format(res["rps"])


def main(argv=None):
    args = build_args().parse_args(argv)
    servers = parse_list(args.only, SERVERS, ALIASES, "server")
    scenarios = parse_list(args.scenario, SCENARIOS, None, "scenario")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if only and all(x in INTERFACE_ALIASES for x in only):
        # --only asgi / --only ws: the scenarios of those interfaces only.
        scenarios = [sc for sc in scenarios if SCENARIOS[sc]["interface"] in only]
    plan = [(sc, [s for s in servers if serves(s, SCENARIOS[sc])]) for sc in scenarios]
    if not any(srvs for _, srvs in plan):
        raise SystemExit("nothing to run (no selected server speaks the interface "
                         "of a selected scenario)")
    if args.duration < 1 or args.warmup < 0:
        raise SystemExit("--duration must be >= 1 and --warmup >= 0 (whole seconds)")
    bl.install_signal_handlers()

    all_results = {}
    with tempfile.TemporaryDirectory(prefix="corsac-bench-") as tmpdir:
        runner = Runner(args, tmpdir)
        ws_runner = None
        if not runner.wrk:
            raise SystemExit("wrk not found (apt-get install wrk)")
        if not bl.taskset_prefix("0"):
            print("warning: taskset not found; servers and wrk are not pinned",
                  file=sys.stderr)
        print("corsac bench: python %s, wrk %s, %d CPUs, %s"
              % (sys.executable, runner.wrk, os.cpu_count() or 0,
                 time.strftime("%Y-%m-%d %H:%M:%S")))
        try:
            for sc_name, sc_servers in plan:
                if not sc_servers:
                    print("-- %s: skipped, none of the selected servers speaks %s"
                          % (sc_name, SCENARIOS[sc_name]["interface"].upper()))
                    continue
                if SCENARIOS[sc_name]["interface"] == "ws":
                    if ws_runner is None:
                        ws_runner = ws_run.WsRunner(args, tmpdir)  # builds wsload
                    results = all_results[sc_name] = ws_run.run_all(ws_runner, sc_servers, args)
                    ws_run.print_results(results, args)
                    print()
                    continue
                results = {}
                for server in sc_servers:
                    # -v prints commands in between: then the outcome gets its own line.
                    print("-- %s / %s ..." % (sc_name, server),
                          end="\n" if args.verbose else "", flush=True)
                    res = results[server] = runner.bench_one(server, sc_name)
                    print("%s%s" % ("   -> " if args.verbose else " ", outcome(res)),
                          flush=True)
                all_results[sc_name] = results
                print_scenario(sc_name, results, args)
                print()
        except KeyboardInterrupt:
            print("\ninterrupted; servers stopped", file=sys.stderr)
            return 130
        finally:
            bl.stop_all()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": all_results}, f, indent=2)
        print("results written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
