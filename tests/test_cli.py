"""The command line of the real `corsac` process: --version/--help, usage errors (exit 2),
app loading errors (exit 1), environment variables, binds (several, IPv6, unix sockets),
app lookup (dotted path, default names, --factory) and signals."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import APPS, status_of

CMD = [sys.executable, "-m", "corsac"]


def run(*args, env=None, timeout=20):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=e)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- a launcher that sees every bind

LISTEN_ANY = re.compile(r"Listening at: (\S+)")


class Proc:
    """A corsac process started with exactly the given arguments (no implicit --bind)."""

    def __init__(self, tmp_path, *args, env=None):
        self.logpath = Path(tmp_path) / f"proc-{id(self)}.log"
        self._log = open(self.logpath, "wb")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(CMD + list(args), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=e)

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.logpath.read_text(errors="replace")

    def listening(self, count=1, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTEN_ANY.findall(self.log())
            if len(found) >= count:
                time.sleep(0.1)  # let the remaining lines arrive too
                return LISTEN_ANY.findall(self.log())
            if self.proc.poll() is not None:
                raise RuntimeError(f"corsac exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"corsac did not log {count} 'Listening at' lines:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def launch(tmp_path):
    procs = []

    def start(*args, env=None):
        p = Proc(tmp_path, *args, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def split_hostport(url):
    m = re.fullmatch(r"http://(\[[^\]]+\]|[^:/]+):(\d+)", url)
    assert m, url
    return m.group(1).strip("[]"), int(m.group(2))


def http_get(addr, path="/", family=socket.AF_INET, timeout=5):
    """One HTTP/1.1 request with Connection: close over a fresh socket; returns the raw response."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        s.close()


def body_of(resp):
    return resp.partition(b"\r\n\r\n")[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environ_json(resp):
    assert status_of(resp) == 200, resp[:300]
    head, _, body = resp.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        raise AssertionError("unexpected chunked /environ")
    return json.loads(body)


# --------------------------------------------------------------------------- --version / --help

def test_version():
    p = run("--version")
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"corsac \d+\.\d+\.\d+\S*", p.stdout.strip()), p.stdout


def test_console_script_version():
    script = Path(sys.executable).parent / "corsac"
    if not script.exists():
        pytest.skip("no corsac console script in this environment")
    p = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0
    assert p.stdout == run("--version").stdout


FLAG_DEFAULTS = {
    "--app-dir": None,
    "--factory": None,
    "--interface": "auto",
    "--bind": "127.0.0.1:8000",
    "--backlog": "2048",
    "--threads": "1",
    "--log-level": "info",
    "--root-path": None,
    "--limit-request-line": "8190",
    "--limit-request-fields": "100",
    "--limit-request-field-size": "8190",
    "--limit-request-body": "0",
    "--timeout-keep-alive": "5",
    "--header-read-timeout": "10",
    "--body-read-timeout": "30",
    "--graceful-timeout": "30",
    "--version": None,
}


def help_entries(text):
    """Split help text into option entries: an entry starts at a line whose first word is a flag."""
    entries = []
    for line in text.splitlines():
        if re.match(r"\s+-", line):
            entries.append(line)
        elif entries and line.startswith(" ") and line.strip():
            entries[-1] += " " + line.strip()
        elif entries and not line.strip():
            entries.append("")
    return entries


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(flag):
    p = run(flag)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    entries = help_entries(out)
    for name, default in FLAG_DEFAULTS.items():
        mine = [e for e in entries if re.search(r"(^|[\s,])" + re.escape(name) + r"([\s,=]|$)", e)]
        assert mine, f"{name} not in --help"
        if default is not None:
            assert re.search(r"\b" + re.escape(default) + r"\b", mine[0]), f"{name}: default {default} not shown: {mine[0]!r}"
    assert re.search(r"(^|[\s,])-b([\s,]|$)", out), "-b short form not shown"
    assert "--keep-alive" in out, "the --keep-alive alias is not shown"
    assert "CORSAC_" in out, "help does not mention the CORSAC_* environment variables"
    headings = [line for line in out.splitlines() if re.match(r"^[A-Za-z][^:]*:\s*$", line)]
    assert len(headings) >= 3, f"help is not grouped: headings {headings}"


# --------------------------------------------------------------------------- usage errors: exit 2

