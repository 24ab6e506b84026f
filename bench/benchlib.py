"""Shared helpers for the Corsac benchmark scripts (stdlib only).

Used by bench/run.py and bench/memory.py: locating the servers and wrk,
building their command lines, starting them in their own process group,
waiting until they answer HTTP, stopping them again, and parsing wrk output.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
APPS_DIR = os.path.join(BENCH_DIR, "apps")
REPO_DIR = os.path.dirname(BENCH_DIR)
PIPELINE_LUA = os.path.join(BENCH_DIR, "pipeline.lua")
HOST = "127.0.0.1"


class Skip(Exception):
    """A server cannot be benchmarked here (not installed, unusable...)."""


# ---------------------------------------------------------------- discovery

def _resolve_pyenv_shim(path, name):
    """Turn a pyenv shim into the real script so PIDs are the real server's."""
    if path and os.sep + "shims" + os.sep in path and shutil.which("pyenv"):
        try:
            out = subprocess.run(["pyenv", "which", name], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return path
        real = out.stdout.strip()
        if out.returncode == 0 and real and os.access(real, os.X_OK):
            return real
    return path


def find_tool(name, extra_dirs=()):
    """Find an executable: next to sys.executable first, then extra dirs, then PATH."""
    dirs = [os.path.dirname(sys.executable)] + list(extra_dirs)
    for d in dirs:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return _resolve_pyenv_shim(shutil.which(name), name)


def python_can_import(python, module):
    try:
        r = subprocess.run([python, "-c", "import " + module],
                           capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def corsac_python(explicit=None):
    """The interpreter that can run `python -m corsac`, or None."""
    candidates = [explicit] if explicit else [
        sys.executable, os.path.join(REPO_DIR, ".venv", "bin", "python")]
    for py in candidates:
        if py and os.path.exists(py) and python_can_import(py, "corsac"):
            return py
    return None


_corsac_help_cache = {}


def corsac_help(python):
    if python not in _corsac_help_cache:
        try:
            r = subprocess.run([python, "-m", "corsac", "--help"],
                               capture_output=True, text=True, timeout=60)
            _corsac_help_cache[python] = r.stdout + r.stderr
        except (OSError, subprocess.SubprocessError):
            _corsac_help_cache[python] = ""
    return _corsac_help_cache[python]


_tool_help_cache = {}


def tool_help(cmd):
    """Output of `cmd --help` (cmd: a list), cached; '' if it cannot run."""
    key = tuple(cmd)
    if key not in _tool_help_cache:
        try:
            r = subprocess.run(list(cmd) + ["--help"], capture_output=True,
                               text=True, timeout=60)
            _tool_help_cache[key] = r.stdout + r.stderr
        except (OSError, subprocess.SubprocessError):
            _tool_help_cache[key] = ""
    return _tool_help_cache[key]


def script_python(script):
    """The interpreter named on a console script's #! line, or None."""
    try:
        with open(script, "rb") as f:
            first = f.readline(1024).decode("utf-8", "replace")
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[1])
    return parts[0] if os.access(parts[0], os.X_OK) else None


_import_cache = {}


def script_can_import(script, module):
    """Whether the interpreter behind a console script can import module.

    Unknown interpreters count as able to (the server then reports the
    problem itself when it starts).
    """
    py = script_python(script)
    if not py:
        return True
    key = (py, module)
    if key not in _import_cache:
        _import_cache[key] = python_can_import(py, module)
    return _import_cache[key]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def taskset_prefix(cpu):
    """['taskset', '-c', cpu] or [] when pinning is disabled/unavailable."""
    if cpu is None or cpu == "":
        return []
    ts = shutil.which("taskset")
    if not ts:
        return []
    return [ts, "-c", str(cpu)]


# ---------------------------------------------------------- server commands

def corsac_cmd(python, app, port, threads=1, workers=1, interface=None, loop=None):
    """interface: None (Corsac's auto-detection), 'wsgi' or 'asgi';
    loop: value for --loop (callers check corsac_help for the option)."""
    cmd = [python, "-m", "corsac", app, "--app-dir", APPS_DIR,
           "--bind", "%s:%d" % (HOST, port), "--threads", str(threads),
           "--log-level", "warning"]
    if "--workers" in corsac_help(python):
        cmd += ["--workers", str(workers)]
    if interface:
        cmd += ["--interface", interface]
    if loop:
        cmd += ["--loop", loop]
    return cmd


def gunicorn_cmd(gunicorn, app, port, worker_class="sync", threads=1, workers=1):
    cmd = [gunicorn, "--workers", str(workers), "--worker-class", worker_class,
           "--chdir", APPS_DIR, "--bind", "%s:%d" % (HOST, port),
           "--log-level", "warning"]
    if worker_class == "gthread":
        cmd += ["--threads", str(threads)]
    return cmd + [app]


def granian_cmd(granian, app, port, blocking_threads=1, pipeline_flush=False, workers=1,
                interface="wsgi", loop=None):
    """blocking_threads only matters for WSGI (Granian refuses more than one
    for ASGI); loop is Granian's --loop (None: its own 'auto')."""
    cmd = [granian, "--interface", interface, "--workers", str(workers),
           "--runtime-threads", "1",
           "--http", "1", "--no-ws", "--host", HOST, "--port", str(port),
           "--working-dir", APPS_DIR, "--log-level", "warning"]
    if interface != "wsgi":
        cmd.append("--no-access-log")  # already Granian's default; be explicit
    if blocking_threads and interface == "wsgi":  # 0/None: Granian's own default
        cmd += ["--blocking-threads", str(blocking_threads)]
    if loop:
        cmd += ["--loop", loop]
    if pipeline_flush:
        cmd.append("--http1-pipeline-flush")
    return cmd + [app]


def uvicorn_cmd(uvicorn, app, port, workers=1):
    """uvicorn with uvloop and httptools (uvicorn[standard]); --workers 1 runs
    the server in the uvicorn process itself, without a supervisor."""
    return [uvicorn, "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--workers", str(workers), "--host", HOST, "--port", str(port),
            "--app-dir", APPS_DIR, "--log-level", "warning", app]


def hypercorn_cmd(hypercorn, app, port, worker_class="uvloop", workers=1):
    """Hypercorn has no access log unless one is asked for; -w 1 still forks
    one worker process (the leader only supervises)."""
    return [hypercorn, "-w", str(workers), "-k", worker_class,
            "--bind", "%s:%d" % (HOST, port), "--log-level", "warning", app]


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
{temp_paths}
    server {{
        listen {host}:{port} backlog=1024;
        location / {{
            default_type text/plain;
            return 200 "Hello, World!";
        }}
    }}
}}
"""


def nginx_binary():
    for cand in ("/usr/sbin/nginx", shutil.which("nginx")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def nginx_cmd(nginx, port, tmpdir):
    """Write a throw-away nginx.conf in tmpdir and return the command."""
    try:
        info = subprocess.run([nginx, "-V"], capture_output=True, text=True,
                              timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        info = ""
    temp_lines = ["    client_body_temp_path {}/body;".format(tmpdir)]
    for mod in ("proxy", "fastcgi", "uwsgi", "scgi"):
        if "--without-http_%s_module" % mod not in info:
            temp_lines.append("    {0}_temp_path {1}/{0};".format(mod, tmpdir))
    conf = os.path.join(tmpdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmpdir, host=HOST, port=port,
                                  temp_paths="\n".join(temp_lines)))
    return [nginx, "-p", tmpdir, "-e", os.path.join(tmpdir, "nginx-error.log"),
            "-c", conf]


# --------------------------------------------------------- process control

class Server:
    """A server started in its own session/process group; output goes to a log file."""

    def __init__(self, name, cmd, port, logpath, cpu=None, env=None):
        self.name, self.cmd, self.port, self.logpath = name, cmd, port, logpath
        self.full_cmd = taskset_prefix(cpu) + list(cmd)
        self._log = open(logpath, "wb")
        env = dict(os.environ if env is None else env)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in bench/apps
        self.proc = subprocess.Popen(
            self.full_cmd, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
            cwd=APPS_DIR)
        _live.add(self)

    @property
    def pid(self):
        return self.proc.pid

    def log_tail(self, lines=15):
        try:
            with open(self.logpath, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(data.rstrip().splitlines()[-lines:])

    def wait_ready(self, path="/", expect=None, timeout=30.0):
        """Poll with real HTTP requests until the app answers 200.

        A bare TCP connect is not enough: e.g. the gunicorn arbiter listens
        before its worker has imported the app.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %s during start-up"
                                   % (self.name, self.proc.returncode))
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and (expect is None or expect in body):
                    return
                last = "HTTP %d %r" % (resp.status, body[:80])
            except (OSError, http.client.HTTPException) as e:
                last = "%s: %s" % (type(e).__name__, e)
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError("%s not ready after %.0fs (%s)" % (self.name, timeout, last))

    def stop(self, grace=5.0):
        """SIGTERM the server's process group, then SIGKILL whatever is left."""
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Children (workers) may outlive the leader: sweep the group.
        _signal_group(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        _live.discard(self)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_live = set()


def stop_all():
    for srv in list(_live):
        try:
            srv.stop(grace=2.0)
        except Exception:  # best effort during shutdown
            pass


def install_signal_handlers():
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally` blocks run."""
    def handler(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def children_of(pid):
    """Direct child PIDs of pid (via /proc/PID/task/*/children)."""
    kids = []
    task_dir = "/proc/%d/task" % pid
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(os.path.join(task_dir, tid, "children")) as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def process_name(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def rss_kib(pid):
    """VmRSS of pid in KiB (from /proc/PID/status), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ------------------------------------------------------------------- wrk

def wrk_cmd(wrk, url, duration, connections=64, threads=1, lua=None,
            lua_args=(), cpu=None, timeout=None):
    cmd = taskset_prefix(cpu) + [wrk, "-t%d" % threads, "-c%d" % connections,
                                 "-d%ss" % _fmt_num(duration), "--latency"]
    if timeout:
        cmd += ["--timeout", "%ss" % _fmt_num(timeout)]
    if lua:
        cmd += ["-s", lua]
    cmd.append(url)
    if lua_args:
        cmd += ["--"] + [str(a) for a in lua_args]
    return cmd


def _fmt_num(x):
    return ("%g" % x) if isinstance(x, float) else str(x)


def run_wrk(cmd):
    """Run wrk, return (parsed dict, raw output). Raises RuntimeError on failure."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError("wrk failed (status %d): %s" % (r.returncode, out.strip()[-500:]))
    return parse_wrk(out), out


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_METRIC = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_time_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError("bad wrk time %r" % text)
    return float(m.group(1)) * _TIME_UNITS_MS[m.group(2)]


def parse_count(text):
    m = re.fullmatch(r"([\d.]+)([kKMG]?)", text.strip())
    if not m:
        raise ValueError("bad wrk count %r" % text)
    return float(m.group(1)) * _METRIC[m.group(2)]


def parse_wrk(out):
    """Extract the numbers we report from wrk's text output."""
    res = {"rps": None, "requests": 0, "elapsed_s": None, "lat_avg_ms": None,
           "lat_stdev_ms": None, "lat_max_ms": None, "percentiles_ms": {},
           "connect_errors": 0, "read_errors": 0, "write_errors": 0,
           "timeouts": 0, "non2xx": 0}
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        res["lat_avg_ms"] = parse_time_ms(m.group(1))
        res["lat_stdev_ms"] = parse_time_ms(m.group(2))
        res["lat_max_ms"] = parse_time_ms(m.group(3))
    for pct, val in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", out, re.M):
        res["percentiles_ms"][int(pct)] = parse_time_ms(val)
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
        res["elapsed_s"] = parse_time_ms(m.group(2)) / 1e3
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        (res["connect_errors"], res["read_errors"], res["write_errors"],
         res["timeouts"]) = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    if res["rps"] is None:
        raise RuntimeError("could not parse wrk output:\n" + out)
    if not res["lat_max_ms"]:
        # No latency sample at all: with pipelining wrk only records one when
        # a whole batch has been answered, which never happens if the server
        # closes the connection after the first response.
        res["lat_avg_ms"] = res["lat_stdev_ms"] = res["lat_max_ms"] = None
        res["percentiles_ms"] = {}
        res["no_latency"] = True
    else:
        # wrk 4.1's percentile table is unreliable with pipelining (zeros,
        # non-monotonic values); drop it rather than print nonsense.
        vals = [res["percentiles_ms"][k] for k in sorted(res["percentiles_ms"])]
        if (any(v <= 0 for v in vals) or vals != sorted(vals)
                or (vals and vals[-1] > res["lat_max_ms"] * 1.01)):
            res["percentiles_ms"] = {}
    return res


def error_summary(res):
    """Short text for the errors column: '0' or e.g. '12 (read 10, non-2xx 2)'."""
    parts = [(k, res[key]) for k, key in (
        ("connect", "connect_errors"), ("read", "read_errors"),
        ("write", "write_errors"), ("timeout", "timeouts"), ("non-2xx", "non2xx"))
        if res[key]]
    total = sum(v for _, v in parts)
    if not total:
        return "0"
    return "%d (%s)" % (total, ", ".join("%s %d" % p for p in parts))


def fmt_ms(ms):
    if ms is None:
        return "-"
    if ms < 1:
        return "%.0fus" % (ms * 1e3)
    if ms < 1000:
        return "%.2fms" % ms
    return "%.2fs" % (ms / 1e3)


def fmt_table(headers, rows, align=None):
    """Plain-text table; align is a string of 'l'/'r' per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])
