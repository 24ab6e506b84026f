#!/usr/bin/env python3
"""Autobahn WebSocket conformance run: the fuzzing client (kosoku) against Corsac.

Starts ``python -m corsac ws_echo:app --app-dir tests/apps --bind 127.0.0.1:0
--workers 1`` (or uvicorn with the same app, for comparison), runs the Autobahn
fuzzingclient cases against it, prints a tally per case group and behavior and
every case whose behavior or behaviorClose is FAILED, ERROR or UNIMPLEMENTED
(with the case's description from its report), and exits 1 when any case FAILED
or ERRORed, or the server died.  ERRORs that are known defects of kosoku itself
(KNOWN_TOOL_DEFECTS) are listed apart and not counted unless --strict.

Reports (index.json, index.html, one json/html per case, the server log and
kosoku's output) go to reports/autobahn/<server>/ unless --outdir says otherwise.

    scripts/autobahn.py                          # the whole suite against corsac
    scripts/autobahn.py --cases 1-8,10 -p 4      # groups 1..8 and 10, 4 cases at once
    scripts/autobahn.py --cases 9.1.* --exclude 9.1.6
    scripts/autobahn.py --server uvicorn         # the same against uvicorn (--ws websockets)
    scripts/autobahn.py -- --no-ws-per-message-deflate   # extra server arguments

Case selection: a bare number N means the group ``N.*``, ``A-B`` the groups A..B
(of those that exist: 1-7, 9, 10, 12, 13),
anything else is passed to kosoku as it is (a case id or a ``*`` glob); several
selections are separated by commas or given by repeating the option.  kosoku's
globs are not anchored at the end: ``12.*.1`` also takes 12.1.10-12.1.18.

kosoku gives each case about 20 s.  The big permessage-deflate cases (12.*.10 and
12.*.13-18: 1000 messages of 32-128 KiB, compressed both ways) come close to that on
a small or busy machine and then FAIL with "Case did not finish"; that is time, not
protocol, and shows as a duration of ~20000 ms in the list.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
VENV_BIN = ROOT / ".venv" / "bin"
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
BAD = ("FAILED", "ERROR", "UNIMPLEMENTED")
FATAL = ("FAILED", "ERROR")
CORSAC_LISTEN_RE = re.compile(r"Listening at: http://(\[[^\]]+\]|[^:\s]+):(\d+)")
UVICORN_LISTEN_RE = re.compile(r"running on http://(\[[^\]]+\]|[^:\s]+):(\d+)")
# the Autobahn suite's case groups (there is no group 8 nor 11): ranges take only these
GROUPS = (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13)
# Defects of the fuzzing client itself, recognised by case and result text: listed
# apart, and not counted against the server unless --strict.
KNOWN_TOOL_DEFECTS = [
    (re.compile(r"1[23]\.\d+\.\d+$"), "Strings must be encoded before hashing",
     "kosoku's 12.*/13.* handler hashes each echoed message as bytes, but kosoku hands "
     "it a str when the server sent that message uncompressed (RSV1 clear), which RFC 7692 "
     "allows (the contract lets corsac send small messages uncompressed)"),
]
APP_ERROR = "Exception in ASGI application"


def venv_tool(name):
    p = VENV_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit(f"autobahn.py: {name} not found (run `make setup`)")


def python_exe():
    p = VENV_BIN / "python"
    return str(p) if p.exists() else sys.executable


def expand_cases(specs):
    """['1-8,10', '9.1.*'] -> ['1.*', ..., '8.*', '10.*', '9.1.*']."""
    out = []
    for spec in specs or ():
        for tok in re.split(r"[,\s]+", spec.strip()):
            if not tok:
                continue
            m = re.fullmatch(r"(\d+)-(\d+)", tok)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if a > b:
                    raise SystemExit(f"autobahn.py: bad range {tok!r}")
                out += [f"{n}.*" for n in range(a, b + 1) if n in GROUPS]
            elif tok.isdigit():
                out.append(f"{tok}.*")
            else:
                out.append(tok)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EchoServer:
    """The echo app under `server` ("corsac" or "uvicorn"), log in `logpath`."""

    def __init__(self, server, logpath, extra_args=(), start_timeout=30):
        self.server = server
        self.logpath = Path(logpath)
        self._log = open(self.logpath, "wb")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if server == "corsac":
            # No keepalive pings: kosoku's case runner fails a case that gets an
            # unsolicited ping (the 12.x/13.x cases run past the 20 s default);
            # keepalive has its own tests in tests/test_websocket.py.
            cmd = [python_exe(), "-m", "corsac", "ws_echo:app", "--app-dir", str(APPS),
                   "--bind", "127.0.0.1:0", "--workers", "1", "--ws-ping-interval", "0", *extra_args]
            listen_re = CORSAC_LISTEN_RE
        elif server == "uvicorn":
            cmd = [venv_tool("uvicorn"), "--app-dir", str(APPS), "ws_echo:app",
                   "--host", "127.0.0.1", "--port", str(free_port()), "--ws", "websockets",
                   "--log-level", "warning", *extra_args]
            # --log-level warning hides the "running on" line: wait for the port instead
            listen_re = None
        else:
            raise SystemExit(f"autobahn.py: unknown server {server!r}")
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        self.host, self.port = "127.0.0.1", None
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{server} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if listen_re is not None:
                m = listen_re.search(self.log())
                if m:
                    self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
                    return
            else:
                port = int(cmd[cmd.index("--port") + 1])
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    self.port = port
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{server} did not start listening:\n{self.log()[-3000:]}")

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.logpath.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def case_key(case_id):
    return tuple(int(x) if x.isdigit() else x for x in case_id.split("."))


def load_results(outdir):
    """{case_id: entry from index.json + the per-case report's description etc.}"""
    index = json.loads((outdir / "index.json").read_text())
    if not index:
        return None, {}
    agent = max(index, key=lambda a: len(index[a]))   # errored cases may sit under the address
    cases = {}
    for agent_name, agent_cases in index.items():
        for cid, entry in agent_cases.items():
            e = dict(entry)
            e["agent"] = agent_name
            rf = entry.get("reportfile")
            if rf and (outdir / rf).exists():
                try:
                    rep = json.loads((outdir / rf).read_text())
                except ValueError:
                    rep = {}
                for k in ("description", "expectation", "result", "resultClose",
                          "localCloseCode", "remoteCloseCode", "remoteCloseReason",
                          "wasClean", "wasNotCleanReason"):
                    if k in rep:
                        e[k] = rep[k]
            cases[cid] = e
    return agent, cases


def tally(cases):
    """{group: Counter(behavior)} plus a 'behaviorClose' Counter per group."""
    groups = defaultdict(Counter)
    close = defaultdict(Counter)
    for cid, e in cases.items():
        g = cid.split(".")[0]
        groups[g][e.get("behavior", "?")] += 1
        close[g][e.get("behaviorClose", "?")] += 1
    return groups, close


def format_tally(cases):
    groups, close = tally(cases)
    cols = BEHAVIORS + sorted({b for c in groups.values() for b in c} - set(BEHAVIORS))
    w = {c: max(len(c), 5) for c in cols}
    head = f"{'group':>5} {'cases':>5}  " + " ".join(f"{c:>{w[c]}}" for c in cols) + "  close not OK"
    lines = [head, "-" * len(head)]
    total = Counter()
    for g in sorted(groups, key=lambda x: int(x) if x.isdigit() else 999):
        n = sum(groups[g].values())
        total.update(groups[g])
        bad_close = {k: v for k, v in close[g].items() if k not in ("OK", "INFORMATIONAL")}
        lines.append(f"{g:>5} {n:>5}  " + " ".join(f"{groups[g].get(c, 0) or '.':>{w[c]}}" for c in cols)
                     + "  " + (", ".join(f"{k} {v}" for k, v in sorted(bad_close.items())) or "-"))
    lines.append("-" * len(head))
    lines.append(f"{'all':>5} {sum(total.values()):>5}  "
                 + " ".join(f"{total.get(c, 0) or '.':>{w[c]}}" for c in cols))
    return "\n".join(lines)


def tool_defect(cid, e):
    """The known kosoku defect explaining this case's ERROR, or None."""
    if e.get("behavior") != "ERROR":
        return None
    for pattern, text, why in KNOWN_TOOL_DEFECTS:
        if pattern.match(cid) and text in (e.get("result") or ""):
            return why
    return None


def problems(cases, which=BAD):
    out = []
    for cid in sorted(cases, key=case_key):
        e = cases[cid]
        if e.get("behavior") in which or e.get("behaviorClose") in which:
            out.append((cid, e))
    return out


def format_problem(cid, e):
    lines = [f"  {cid}: behavior {e.get('behavior')}, behaviorClose {e.get('behaviorClose')}"
             f" (remote close code {e.get('remoteCloseCode')}, {e.get('duration')} ms)"]
    for k in ("description", "expectation", "result", "resultClose", "wasNotCleanReason"):
        v = e.get(k)
        if v:
            lines.append(f"      {k}: {v}")
    return "\n".join(lines)


def run(cases=None, exclude=None, server="corsac", parallelism=1, outdir=None,
        extra_args=(), timeout=None, verbose=False, strict=False, out=sys.stdout):
    """Run the suite; returns a dict: ok (bool), cases ({id: entry}), problems,
    fatal (case ids FAILED/ERROR, known kosoku defects left out unless strict),
    tool_defects (case ids of those), errors, app_errors, elapsed, outdir."""
    outdir = Path(outdir) if outdir else ROOT / "reports" / "autobahn" / server
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    include = expand_cases(cases)
    excl = expand_cases(exclude)
    result = {"ok": False, "outdir": str(outdir), "server": server, "cases": {},
              "problems": [], "fatal": [], "tool_defects": [], "errors": []}

    def say(*a):
        print(*a, file=out, flush=True)

    srv = EchoServer(server, outdir / "server.log", extra_args)
    say(f"autobahn: {server} ({' '.join(srv.cmd[1:] if server == 'corsac' else srv.cmd)}) "
        f"on {srv.host}:{srv.port}")
    cmd = [venv_tool("kosoku"), "-m", "fuzzingclient", f"{srv.host}:{srv.port}",
           "-o", str(outdir), "-p", str(parallelism)]
    for c in include:
        cmd += ["-i", c]
    for c in excl:
        cmd += ["-x", c]
    say("autobahn: " + " ".join(cmd[1:]))
    t0 = time.monotonic()
    try:
        with open(outdir / "kosoku.log", "wb") as klog:
            try:
                k = subprocess.run(cmd, stdout=None if verbose else klog,
                                   stderr=subprocess.STDOUT if not verbose else None,
                                   stdin=subprocess.DEVNULL, timeout=timeout, cwd=str(ROOT))
                krc = k.returncode
            except subprocess.TimeoutExpired:
                krc = None
                result["errors"].append(f"kosoku did not finish within {timeout} s")
        elapsed = time.monotonic() - t0
        server_alive = srv.alive()
    finally:
        rc = srv.stop()
    result["elapsed"] = elapsed
    log = srv.log()
    if not server_alive:
        result["errors"].append(f"the server died during the run (exit {rc}); "
                                f"log tail:\n{log[-3000:]}")
    app_errors = log.count(APP_ERROR)
    if app_errors:
        say(f"autobahn: the server logged {app_errors} 'Exception in ASGI application' "
            f"(see {outdir / 'server.log'})")
    result["app_errors"] = app_errors
    if not (outdir / "index.json").exists():
        result["errors"].append(f"kosoku wrote no index.json (exit {krc}); its output:\n"
                                + (outdir / "kosoku.log").read_text(errors="replace")[-3000:])
        for e in result["errors"]:
            say("autobahn: ERROR: " + e)
        return result
    agent, got = load_results(outdir)
    result["agent"], result["cases"] = agent, got
    say(f"autobahn: {len(got)} cases in {elapsed:.1f} s (agent {agent!r}, kosoku exit {krc}, "
        f"parallelism {parallelism}); reports in {outdir}")
    say(format_tally(got))
    probs = problems(got)
    result["problems"] = [cid for cid, _ in probs]
    defects = {cid: tool_defect(cid, e) for cid, e in probs if tool_defect(cid, e)}
    result["tool_defects"] = sorted(defects, key=case_key)
    result["fatal"] = [cid for cid, _ in problems(got, FATAL) if strict or cid not in defects]
    real = [(cid, e) for cid, e in probs if cid not in defects]
    if real:
        say(f"\n{len(real)} case(s) FAILED, ERROR or UNIMPLEMENTED:")
        for cid, e in real:
            say(format_problem(cid, e))
    if defects:
        say(f"\n{len(defects)} case(s) ERROR from a known kosoku defect"
            f"{' (counted: --strict)' if strict else ' (not counted; --strict counts them)'}:")
        for why in dict.fromkeys(defects.values()):
            say("  " + ", ".join(c for c in result["tool_defects"] if defects[c] == why))
            say(f"      {why}")
    if not got:
        result["errors"].append("no cases ran (check --cases/--exclude)")
    for e in result["errors"]:
        say("autobahn: ERROR: " + e)
    result["ok"] = not result["fatal"] and not result["errors"]
    say(f"\nautobahn: {'PASS' if result['ok'] else 'FAIL'}: "
        f"{len(result['fatal'])} FAILED/ERROR, {len(defects)} kosoku defect(s), "
        f"{sum(1 for e in got.values() if 'UNIMPLEMENTED' in (e.get('behavior'), e.get('behaviorClose')))}"
        f" UNIMPLEMENTED, {len(got)} cases, {elapsed:.1f} s")
    return result


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Extra arguments after `--` go to the server.")
    ap.add_argument("--cases", "-i", action="append", metavar="SEL",
                    help="cases to run: N, A-B, a case id or glob; comma-separated; "
                         "repeatable (default: the whole suite, 1-13)")
    ap.add_argument("--exclude", "-x", action="append", metavar="SEL",
                    help="cases to leave out, same syntax (repeatable)")
    ap.add_argument("--server", choices=["corsac", "uvicorn"], default="corsac",
                    help="server under test (default: corsac)")
    ap.add_argument("--parallelism", "-p", type=int, default=4,
                    help="cases run at once (default: 4)")
    ap.add_argument("--outdir", "-o", help="report directory (default: reports/autobahn/SERVER)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="give up on kosoku after this many seconds")
    ap.add_argument("--verbose", "-v", action="store_true", help="show kosoku's output")
    ap.add_argument("--strict", action="store_true",
                    help="count ERRORs from known kosoku defects against the server too")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON here")
    a = ap.parse_args(argv)
    try:
        res = run(cases=a.cases, exclude=a.exclude, server=a.server, parallelism=a.parallelism,
                  outdir=a.outdir, extra_args=extra, timeout=a.timeout, verbose=a.verbose,
                  strict=a.strict)
    except RuntimeError as e:
        print(f"autobahn: ERROR: {e}", file=sys.stderr)
        return 2
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