@pytest.mark.parametrize("args", [
    pytest.param(["recorder:app", "--no-such-flag"], id="unknown-flag"),
    pytest.param(["recorder:app", "--threads", "x"], id="threads-not-a-number"),
    pytest.param(["recorder:app", "--threads"], id="threads-missing-value"),
    pytest.param(["recorder:app", "--log-level", "loud"], id="bad-log-level"),
    pytest.param(["recorder:app", "--interface", "cgi"], id="bad-interface"),
    pytest.param(["recorder:app", "--limit-request-line", "big"], id="bad-limit"),
    pytest.param(["recorder:app", "--timeout-keep-alive", "soon"], id="bad-timeout"),
    pytest.param(["--app-dir", str(APPS)], id="missing-app"),
    pytest.param(["recorder:app", "other:app"], id="two-apps"),
])
def test_usage_error(args):
    p = run(*args, "--app-dir", str(APPS), "--bind", "127.0.0.1:0")
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = error_lines(p.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("corsac: error:"), lines


def test_no_arguments_at_all():
    p = run()
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = error_lines(p.stderr)
    assert len(lines) == 1 and lines[0].startswith("corsac: error:"), lines


def test_usage_error_from_env():
    p = run("recorder:app", "--app-dir", str(APPS), "--bind", "127.0.0.1:0", env={"CORSAC_THREADS": "x"})
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = error_lines(p.stderr)
    assert len(lines) == 1 and lines[0].startswith("corsac: error:"), lines


# --------------------------------------------------------------------------- load errors: exit 1

def _load_error(p, *mentions):
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = error_lines(p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) < 5, f"too much on stderr: {lines}"
    assert any(line.startswith("corsac: error:") for line in lines), lines
    for m in mentions:
        assert m in p.stderr, f"{m!r} not mentioned: {p.stderr!r}"


def test_missing_module():
    p = run("no_such_module_xyz:app", "--app-dir", str(APPS), "--bind", "127.0.0.1:0")
    _load_error(p, "no_such_module_xyz")


def test_missing_attribute():
    p = run("recorder:no_such_attr", "--app-dir", str(APPS), "--bind", "127.0.0.1:0")
    _load_error(p, "no_such_attr")


def test_missing_dotted_attribute():
    p = run("recorder:holder.inner.nope", "--app-dir", str(APPS), "--bind", "127.0.0.1:0")
    _load_error(p, "nope")


def test_module_without_default_names(tmp_path):
    (tmp_path / "noapp.py").write_text("x = 1\n")
    p = run("noapp", "--app-dir", str(tmp_path), "--bind", "127.0.0.1:0")
    _load_error(p)


def test_app_raising_at_import(tmp_path):
    (tmp_path / "boom.py").write_text(
        "def helper():\n    raise RuntimeError('kaboom at import')\n\nhelper()\n\n"
        "def app(environ, start_response):\n    pass\n")
    p = run("boom:app", "--app-dir", str(tmp_path), "--bind", "127.0.0.1:0")
    _load_error(p, "kaboom at import")


def test_factory_raising(tmp_path):
    (tmp_path / "badfactory.py").write_text("def make():\n    raise ValueError('factory failed')\n")
    p = run("badfactory:make", "--factory", "--app-dir", str(tmp_path), "--bind", "127.0.0.1:0")
    _load_error(p, "factory failed")


def test_interface_asgi_forced_on_a_wsgi_app(corsac):
    """--interface asgi overrides detection: a WSGI callable then fails per
    request (500, logged), and its lifespan attempt is skipped as unsupported."""
    srv = corsac("recorder:app", "--interface", "asgi", "--loop", "asyncio")
    resp = http_get((srv.host, srv.port), "/")
    assert status_of(resp) == 500
    log = srv.log()
    assert "Using worker: asgi, asyncio event loop" in log
    assert "lifespan' protocol appears unsupported" in log
    assert "Exception in ASGI application" in log


def test_loop_uvloop_flag_and_bad_choice(corsac):
    srv = corsac("asgi_cli_app:app", "--loop", "uvloop", app_dir=None, env={"PYTHONPATH": str(APPS)})
    assert "asgi, uvloop event loop" in srv.log()
    p = run("recorder:app", "--loop", "tokio", "--app-dir", str(APPS))
    assert p.returncode == 2 and "--loop" in p.stderr


# --------------------------------------------------------------------------- app lookup

def test_dotted_attribute_path(corsac):
    srv = corsac("recorder:holder.inner.app")
    resp = http_get((srv.host, srv.port), "/dotted")
    assert status_of(resp) == 200 and body_of(resp) == b"GET /dotted len=0\n"


def test_factory(corsac):
    srv = corsac("recorder:create_app", "--factory")
    resp = http_get((srv.host, srv.port), "/f")
    assert status_of(resp) == 200
    assert b"\r\nX-Factory: yes\r\n" in resp.partition(b"\r\n\r\n")[0] + b"\r\n"
    assert body_of(resp) == b"GET /f len=0\n"


def test_default_attribute_app(corsac):
    srv = corsac("recorder")  # the module defines `app` but no `application`
    resp = http_get((srv.host, srv.port), "/d")
    assert status_of(resp) == 200 and body_of(resp) == b"GET /d len=0\n"


def test_default_attribute_prefers_application(corsac, tmp_path):
    (tmp_path / "both.py").write_text(
        "def _make(tag):\n"
        "    def a(environ, start_response):\n"
        "        start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "        return [tag]\n"
        "    return a\n"
        "application = _make(b'application')\n"
        "app = _make(b'app')\n")
    srv = corsac("both", app_dir=tmp_path)
    assert body_of(http_get((srv.host, srv.port))) == b"application"


def test_root_path_is_script_name(corsac):
    srv = corsac("recorder:app", "--root-path", "/api")
    env = environ_json(http_get((srv.host, srv.port), "/environ"))
    assert env["SCRIPT_NAME"] == "/api"


# --------------------------------------------------------------------------- environment variables

def test_env_threads(corsac):
    plain = corsac("recorder:app")
    threaded = corsac("recorder:app", env={"CORSAC_THREADS": "4"})
    assert environ_json(http_get((plain.host, plain.port), "/environ"))["wsgi.multithread"] is False
    assert environ_json(http_get((threaded.host, threaded.port), "/environ"))["wsgi.multithread"] is True


def test_env_bind(launch):
    port = free_port()
    p = launch("recorder:app", "--app-dir", str(APPS), env={"CORSAC_BIND": f"127.0.0.1:{port}"})
    urls = p.listening()
    assert urls == [f"http://127.0.0.1:{port}"]
    assert status_of(http_get(("127.0.0.1", port), "/envbind")) == 200


def test_env_bind_list(launch):
    p1, p2 = free_port(), free_port()
    p = launch("recorder:app", "--app-dir", str(APPS),
               env={"CORSAC_BIND": f"127.0.0.1:{p1},127.0.0.1:{p2}"})
    urls = p.listening(2)
    assert sorted(urls) == sorted([f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"])
    for port in (p1, p2):
        assert status_of(http_get(("127.0.0.1", port))) == 200


def test_env_app_dir(corsac):
    srv = corsac("recorder:app", app_dir=None, env={"CORSAC_APP_DIR": str(APPS)})
    assert status_of(http_get((srv.host, srv.port))) == 200


# --------------------------------------------------------------------------- binds

def test_several_binds(launch):
    p = launch("recorder:app", "--app-dir", str(APPS), "--bind", "127.0.0.1:0", "-b", "127.0.0.1:0")
    urls = p.listening(2)
    assert len(urls) == 2, urls
    addrs = [split_hostport(u) for u in urls]
    assert addrs[0][1] != addrs[1][1]
    for addr in addrs:
        resp = http_get(addr, "/multi")
        assert status_of(resp) == 200 and body_of(resp) == b"GET /multi len=0\n"


def _has_ipv6():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_bind(launch):
    p = launch("recorder:app", "--app-dir", str(APPS), "--bind", "[::1]:0")
    urls = p.listening()
    assert urls[0].startswith("http://[::1]:"), urls
    host, port = split_hostport(urls[0])
    env = environ_json(http_get((host, port, 0, 0), "/environ", family=socket.AF_INET6))
    assert env["REMOTE_ADDR"] == "::1"


def test_unix_socket_bind(launch):
    d = tempfile.mkdtemp(prefix="corsac-", dir="/tmp")
    path = os.path.join(d, "s.sock")
    try:
        p = launch("recorder:app", "--app-dir", str(APPS), "--bind", f"unix:{path}")
        urls = p.listening()
        assert path in urls[0], urls
        resp = http_get(path, "/unix", family=socket.AF_UNIX)
        assert status_of(resp) == 200 and body_of(resp) == b"GET /unix len=0\n"
        s = socket.socket(socket.AF_UNIX)  # keep-alive works there too
        s.settimeout(5)
        try:
            s.connect(path)
            s.sendall(b"GET /u1 HTTP/1.1\r\nHost: t\r\n\r\nGET /u2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
            assert data.count(b"HTTP/1.1 200 ") == 2 and b"GET /u2 len=0\n" in data
        finally:
            s.close()
        assert p.stop() == 0
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(d)


def test_tcp_and_unix_together(launch):
    d = tempfile.mkdtemp(prefix="corsac-", dir="/tmp")
    path = os.path.join(d, "s.sock")
    try:
        p = launch("recorder:app", "--app-dir", str(APPS), "--bind", "127.0.0.1:0", "--bind", f"unix:{path}")
        urls = p.listening(2)
        tcp = [u for u in urls if u.startswith("http://")]
        assert len(tcp) == 1
        assert status_of(http_get(split_hostport(tcp[0]))) == 200
        assert status_of(http_get(path, family=socket.AF_UNIX)) == 200
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(d)


def test_bind_port_in_use_fails(launch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = run("recorder:app", "--app-dir", str(APPS), "--bind", f"127.0.0.1:{port}", timeout=10)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr


# --------------------------------------------------------------------------- logging

LOG_LINE = re.compile(r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{4}\] \[(\d+)\] \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] .+")


def test_listening_log_line(corsac):
    srv = corsac("recorder:app")
    line = next(l for l in srv.log().splitlines() if "Listening at:" in l)
    m = LOG_LINE.fullmatch(line)
    assert m, line
    assert m.group(2) == "INFO"
    assert line.endswith(f"Listening at: http://127.0.0.1:{srv.port} ({srv.proc.pid})")


def test_log_level_error_hides_info(launch):
    port = free_port()
    p = launch("recorder:app", "--app-dir", str(APPS), "--bind", f"127.0.0.1:{port}", "--log-level", "error")
    deadline = time.monotonic() + 15
    resp = b""
    while time.monotonic() < deadline and p.proc.poll() is None:
        try:
            resp = http_get(("127.0.0.1", port), "/quiet", timeout=2)
            break
        except (ConnectionRefusedError, OSError):
            time.sleep(0.05)
    assert status_of(resp) == 200
    assert p.stop() == 0
    assert "[INFO]" not in p.log(), p.log()


# --------------------------------------------------------------------------- signals

@pytest.mark.parametrize("threads", ["1", "4"])
def test_sigterm_lets_inflight_request_finish(corsac, threads):
    srv = corsac("recorder:app", "--threads", threads)
    result = {}

    def slow():
        try:
            result["resp"] = http_get((srv.host, srv.port), "/slow?s=1.5", timeout=8)
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    t.join(10)
    try:
        code = srv.proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    resp = result.get("resp", b"")
    assert status_of(resp) == 200, result
    assert body_of(resp) == b"slow done\n"
    assert code == 0, srv.log()
    assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero(corsac, sig):
    srv = corsac("recorder:app")
    assert status_of(http_get((srv.host, srv.port))) == 200
    t0 = time.monotonic()
    srv.proc.send_signal(sig)
    code = srv.proc.wait(10)
    assert code == 0, srv.log()
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in srv.log()


def test_sigterm_closes_idle_keepalive_connections(corsac):
    """An idle keep-alive connection does not hold up a graceful exit."""
    srv = corsac("recorder:app", "--timeout-keep-alive", "30")
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        s.close()


def test_graceful_timeout_bounds_shutdown(corsac):
    """A request running longer than --graceful-timeout does not keep the process alive."""
    srv = corsac("recorder:app", "--threads", "4", "--graceful-timeout", "1")
    t = threading.Thread(target=lambda: http_get((srv.host, srv.port), "/slow?s=6", timeout=8))
    t.start()
    try:
        time.sleep(0.4)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(6)
        except subprocess.TimeoutExpired:
            pass
        assert srv.proc.poll() is not None, "still running well after --graceful-timeout"
        assert time.monotonic() - t0 < 4
    finally:
        t.join(10)
