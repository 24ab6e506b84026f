#!/usr/bin/env python3
"""TLS benchmark: Corsac against Granian, uvicorn (and Hypercorn) over HTTPS/1.1.

Three scenarios on the same app per server (apps/asgi_hello.py for the ASGI
servers, apps/hello.py for the WSGI rows), each server with one worker
pinned to one CPU and the load generator pinned to another, one server at a
time, all serving the same throw-away certificate (trustme, ECDSA P-256 by
default; --key-type rsa for RSA-2048):

* `https-keepalive`  - wrk over https://, keep-alive, 64 connections:
                       requests/s once the connections are open (TLS record
                       layer cost on top of HTTP/1.1).
* `tls-full`         - new connections per second, each one TCP connect +
                       full TLS handshake + one `GET /` with `Connection:
                       close` + close (bench/tlsconn.c, compiled with cc at
                       start), no session offered.
* `tls-resumed`      - the same with session resumption: each client thread
                       offers the session (ticket) of its previous connection.

The script only prints numbers and ratios; it never fails on a slow result.
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

TLSCONN_C = os.path.join(bl.BENCH_DIR, "tlsconn.c")
ASGI_APP, WSGI_APP = "asgi_hello:app", "hello:app"
READY_PATH, READY_BODY = "/", b"Hello, World!"

SERVERS = ["corsac", "corsac-wsgi", "granian-asgi", "granian", "uvicorn", "hypercorn"]
DEFAULT_SERVERS = ["corsac", "corsac-wsgi", "granian-asgi", "granian", "uvicorn"]
ALIASES = {"all": SERVERS, "asgi": ["corsac", "granian-asgi", "uvicorn", "hypercorn"],
           "wsgi": ["corsac-wsgi", "granian"]}
WSGI_SERVERS = ("corsac-wsgi", "granian")
CORSAC_ROWS = ("corsac", "corsac-wsgi")
SCENARIOS = ["https-keepalive", "tls-full", "tls-resumed"]


# ------------------------------------------------------------ certificates

_CERT_SCRIPT = r"""
import sys, trustme
from cryptography.hazmat.primitives import serialization
out, key_type = sys.argv[1], sys.argv[2]
kt = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
ca = trustme.CA(key_type=kt)
leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=kt)
with open(out + "/cert.pem", "wb") as f:
    for blob in leaf.cert_chain_pems:
        f.write(blob.bytes())
