#!/usr/bin/env python3
"""WebSocket echo benchmark: Corsac against uvicorn, Granian and Hypercorn.

Scenario `ws-echo`: apps/ws_echo.py (raw ASGI: accept, echo text as text and
bytes as bytes, return on disconnect) on each server with one worker pinned
to one CPU; the load generator wsload (bench/wsload.c, compiled with gcc
into a temporary directory at start) pinned to another CPU opens 64
WebSockets and makes each do echo round-trips of a 32-byte text message, one
message in flight per connection, for 10 s after a 2 s warm-up on the same
connections. Servers run one after another, never concurrently.

The script only prints numbers and ratios; it never fails on a slow result.
bench/run.py runs the same scenario as `ws-echo` (`run.py --only ws`).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
import benchlib as bl  # noqa: E402

WSLOAD_C = os.path.join(bl.BENCH_DIR, "wsload.c")
APP = "ws_echo:app"
READY_PATH, READY_BODY = "/", b"ws echo"

SCENARIO = "ws-echo"
ABOUT = "echo round-trips on apps/ws_echo.py, {size}-byte {kind} messages, {depth} in flight per connection"

# uvicorn-sansio (uvicorn's --ws websockets-sansio) is only run when named.
SERVERS = ["corsac", "corsac-asyncio", "uvicorn", "uvicorn-wsproto", "granian-asgi",
           "hypercorn", "uvicorn-sansio"]
DEFAULT_SERVERS = [s for s in SERVERS if s != "uvicorn-sansio"]
ALIASES = {"all": DEFAULT_SERVERS, "ws": DEFAULT_SERVERS,
           "uvicorn-all": ["uvicorn", "uvicorn-wsproto", "uvicorn-sansio"]}
UVICORN_WS = {"uvicorn": "websockets", "uvicorn-wsproto": "wsproto",
              "uvicorn-sansio": "websockets-sansio"}
CORSAC_ROWS = ("corsac", "corsac-asyncio")
GAP_NOTE_US = 50_000  # note a moment without any echo longer than this


def add_ws_options(p):
    """The options of the WebSocket scenario (shared with run.py)."""
    p.add_argument("--ws-size", type=int, default=32,
                   help="ws-echo: bytes per message")
    p.add_argument("--ws-depth", type=int, default=1,
                   help="ws-echo: messages in flight per connection")
    p.add_argument("--ws-binary", action="store_true",
                   help="ws-echo: binary messages (default: text)")


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a table of round-trips/s "
        "and latency, and ratios.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(DEFAULT_SERVERS),
                   help="comma-separated servers: " + ", ".join(SERVERS)
                   + " ('uvicorn-all' = the three uvicorn WebSocket implementations)")
    p.add_argument("--duration", type=int, default=10,
                   help="measured seconds")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of unmeasured load first, on the same connections")
    p.add_argument("--connections", type=int, default=64, help="WebSockets opened")
    p.add_argument("--size", dest="ws_size", type=int, default=32,
                   help="bytes per message")
    p.add_argument("--depth", dest="ws_depth", type=int, default=1,
                   help="messages in flight per connection")
    p.add_argument("--binary", dest="ws_binary", action="store_true",
                   help="binary messages (default: text)")
    p.add_argument("--server-cpu", default="0",
                   help="CPU list for the server (taskset -c); '' = no pinning")
    p.add_argument("--load-cpu", "--wrk-cpu", dest="wrk_cpu", default="1",
                   help="CPU list for wsload (taskset -c); '' = no pinning")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--corsac-python", default=None,
                   help="interpreter for `-m corsac` (default: this one if it can "
                   "import corsac, else <repo>/.venv/bin/python)")
    p.add_argument("--start-timeout", type=float, default=30,
                   help="seconds to wait for a server to answer")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print commands and wsload's raw output")
    return p


def build_wsload(outdir):
    """Compile bench/wsload.c into outdir; returns the binary's path."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise SystemExit("gcc not found: it is needed to build bench/wsload.c")
    out = os.path.join(outdir, "wsload")
    r = subprocess.run([cc, "-O2", "-o", out, WSLOAD_C], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("building wsload failed:\n" + r.stdout + r.stderr)
    return out


def wsload_cmd(wsload, port, duration, warmup, connections=64, size=32, depth=1,
               binary=False, cpu=None):
    cmd = bl.taskset_prefix(cpu) + [
        wsload, "-c", str(connections), "-d", str(duration), "-w", str(warmup),
        "-s", str(size), "-p", str(depth)]
    if binary:
        cmd.append("-b")
    return cmd + ["%s:%d" % (bl.HOST, port)]


_ERRORS = (("connect", "err_connect"), ("handshake", "err_handshake"),
           ("read", "err_read"), ("write", "err_write"), ("eof", "err_eof"),
           ("server close", "err_closed"), ("protocol", "err_protocol"),
           ("mismatch", "err_mismatch"))


def parse_wsload(out):
    """The RESULT line of wsload as a dict (numbers as int/float)."""
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError("could not parse wsload output:\n" + out.strip()[-1000:])
    res = {}
    for k, v in (kv.split("=", 1) for kv in m.group(1).split()):
        res[k] = float(v) if "." in v else int(v)
    m = re.search(r"^first handshake failure: (.*)$", out, re.M)
    if m:
        res["handshake_failure"] = m.group(1)
    return res


def run_wsload(cmd, verbose=False):
    if verbose:
        print("    $ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if verbose:
        print("\n".join("    | " + l for l in out.rstrip().splitlines()), flush=True)
    if r.returncode not in (0, 2):  # 2: no WebSocket could be opened
        raise RuntimeError("wsload failed (status %d): %s" % (r.returncode, out.strip()[-500:]))
    return parse_wsload(out)


def error_summary(res):
    parts = [(name, res.get(key, 0)) for name, key in _ERRORS if res.get(key)]
    total = sum(v for _, v in parts)
    if not total:
        return "0"
    return "%d (%s)" % (total, ", ".join("%s %d" % p for p in parts))


class WsRunner:
    """Starts each server on the echo app and drives it with wsload.

    args needs: duration, warmup, connections, ws_size, ws_depth, ws_binary,
    server_cpu, wrk_cpu, workers, corsac_python, start_timeout, verbose.
    """

    def __init__(self, args, tmpdir):
        self.args = args
        self.tmpdir = tmpdir
        self.wsload = build_wsload(tmpdir)
        self._tools = {}

    def tool(self, name):
        if name not in self._tools:
            if name == "corsac":
                self._tools[name] = bl.corsac_python(self.args.corsac_python)
            else:
                self._tools[name] = bl.find_tool(name)
        return self._tools[name]

    def command(self, server, port):
        """(command line, note or None); raises bl.Skip."""
        a = self.args
        if server in CORSAC_ROWS:
            py = self.tool("corsac")
            if not py:
                raise bl.Skip("corsac not importable (tried %s)" % (
                    a.corsac_python or "this python and <repo>/.venv/bin/python"))
            helptext = bl.corsac_help(py)
            has_loop = "--loop" in helptext
            notes = []
            if server == "corsac-asyncio":
                if not has_loop:
                    raise bl.Skip("this corsac has no --loop option")
                loop = "asyncio"
            elif has_loop and bl.python_can_import(py, "uvloop"):
                loop = "uvloop"
            else:
                loop = None
                if has_loop:
                    notes.append("uvloop not importable: corsac ran with its default --loop")
            cmd = bl.corsac_cmd(py, APP, port, threads=1, workers=a.workers,
                                interface="asgi", loop=loop)
            if "--ws-per-message-deflate" in helptext:  # a boolean flag: --no-... turns it off
                cmd.append("--no-ws-per-message-deflate")
            else:
                notes.append("this corsac has no --ws-per-message-deflate option")
            return cmd, "; ".join(notes) or None
        if server in UVICORN_WS:
            u = self.tool("uvicorn")
            if not u:
                raise bl.Skip("uvicorn not installed (pip install 'uvicorn[standard]')")
            impl = UVICORN_WS[server]
            helptext = bl.tool_help([u])
            if impl not in helptext:
                raise bl.Skip("this uvicorn has no --ws %s" % impl)
            module = "wsproto" if impl == "wsproto" else "websockets"
            if not bl.script_can_import(u, module):
                raise bl.Skip("%s not installed next to uvicorn (pip install %s)"
                              % (module, module))
            cmd = bl.uvicorn_cmd(u, APP, port, workers=a.workers)
            extra = ["--ws", impl]
            if "--ws-per-message-deflate" in helptext:
                extra += ["--ws-per-message-deflate", "false"]
            return cmd[:-1] + extra + cmd[-1:], None
        if server == "granian-asgi":
            g = self.tool("granian")
            if not g:
                raise bl.Skip("granian not installed (pip install granian)")
            loop = None
            if "uvloop" in bl.tool_help([g]) and bl.script_can_import(g, "uvloop"):
                loop = "uvloop"
            cmd = bl.granian_cmd(g, APP, port, None, False, workers=a.workers,
                                 interface="asgi", loop=loop)
            # benchlib turns WebSockets off for the HTTP scenarios.
            return ["--ws" if x == "--no-ws" else x for x in cmd], None
        if server == "hypercorn":
            h = self.tool("hypercorn")
            if not h:
                raise bl.Skip("hypercorn not installed (pip install hypercorn)")
            if bl.script_can_import(h, "uvloop"):
                return bl.hypercorn_cmd(h, APP, port, "uvloop", workers=a.workers), None
            return (bl.hypercorn_cmd(h, APP, port, "asyncio", workers=a.workers),
                    "uvloop not importable: hypercorn ran its asyncio worker")
        raise AssertionError(server)

    def bench_one(self, server):
        """A result dict, or {'skip': reason} / {'error': reason}."""
        a = self.args
        port = bl.free_port()
        try:
            cmd, note = self.command(server, port)
        except bl.Skip as e:
            return {"skip": str(e)}
        log = os.path.join(self.tmpdir, "%s-%s.log" % (server, SCENARIO))
        if a.verbose:
            print("    $ " + " ".join(cmd), flush=True)
        srv = bl.Server(server, cmd, port, log, cpu=a.server_cpu)
        try:
            try:
                srv.wait_ready(READY_PATH, READY_BODY, a.start_timeout)
            except RuntimeError as e:
                tail = srv.log_tail()
                return {"error": str(e) + ("\n" + tail if tail else ""),
                        "failed_start": True}
            res = run_wsload(wsload_cmd(self.wsload, port, a.duration, a.warmup,
                                        a.connections, a.ws_size, a.ws_depth,
                                        a.ws_binary, a.wrk_cpu), a.verbose)
            notes = [note] if note else []
            if srv.proc.poll() is not None:
                notes.append("server exited during the run")
            if not res["conns_ok"]:
                return {"error": "no WebSocket could be opened: %s" % error_summary(res)
                        + ("; first failure: %s" % res["handshake_failure"]
                           if res.get("handshake_failure") else ""),
                        "result": res}
            notes.extend(oddities(res))
            if res.get("errors"):
                tail = srv.log_tail(8)
                if tail:
                    notes.append("server log tail:\n" + tail)
            if notes:
                res["note"] = "; ".join(notes)
            return res
        except RuntimeError as e:
            return {"error": str(e)}
        finally:
            srv.stop()


def oddities(res):
    """Notes on a result that looks wrong even when the numbers are fine."""
    out = []
    if res.get("handshake_failure"):
        out.append("%d of %d WebSockets opened; first failure: %s"
                   % (res["conns_ok"], res["conns"], res["handshake_failure"]))
    if res.get("stalled"):
        out.append("%d connection(s) waited more than 1 s for an echo at the end"
                   % res["stalled"])
    if res["rt_max"] and res["rt_min"] < res["rt_max"] / 2:
        out.append("unfair: round-trips per connection from %d to %d"
                   % (res["rt_min"], res["rt_max"]))
    if res.get("gap_us", 0) > GAP_NOTE_US:
        out.append("no echo at all on any connection for %s at one point"
                   % fmt_us(res["gap_us"]))
    if res.get("close_missing"):
        out.append("%d close frame(s) not answered within 2 s" % res["close_missing"])
    return out


def ratio(a, b):
    if not a or not b:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else "%.2fx" % r


def fmt_us(us):
    return "-" if us is None else bl.fmt_ms(us / 1000.0)


def print_results(results, args):
    """The ws-echo table, notes and ratios (results: server -> result dict)."""
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
        rows.append([
            server,
            "{:,.0f}".format(res["rps"]),
            fmt_us(res["avg_us"]),
            fmt_us(res["p50_us"]),
            fmt_us(res["p99_us"]),
            fmt_us(res["max_us"]),
            fmt_ratio(ratio(res["max_us"], res["avg_us"])),
            error_summary(res),
            "-" if server == "corsac" else fmt_ratio(ratio(c_rps, res["rps"])),
        ])
        if res.get("note"):
            notes.append("%s: %s" % (server, res["note"]))
    print()
    print("== %s: %s" % (SCENARIO, ABOUT.format(
        size=args.ws_size, kind="binary" if args.ws_binary else "text",
        depth=args.ws_depth)))
    print("   wsload -c%d -d%d -w%d (warm-up on the same connections), server on CPU %s, "
          "wsload on CPU %s; no compression offered"
          % (args.connections, args.duration, args.warmup,
             args.server_cpu or "any", args.wrk_cpu or "any"))
    if rows:
        print(bl.fmt_table(["server", "round-trips/s", "avg lat", "p50 lat", "p99 lat",
                            "max lat", "max/avg", "errors", "corsac/peer"], rows,
                           align="lrrrrrrlr"))
    for n in notes:
        print("   note: " + n.replace("\n", "\n         "))
    for who in CORSAC_ROWS:
        me = results.get(who, {})
        if not me.get("rps"):
            continue
        lines = []
        for peer, res in results.items():
            if peer in CORSAC_ROWS or not res.get("rps"):
                continue
            lines.append("     vs %-16s %s round-trips/s, p99 latency %s of the peer's"
                         % (peer, fmt_ratio(ratio(me["rps"], res["rps"])),
                            fmt_ratio(ratio(me["p99_us"], res["p99_us"]))))
        if lines:
            print("   %s against each peer (round-trips/s: above 1.00x is faster; "
                  "p99: below 1.00x is lower):" % who)
            print("\n".join(lines))
    sys.stdout.flush()


def outcome(res):
    if "skip" in res:
        return "skipped"
    if "error" in res:
        if res.get("failed_start"):
            return "failed to start"
        return "no WebSocket opened" if "result" in res else "FAILED"
    return "{:,.0f} round-trips/s".format(res["rps"])


def run_all(runner, servers, args):
    """Bench each server in turn, printing progress; returns the results."""
    results = {}
    for server in servers:
        print("-- %s / %s ..." % (SCENARIO, server),
              end="\n" if args.verbose else "", flush=True)
        res = results[server] = runner.bench_one(server)
        print("%s%s" % ("   -> " if args.verbose else " ", outcome(res)), flush=True)
    return results


def parse_servers(text):
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        for n in ALIASES.get(item, [item]):
            if n not in SERVERS:
                raise SystemExit("unknown server %r (choose from: %s)"
                                 % (n, ", ".join(SERVERS + list(ALIASES))))
            if n not in out:
                out.append(n)
    return out


def main(argv=None):
    args = build_args().parse_args(argv)
    servers = parse_servers(args.only)
    if args.duration < 1 or args.warmup < 0:
        raise SystemExit("--duration must be >= 1 and --warmup >= 0 (whole seconds)")
    if args.connections < 1 or args.ws_depth < 1 or args.ws_size < 0:
        raise SystemExit("--connections and --depth must be >= 1, --size >= 0")
    bl.install_signal_handlers()
    with tempfile.TemporaryDirectory(prefix="corsac-wsbench-") as tmpdir:
        runner = WsRunner(args, tmpdir)
        if not bl.taskset_prefix("0"):
            print("warning: taskset not found; servers and wsload are not pinned",
                  file=sys.stderr)
        print("corsac ws bench: python %s, %d CPUs, %s"
              % (sys.executable, os.cpu_count() or 0, time.strftime("%Y-%m-%d %H:%M:%S")))
        try:
            results = run_all(runner, servers, args)
            print_results(results, args)
        except KeyboardInterrupt:
            print("\ninterrupted; servers stopped", file=sys.stderr)
            return 130
        finally:
            bl.stop_all()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": {SCENARIO: results}}, f, indent=2)
        print("results written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
