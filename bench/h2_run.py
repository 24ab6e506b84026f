#!/usr/bin/env python3
"""HTTP/2 benchmark: Corsac against Granian and Hypercorn with h2load.

`GET /` on the minimal hello apps (apps/asgi_hello.py for the ASGI servers,
apps/hello.py for the WSGI rows), each server with one worker pinned to one
CPU, h2load (nghttp2-client) pinned to another, one server at a time, in two
modes:

* `h2c` - HTTP/2 over plain TCP with prior knowledge (h2load on http://);
* `h2`  - HTTP/2 over TLS, negotiated with ALPN (h2load on https://), with a
          throw-away trustme certificate (ECDSA P-256 by default).

Default load: `h2load -c16 -m32 -t1 -D10 --warm-up-time 2`, i.e. 16
connections with 32 streams in flight on each. Latency percentiles come from
h2load's per-request log (--log-file), which covers the measured period only.

The script only prints numbers and ratios; it never fails on a slow result.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
import benchlib as bl  # noqa: E402
import tls_run as tr  # noqa: E402  (certificates, curl readiness, command lines)

SERVERS = ["corsac", "corsac-wsgi", "granian-asgi", "granian", "hypercorn"]
ALIASES = {"all": SERVERS, "asgi": ["corsac", "granian-asgi", "hypercorn"],
           "wsgi": ["corsac-wsgi", "granian"]}
WSGI_SERVERS = ("corsac-wsgi", "granian")
CORSAC_ROWS = ("corsac", "corsac-wsgi")
MODES = ["h2c", "h2"]
MODE_ABOUT = {"h2c": "HTTP/2 with prior knowledge over plain TCP (http://)",
              "h2": "HTTP/2 over TLS via ALPN (https://)"}


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints tables of req/s and latency, "
        "and ratios.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(SERVERS),
                   help="comma-separated servers: " + ", ".join(SERVERS)
                   + " ('asgi', 'wsgi', 'all')")
    p.add_argument("--mode", default=",".join(MODES),
                   help="comma-separated: h2c (prior knowledge, plain), h2 (TLS + ALPN)")
    p.add_argument("--duration", type=int, default=10, help="measured seconds (h2load -D)")
    p.add_argument("--warmup", type=int, default=2, help="h2load --warm-up-time seconds")
    p.add_argument("--connections", "-c", type=int, default=16, help="h2load -c")
    p.add_argument("--streams", "-m", type=int, default=32,
                   help="h2load -m: streams in flight per connection")
    p.add_argument("--h2load-threads", type=int, default=1, help="h2load -t")
    p.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa",
                   help="certificate key for the h2 mode")
    p.add_argument("--http", dest="http_flag", default="auto", choices=["auto", "2"],
                   help="--http value for Corsac and Granian (both: auto = h2 by ALPN "
                   "and prior knowledge, HTTP/1.1 otherwise; 2 = HTTP/2 only)")
    p.add_argument("--no-percentiles", action="store_true",
                   help="do not ask h2load for its per-request log (no p50/p99)")
    p.add_argument("--server-cpu", default="0",
                   help="CPU list for the server (taskset -c); '' = no pinning")
    p.add_argument("--load-cpu", "--wrk-cpu", dest="wrk_cpu", default="1",
                   help="CPU list for h2load (taskset -c); '' = no pinning")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--granian-blocking-threads", type=int, default=2,
                   help="Granian WSGI --blocking-threads (0: Granian's default)")
    p.add_argument("--corsac-python", default=None,
                   help="interpreter for `-m corsac` (default: this one if it can "
                   "import corsac, else <repo>/.venv/bin/python)")
    p.add_argument("--start-timeout", type=float, default=30,
                   help="seconds to wait for a server to answer")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print commands and h2load's raw output")
    return p


# ------------------------------------------------------------------ h2load

def h2load_cmd(h2load, url, args, logfile=None):
    cmd = bl.taskset_prefix(args.wrk_cpu) + [
        h2load, "-c", str(args.connections), "-m", str(args.streams),
        "-t", str(args.h2load_threads), "-D", str(args.duration),
        "--warm-up-time", str(args.warmup)]
    if logfile:
        cmd += ["--log-file", logfile]
    return cmd + [url]


_H2_TIME = r"([\d.]+(?:us|ms|s))"


def parse_h2load(out):
    res = {}
    m = re.search(r"^finished in ([\d.]+\w+), ([\d.]+) req/s", out, re.M)
    if not m:
        raise RuntimeError("could not parse h2load output:\n" + out.strip()[-1500:])
    res["rps"] = float(m.group(2))
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out, re.M)
    if m:
        for k, v in zip(("total", "started", "done", "succeeded", "failed", "errored",
                         "timeout"), m.groups()):
            res[k] = int(v)
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M)
    if m:
        res["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups())))
    m = re.search(r"^time for request:\s+%s\s+%s\s+%s\s+%s" % ((_H2_TIME,) * 4), out, re.M)
    if m:
        (res["lat_min_ms"], res["lat_max_ms"], res["lat_mean_ms"],
         res["lat_sd_ms"]) = (bl.parse_time_ms(x) for x in m.groups())
    m = re.search(r"^Application protocol: (\S+)", out, re.M)
    res["proto"] = m.group(1) if m else None
    m = re.search(r"^TLS Protocol: (\S+)", out, re.M)
    if m:
        res["tls"] = m.group(1)
    m = re.search(r"^Cipher: (\S+)", out, re.M)
    if m:
        res["cipher"] = m.group(1)
    return res


def log_percentiles(path):
    """p50/p90/p99/max in ms from an h2load --log-file (3rd column: us)."""
    vals = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    try:
                        vals.append(int(parts[2]))
                    except ValueError:
                        pass
    except OSError:
        return {}
    if not vals:
        return {}
    vals.sort()
    n = len(vals)
    pick = lambda p: vals[min(n - 1, int(round(p / 100.0 * (n - 1))))] / 1000.0  # noqa: E731
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "max": vals[-1] / 1000.0,
            "samples": n}


def run_h2load(cmd, verbose=False):
    """Run h2load; returns (parsed, raw output, CPU seconds h2load used)."""
    if verbose:
        print("    $ " + " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = r.stdout + r.stderr
    if verbose:
        print("\n".join("    | " + l for l in out.rstrip().splitlines()
                        if not l.startswith("progress:")), flush=True)
    if r.returncode != 0:
        raise RuntimeError("h2load failed (status %d): %s" % (r.returncode, out.strip()[-800:]))
    return parse_h2load(out), out, cpu


# ---------------------------------------------------------------- servers

class H2Runner:
    def __init__(self, args, tmpdir):
        self.args = args
        self.tmpdir = tmpdir
        self.certs = None
        if "h2" in args.modes:
            self.certs = tr.make_certs(os.path.join(tmpdir, "certs"), args.key_type)
        self._tools = {}

    def tool(self, name):
        if name not in self._tools:
            if name == "corsac":
                self._tools[name] = bl.corsac_python(self.args.corsac_python)
            else:
                self._tools[name] = bl.find_tool(name)
        return self._tools[name]

    def command(self, server, port, mode):
        """(command line, note or None); raises bl.Skip."""
        a = self.args
        certs = self.certs if mode == "h2" else None
        if server in CORSAC_ROWS:
            py = self.tool("corsac")
            if not py:
                raise bl.Skip("corsac not importable (tried %s)" % (
                    a.corsac_python or "this python and <repo>/.venv/bin/python"))
            return tr.corsac_tls_cmd(py, server, port, certs, a, http=a.http_flag)
        if server in ("granian", "granian-asgi"):
            g = self.tool("granian")
            if not g:
                raise bl.Skip("granian not installed (pip install granian)")
            return tr.granian_tls_cmd(g, server, port, certs, a, http=a.http_flag), None
        if server == "hypercorn":
            h = self.tool("hypercorn")
            if not h:
                raise bl.Skip("hypercorn not installed (pip install hypercorn)")
            k, note = "uvloop", None
            if not bl.script_can_import(h, "uvloop"):
                k, note = "asyncio", "uvloop not importable: hypercorn ran its asyncio worker"
            cmd = bl.hypercorn_cmd(h, tr.ASGI_APP, port, k, workers=a.workers)
            if certs:
                cmd = cmd[:-1] + ["--certfile", certs["cert"], "--keyfile", certs["key"]] \
                    + cmd[-1:]
            return cmd, note
        raise AssertionError(server)

    def bench_one(self, server, mode):
        a = self.args
        port = bl.free_port()
        try:
            cmd, note = self.command(server, port, mode)
        except bl.Skip as e:
            return {"skip": str(e)}
        log = os.path.join(self.tmpdir, "%s-%s.log" % (server, mode))
        if a.verbose:
            print("    $ " + " ".join(cmd), flush=True)
        scheme = "https" if mode == "h2" else "http"
        url = "%s://%s:%d/" % (scheme, bl.HOST, port)
        srv = bl.Server(server, cmd, port, log, cpu=a.server_cpu)
        try:
            try:
                tr.wait_ready_curl(srv, url, mode, cacert=self.certs["ca"] if self.certs
                                   else None, timeout=a.start_timeout)
            except RuntimeError as e:
                tail = srv.log_tail()
                return {"error": str(e) + ("\n" + tail if tail else ""), "failed_start": True}
            reqlog = None if a.no_percentiles else os.path.join(
                self.tmpdir, "%s-%s.reqlog" % (server, mode))
            with tr.CpuMeter(srv.pid) as meter:
                res, out, cpu = run_h2load(h2load_cmd(self.tool("h2load"), url, a, reqlog),
                                           a.verbose)
            res["server_cpu"] = meter.share
            res["per_cpu"] = tr.per_cpu(res["rps"], meter.share)
            res["client_cpu"] = cpu / float(a.duration + a.warmup)
            if reqlog:
                res["pct"] = log_percentiles(reqlog)
                try:
                    os.unlink(reqlog)
                except OSError:
                    pass
            notes = [note] if note else []
            want = "h2c" if mode == "h2c" else "h2"
            if res["proto"] != want:
                return {"error": "h2load spoke %s, not %s" % (res["proto"], want),
                        "result": res}
            if srv.proc.poll() is not None:
                notes.append("server exited during the run (status %s)"
                             % srv.proc.returncode)
            if not res.get("succeeded"):
                tail = srv.log_tail(8)
                return {"error": "no request succeeded: %s" % error_summary(res)
                        + ("\n" + tail if tail else ""), "result": res}
            if res.get("failed") or res.get("timeout") or _non2xx(res):
                tail = srv.log_tail(8)
                hint = ""
                if (not res.get("timeout") and not _non2xx(res)
                        and res.get("failed", 0) <= a.connections * a.streams):
                    hint = (" (no more than the %d streams in flight: likely requests still "
                            "unanswered when h2load stopped at the end of -D)"
                            % (a.connections * a.streams))
                notes.append("errors: %s%s" % (error_summary(res), hint)
                             + ("; server log tail:\n" + tail if tail else ""))
            if notes:
                res["note"] = "; ".join(notes)
            return res
        except RuntimeError as e:
            return {"error": str(e)}
        finally:
            srv.stop()


def _non2xx(res):
    st = res.get("status") or {}
    return sum(v for k, v in st.items() if k != "2xx")


def error_summary(res):
    parts = [(k, res.get(k, 0)) for k in ("failed", "errored", "timeout") if res.get(k)]
    n = _non2xx(res)
    if n:
        parts.append(("non-2xx", n))
    if not parts:
        return "0"
    return ", ".join("%s %d" % p for p in parts)


def outcome(res):
    if "skip" in res:
        return "skipped"
    if "error" in res:
        return "failed to start" if res.get("failed_start") else "FAILED"
    return "{:,.0f} req/s".format(res["rps"])


def ratio(a, b):
    if not a or not b:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else "%.2fx" % r


def print_results(mode, results, args, certs):
    iface = lambda s: "WSGI" if s in WSGI_SERVERS else "ASGI"  # noqa: E731
    rows, notes = [], []
    tls_seen, tls_by_server = set(), []
    for server, res in results.items():
        if "skip" in res:
            notes.append("%s: skipped - %s" % (server, res["skip"]))
            continue
        if "error" in res:
            notes.append("%s: %s - %s" % (
                server, "failed to start" if res.get("failed_start") else "FAILED",
                res["error"]))
            continue
        pct = res.get("pct") or {}
        if server in CORSAC_ROWS:
            cell = "-"
        else:
            me = results.get("corsac-wsgi" if server in WSGI_SERVERS else "corsac", {})
            cell = fmt_ratio(ratio(me.get("rps"), res["rps"]))
        rows.append([server, iface(server), "{:,.0f}".format(res["rps"]),
                     bl.fmt_ms(res.get("lat_mean_ms")), bl.fmt_ms(res.get("lat_sd_ms")),
                     bl.fmt_ms(pct.get("p50")), bl.fmt_ms(pct.get("p99")),
                     bl.fmt_ms(res.get("lat_max_ms")), "%.2f" % res["server_cpu"],
                     tr.fmt_count(res.get("per_cpu")),
                     "%.2f" % res["client_cpu"],
                     error_summary(res), cell])
        if res.get("tls"):
            tls_seen.add("%s %s" % (res["tls"], res.get("cipher", "")))
            tls_by_server.append("%s %s %s" % (server, res["tls"], res.get("cipher", "?")))
        if res.get("note"):
            notes.append("%s: %s" % (server, res["note"]))
    print()
    print("== %s: GET / on the hello apps, %s" % (mode, MODE_ABOUT[mode]))
    print("   h2load -c%d -m%d -t%d -D%d --warm-up-time %d; server on CPU %s, h2load on CPU %s"
          "; Corsac/Granian --http %s%s"
          % (args.connections, args.streams, args.h2load_threads, args.duration,
             args.warmup, args.server_cpu or "any", args.wrk_cpu or "any", args.http_flag,
             ("; %s, %s" % (certs["made_by"], ", ".join(sorted(tls_seen)) or "?"))
             if mode == "h2" and certs else ""))
    if rows:
        print(bl.fmt_table(["server", "app", "req/s", "mean lat", "sd", "p50 lat", "p99 lat",
                            "max lat", "server CPU", "per CPU-s", "h2load CPU", "errors",
                            "corsac/peer"], rows, align="llrrrrrrrrrlr"))
    if len(tls_seen) > 1:
        print("   TLS negotiated: " + ", ".join(tls_by_server))
    for n in notes:
        print("   note: " + n.replace("\n", "\n         "))
    busy = [s for s, r in results.items() if r.get("client_cpu", 0) >= 0.9]
    if busy:
        print("   note: h2load used >= 0.9 of its CPU for %s: the load generator may be "
              "the limit there" % ", ".join(busy))
    for who in CORSAC_ROWS:
        mine = results.get(who, {})
        if not mine.get("rps"):
            continue
        lines = []
        for peer, res in results.items():
            if peer in CORSAC_ROWS or not res.get("rps"):
                continue
            line = "     vs %-14s %s req/s" % (peer, fmt_ratio(ratio(mine["rps"], res["rps"])))
            if mine.get("per_cpu") and res.get("per_cpu"):
                line += ", %s per server CPU-second" % fmt_ratio(
                    ratio(mine["per_cpu"], res["per_cpu"]))
            p_me, p_peer = (mine.get("pct") or {}).get("p99"), (res.get("pct") or {}).get("p99")
            if p_me and p_peer:
                line += ", p99 latency %s of the peer's" % fmt_ratio(ratio(p_me, p_peer))
            lines.append(line)
        if lines:
            print("   %s (%s) against each peer (req/s: above 1.00x is faster; "
                  "p99: below 1.00x is lower):" % (who, iface(who)))
            print("\n".join(lines))
    sys.stdout.flush()


def main(argv=None):
    args = build_args().parse_args(argv)
    servers = tr.parse_list(args.only, SERVERS, ALIASES, "server")
    args.modes = tr.parse_list(args.mode, MODES, {"all": MODES, "tls": ["h2"]}, "mode")
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.streams < 1:
        raise SystemExit("--duration, -c and -m must be >= 1, --warmup >= 0")
    h2load = bl.find_tool("h2load")
    if not h2load:
        raise SystemExit("h2load not found (apt-get install nghttp2-client)")
    if not shutil.which("curl"):
        raise SystemExit("curl not found (apt-get install curl)")
    bl.install_signal_handlers()
    with tempfile.TemporaryDirectory(prefix="corsac-h2bench-") as tmpdir:
        runner = H2Runner(args, tmpdir)
        if not bl.taskset_prefix("0"):
            print("warning: taskset not found; servers and h2load are not pinned",
                  file=sys.stderr)
        print("corsac h2 bench: python %s, %d CPUs, %s, load average %s"
              % (sys.executable, os.cpu_count() or 0, time.strftime("%Y-%m-%d %H:%M:%S"),
                 " ".join("%.2f" % x for x in os.getloadavg())))
        all_results = {}
        try:
            for mode in args.modes:
                results = all_results[mode] = {}
                for server in servers:
                    print("-- %s / %s ..." % (mode, server),
                          end="\n" if args.verbose else "", flush=True)
                    res = results[server] = runner.bench_one(server, mode)
                    print("%s%s" % ("   -> " if args.verbose else " ", outcome(res)),
                          flush=True)
            for mode in args.modes:
                print_results(mode, all_results[mode], args, runner.certs)
        except KeyboardInterrupt:
            print("\ninterrupted; servers stopped", file=sys.stderr)
            return 130
        finally:
            bl.stop_all()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()},
                       "results": all_results}, f, indent=2)
        print("results written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