key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
with open(out + "/key.pem", "wb") as f:   # PKCS#8: Granian reads no other form
    f.write(key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
ca.cert_pem.write_to_path(out + "/ca.pem")
"""


def make_certs(outdir, key_type="ecdsa", python=None):
    """A CA and a leaf certificate for 127.0.0.1/localhost in outdir.

    Uses trustme (with the first of python, this interpreter, <repo>/.venv's
    that can import it), else the openssl command line. Returns a dict with
    cert (leaf chain), key (PKCS#8), ca, and how they were made.
    """
    os.makedirs(outdir, exist_ok=True)
    paths = {n: os.path.join(outdir, n + ".pem") for n in ("cert", "key", "ca")}
    for py in (python, sys.executable, os.path.join(bl.REPO_DIR, ".venv", "bin", "python")):
        if py and os.path.exists(py) and bl.python_can_import(py, "trustme"):
            r = subprocess.run([py, "-c", _CERT_SCRIPT, outdir, key_type],
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                return dict(paths, made_by="trustme (%s)" % key_type)
            raise SystemExit("certificate generation with trustme failed:\n" + r.stderr)
    openssl = shutil.which("openssl")
    if not openssl:
        raise SystemExit("neither trustme nor the openssl command is available to make a "
                         "certificate (.venv/bin/pip install trustme)")
    newkey = (["-newkey", "rsa:2048"] if key_type == "rsa"
              else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])

    def run(args):
        r = subprocess.run([openssl] + args, capture_output=True, text=True, cwd=outdir)
        if r.returncode != 0:
            raise SystemExit("openssl %s failed:\n%s" % (args[0], r.stderr))
    run(["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=corsac bench CA"]
        + newkey + ["-keyout", "ca-key.pem", "-out", "ca.pem"])
    run(["req", "-new", "-nodes", "-subj", "/CN=localhost"] + newkey
        + ["-keyout", "key.pem", "-out", "leaf.csr"])
    with open(os.path.join(outdir, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
         "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "cert.pem"])
    return dict(paths, made_by="openssl command (%s)" % key_type)


# --------------------------------------------------------------- readiness

def wait_ready_curl(srv, url, proto, cacert=None, expect=READY_BODY, timeout=30.0):
    """Poll with curl until the app answers 200 with expect, over the
    protocol wanted: proto is '1.1' (HTTP/1.1, over TLS if url is https),
    'h2c' (HTTP/2 with prior knowledge) or 'h2' (HTTP/2 via ALPN over TLS).

    A server that answers over another protocol than asked (e.g. HTTP/1.1
    when h2 was offered by ALPN) fails at once: it would not measure what
    the scenario claims. Raises RuntimeError.
    """
    curl = shutil.which("curl")
    if not curl:
        raise RuntimeError("curl not found (apt-get install curl)")
    flag = {"1.1": "--http1.1", "h2c": "--http2-prior-knowledge", "h2": "--http2"}[proto]
    want_version = "1.1" if proto == "1.1" else "2"
    cmd = [curl, "-s", "--max-time", "2", flag, "-o", "-",
           "-w", "\n@@%{http_code} %{http_version}", url]
    if cacert:
        cmd[1:1] = ["--cacert", cacert]
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError("%s exited with status %s during start-up"
                               % (srv.name, srv.proc.returncode))
        r = subprocess.run(cmd, capture_output=True, timeout=10)
        out = r.stdout
        body, _, tail = out.rpartition(b"\n@@")
        try:
            code, version = tail.decode().split()
        except ValueError:
            code, version = "000", "0"
        if code == "200" and expect in body:
            if version != want_version:
                raise RuntimeError("%s answers over HTTP/%s, not HTTP/%s"
                                   % (srv.name, version, want_version))
            return
        last = ("curl status %d" % r.returncode if code == "000"
                else "HTTP %s %r" % (code, body[:80]))
        time.sleep(0.1)
    raise RuntimeError("%s not ready after %.0fs (%s)" % (srv.name, timeout, last))


def group_cpu_seconds(pgid):
    """CPU time (user + system, seconds) used so far by the live processes of
    process group pgid (a bl.Server runs in its own group), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        # after the command: state ppid pgrp session ... utime(12) stime(13)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / float(tick)


class CpuMeter:
    """Share of one CPU the server's process group used between start() and stop()."""

    def __init__(self, pgid):
        self.pgid = pgid

    def __enter__(self):
        self.t0, self.c0 = time.monotonic(), group_cpu_seconds(self.pgid)
        return self

    def __exit__(self, *exc):
        wall = time.monotonic() - self.t0
        self.share = (group_cpu_seconds(self.pgid) - self.c0) / wall if wall > 0 else 0.0
        return False


# ------------------------------------------------------------- tlsconn

def build_tlsconn(outdir):
    """Compile bench/tlsconn.c into outdir; returns the binary's path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("no C compiler found: it is needed to build bench/tlsconn.c")
    out = os.path.join(outdir, "tlsconn")
    r = subprocess.run([cc, "-O2", "-o", out, TLSCONN_C, "-lssl", "-lcrypto", "-lpthread"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("building tlsconn failed (OpenSSL headers: apt-get install "
                         "libssl-dev):\n" + r.stdout + r.stderr)
    return out


def tlsconn_cmd(tlsconn, port, duration, warmup, threads, resume=False, tls="1.3",
                cpu=None):
    cmd = bl.taskset_prefix(cpu) + [tlsconn, "-c", str(threads), "-d", str(duration),
                                     "-w", str(warmup), "-v", tls]
    if resume:
        cmd.append("-r")
    return cmd + ["%s:%d" % (bl.HOST, port)]


def run_tlsconn(cmd, verbose=False):
    if verbose:
        print("    $ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if verbose:
        print("\n".join("    | " + l for l in out.rstrip().splitlines()), flush=True)
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if r.returncode not in (0, 2) or not m:
        raise RuntimeError("tlsconn failed (status %d): %s" % (r.returncode, out.strip()[-500:]))
    res = {}
    for k, v in (kv.split("=", 1) for kv in m.group(1).split()):
        try:
            res[k] = float(v) if "." in v else int(v)
        except ValueError:
            res[k] = v
    m = re.search(r"^first error: (.*)$", out, re.M)
    if m:
        res["first_error"] = m.group(1)
    return res


_TLSCONN_ERRORS = (("connect", "err_connect"), ("handshake", "err_handshake"),
                   ("write", "err_write"), ("read", "err_read"), ("status", "err_status"))


def tlsconn_errors(res):
    parts = [(n, res.get(k, 0)) for n, k in _TLSCONN_ERRORS if res.get(k)]
    total = sum(v for _, v in parts)
    if not total:
        return "0"
    return "%d (%s)" % (total, ", ".join("%s %d" % p for p in parts))


# ---------------------------------------------------------------- servers

def corsac_tls_cmd(py, server, port, certs, args, http=None):
    """Corsac's command line (ASGI on uvloop when it can, or WSGI), with TLS
    when certs is given; raises bl.Skip. Shared with h2_run.py."""
    helptext = bl.corsac_help(py)
    if certs and "--ssl-certfile" not in helptext:
        raise bl.Skip("this corsac has no --ssl-certfile (no TLS yet)")
    if http and "--http " not in helptext and "--http\n" not in helptext:
        raise bl.Skip("this corsac has no --http option (no HTTP/2 yet)")
    notes = []
    if server.startswith("corsac-wsgi"):
        cmd = bl.corsac_cmd(py, WSGI_APP, port, threads=1, workers=args.workers,
                            interface="wsgi" if "--interface" in helptext else None)
    else:
        loop = None
        if "--loop" in helptext:
            if bl.python_can_import(py, "uvloop"):
                loop = "uvloop"
            else:
                notes.append("uvloop not importable: corsac ran with its default --loop")
        cmd = bl.corsac_cmd(py, ASGI_APP, port, threads=1, workers=args.workers,
                            interface="asgi", loop=loop)
    if http:
        cmd += ["--http", http]
    if certs:
        cmd += ["--ssl-certfile", certs["cert"], "--ssl-keyfile", certs["key"]]
    return cmd, "; ".join(notes) or None


def granian_tls_cmd(g, server, port, certs, args, http="1"):
    """Granian (ASGI on uvloop, or WSGI with --blocking-threads) with --http
    http and TLS when certs is given. Shared with h2_run.py."""
    helptext = bl.tool_help([g])
    if server.startswith("granian-asgi"):
        loop = "uvloop" if ("uvloop" in helptext and bl.script_can_import(g, "uvloop")) else None
        cmd = bl.granian_cmd(g, ASGI_APP, port, None, False, workers=args.workers,
                             interface="asgi", loop=loop)
    else:
        cmd = bl.granian_cmd(g, WSGI_APP, port, args.granian_blocking_threads, False,
                             workers=args.workers, interface="wsgi")
    i = cmd.index("--http")
    cmd[i + 1] = http
    extra = []
    if certs:
        extra = ["--ssl-certificate", certs["cert"], "--ssl-keyfile", certs["key"]]
        if "--ssl-protocol-min" in helptext:  # Granian's default floor is TLS 1.3
            extra += ["--ssl-protocol-min", "tls1.2"]
    return cmd[:-1] + extra + cmd[-1:]


class TlsRunner:
    def __init__(self, args, tmpdir):
        self.args = args
        self.tmpdir = tmpdir
        self.certs = make_certs(os.path.join(tmpdir, "certs"), args.key_type)
        self.tlsconn = build_tlsconn(tmpdir)
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
        a, certs = self.args, self.certs
        if server in CORSAC_ROWS:
            py = self.tool("corsac")
            if not py:
                raise bl.Skip("corsac not importable (tried %s)" % (
                    a.corsac_python or "this python and <repo>/.venv/bin/python"))
            return corsac_tls_cmd(py, server, port, certs, a)
        if server in ("granian", "granian-asgi"):
            g = self.tool("granian")
            if not g:
                raise bl.Skip("granian not installed (pip install granian)")
            return granian_tls_cmd(g, server, port, certs, a, http="1"), None
        if server == "uvicorn":
            u = self.tool("uvicorn")
            if not u:
                raise bl.Skip("uvicorn not installed (pip install 'uvicorn[standard]')")
            cmd = bl.uvicorn_cmd(u, ASGI_APP, port, workers=a.workers)
            return cmd[:-1] + ["--ssl-certfile", certs["cert"],
                               "--ssl-keyfile", certs["key"]] + cmd[-1:], None
        if server == "hypercorn":
            h = self.tool("hypercorn")
            if not h:
                raise bl.Skip("hypercorn not installed (pip install hypercorn)")
            k, note = "uvloop", None
            if not bl.script_can_import(h, "uvloop"):
                k, note = "asyncio", "uvloop not importable: hypercorn ran its asyncio worker"
            cmd = bl.hypercorn_cmd(h, ASGI_APP, port, k, workers=a.workers)
            return cmd[:-1] + ["--certfile", certs["cert"],
                               "--keyfile", certs["key"]] + cmd[-1:], note
        raise AssertionError(server)

    def wrk(self, port, duration):
        a = self.args
        cmd = bl.wrk_cmd(self.tool("wrk"), "https://%s:%d/" % (bl.HOST, port), duration,
                         connections=a.connections, threads=1, cpu=a.wrk_cpu)
        if a.verbose:
            print("    $ " + " ".join(cmd), flush=True)
        res, out = bl.run_wrk(cmd)
        if a.verbose:
            print("\n".join("    | " + l for l in out.rstrip().splitlines()), flush=True)
        return res

    def bench_server(self, server, scenarios):
        """{scenario: result dict} for one server, started once for all of them;
        a result is {'skip'|'error': reason} when it could not run."""
        a = self.args
        port = bl.free_port()
        try:
            cmd, note = self.command(server, port)
        except bl.Skip as e:
            return {sc: {"skip": str(e)} for sc in scenarios}
        log = os.path.join(self.tmpdir, "%s.log" % server)
        if a.verbose:
            print("    $ " + " ".join(cmd), flush=True)
        srv = bl.Server(server, cmd, port, log, cpu=a.server_cpu)
        results = {}
        try:
            try:
                wait_ready_curl(srv, "https://%s:%d%s" % (bl.HOST, port, READY_PATH),
                                "1.1", cacert=self.certs["ca"], timeout=a.start_timeout)
            except RuntimeError as e:
                tail = srv.log_tail()
                err = {"error": str(e) + ("\n" + tail if tail else ""), "failed_start": True}
                return {sc: dict(err) for sc in scenarios}
            for sc in scenarios:
                if srv.proc.poll() is not None:
                    results[sc] = {"error": "server exited (status %s) before this scenario"
                                   % srv.proc.returncode}
                    continue
                print("-- %s / %s ..." % (sc, server), end="\n" if a.verbose else "",
                      flush=True)
                try:
                    with CpuMeter(srv.pid) as meter:
                        res = self.run_scenario(sc, port)
                    res["server_cpu"] = meter.share
                    res["per_cpu"] = per_cpu(res.get("rps") or res.get("rate"), meter.share)
                except RuntimeError as e:
                    res = {"error": str(e)}
                notes = [note] if note and "error" not in res else []
                if srv.proc.poll() is not None:
                    notes.append("server exited during the run")
                if sc != "https-keepalive" and res.get("errors"):
                    notes.append("first error: %s" % res.get("first_error", "?"))
                if sc == "tls-resumed" and res.get("conns") and res["resumed"] < res["conns"]:
                    notes.append("only %d of %d connections resumed"
                                 % (res["resumed"], res["conns"]))
                if notes:
                    res["note"] = "; ".join(notes)
                results[sc] = res
                print("%s%s" % ("   -> " if a.verbose else " ", outcome(sc, res)), flush=True)
            return results
        finally:
            srv.stop()

    def run_scenario(self, sc, port):
        a = self.args
        if sc == "https-keepalive":
            if not self.tool("wrk"):
                return {"skip": "wrk not found (apt-get install wrk)"}
            if a.warmup > 0:
                self.wrk(port, a.warmup)
            return self.wrk(port, a.duration)
        runs = [run_tlsconn(tlsconn_cmd(self.tlsconn, port, a.duration, a.warmup,
                                        a.threads, resume=(sc == "tls-resumed"),
                                        tls=a.tls_version, cpu=a.wrk_cpu), a.verbose)
                for _ in range(a.repeat)]
        best = max(runs, key=lambda r: r["rate"])
        best["runs"] = [r["rate"] for r in runs]
        if not best.get("conns"):
            return {"error": "no connection succeeded: %s; first error: %s"
                    % (tlsconn_errors(best), best.get("first_error", "?"))}
        return best


def outcome(sc, res):
    if "skip" in res:
        return "skipped"
    if "error" in res:
        return "failed to start" if res.get("failed_start") else "FAILED"
    if sc == "https-keepalive":
        return "{:,.0f} req/s".format(res["rps"])
    return "{:,.0f} conns/s".format(res["rate"])


def ratio(a, b):
    if not a or not b:
        return None
    return a / b


def fmt_ratio(r):
    return "-" if r is None else "%.2fx" % r


def fmt_us(us):
    return "-" if us is None else bl.fmt_ms(us / 1000.0)


def peers_for(me, results):
    """Rows a Corsac row is compared with: every non-Corsac row."""
    return [(p, r) for p, r in results.items() if p not in CORSAC_ROWS and p != me]


def print_ratio_lines(results, key, unit, lat_key=None):
    for who in CORSAC_ROWS:
        mine = results.get(who, {})
        if not mine.get(key):
            continue
        lines = []
        for peer, res in peers_for(who, results):
            if not res.get(key):
                continue
            line = "     vs %-14s %s %s" % (peer, fmt_ratio(ratio(mine[key], res[key])), unit)
            if mine.get("per_cpu") and res.get("per_cpu"):
                line += ", %s per server CPU-second" % fmt_ratio(
                    ratio(mine["per_cpu"], res["per_cpu"]))
            if lat_key and mine.get(lat_key) and res.get(lat_key):
                line += ", p99 latency %s of the peer's" % fmt_ratio(
                    ratio(mine[lat_key], res[lat_key]))
            lines.append(line)
        if lines:
            print("   %s (%s) against each peer (%s: above 1.00x is faster%s):"
                  % (who, "WSGI" if who in WSGI_SERVERS else "ASGI", unit,
                     "; p99: below 1.00x is lower" if lat_key else ""))
            print("\n".join(lines))


def per_cpu(rate, cpu_share):
    """Work per second of server CPU time: rate / the share of a CPU it used."""
    if not rate or not cpu_share or cpu_share < 0.05:
        return None
    return rate / cpu_share


def fmt_count(x):
    return "-" if x is None else "{:,.0f}".format(x)


def collect_notes(results, rows_fn):
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
        rows.append(rows_fn(server, res))
        if res.get("note"):
            notes.append("%s: %s" % (server, res["note"]))
    return rows, notes


def corsac_ratio_cell(server, res, results, key):
    """corsac/peer for a peer row: the Corsac row of the same interface."""
    if server in CORSAC_ROWS:
        return "-"
    me = results.get("corsac-wsgi" if server in WSGI_SERVERS else "corsac", {})
    return fmt_ratio(ratio(me.get(key), res.get(key)))


def print_results(all_results, args, certs):
    iface = lambda s: "WSGI" if s in WSGI_SERVERS else "ASGI"  # noqa: E731
    sc = "https-keepalive"
    if sc in all_results:
        results = all_results[sc]

        def row(server, res):
            return [server, iface(server), "{:,.0f}".format(res["rps"]),
                    bl.fmt_ms(res["lat_avg_ms"]),
                    bl.fmt_ms(res["percentiles_ms"].get(99)), bl.fmt_ms(res["lat_max_ms"]),
                    "%.2f" % res.get("server_cpu", 0), fmt_count(res.get("per_cpu")),
                    bl.error_summary(res),
                    corsac_ratio_cell(server, res, results, "rps")]
        rows, notes = collect_notes(results, row)
        print()
        print("== https-keepalive: GET / over HTTPS/1.1 (%s), keep-alive" % certs["made_by"])
        print("   wrk -t1 -c%d -d%ds --latency (after a %ds warm-up), server on CPU %s, "
              "wrk on CPU %s" % (args.connections, args.duration, args.warmup,
                                 args.server_cpu or "any", args.wrk_cpu or "any"))
        if rows:
            print(bl.fmt_table(["server", "app", "req/s", "avg lat", "p99 lat", "max lat",
                                "server CPU", "per CPU-s", "errors", "corsac/peer"], rows,
                               align="llrrrrrrlr"))
        for n in notes:
            print("   note: " + n.replace("\n", "\n         "))
        print_ratio_lines(results, "rps", "req/s")
    for sc in ("tls-full", "tls-resumed"):
        if sc not in all_results:
            continue
        results = all_results[sc]

        def row(server, res):
            return [server, iface(server), "{:,.0f}".format(res["rate"]),
                    fmt_us(res["hs_avg_us"]), fmt_us(res["hs_p99_us"]),
                    fmt_us(res["avg_us"]), fmt_us(res["p99_us"]),
                    "%.0f%%" % (100.0 * res["resumed"] / res["conns"]) if res["conns"] else "-",
                    "%.2f" % res.get("server_cpu", 0), fmt_count(res.get("per_cpu")),
                    "%.2f" % res["cpu"], tlsconn_errors(res),
                    corsac_ratio_cell(server, res, results, "rate")]
        rows, notes = collect_notes(results, row)
        print()
        print("== %s: new TLS connections per second, each: connect, %s handshake, "
              "GET / (Connection: close), read to close" % (
                  sc, "full" if sc == "tls-full" else "resumed (previous session offered)"))
        print("   tlsconn -c%d -d%d -w%d -v %s%s, %s; server on CPU %s, tlsconn on CPU %s%s"
              % (args.threads, args.duration, args.warmup, args.tls_version,
                 " -r" if sc == "tls-resumed" else "", certs["made_by"],
                 args.server_cpu or "any", args.wrk_cpu or "any",
                 "; best of %d runs" % args.repeat if args.repeat > 1 else ""))
        if rows:
            print(bl.fmt_table(["server", "app", "conns/s", "hs avg", "hs p99", "conn avg",
                                "conn p99", "resumed", "server CPU", "per CPU-s",
                                "client CPU", "errors", "corsac/peer"], rows,
                               align="llrrrrrrrrrlr"))
        for n in notes:
            print("   note: " + n.replace("\n", "\n         "))
        busy = [s for s, r in results.items() if r.get("cpu", 0) >= 0.9]
        if busy:
            print("   note: tlsconn used >= 0.9 of its CPU for %s: the load generator may be "
                  "the limit there, not the server" % ", ".join(busy))
        if args.repeat > 1:
            for s, r in results.items():
                if r.get("runs"):
                    print("   runs %s: %s" % (s, ", ".join("%.0f" % x for x in r["runs"])))
        print_ratio_lines(results, "rate", "conns/s", "p99_us")
    sys.stdout.flush()


def parse_list(text, choices, aliases, what):
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        for n in aliases.get(item, [item]):
            if n not in choices:
                raise SystemExit("unknown %s %r (choose from: %s)"
                                 % (what, n, ", ".join(choices + list(aliases))))
            if n not in out:
                out.append(n)
    return out


def build_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints tables of req/s, connections/s, "
        "latency, and ratios.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default=",".join(DEFAULT_SERVERS),
                   help="comma-separated servers: " + ", ".join(SERVERS)
                   + " ('asgi', 'wsgi', 'all')")
    p.add_argument("--scenario", default=",".join(SCENARIOS),
                   help="comma-separated: " + ", ".join(SCENARIOS))
    p.add_argument("--duration", type=int, default=10, help="measured seconds")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of unmeasured load first")
    p.add_argument("--connections", type=int, default=64,
                   help="https-keepalive: wrk connections")
    p.add_argument("--threads", type=int, default=8,
                   help="tls-full/tls-resumed: tlsconn threads (connections at a time)")
    p.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3",
                   help="highest TLS version tlsconn offers")
    p.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa",
                   help="certificate key: ECDSA P-256 or RSA-2048")
    p.add_argument("--repeat", type=int, default=1,
                   help="tlsconn runs per server and scenario; the best is shown")
    p.add_argument("--server-cpu", default="0",
                   help="CPU list for the server (taskset -c); '' = no pinning")
    p.add_argument("--load-cpu", "--wrk-cpu", dest="wrk_cpu", default="1",
                   help="CPU list for wrk/tlsconn (taskset -c); '' = no pinning")
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
                   help="print commands and the load generators' raw output")
    return p


def main(argv=None):
    args = build_args().parse_args(argv)
    servers = parse_list(args.only, SERVERS, ALIASES, "server")
    scenarios = parse_list(args.scenario, SCENARIOS, {"all": SCENARIOS}, "scenario")
    if args.duration < 1 or args.warmup < 0 or args.threads < 1 or args.repeat < 1:
        raise SystemExit("--duration, --threads and --repeat must be >= 1, --warmup >= 0")
    bl.install_signal_handlers()
    with tempfile.TemporaryDirectory(prefix="corsac-tlsbench-") as tmpdir:
        runner = TlsRunner(args, tmpdir)
        if not bl.taskset_prefix("0"):
            print("warning: taskset not found; servers and load generators are not pinned",
                  file=sys.stderr)
        print("corsac tls bench: python %s, %d CPUs, %s, load average %s"
              % (sys.executable, os.cpu_count() or 0, time.strftime("%Y-%m-%d %H:%M:%S"),
                 " ".join("%.2f" % x for x in os.getloadavg())))
        all_results = {sc: {} for sc in scenarios}
        try:
            for server in servers:
                res = runner.bench_server(server, scenarios)
                for sc in scenarios:
                    all_results[sc][server] = res[sc]
                    if "skip" in res[sc] or res[sc].get("failed_start"):
                        print("-- %s / %s ... %s" % (sc, server, outcome(sc, res[sc])))
            print_results(all_results, args, runner.certs)
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
