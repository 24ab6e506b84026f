"""The whole server under AddressSanitizer + UndefinedBehaviorSanitizer.

Once per session the extension is built into a temporary directory with meson
(`-Db_sanitize=address,undefined`, -O1, debug info) and put in a temporary
`corsac/` package.  The real `python -m corsac` is then started from that
package with the sanitizer runtimes preloaded, once with `--threads 1` (the app
runs on the I/O loop thread, slow readers suspend it) and once with
`--threads 4` (a pool), and driven over real sockets with a representative mix:
keep-alive and pipelined requests, Content-Length and chunked uploads read in
every wsgi.input style, 100-continue, HEAD, big responses read slowly, clients
that disconnect or stall mid-request and mid-response, malformed and smuggling
requests, the wsgiref validator, invalid responses and app errors, slowloris
heads, a second (AF_UNIX) listener and a concurrent mix.  After every scenario
the server must still be alive, with no sanitizer report and no dead worker in
its log (the arbiter would respawn one); at the end it is stopped with SIGTERM
and must exit 0 with a clean log.  Two extra servers: one with
--request-timeout (the watchdog thread answers 504 and the worker is replaced),
and one where the app plants a use-after-free through ctypes, to prove a report
from a worker process really reaches the log these checks read.

A report fails the scenario that caused it, with the report (top frames) in
the failure message; every later test of that server then fails at once.

Why the environment looks the way it does:
* PYTHONMALLOC=malloc: small Python objects (wsgi.input, bytes, strings) are
  then allocated with the intercepted malloc too, so a reference-counting
  mistake in wsgi.c that touches a freed object is reported instead of being
  hidden inside pymalloc's arenas.
* MESONPY_EDITABLE_SKIP: the venv has an editable install whose import hook
  runs before PYTHONPATH; this (meson-python's own switch) disables it so the
  sanitized build is the one imported.  A probe checks that it really is.
* detect_leaks=0: CPython itself does not free everything at exit.

The apps are the ones in tests/apps, reached through a small dispatcher module
(written to the temporary package) that routes on the first path segment:
/r/... recorder.app, /env environ_app, /in input_app, /bad/... bad_header_app,
/val/... the wsgiref-validated app, and so on; /x/... holds a few edge cases of
its own (many/long response headers, >64-item bodies, an app that keeps
wsgi.input and write() past the end of its request...).

The second half of the file does the same for the ASGI worker and WebSockets: the sanitized
server on tests/apps/sanitizer_asgi_app.py (--interface asgi), once with --loop asyncio and once
with --loop uvloop (skipped if uvloop does not run under the sanitizer runtime): HTTP through the
ASGI bridge (keep-alive, streamed bodies both ways, disconnects, pipelining, a slow reader,
malformed requests) and WebSockets (echo with and without permessage-deflate, fragments, 50
concurrent sessions, both closing sides, app errors, dropped clients, raw protocol violations,
garbage deflate data, --ws-max-size, pings, a client that never reads), then SIGTERM with
sessions open.

The third part does the same for TLS and HTTP/2 (tls.c, h2.c and their glue in conn.c): sanitized
servers with --ssl-certfile/--ssl-keyfile (a trustme CA) for the dispatcher (--threads 1) and for
the ASGI app (--loop asyncio), and the ASGI app on a plaintext port speaking h2c.  HTTPS/1.1
(keep-alive, 2 MB bodies, a slow reader, dropped clients), broken handshakes (garbage, TLS 1.0/1.1
only clients, clients gone mid-handshake), plain HTTP on the TLS port; HTTP/2 through httpx and
through the h2 library on raw sockets: 50 concurrent streams, 4 MB bodies both ways, a client that
never opens its window, RST_STREAM of uploads and downloads in flight, clients gone with streams
open, protocol errors (bad HPACK among them) that end in GOAWAY, each flood, and SIGTERM with
streams in flight (GOAWAY(NO_ERROR), the streams finish, exit 0).  The broken handshakes and the
floods get a server of their own per kind, so that what they may break ends no other test.

Set CORSAC_SANITIZER_CC=clang to build with clang instead of gcc."""
import hashlib
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from conftest import Server

ROOT = Path(__file__).resolve().parent.parent
SRC_PKG = ROOT / "src" / "corsac"
BUILD_TIMEOUT = 240           # a ceiling; the build takes ~10 s on 2 cores
BODY_LIMIT = 1 << 20

REPORT_RE = re.compile(
    r"ERROR: (?:AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|runtime error:|"
    r"LeakSanitizer|AddressSanitizer CHECK failed|Sanitizer:DEADLYSIGNAL")
# A worker that died some other way (the arbiter respawns it, so the server looks alive).
DEATH_RE = re.compile(r"Worker \(pid:\d+\) (?:was killed by signal|exited with code)|WORKER TIMEOUT|"
                      r"Fatal Python error")

# --------------------------------------------------------------------------- the dispatcher app

MUX_SOURCE = r'''
"""Dispatcher for tests/test_sanitizers.py (generated; do not edit)."""
import os

import recorder
import wsgi_apps

_stash = {}


def _extra(environ, start_response):
    path = environ["PATH_INFO"]
    q = wsgi_apps._qs(environ)
    text = [("Content-Type", "text/plain")]
    if path == "/many-headers":          # > 24 headers and > 4 KiB of head
        n, size = int(q.get("n", 40)), int(q.get("size", 150))
        start_response("200 OK", text + [("X-H-%d" % i, chr(97 + i % 26) * size) for i in range(n)])
        return [b"many headers"]
    if path == "/long-reason":
        start_response("299 " + "R" * int(q.get("n", 5000)), text)
        return [b"long reason"]
    if path == "/many-items":            # more than one writev batch / iovec block
        items = [b"%d," % i for i in range(int(q.get("n", 200)))]
        start_response("200 OK", text)
        return tuple(items) if q.get("tuple") else items
    if path == "/tiny-gen":
        n = int(q.get("n", 3000))
        start_response("200 OK", text)
        return (b"y" for _ in range(n))
    if path == "/gen-bad-item":
        start_response("200 OK", text)

        def gen():
            yield b"fine;"
            yield "not bytes"
        return gen()
    if path == "/write-in-gen":
        write = start_response("200 OK", text)

        def gen():
            yield b"a;"
            write(b"written-from-gen;")
            yield b"b"
        return gen()
    if path == "/close-raises":
        class Body:
            def __iter__(self):
                return iter([b"body;", b"more"])

            def close(self):
                raise RuntimeError("corsac-sanitizer close failure")
        start_response("200 OK", text)
        return Body()
    if path == "/exc-info-no-tb":         # exc_info after the head went out, traceback None
        write = start_response("200 OK", text)
        write(b"partial;")
        start_response("500 Internal Server Error", text, (ValueError, ValueError("late"), None))
        return [b"never"]
    if path == "/file-cl":                # file_wrapper with the app's own Content-Length
        f = open(os.environ["CORSAC_TEST_FILE"], "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", q["cl"])])
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/stash":                  # keep wsgi.input, write() and environ past the request
        _stash["input"] = environ["wsgi.input"]
        _stash["environ"] = environ
        _stash["write"] = start_response("200 OK", text)
        _stash["input"].read(3)
        return [b"stashed"]
    if path == "/use-stash":
        inp, write = _stash["input"], _stash["write"]
        calls = [("read", lambda: inp.read()), ("read5", lambda: inp.read(5)),
                 ("readline", lambda: inp.readline()), ("readlines", lambda: inp.readlines()),
                 ("iter", lambda: list(inp)), ("write", lambda: write(b"late"))]
        out = []
        for name, call in calls:
            try:
                out.append("%s=%r" % (name, call()))
            except Exception as e:
                out.append("%s!%s" % (name, type(e).__name__))
        start_response("200 OK", text)
        return [";".join(out).encode()]
    if path == "/asan-selftest" and os.environ.get("CORSAC_SANITIZER_SELFTEST"):
        import ctypes                     # a heap-use-after-free inside the server process
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        p = libc.malloc(16)
        libc.free(ctypes.c_void_p(p))
        ctypes.memmove(ctypes.create_string_buffer(16), p, 16)
    start_response("404 Not Found", text)
    return [b"no such extra route"]


ROUTES = {
    "r": recorder.app,
    "env": wsgi_apps.environ_app,
    "in": wsgi_apps.input_app,
    "write": wsgi_apps.write_app,
    "exc": wsgi_apps.exc_info_app,
    "exclate": wsgi_apps.exc_info_late_app,
    "twice": wsgi_apps.twice_app,
    "raise": wsgi_apps.raise_app,
    "raiseafter": wsgi_apps.raise_after_app,
    "bad": wsgi_apps.bad_header_app,
    "badbody": wsgi_apps.bad_body_app,
    "close": wsgi_apps.close_app,
    "file": wsgi_apps.file_app,
    "val": wsgi_apps.validated_app,
    "x": _extra,
}


def app(environ, start_response):
    seg, _, rest = environ.get("PATH_INFO", "/")[1:].partition("/")
    target = ROUTES.get(seg)
    if target is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such app\n"]
    environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/" + seg
    environ["PATH_INFO"] = "/" + rest
    return target(environ, start_response)
'''

# --------------------------------------------------------------------------- building


def _tool(name):
    for d in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def _runtime(cc):
    """LD_PRELOAD list for the sanitizer runtimes of cc, or None if missing."""
    names = (["libasan.so", "libubsan.so"] if cc == "gcc"
             else ["libclang_rt.asan-x86_64.so"])   # clang's ASan runtime includes UBSan
    libs = []
    for name in names:
        try:
            p = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        if not os.path.isabs(p) or not os.path.exists(p):
            return None
        libs.append(os.path.realpath(p))
    return libs


def _probe_compiler(cc, tmp):
    """Can cc build a sanitized shared object at all?"""
    c = tmp / "probe.c"
    c.write_text("int corsac_probe(int *p) { return p[1]; }\n")
    flags = ["-shared-libsan"] if cc != "gcc" else []
    r = subprocess.run([cc, "-fsanitize=address,undefined", "-fPIC", "-shared", *flags,
                        "-o", str(tmp / "probe.so"), str(c)], capture_output=True, text=True, timeout=60)
    return r.returncode == 0, r.stderr


def _editable_build_dirs():
    """Build dirs of meson-python editable import hooks (they win over PYTHONPATH)."""
    return [str(f._build_path) for f in sys.meta_path if isinstance(getattr(f, "_build_path", None), str)]


@pytest.fixture(scope="session")
def sanitized(tmp_path_factory):
    """Build the sanitized extension once; return the environment that runs it."""
    cc = os.environ.get("CORSAC_SANITIZER_CC", "gcc")
    if not shutil.which(cc):
        pytest.skip(f"{cc} not found: sanitizer build unavailable")
    meson, ninja = _tool("meson"), _tool("ninja")
    if not meson or not ninja:
        pytest.skip("meson/ninja not found: sanitizer build unavailable")
    libs = _runtime(cc)
    if not libs:
        pytest.skip(f"the AddressSanitizer/UBSan runtime of {cc} is not installed")
    tmp = tmp_path_factory.mktemp("sanitized")
    ok, err = _probe_compiler(cc, tmp)
    if not ok:
        pytest.skip(f"{cc} cannot build with -fsanitize=address,undefined:\n{err[-2000:]}")

    bdir = tmp / "build"
    env = dict(os.environ, CC=cc)
    env.pop("LD_PRELOAD", None)
    env["PATH"] = str(Path(ninja).parent) + os.pathsep + env.get("PATH", "")
    c_args = "-fno-omit-frame-pointer -g"
    link_args = "-shared-libsan" if cc != "gcc" else ""
    setup = [meson, "setup", str(bdir), str(ROOT), "-Db_sanitize=address,undefined", "-Db_lundef=false",
             "-Dbuildtype=debug", "-Doptimization=1", "-Dwerror=false",
             f"-Dc_args={c_args}", f"-Dc_link_args={link_args}",
             f"--native-file={_native_file(tmp)}"]
    deadline = time.monotonic() + BUILD_TIMEOUT
    for cmd in (setup, [ninja, "-C", str(bdir), "-j", "2"]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp,
                               timeout=max(5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"sanitizer build timed out: {' '.join(cmd)}")
        if r.returncode:
            pytest.fail(f"sanitizer build failed: {' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    sos = list(bdir.glob("_core*.so"))
    if len(sos) != 1:
        pytest.fail(f"sanitizer build produced {sos!r}, expected one _core*.so")

    pkgroot = tmp / "pkg"
    pkg = pkgroot / "corsac"
    pkg.mkdir(parents=True)
    for name in ("__init__.py", "__main__.py"):
        shutil.copy(SRC_PKG / name, pkg / name)
    shutil.copy(sos[0], pkg / sos[0].name)
    (pkgroot / "corsac_sanitizer_mux.py").write_text(MUX_SOURCE)

    run_env = {
        "PYTHONPATH": str(pkgroot),
        "MESONPY_EDITABLE_SKIP": os.pathsep.join(_editable_build_dirs() + [os.environ.get(
            "MESONPY_EDITABLE_SKIP", "")]).strip(os.pathsep),
        "LD_PRELOAD": ":".join(libs),
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1:print_summary=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONMALLOC": "malloc",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # The sanitized build must be the one imported, with the runtime live.
    probe = ("import ctypes, corsac._core as c; print(c.__file__); "
             "d = ctypes.CDLL(None); "
             "print(hasattr(d, '__asan_init') and hasattr(d, '__ubsan_handle_add_overflow'))")
    r = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **run_env),
                       capture_output=True, text=True, timeout=60)
    lines = r.stdout.split()
    if r.returncode:
        pytest.fail(f"the sanitized build cannot be imported (rc {r.returncode}):\n{r.stderr[-3000:]}")
    if len(lines) != 2 or not lines[0].startswith(str(pkg)) or lines[1] != "True":
        pytest.fail(f"the sanitized build is not what gets imported, or its runtime is not loaded:\n"
                    f"{r.stdout}\n{r.stderr[-3000:]}")
    return run_env


def _native_file(tmp):
    """Pin meson's python to this interpreter (the one the server runs with)."""
    f = tmp / "native.ini"
    f.write_text(f"[binaries]\npython = '{sys.executable}'\n")
    return f


# --------------------------------------------------------------------------- the server


class San:
    def __init__(self, server, threads, closed_path, file_path, sock_path=None):
        self.server = server
        self.threads = threads
        self.closed_path = closed_path
        self.file_path = file_path
        self.file_data = file_path.read_bytes()
        self.sock_path = sock_path

    def closed_lines(self):
        try:
            return self.closed_path.read_text().splitlines()
        except FileNotFoundError:
            return []


def sanitizer_report(log):
    m = REPORT_RE.search(log)
    if not m:
        return None
    start = log.rfind("=================", 0, m.start())
    start = start if start >= 0 and m.start() - start < 400 else max(0, m.start() - 300)
    rep = log[start:start + 12000]
    cut = rep.find("Shadow bytes around")
    return rep[:cut] + "[shadow bytes omitted]\n" if cut > 0 else rep


def assert_healthy(s, what=""):
    """No sanitizer report so far, the server is alive and answers."""
    log = s.server.log()
    rep = sanitizer_report(log)
    if rep:
        pytest.fail(f"sanitizer report (--threads {s.threads}) {what}:\n{rep}", pytrace=False)
    death = DEATH_RE.search(log)
    if s.server.proc.poll() is not None or death:
        pytest.fail(f"server/worker died (rc {s.server.proc.poll()}, --threads {s.threads}) {what}:\n"
                    f"{log[max(0, death.start() - 4000) if death else -6000:][:8000]}", pytrace=False)
    c = Conn(s)
    try:
        c.send(req("GET", "/r/health", [b"Connection: close"]))
        assert c.response().status == 200
    finally:
        c.close()


@pytest.fixture(scope="module", params=[1, 4], ids=["threads1", "threads4"])
def san(request, sanitized, tmp_path_factory):
    threads = request.param
    tmp = tmp_path_factory.mktemp(f"san-t{threads}")
    file_path = tmp / "served.bin"
    file_path.write_bytes(random.Random(7).randbytes(1536 * 1024 + 123))
    env = dict(sanitized, CORSAC_TEST_FILE=str(file_path), CORSAC_TEST_CLOSED=str(tmp / "closed.txt"))
    sock_path = tmp / "corsac.sock"
    srv = Server("corsac_sanitizer_mux:app",
                 ["--bind", "127.0.0.1:0", "--bind", f"unix:{sock_path}",   # two listeners, TCP and AF_UNIX
                  "--threads", str(threads), "--header-read-timeout", "1", "--body-read-timeout", "2",
                  "--graceful-timeout", "5", "--limit-request-body", str(BODY_LIMIT)],
                 env=env, tmp_path=tmp, wait=False)
    try:
        srv.wait_listening(timeout=60)
    except RuntimeError as e:
        srv.stop()
        pytest.fail(f"sanitized server did not start: {e}")
    s = San(srv, threads, tmp / "closed.txt", file_path, sock_path)
    yield s
    rc = srv.stop()
    rep = sanitizer_report(srv.log())
    if rep:
        pytest.fail(f"sanitizer report (--threads {threads}) at shutdown (rc {rc}):\n{rep}", pytrace=False)


@pytest.fixture
def s(san):
    log = san.server.log()
    if san.server.proc.poll() is not None or sanitizer_report(log) or DEATH_RE.search(log):
        pytest.fail(f"the sanitized server (--threads {san.threads}) failed in an earlier test "
                    f"(rc {san.server.proc.poll()}):\n{sanitizer_report(log) or log[-6000:]}", pytrace=False)
    yield san
    assert_healthy(san)


# --------------------------------------------------------------------------- HTTP client helpers


def req(method, path, headers=(), body=b"", version=b"HTTP/1.1", host=True, cl=None):
    lines = [f"{method} {path} ".encode() + version]
    if host:
        lines.append(b"Host: sanitizer.test")
    lines += list(headers)
    if cl is None and body and not any(h.lower().startswith(b"transfer-encoding") for h in headers):
        cl = len(body)
    if cl is not None:
        lines.append(b"Content-Length: %d" % cl)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(data, sizes=(1, 7, 100, 4096, 70000), ext=False, trailers=b""):
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        piece = data[i:i + n]
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), b";e=1;q=\"v\"" if ext and k % 2 else b"", piece))
        i += n
        k += 1
    return b"".join(out) + b"0\r\n" + trailers + b"\r\n"


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"<Resp {self.status} {self.headers} {self.body[:200]!r}>"


class Conn:
    def __init__(self, s, timeout=10.0, rcvbuf=None, unix=False):
        self.s = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        if unix:
            self.s.connect(str(s.sock_path))
        else:
            self.s.connect((s.server.host, s.server.port))
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data):
        self.s.sendall(data)

    def _more(self, n=65536):
        b = self.s.recv(n)
        if not b:
            raise EOFError("server closed the connection")
        self.buf += b

    def _take(self, n):
        while len(self.buf) < n:
            self._more(max(65536, n - len(self.buf)))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _line(self):
        while (i := self.buf.find(b"\r\n")) < 0:
            self._more()
        out = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return out

    def head(self):
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            self._more()
        lines = bytes(self.buf[:i]).decode("latin-1").split("\r\n")
        del self.buf[:i + 4]
        m = re.match(r"HTTP/1\.[01] (\d{3}) ", lines[0] + " ")
        assert m, f"bad status line {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            headers[k] = headers[k] + ", " + v.strip() if k in headers else v.strip()
        return int(m.group(1)), headers

    def response(self, head_request=False):
        while True:
            status, headers = self.head()
            if status >= 200:
                break
        if head_request or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", ""):
            parts = []
            while True:
                n = int(self._line().split(b";")[0], 16)
                if n == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._take(n))
                assert self._take(2) == b"\r\n"
            body = b"".join(parts)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:
            body = self.read_to_close()
        return Resp(status, headers, body)

    def read_to_close(self):
        try:
            while True:
                self._more()
        except (EOFError, ConnectionResetError):
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def server_closed(self, timeout=3.0):
        """True when the server ends the connection (EOF/RST) within timeout; unread data is dropped."""
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()

    def reset(self):
        """Close with an RST instead of a FIN."""
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.close()


def exchange(s, data, timeout=4.0, shut=False):
    """One connection: send data, read until the server closes.  Returns the bytes."""
    c = Conn(s, timeout=timeout)
    try:
        try:
            c.send(data)
            if shut:
                c.s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return c.read_to_close()
    except socket.timeout:
        return bytes(c.buf)
    finally:
        c.close()


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    return int(m.group(1)) if m else 0


def sha(b):
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- scenarios


def test_planted_error_is_reported(sanitized, tmp_path):
    """The detection itself works: a use-after-free planted in the server process (through
    ctypes, in the app) ends up as a report in the log that the checks below look for."""
    srv = Server("corsac_sanitizer_mux:app", [], env=dict(sanitized, CORSAC_SANITIZER_SELFTEST="1"),
                 tmp_path=tmp_path, wait=False)
    try:
        srv.wait_listening(timeout=60)
        try:
            with socket.create_connection((srv.host, srv.port), timeout=10) as c:
                c.sendall(req("GET", "/x/asan-selftest", [b"Connection: close"]))
                c.recv(65536)
        except OSError:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not sanitizer_report(srv.log()):
            time.sleep(0.05)
        log = srv.log()
    finally:
        srv.stop()
    assert "heap-use-after-free" in (sanitizer_report(log) or ""), log[-4000:]



def test_keepalive_gets(s):
    c = Conn(s)
    plan = [
        ("/r/", 200), ("/r/fixed", 200), ("/r/stream?n=9", 200), ("/r/nolength", 200),
        ("/r/status?code=204", 204), ("/r/status?code=304", 304), ("/r/status?code=404", 404),
        ("/r/own-date", 200), ("/r/write", 200), ("/r/big?n=300000", 200), ("/r/big?n=300000&gen=1", 200),
        ("/env/%7Efoo/%2F%zz%41?errors_marker=m1&pollute=1&q=%20x", 200), ("/env/again", 200),
        ("/write/", 200), ("/write/?cl=1", 200), ("/write/?only=1", 200), ("/write/?big=1", 200),
        ("/close/?tag=ka-normal", 200), ("/close/?tag=ka-lazy&mode=lazy", 200),
        ("/file/?cl=1", 200), ("/file/", 200), ("/file/?kind=record&tag=ka-file", 200),
        ("/file/?kind=nofileno&tag=ka-nofileno&offset=1000", 200), ("/file/?offset=1500000&cl=1", 200),
        ("/x/file-cl?cl=100", 200), ("/x/many-headers", 200), ("/x/many-headers?n=90&size=90", 200),
        ("/x/long-reason", 299), ("/x/many-items", 200), ("/x/many-items?n=300&tuple=1", 200),
        ("/x/tiny-gen", 200), ("/x/write-in-gen", 200), ("/x/close-raises", 200), ("/nothing-here", 404),
    ]
    plan += [("/env/" + "a%41%2" * 700 + "?" + "q=%00&" * 300, 200), ("/env/%", 200), ("/env/%4", 200)]
    extra_headers = [b"User-Agent: sanitizer", b"Accept: */*", b"Cookie: a=1", b"Cookie: b=2",
                     b"X-Dup: 1", b"X-Dup: 2", b"X_Underscore: dropped", b"X-Empty:",
                     b"X-Long: " + b"v" * 3000, b"Content-Type: text/x-weird",
                     b"X-" + b"n" * 300 + b": long name", b"X-" + b"m" * 300 + b": again",
                     b"X-" + b"m" * 300 + b": joined"]
    for path, want in plan:
        c.send(req("GET", path, extra_headers))
        r = c.response()
        assert r.status == want, (path, r)
        if path.startswith("/r/big"):
            assert r.body == b"x" * 300000
        if path in ("/file/", "/file/?cl=1"):
            assert r.body == s.file_data
        if path.startswith("/x/many-items"):
            assert r.body == b"".join(b"%d," % i for i in range(300 if "300" in path else 200))
    # the same connection still works after all of that; HTTP/1.0 keep-alive, then close
    c.send(req("GET", "/r/fixed", [b"Connection: keep-alive"], version=b"HTTP/1.0"))
    assert c.response().body == b"fixed-body"
    c.send(req("GET", "/r/stream", version=b"HTTP/1.0"))
    r = c.response()
    assert r.status == 200 and b"chunk-4" in r.body
    c.close()
    # an ordinary client library too
    import httpx
    with httpx.Client(base_url=f"http://{s.server.host}:{s.server.port}", timeout=10) as h:
        for _ in range(3):
            assert h.get("/r/headers", headers={"X-Test": "1"}).status_code == 200
            assert h.post("/r/echo", content=b"q" * 50000).content == b"q" * 50000
            assert h.get("/val/generator").content == b"0;1;2;3;4;"


INPUT_MODES = ["read", "read_minus1", "readn&n=7", "readn&n=70000", "readline", "readline_limit&n=5",
               "readlines", "readlines_hint&n=20", "iter", "mixed&n=3", "partial&n=10", "none", "late"]


def test_uploads(s):
    rnd = random.Random(11)
    bodies = [b"", b"one line\n", b"no newline at end", b"\n" * 300,
              b"".join(b"line %d %s\n" % (i, b"z" * (i % 90)) for i in range(2000)),
              rnd.randbytes(70001), rnd.randbytes(300000)]
    c = Conn(s, timeout=15)
    for i, data in enumerate(bodies):
        for mode in INPUT_MODES:
            for te in (False, True):
                if te:
                    r = req("POST", f"/in/?mode={mode}", [b"Transfer-Encoding: chunked"],
                            chunked(data, ext=i % 2 == 1, trailers=b"X-Trailer: t\r\n" if i % 3 == 0 else b""))
                else:
                    r = req("POST", f"/in/?mode={mode}", body=data, cl=len(data))
                c.send(r)
                resp = c.response()
                assert resp.status == 200, (mode, te, len(data), resp)
                if not mode.startswith(("partial", "none")):
                    assert sha(data) in resp.body.decode(), (mode, te, len(data))
                if resp.headers.get("connection") == "close":
                    c.close()
                    c = Conn(s, timeout=15)
    c.close()
    # the validator's input paths
    c = Conn(s, timeout=15)
    data = b"".join(b"validated %d\n" % i for i in range(3000))
    for path in ("/val/read", "/val/readline", "/val/readlines", "/val/iter"):
        for te in (False, True):
            c.send(req("POST", path, [b"Transfer-Encoding: chunked"], chunked(data)) if te
                   else req("POST", path, body=data))
            r = c.response()
            assert r.status == 200 and sha(data).encode() in r.body, (path, te, r)
    c.close()
    # a body trickled in small pieces while the app reads it
    c = Conn(s, timeout=15)
    data = rnd.randbytes(200000)
    payload = chunked(data, sizes=(999, 5, 30000))
    c.send(req("POST", "/r/echo", [b"Transfer-Encoding: chunked"]))
    for i in range(0, len(payload), 20011):
        c.send(payload[i:i + 20011])
        time.sleep(0.002)
    assert c.response().body == data
    c.close()
    # over --limit-request-body: Content-Length answered before the app, chunked while reading
    assert status_of(exchange(s, req("POST", "/r/echo", cl=BODY_LIMIT + 1))) == 413
    big = chunked(b"b" * (BODY_LIMIT + 10), sizes=(65536,))
    assert status_of(exchange(s, req("POST", "/r/echo", [b"Transfer-Encoding: chunked"], big))) == 413


def test_expect_continue(s):
    data = b"e" * 150000
    for te in (False, True):
        c = Conn(s)
        hdrs = [b"Expect: 100-continue"] + ([b"Transfer-Encoding: chunked"] if te else [])
        c.send(req("POST", "/r/expect", hdrs, cl=None if te else len(data)))
        status, _ = c.head()
        assert status == 100
        c.send(chunked(data) if te else data)
        r = c.response()
        assert r.status == 200 and r.body == b"len=%d\n" % len(data)
        # keep-alive: another one that never reads its body gets no 100
        c.send(req("POST", "/r/read-nothing", [b"Expect: 100-continue"], cl=10))
        r = c.response()
        assert r.status == 200 and b"did not read" in r.body
        c.close()
    # the client goes away while the server waits for it after 100 Continue
    c = Conn(s)
    c.send(req("POST", "/in/?mode=read", [b"Expect: 100-continue"], cl=50000))
    assert c.head()[0] == 100
    c.send(b"a" * 1000)
    c.reset()
    # and one that sends its body without waiting for the 100
    c = Conn(s)
    c.send(req("POST", "/r/expect", [b"Expect: 100-continue", b"Connection: close"], body=data))
    r = c.response()
    assert r.status == 200 and r.body == b"len=%d\n" % len(data)
    c.close()


def test_head(s):
    c = Conn(s)
    for path in ("/r/big?n=300000", "/r/big?n=300000&gen=1", "/r/stream", "/file/?cl=1", "/file/",
                 "/write/?big=1", "/val/hello", "/x/many-headers", "/r/status?code=204", "/close/?tag=head"):
        c.send(req("HEAD", path))
        r = c.response(head_request=True)
        assert r.status in (200, 204), (path, r)
        c.send(req("GET", "/r/fixed"))
        r = c.response()
        assert r.body == b"fixed-body", (path, r)   # no stray body bytes after the HEAD
    c.close()


def _slow_read(s, path, expect_len, rcvbuf=32768, piece=16384, pause=0.0005):
    c = Conn(s, timeout=15, rcvbuf=rcvbuf)
    c.send(req("GET", path))
    status, headers = c.head()
    assert status == 200
    got = 0
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            n = int(c._line().split(b";")[0], 16)
            if n == 0:
                c._line()
                break
            while n:
                if not c.buf:
                    time.sleep(pause)
                    c._more(piece)
                k = min(n, len(c.buf))
                del c.buf[:k]
                n -= k
                got += k
            c._take(2)
    else:
        n = int(headers["content-length"])
        while got < n:
            if not c.buf:
                time.sleep(pause)
                c._more(piece)
            k = min(n - got, len(c.buf))
            del c.buf[:k]
            got += k
    c.close()
    assert got == expect_len, path


def test_large_responses_read_slowly(s):
    jobs = [("/r/big?n=%d&gen=1" % (4 << 20), 4 << 20), ("/r/big?n=%d" % (3 << 20), 3 << 20),
            ("/write/?big=1", 3 * (1 << 20) + 3), ("/file/", len(s.file_data)),
            ("/close/?tag=slow&mode=normal", 3)]
    errors = []

    def run(path, n):
        try:
            _slow_read(s, path, n)
        except BaseException as e:      # noqa: BLE001 - reported below
            errors.append((path, repr(e)))

    threads = [threading.Thread(target=run, args=j, daemon=True) for j in jobs]
    for t in threads:
        t.start()
    # other clients keep being served meanwhile (the loop is not frozen by slow readers)
    c = Conn(s)
    for i in range(20):
        c.send(req("GET", f"/r/fast-{i}"))
        assert c.response().status == 200
        time.sleep(0.01)
    c.close()
    for t in threads:
        t.join(60)
    assert not errors


def _wait_closed_line(s, tag, timeout=6.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.split()[0] == tag for line in s.closed_lines() if line.split()):
            return True
        time.sleep(0.05)
    return False


def test_client_disconnects(s):
    # mid-response, after some bytes, with FIN and with RST
    for path in ("/r/big?n=%d&gen=1" % (64 << 20), "/r/big?n=%d" % (32 << 20), "/write/?big=1", "/file/",
                 "/close/?tag=dc-long&mode=long", "/val/file"):
        for rst in (False, True):
            c = Conn(s, rcvbuf=16384)
            c.send(req("GET", path))
            c._more(4096)
            time.sleep(0.02)
            c.reset() if rst else c.close()
    assert _wait_closed_line(s, "dc-long"), s.closed_lines()
    # the app is still sleeping when the client leaves
    for path in ("/r/slow?s=0.3", "/close/?tag=dc-slow&mode=long"):
        c = Conn(s)
        c.send(req("GET", path))
        c.reset()
    # mid-request-body while the app reads it (Content-Length and chunked)
    for hdr, part in ((None, b"p" * 1000), (b"Transfer-Encoding: chunked", b"400\r\n" + b"p" * 600)):
        for path in ("/r/echo", "/in/?mode=readline", "/in/?mode=stall&tag=dc-body", "/val/read"):
            for rst in (False, True):
                c = Conn(s)
                c.send(req("POST", path, [hdr] if hdr else [], cl=None if hdr else 100000) + part)
                time.sleep(0.02)
                c.reset() if rst else c.close()
    # mid-head, and right after a complete head
    for data in (b"GET /r/x HTT", req("GET", "/r/big?n=5000000")):
        for rst in (False, True):
            c = Conn(s)
            c.send(data)
            c.reset() if rst else c.close()
    # a half-close: the request is complete, the client only stops sending
    c = Conn(s)
    c.send(req("GET", "/r/stream"))
    c.s.shutdown(socket.SHUT_WR)
    assert c.response().status == 200
    c.close()
    time.sleep(0.5)


def test_stalled_reader_is_dropped(s):
    """A client that never reads a large response: dropped after --body-read-timeout (2 s)."""
    conns = []
    for path in ("/r/big?n=%d&gen=1" % (64 << 20), "/close/?tag=stall-long&mode=long", "/write/?big=1"):
        c = Conn(s, rcvbuf=8192)
        c.send(req("GET", path))
        conns.append(c)
    # meanwhile others are served
    for i in range(5):
        r = exchange(s, req("GET", f"/r/meanwhile-{i}", [b"Connection: close"]))
        assert status_of(r) == 200
    # (reading to see the others closed would un-stall them: the close() record tells instead)
    assert _wait_closed_line(s, "stall-long", timeout=8), s.closed_lines()
    time.sleep(0.5)
    for c in conns:
        c.reset()


MALFORMED = [
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET foo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: y\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX(y): 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n",
    b"GET / http/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.10\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"v" * 8100 + b"\r\n" * 1 + b"X" * 5000,
    b"\r\n\r\n\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
]


def test_malformed_and_smuggling(s):
    for i, data in enumerate(MALFORMED):
        out = exchange(s, data, timeout=4, shut=True)
        st = status_of(out)
        assert st == 0 or st >= 400, (i, data[:80], out[:300])
    # valid request, then a smuggling attempt, pipelined: 200 then an error, app sees only the first
    for bad in MALFORMED[4:8] + MALFORMED[21:28]:
        out = exchange(s, req("GET", "/r/first") + bad, timeout=4)
        assert status_of(out) == 200, out[:300]
        second = out[out.find(b"HTTP/1.1", 10):]
        assert status_of(second) >= 400, (bad[:80], out[:600])
    # a chunked body that legitimately ends before a second request
    c = Conn(s)
    c.send(req("POST", "/r/echo", [b"Transfer-Encoding: chunked"], b"0\r\n\r\n") + req("GET", "/r/second"))
    assert c.response().status == 200 and c.response().body == b"GET /second len=0\n"
    c.close()
    # a huge but legal head: the read buffer grows (realloc) while fields point into it
    big = [b"X-Big-%d: %s" % (i, bytes([97 + i % 26]) * 8000) for i in range(90)]
    c = Conn(s)
    c.send(req("GET", "/r/headers", big))
    r = c.response()
    assert r.status == 200 and r.body.count(b"HTTP_X_BIG_") == 90
    c.send(req("POST", "/r/echo", big[:40], body=b"after a big head"))
    assert c.response().body == b"after a big head"
    c.close()
    # mutated requests (deterministic): whatever the answer, nothing may go wrong inside
    rnd = random.Random(2024)
    seeds = [req("GET", "/r/m?q=1", [b"Cookie: a=b", b"X-A: 1"]),
             req("POST", "/r/echo", [b"Transfer-Encoding: chunked"], chunked(b"hello world" * 20, ext=True)),
             req("POST", "/in/?mode=readline", body=b"a\nbb\nccc\n"),
             req("GET", "/r/x", [b"Connection: keep-alive"], version=b"HTTP/1.0") + req("GET", "/r/y")]
    for k in range(160):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            op, pos = rnd.randrange(4), rnd.randrange(len(data))
            if op == 0:
                data[pos] = rnd.randrange(256)
            elif op == 1:
                del data[pos:pos + rnd.randint(1, 8)]
            elif op == 2:
                data[pos:pos] = rnd.choice([b"\r\n", b"\n", b"\x00", b":", b" ", b"0", b"f" * 20, b"\r\n\r\n",
                                            b";", b"chunked", b"%", b"%0"])
            else:
                data[pos:pos] = data[pos:pos + rnd.randint(1, 40)]
        exchange(s, bytes(data), timeout=3, shut=True)


def test_validator_app(s):
    c = Conn(s)
    for path, want in (("/val/hello", 200), ("/val/empty", 200), ("/val/nocontent", 204), ("/val/write", 200),
                       ("/val/file", 200), ("/val/generator", 200), ("/val/missing", 404)):
        c.send(req("GET", path))
        r = c.response()
        assert r.status == want, (path, r)
        if path == "/val/file":
            assert r.body == s.file_data
    c.close()


def test_invalid_responses_and_app_errors(s):
    bad_paths = ["/value-crlf", "/value-lf", "/value-cr", "/value-nul", "/value-nonlatin1", "/value-bytes",
                 "/value-int", "/name-space", "/name-colon", "/name-empty", "/name-crlf", "/name-nonlatin1",
                 "/name-bytes", "/status-nospace", "/status-4digit", "/status-2digit", "/status-alpha",
                 "/status-crlf", "/status-bytes", "/status-int", "/headers-not-pairs"]
    c = Conn(s)
    for p in bad_paths:
        c.send(req("GET", "/bad" + p))
        r = c.response()
        assert r.status == 500 and b"never be sent" not in r.body, (p, r)
        if r.headers.get("connection") == "close":
            c.close()
            c = Conn(s)
    for p in ("/ok", "/multi"):
        c.send(req("GET", "/bad" + p))
        assert c.response().status == 200
    c.close()
    # errors that may cut the connection: each on its own
    cases = ["/badbody/str-item", "/badbody/str-item-cl", "/badbody/none", "/badbody/bare-bytes", "/badbody/int",
             "/raise/", "/raiseafter/", "/exc/", "/exclate/", "/twice/", "/x/gen-bad-item", "/x/exc-info-no-tb",
             "/close/?tag=e-fail&mode=fail", "/close/?tag=e-failfirst&mode=failfirst",
             "/close/?tag=e-badheader&mode=badheader", "/close/?tag=e-short&mode=short",
             "/x/file-cl?cl=99999999", "/in/?mode=bogus"]
    for p in cases:
        out = exchange(s, req("GET", p, [b"Connection: close"]), timeout=5)
        assert out.startswith(b"HTTP/1.1 "), (p, out[:200])
        assert b"corsac-secret-marker" not in out
    # objects kept by the app past the end of their request must not reach it any more
    c = Conn(s)
    c.send(req("POST", "/x/stash", body=b"0123456789" * 1000))
    assert c.response().body == b"stashed"
    c.close()
    time.sleep(0.05)
    out = exchange(s, req("GET", "/x/use-stash", [b"Connection: close"]))
    assert status_of(out) == 200 and b"write!" in out, out[-400:]


def test_slowloris(s):
    """Heads trickled in (and connections that send nothing) are cut after --header-read-timeout 1;
    a body that stalls gets 408 after --body-read-timeout 2, before or while the app reads it."""
    results = {}

    def loris(i):
        c = Conn(s, timeout=8)
        try:
            c.send(b"GET /r/loris HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 6:
                r, _, _ = select.select([c.s], [], [], 0.25)
                if r:
                    break
                c.send(b"X-%d: %s\r\n" % (i, b"l" * i))
            results[f"loris{i}"] = status_of(c.read_to_close())
        except (socket.timeout, OSError) as e:
            results[f"loris{i}"] = repr(e)
        finally:
            c.close()

    def silent(i):
        c = Conn(s, timeout=8)
        results[f"silent{i}"] = c.server_closed(timeout=6)
        c.close()

    def stalled_body(name, path, sent):
        # sent < 16 KiB: stalls before the app runs; more: the app is reading when it stalls
        c = Conn(s, timeout=8)
        try:
            c.send(req("POST", path, cl=100000) + b"s" * sent)
            results[name] = status_of(c.read_to_close())
        except (socket.timeout, OSError) as e:
            results[name] = repr(e)
        finally:
            c.close()

    threads = [threading.Thread(target=loris, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=silent, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=stalled_body, args=a) for a in (
        ("body-before-app", "/r/echo", 10), ("body-in-app", "/in/?mode=stall&tag=loris-stall", 20000),
        ("body-validator", "/val/read", 20000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert all(results.get(f"loris{i}") == 408 for i in range(4)), results
    assert results["silent0"] is True and results["silent1"] is True, results
    assert results["body-before-app"] == 408 and results["body-in-app"] == 408, results


def test_concurrent_mix(s):
    data = random.Random(5).randbytes(40000)
    lines = b"a\nbb\n" * 3000
    kinds = [  # (request, HEAD?, check)
        (req("GET", "/env/?x=1", [b"X-A: 1", b"X-A: 2"]), False, lambda r: r.status == 200),
        (req("POST", "/r/echo", body=data), False, lambda r: r.body == data),
        (req("POST", "/in/?mode=readlines", [b"Transfer-Encoding: chunked"], chunked(lines, sizes=(777,))),
         False, lambda r: sha(lines).encode() in r.body),
        (req("GET", "/r/stream?n=50"), False, lambda r: r.body.count(b"chunk-") == 50),
        (req("GET", "/file/?cl=1&offset=1500000"), False, lambda r: len(r.body) == len(s.file_data) - 1500000),
        (req("HEAD", "/r/big?n=100000&gen=1"), True, lambda r: r.status == 200 and r.body == b""),
        (req("GET", "/x/many-items?n=150"), False, lambda r: r.status == 200),
        (req("GET", "/x/many-headers?n=30"), False, lambda r: r.status == 200),
        (req("GET", "/bad/value-crlf"), False, lambda r: r.status == 500),
        (req("GET", "/raise/"), False, lambda r: r.status == 500),
        (req("GET", "/val/generator"), False, lambda r: r.body == b"0;1;2;3;4;"),
        (req("GET", "/r/big?n=1000000&gen=1"), False, lambda r: len(r.body) == 1000000),
        None,   # disconnect mid-response
    ]
    errors = []

    def client(seed):
        rnd = random.Random(seed)
        c = Conn(s, timeout=15)
        try:
            for _ in range(24):
                k = rnd.choice(kinds)
                if k is None:
                    c.send(req("GET", "/r/big?n=3000000&gen=1"))
                    c._more(1000)
                    c.reset()
                    c = Conn(s, timeout=15)
                    continue
                data, head, check = k
                c.send(data)
                r = c.response(head_request=head)
                if not check(r):
                    errors.append((seed, data[:40], r))
                if r.headers.get("connection") == "close" or rnd.random() < 0.15:
                    c.close()
                    c = Conn(s, timeout=15)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((seed, repr(e)))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_unix_socket_listener(s):
    """The second listener (AF_UNIX: no peer address; its own environ template)."""
    c = Conn(s, unix=True)
    for i in range(5):
        c.send(req("GET", f"/env/unix-{i}", [b"X-A: 1"]))
        r = c.response()
        assert r.status == 200 and b"unix-%d" % i in r.body
        c.send(req("POST", "/r/echo", [b"Transfer-Encoding: chunked"], chunked(b"u" * 30000)))
        assert c.response().body == b"u" * 30000
    c.send(req("GET", "/r/big?n=2000000&gen=1"))
    c._more(1000)
    c.reset()
    c = Conn(s)                                  # and TCP again, interleaved
    c.send(req("GET", "/env/tcp"))
    assert c.response().status == 200
    c.close()


def test_pipelined(s):
    """Run late: a hang here leaves a connection the server may spin on."""
    body = bytes(range(256)) * 400       # 100 KiB: fills the 16 KiB read buffer several times
    reqs = [
        (req("GET", "/r/a"), False), (req("POST", "/r/echo", body=b"hello"), False),
        (req("POST", "/r/echo", [b"Transfer-Encoding: chunked"], chunked(b"chunky" * 1000, ext=True)), False),
        (req("HEAD", "/r/big?n=70000"), True), (req("GET", "/r/stream"), False),
        (req("POST", "/in/?mode=readline", body=b"l1\nl2\nl3"), False),
        (req("POST", "/r/echo", body=body), False), (req("GET", "/r/read-nothing"), False),
        (req("GET", "/file/?offset=1000000"), False), (req("GET", "/x/many-items"), False),
        (req("POST", "/r/echo-lines", [b"Transfer-Encoding: chunked"], chunked(b"x\n" * 5000, sizes=(3, 5000)),),
         False),
        (req("GET", "/r/fixed", [b"Connection: close"]), False),
    ]
    blob = b"".join(r for r, _ in reqs)
    for mode in ("at-once", "dribble"):
        c = Conn(s, timeout=5)
        if mode == "at-once":
            c.send(blob)
        else:
            # in small uneven pieces: every parse/frame boundary gets split somewhere
            t = threading.Thread(target=_dribble, args=(c, blob), daemon=True)
            t.start()
        got = []
        try:
            for _, h in reqs:
                got.append(c.response(head_request=h))
        except (OSError, EOFError) as e:
            pytest.fail(f"{mode}: {e!r} after {len(got)} of {len(reqs)} responses: {got[-1:]}")
        assert c.server_closed()
        c.close()
        assert [r.status for r in got] == [200] * len(reqs)
        assert got[1].body == b"hello" and got[2].body == b"chunky" * 1000
        assert got[3].body == b"" and got[3].headers.get("content-length") == "70000"
        assert got[6].body == body and got[8].body == s.file_data[1000000:]
        assert got[10].body == b"x\n" * 5000 and got[11].body == b"fixed-body"


def _dribble(c, blob):
    rnd = random.Random(3)
    i = 0
    try:
        while i < len(blob):
            n = rnd.choice((1, 2, 3, 7, 50, 600, 9000, 40000))
            c.send(blob[i:i + n])
            i += n
    except OSError:
        pass


@pytest.mark.parametrize("threads", [1, 4])
def test_request_timeout_watchdog(sanitized, tmp_path, threads):
    """--request-timeout: the watchdog thread answers 504 / cuts the connection of an app call that
    runs too long while the handler still owns it; then the worker is retired and replaced."""
    env = dict(sanitized, CORSAC_TEST_CLOSED=str(tmp_path / "closed.txt"))
    srv = Server("corsac_sanitizer_mux:app", ["--threads", str(threads), "--request-timeout", "0.5",
                                              "--graceful-timeout", "5"],
                 env=env, tmp_path=tmp_path, wait=False)
    try:
        srv.wait_listening(timeout=60)
        s = San(srv, threads, tmp_path / "closed.txt", ROOT / "README.md")
        results = {}

        def one(name, data, timeout=8):
            results[name] = status_of(exchange(s, data, timeout=timeout))

        jobs = [("slow", req("GET", "/r/slow?s=1.2")),
                ("slow-body-read", req("POST", "/in/?mode=read", cl=50000) + b"b" * 20000),
                ("streaming", req("GET", "/close/?tag=rt-long&mode=long")),
                ("write", req("GET", "/write/?big=1"))]
        threads_ = [threading.Thread(target=one, args=j) for j in jobs]
        for t in threads_:
            t.start()
            time.sleep(0.05)
        for t in threads_:
            t.join(30)
        assert results["slow"] == 504, results
        # served afterwards (by the replacement worker once the old one retires)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "Worker retiring" not in srv.log():
            time.sleep(0.05)
        for i in range(10):
            assert status_of(exchange(s, req("GET", f"/r/after-{i}", [b"Connection: close"]))) == 200
        time.sleep(0.5)
    finally:
        rc = srv.stop(timeout=20)
    log = srv.log()
    rep = sanitizer_report(log)
    assert rep is None, f"sanitizer report (--threads {threads}, --request-timeout):\n{rep}"
    assert "over --request-timeout" in log, log[-4000:]
    assert rc == 0, f"exit code {rc}:\n{log[-6000:]}"


def test_zz_sigterm_clean_exit(san):
    """Last for each server: in-flight work at SIGTERM, then exit 0 and a clean log."""
    s = san
    if s.server.proc.poll() is not None:
        pytest.fail(f"server already dead (rc {s.server.proc.returncode}):\n"
                    f"{sanitizer_report(s.server.log()) or s.server.log()[-6000:]}", pytrace=False)
    idle = Conn(s)
    idle.send(req("GET", "/r/before-idle"))
    assert idle.response().status == 200
    partial = Conn(s)
    partial.send(b"GET /r/partial HTTP/1.1\r\nHost: x\r\n")
    slow = {}

    def in_flight():
        c = Conn(s, timeout=10)
        try:
            c.send(req("GET", "/r/slow?s=1"))
            slow["status"] = c.response().status
        except BaseException as e:  # noqa: BLE001
            slow["status"] = repr(e)
        finally:
            c.close()

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.3)
    rc = s.server.stop(signal.SIGTERM, timeout=20)
    t.join(10)
    idle.close()
    partial.close()
    log = s.server.log()
    rep = sanitizer_report(log)
    assert rep is None, f"sanitizer report (--threads {s.threads}):\n{rep}"
    assert "LeakSanitizer" not in log and "runtime error:" not in log and "ERROR: AddressSanitizer" not in log
    assert not DEATH_RE.search(log), log[-6000:]
    assert rc == 0, f"exit code {rc}:\n{log[-6000:]}"
    assert slow.get("status") == 200, slow


# =========================================================================== ASGI and WebSocket
#
# The same sanitized build, serving tests/apps/sanitizer_asgi_app.py with --interface asgi: once
# on the asyncio loop and once on uvloop (skipped when uvloop does not run under the sanitizer
# runtime).  HTTP through the ASGI bridge (asgi.c), and WebSockets: framing and permessage-deflate
# (ws.c), sessions (conn.c) and the bridge (asgi.c), driven by the `websockets` client and by raw
# sockets for what a library would never send.  The app writes what it saw to a record file; each
# test asserts the behaviour (status, echo, close codes, what the app heard) and, through the
# `a` fixture, that the server is alive with a clean log before and after it.

ASGI_APP = "sanitizer_asgi_app:app"
WS_MAX = 2 << 20                    # --ws-max-size: 1 MiB echoes pass, 3 MiB messages get 1009
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


class ASan:
    """The sanitized ASGI server of one loop, plus the app's record file."""

    def __init__(self, server, loop, record):
        self.server = server
        self.loop = loop
        self.threads = f"asgi/{loop}"        # how the shared helpers name this server
        self.record = record

    @property
    def ws_url(self):
        return f"ws://{self.server.host}:{self.server.port}"

    def records(self):
        try:
            return self.record.read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_record(self, prefix, timeout=10.0):
        """The first record line starting with prefix (waits for it); fails with the record."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.records():
                if line.startswith(prefix):
                    return line
            if time.monotonic() > deadline:
                pytest.fail(f"the app never recorded {prefix!r}; record:\n" + "\n".join(self.records()[-40:])
                            + "\nlog:\n" + self.server.log()[-3000:], pytrace=False)
            time.sleep(0.02)


def _uvloop_usable(sanitized):
    """Can uvloop run a loop in a process with the sanitizer runtimes preloaded?"""
    probe = ("import asyncio, uvloop; l = uvloop.new_event_loop(); "
             "print(l.run_until_complete(asyncio.sleep(0.01, result='ok')))")
    try:
        r = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **sanitized),
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "the probe timed out"
    if r.returncode or r.stdout.strip() != "ok" or sanitizer_report(r.stderr):
        return False, f"rc {r.returncode}: {r.stderr[-1500:]}"
    return True, ""


def asgi_healthy(a, what=""):
    log = a.server.log()
    rep = sanitizer_report(log)
    if rep:
        pytest.fail(f"sanitizer report ({a.threads}) {what}:\n{rep}", pytrace=False)
    assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log
    death = DEATH_RE.search(log)
    if a.server.proc.poll() is not None or death:
        pytest.fail(f"server/worker died (rc {a.server.proc.poll()}, {a.threads}) {what}:\n"
                    f"{log[max(0, death.start() - 4000) if death else -6000:][:8000]}", pytrace=False)
    c = Conn(a)
    try:
        c.send(req("GET", "/health", [b"Connection: close"]))
        r = c.response()
        assert r.status == 200 and r.body == b"ok", r
    finally:
        c.close()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def asan(request, sanitized, tmp_path_factory):
    loop = request.param
    if loop == "uvloop":
        ok, why = _uvloop_usable(sanitized)
        if not ok:
            pytest.skip(f"uvloop does not run under the sanitizer runtime: {why}")
    tmp = tmp_path_factory.mktemp(f"asan-{loop}")
    record = tmp / "record.txt"
    srv = Server(ASGI_APP,
                 ["--interface", "asgi", "--loop", loop, "--header-read-timeout", "1",
                  "--body-read-timeout", "2", "--graceful-timeout", "5", "--limit-request-body", str(8 << 20),
                  "--ws-max-size", str(WS_MAX), "--ws-ping-interval", "0.2"],
                 env=dict(sanitized, CORSAC_TEST_RECORD=str(record)), tmp_path=tmp, wait=False)
    try:
        srv.wait_listening(timeout=60)
    except RuntimeError as e:
        srv.stop()
        pytest.fail(f"sanitized ASGI server ({loop}) did not start: {e}")
    a = ASan(srv, loop, record)
    assert f"asgi, {loop} event loop" in srv.log() or loop == "asyncio", srv.log()[-2000:]
    yield a
    rc = srv.stop()
    rep = sanitizer_report(srv.log())
    if rep:
        pytest.fail(f"sanitizer report ({a.threads}) at shutdown (rc {rc}):\n{rep}", pytrace=False)


@pytest.fixture
def a(asan):
    log = asan.server.log()
    if asan.server.proc.poll() is not None or sanitizer_report(log) or DEATH_RE.search(log):
        pytest.fail(f"the sanitized ASGI server ({asan.loop}) failed in an earlier test "
                    f"(rc {asan.server.proc.poll()}):\n{sanitizer_report(log) or log[-6000:]}", pytrace=False)
    yield asan
    asgi_healthy(asan)


# --------------------------------------------------------------------------- raw WebSocket helpers


def _mask(payload, key):
    n = len(payload)
    if not n:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def wsf(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """One client frame (masked unless mask=False); length= lies about the payload length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        return head + key + _mask(payload, key)
    return head + payload


def ws_open(a, path, extensions=None, timeout=10, rcvbuf=None):
    """A raw connection through the handshake; returns (conn, response headers)."""
    c = Conn(a, timeout=timeout, rcvbuf=rcvbuf)
    hdrs = [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: " + WS_KEY]
    if extensions:
        hdrs.append(b"Sec-WebSocket-Extensions: " + extensions)
    c.send(req("GET", path, hdrs))
    status, headers = c.head()
    assert status == 101, (path, status, headers)
    assert headers.get("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", headers
    return c, headers


def ws_read(c):
    """One server frame: (fin, rsv, opcode, payload)."""
    b0, b1 = c._take(2)
    assert not b1 & 0x80, "the server masked a frame"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", c._take(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", c._take(8))[0]
    return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, c._take(n)


def ws_close_code(c):
    """Reads frames up to the server's close frame; its code (1005 when empty), then expects TCP close."""
    while True:
        fin, rsv, op, payload = ws_read(c)
        if op == 8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            assert c.server_closed(timeout=5), "the server kept the connection after its close frame"
            return code


def ws_connect(a, path, **kw):
    from websockets.sync.client import connect
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    return connect(a.ws_url + path, **kw)


def ws_closed_code(ws, timeout=5):
    """The close code the server sent, waiting for the connection to close."""
    from websockets.exceptions import ConnectionClosed
    try:
        while True:
            ws.recv(timeout=timeout)
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None


# --------------------------------------------------------------------------- ASGI HTTP


def test_asgi_http_keepalive_and_streamed_bodies(a):
    rnd = random.Random(11)
    data = rnd.randbytes(300000)
    c = Conn(a)
    for i in range(20):
        c.send(req("GET", f"/health?i={i}", [b"X-A: 1", b"Cookie: a=b", b"X-Long: " + b"v" * 3000]))
        r = c.response()
        assert r.status == 200 and r.body == b"ok"
    plan = [
        (req("POST", "/echo", body=b"hello"), lambda r: r.body == b"hello"),
        (req("POST", "/echo", body=data), lambda r: r.body == data),
        (req("POST", "/echo", [b"Transfer-Encoding: chunked"], chunked(data, ext=True)), lambda r: r.body == data),
        (req("POST", "/echo-stream", [b"Transfer-Encoding: chunked"], chunked(data)), lambda r: r.body == data),
        (req("POST", "/echo-stream", body=data), lambda r: r.body == data),
        (req("POST", "/echo", [b"Transfer-Encoding: chunked"], b"0\r\n\r\n"), lambda r: r.body == b""),
        (req("POST", "/sha", [b"Transfer-Encoding: chunked"], chunked(data, sizes=(1, 3, 16384))),
         lambda r: r.body == b"%d %s" % (len(data), sha(data).encode())),
        (req("GET", "/stream?n=300&size=100"), lambda r: len(r.body) == 30000 and r.body[:100] == b"a" * 100),
        (req("GET", "/stream?n=5&size=200000"), lambda r: len(r.body) == 1000000),
        (req("GET", "/big?n=1000000&tag=ka-big"), lambda r: r.body == b"x" * 1000000),
        (req("HEAD", "/big?n=70000&tag=ka-head"), None),
        (req("GET", "/slow?s=0.05"), lambda r: r.body == b"slow done"),
        (req("GET", "/raise"), lambda r: r.status == 500),
        (req("GET", "/nothing"), lambda r: r.status == 404),
    ]
    for data_, check in plan:
        c.send(data_)
        r = c.response(head_request=data_.startswith(b"HEAD"))
        if check is None:
            assert r.status == 200 and r.body == b"", r
        else:
            assert check(r), (data_[:60], r)
        if r.headers.get("connection") == "close":
            c.close()
            c = Conn(a)
    # a body streamed in pieces with pauses, chunked and with Content-Length: the app reads as it comes
    for framing in ("chunked", "cl"):
        body = rnd.randbytes(200000)
        if framing == "chunked":
            c.send(req("POST", "/sha?tag=stream-" + framing, [b"Transfer-Encoding: chunked"]))
            wire = chunked(body, sizes=(5000, 20000, 1))
        else:
            c.send(req("POST", "/sha?tag=stream-" + framing, cl=len(body)))
            wire = body
        for i in range(0, len(wire), 25000):
            c.send(wire[i:i + 25000])
            time.sleep(0.02)
        r = c.response()
        assert r.body == b"%d %s" % (len(body), sha(body).encode()), r
    c.close()
    import httpx
    with httpx.Client(base_url=a.server.url, timeout=10) as h:
        for _ in range(3):
            assert h.post("/echo", content=iter([b"q" * 5000] * 10)).content == b"q" * 50000
            assert h.get("/stream?n=20&size=3").content == b"".join(bytes([97 + i]) * 3 for i in range(20))


def test_asgi_http_disconnects(a):
    """Clients gone mid-response (reset and FIN) and mid-body (Content-Length and chunked)."""
    for i, how in enumerate(("reset", "close", "reset", "close")):
        c = Conn(a, rcvbuf=8192)
        c.send(req("GET", f"/big?n={64 << 20}&tag=mid-resp-{i}"))
        c._more(1000)
        c.reset() if how == "reset" else c.close()
        assert a.wait_record(f"mid-resp-{i} big") == f"mid-resp-{i} big raised ClientDisconnected"
    for i, how in enumerate(("reset", "close")):
        c = Conn(a)
        c.send(req("POST", f"/sha?tag=mid-body-cl-{i}", cl=1 << 20) + b"b" * 100000)
        time.sleep(0.1)
        c.reset() if how == "reset" else c.close()
        assert a.wait_record(f"mid-body-cl-{i} sha").startswith(f"mid-body-cl-{i} sha disconnect")
        c = Conn(a)
        c.send(req("POST", f"/sha?tag=mid-body-ch-{i}", [b"Transfer-Encoding: chunked"])
               + b"4000\r\n" + b"c" * 0x4000 + b"\r\n1000\r\n" + b"c" * 100)   # mid-chunk
        time.sleep(0.1)
        c.reset() if how == "reset" else c.close()
        assert a.wait_record(f"mid-body-ch-{i} sha").startswith(f"mid-body-ch-{i} sha disconnect")
        c = Conn(a)        # streamed response while the body still streams in, then gone
        c.send(req("POST", f"/echo-stream?tag=mid-es-{i}", cl=1 << 20) + b"e" * 50000)
        c.head()
        c.reset() if how == "reset" else c.close()
        assert a.wait_record(f"mid-es-{i} echo-stream") in (f"mid-es-{i} echo-stream disconnect",
                                                            f"mid-es-{i} echo-stream raised ClientDisconnected")
    # a half-close after a complete request still gets its answer
    c = Conn(a)
    c.send(req("POST", "/echo", body=b"half"))
    c.s.shutdown(socket.SHUT_WR)
    assert c.response().body == b"half"
    c.close()


def test_asgi_http_pipelined(a):
    body = bytes(range(256)) * 400
    reqs = [
        (req("GET", "/health"), False), (req("POST", "/echo", body=b"hello"), False),
        (req("POST", "/echo", [b"Transfer-Encoding: chunked"], chunked(b"chunky" * 1000, ext=True)), False),
        (req("HEAD", "/big?n=70000"), True), (req("GET", "/stream?n=30&size=7"), False),
        (req("POST", "/echo", body=body), False), (req("POST", "/sha", body=body), False),
        (req("GET", "/raise"), False), (req("GET", "/big?n=200000"), False),
        # last: a response that starts before its body is all in keeps no keep-alive
        (req("POST", "/echo-stream", [b"Transfer-Encoding: chunked"], chunked(body, sizes=(3000, 1, 50000))),
         False),
    ]
    blob = b"".join(r for r, _ in reqs)
    for mode in ("at-once", "dribble"):
        c = Conn(a, timeout=10)
        if mode == "at-once":
            c.send(blob)
        else:
            threading.Thread(target=_dribble, args=(c, blob), daemon=True).start()
        got = []
        try:
            for _, h in reqs:
                got.append(c.response(head_request=h))
        except (OSError, EOFError) as e:
            pytest.fail(f"{mode}: {e!r} after {len(got)} of {len(reqs)} responses: {got[-1:]}")
        assert c.server_closed()
        c.close()
        assert [r.status for r in got] == [200] * 7 + [500, 200, 200], got
        assert got[1].body == b"hello" and got[2].body == b"chunky" * 1000
        assert got[3].body == b"" and got[3].headers.get("content-length") == "70000"
        assert got[5].body == body and got[6].body == b"%d %s" % (len(body), sha(body).encode())
        assert got[8].body == b"x" * 200000 and got[9].body == body


def test_asgi_http_pipelined_big_second_response(a):
    """A pipelined request whose response goes over the 256 KiB backpressure mark (the app's
    send has to wait for the socket) behind an answered one: every response must arrive."""
    for first, n in (("/health", 300000), ("/raise", 300000), ("/health", 1 << 20)):
        c = Conn(a, timeout=5)
        c.send(req("GET", first) + req("GET", f"/big?n={n}&tag=pipe-big-{first[1:]}-{n}") + req("GET", "/health"))
        got = []
        try:
            for _ in range(3):
                got.append(c.response())
        except (OSError, EOFError) as e:
            pytest.fail(f"{first} then /big?n={n} pipelined: {e!r} after {len(got)} of 3 responses "
                        f"({[r.status for r in got]}); app record: "
                        f"{[x for x in a.records() if x.startswith('pipe-big')]}", pytrace=False)
        finally:
            c.close()
        assert [r.status for r in got] == [200 if first == "/health" else 500, 200, 200]
        assert got[1].body == b"x" * n and got[2].body == b"ok"


def test_asgi_http_slow_reader(a):
    """A small receive window read slowly: the app's sends wait (backpressure) and resume."""
    n = 4 << 20
    c = Conn(a, rcvbuf=16384, timeout=10)
    c.send(req("GET", f"/big?n={n}&tag=slow-reader"))
    status, headers = c.head()
    assert status == 200 and headers["content-length"] == str(n)
    got = len(c.buf)
    c.buf.clear()
    t0 = time.monotonic()
    while got < n:
        b = c.s.recv(32768)
        assert b, f"EOF after {got} of {n} bytes"
        got += len(b)
        if time.monotonic() - t0 < 2.5:
            time.sleep(0.01)          # slow for a while (under --body-read-timeout), then drain
    assert got == n
    assert a.wait_record("slow-reader big") == "slow-reader big done"
    c.close()


def test_asgi_http_malformed(a):
    bad = [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: 1\r\n\r\n", b"\r\n\r\n\r\n", b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-H: v\r\n" * 300 + b"\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
        b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: " + WS_KEY + b"\r\n\r\n",
        b"POST /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + WS_KEY + b"\r\nContent-Length: 2\r\n\r\nhi",
    ]
    for data in bad:
        out = exchange(a, data, timeout=4, shut=True)
        st = status_of(out)
        assert st in (0, 400, 404, 413, 414, 426, 431, 505, 200), (data[:80], out[:200])
        assert st or data.strip() == b"", (data[:80], out[:200])
        assert st != 200 or data.startswith(b"GET /health"), (data[:80], out[:200])
    # the version other than 13 -> 426 naming 13
    out = exchange(a, bad[-2], timeout=4)
    assert status_of(out) == 426 and b"Sec-WebSocket-Version: 13" in out, out[:300]
    rnd = random.Random(77)
    seeds = [req("POST", "/echo", [b"Transfer-Encoding: chunked"], chunked(b"hello world" * 20, ext=True)),
             req("POST", "/sha", body=b"a\nbb\nccc\n"), req("GET", "/stream?n=3&size=2") + req("GET", "/health"),
             req("GET", "/ws/echo", [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
                                     b"Sec-WebSocket-Key: " + WS_KEY]) + wsf(1, b"hi") + wsf(8, b"\x03\xe8")]
    for _ in range(100):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            op, pos = rnd.randrange(4), rnd.randrange(len(data))
            if op == 0:
                data[pos] = rnd.randrange(256)
            elif op == 1:
                del data[pos:pos + rnd.randint(1, 8)]
            elif op == 2:
                data[pos:pos] = rnd.choice([b"\r\n", b"\n", b"\x00", b":", b" ", b"0", b"f" * 20, b"\r\n\r\n", b";"])
            else:
                data[pos:pos] = data[pos:pos + rnd.randint(1, 40)]
        exchange(a, bytes(data), timeout=3, shut=True)
    asgi_healthy(a, "after the mutated requests")


# --------------------------------------------------------------------------- WebSocket


def test_ws_echo_sizes_fragments_compression(a):
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
    rnd = random.Random(21)
    big_bytes = rnd.randbytes(1 << 20)
    big_text = "".join(rnd.choice("corsac websocket \u00e9\u4e2d\U0001f600") for _ in range(400000))
    variants = {
        "deflate": dict(),                          # the library default: permessage-deflate
        "off": dict(compression=None),
        "no-takeover": dict(compression=None, extensions=[ClientPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True,
            server_max_window_bits=10, client_max_window_bits=9)]),
    }
    for name, kw in variants.items():
        with ws_connect(a, f"/ws/echo?tag=echo-{name}", **kw) as ws:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
            assert ("permessage-deflate" in ext) == (name != "off"), (name, ext)
            if name == "no-takeover":
                assert "server_no_context_takeover" in ext and "server_max_window_bits=10" in ext, ext
            # (empty messages mid-stream: test_ws_empty_message_compressed)
            for msg in ["", "hi", "\u00e9\u4e2d\U0001f600" * 50, b"\x00\xff" * 70, "x" * 125, "y" * 126,
                        b"z" * 65535, b"z" * 65536, "repeat " * 5000]:
                ws.send(msg)
                assert ws.recv(timeout=10) == msg, (name, msg[:20])
            for msg in (big_bytes, big_text, b"\x00" * (1 << 20)):
                ws.send(msg)
                assert ws.recv(timeout=15) == msg, (name, len(msg))
            # fragmented sends (text and binary, with a ping between fragments)
            ws.send(iter(["frag-", "\u00e9", "", "end"]))
            assert ws.recv(timeout=10) == "frag-\u00e9end"
            parts = [rnd.randbytes(rnd.randint(0, 70000)) for _ in range(12)]
            ws.send(iter(parts))
            assert ws.recv(timeout=10) == b"".join(parts)
            assert ws.ping(b"mid").wait(5)
            ws.close(4321, "bye from the client")
            assert ws.protocol.close_rcvd.code == 4321
        assert a.wait_record(f"echo-{name} disconnect") == f"echo-{name} disconnect 4321 after 14"
    # a raw client splits a text message's UTF-8 sequence across fragments, with a ping in between
    c, _ = ws_open(a, "/ws/echo?tag=raw-frag")
    c.send(wsf(1, "ab\u20ac".encode()[:3], fin=False) + wsf(9, b"p") + wsf(0, "\u20ac".encode()[1:], fin=False)
           + wsf(0, b"", fin=False) + wsf(0, b"cd"))
    seen = [ws_read(c) for _ in range(2)]
    assert (True, 0, 10, b"p") in seen and (True, 0, 1, "ab\u20accd".encode()) in seen, seen
    c.send(wsf(8, struct.pack("!H", 1000) + b"ok"))
    assert ws_close_code(c) == 1000
    c.close()
    assert a.wait_record("raw-frag disconnect") == "raw-frag disconnect 1000 after 1"


def test_ws_empty_message_compressed(a):
    """An empty message after others, with permessage-deflate and context takeover: the compressed
    payload must still be a valid deflate block (RFC 7692 7.2.3.6: a single 0x00 byte), not
    nothing, or the client's inflater (which appends 00 00 FF FF) reads garbage."""
    import zlib
    c, h = ws_open(a, "/ws/echo?tag=empty-z", extensions=b"permessage-deflate")
    assert "permessage-deflate" in h.get("sec-websocket-extensions", ""), h
    d = zlib.decompressobj(wbits=-15)
    for op, msg in [(1, b""), (1, b"hi"), (2, b""), (2, b""), (2, b"\x00\xff" * 70), (1, b""), (1, b"abc")]:
        c.send(wsf(op, msg))
        fin, rsv, opc, payload = ws_read(c)
        assert opc == op
        if rsv & 4:
            try:
                got = d.decompress(payload + b"\x00\x00\xff\xff")
            except zlib.error as e:
                pytest.fail(f"after an empty message the server's compressed stream is broken: {e} "
                            f"(frame payload {payload.hex()!r} for {msg[:20]!r})")
        else:
            got = payload
        assert got == msg, (msg[:20], payload.hex())
    c.send(wsf(8, b"\x03\xe8"))
    assert ws_close_code(c) == 1000
    c.close()
    # and through the library client
    with ws_connect(a, "/ws/echo?tag=empty-lib") as ws:
        for msg in ("a", "", "", b"", b"b", "", "c"):
            ws.send(msg)
            assert ws.recv(timeout=5) == msg
    assert a.wait_record("empty-lib disconnect") == "empty-lib disconnect 1000 after 7"


def test_ws_concurrent_echo(a):
    """50 connections at once, echoing messages of mixed sizes, half of them compressed."""
    errors, n = [], 50

    def client(i):
        rnd = random.Random(i)
        try:
            kw = {} if i % 2 else {"compression": None}
            with ws_connect(a, f"/ws/echo?tag=conc-{i}", **kw) as ws:
                for k in range(20):
                    msg = rnd.randbytes(rnd.choice((1, 100, 5000, 70000))) if k % 2 else "t%d-%d " % (i, k) * 50
                    ws.send(msg)
                    if ws.recv(timeout=15) != msg:
                        errors.append((i, k, "wrong echo"))
                ws.close(1000)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    for i in range(n):
        assert a.wait_record(f"conc-{i} disconnect") == f"conc-{i} disconnect 1000 after 20"


def test_ws_close_paths(a):
    # client-initiated, with and without a code
    with ws_connect(a, "/ws/echo?tag=cc-1") as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.close(3001, "r" * 100)
    assert a.wait_record("cc-1 disconnect") == "cc-1 disconnect 3001 after 1"
    c, _ = ws_open(a, "/ws/echo?tag=cc-2")
    c.send(wsf(8, b""))
    assert ws_close_code(c) == 1005
    c.close()
    assert a.wait_record("cc-2 disconnect") == "cc-2 disconnect 1005 after 0"
    # app-initiated
    with ws_connect(a, "/ws/close?tag=ac-1&code=4000&reason=done") as ws:
        assert ws.recv(timeout=5) == "closing"
        assert ws_closed_code(ws) == (4000, "done")
    assert a.wait_record("ac-1 after-close") == "ac-1 after-close websocket.disconnect 4000"
    c, _ = ws_open(a, "/ws/close?tag=ac-2&code=1000&reason=" + "z" * 120)
    assert ws_read(c)[2:] == (1, b"closing")
    fin, rsv, op, payload = ws_read(c)
    assert op == 8 and payload[:2] == b"\x03\xe8" and len(payload) <= 125, payload
    c.send(wsf(8, payload[:2]))
    assert c.server_closed(timeout=5)
    c.close()
    a.wait_record("ac-2 after-close")
    # the app raises after accept -> 1011, and the traceback is logged
    with ws_connect(a, "/ws/raise") as ws:
        assert ws.recv(timeout=5) == "hello"
        ws.send("boom")
        assert ws_closed_code(ws)[0] == 1011
    deadline = time.monotonic() + 5
    while "corsac-sanitizer-ws raise after accept" not in a.server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "corsac-sanitizer-ws raise after accept" in a.server.log()


def test_ws_client_drops_mid_message(a):
    """Handshake, then half a frame (or half a fragmented message), then TCP gone: 1006 for the app."""
    cases = {
        "half-frame-fin": lambda c: c.send(wsf(2, b"h" * 1000)[:520]),
        "half-header": lambda c: c.send(wsf(2, b"h" * 70000)[:3]),
        "half-big-frame": lambda c: c.send(wsf(1, b"t" * 200000)[:100000]),
        "half-fragments": lambda c: c.send(wsf(1, b"first", fin=False) + wsf(0, b"second", fin=False)),
        "half-utf8": lambda c: c.send(wsf(1, "\u20ac".encode()[:2], fin=False)),
        "half-close": lambda c: c.send(wsf(8, b"\x03\xe8bye")[:4]),
    }
    for k, (name, send_half) in enumerate(cases.items()):
        c, _ = ws_open(a, f"/ws/echo?tag=drop-{name}")
        c.send(wsf(1, b"whole"))
        assert ws_read(c)[2:] == (1, b"whole")
        send_half(c)
        time.sleep(0.05)
        c.reset() if k % 2 else c.close()
        assert a.wait_record(f"drop-{name} disconnect") == f"drop-{name} disconnect 1006 after 1"
    # and one with compression negotiated, cut inside a compressed frame
    c, h = ws_open(a, "/ws/echo?tag=drop-deflate", extensions=b"permessage-deflate")
    assert "permessage-deflate" in h.get("sec-websocket-extensions", "")
    import zlib
    z = zlib.compressobj(wbits=-15)
    packed = z.compress(random.Random(3).randbytes(50000)) + z.flush(zlib.Z_SYNC_FLUSH)
    c.send(wsf(2, packed[:-4], rsv=4)[:len(packed) // 2])
    time.sleep(0.05)
    c.close()
    assert a.wait_record("drop-deflate disconnect") == "drop-deflate disconnect 1006 after 0"


WS_VIOLATIONS = [  # (name, frames after the handshake, close code the server must send)
    ("unmasked", wsf(1, b"hello", mask=False), 1002),
    ("unmasked-after-fragment", wsf(1, b"a", fin=False) + wsf(0, b"b", mask=False), 1002),
    ("opcode-3", wsf(3, b"x"), 1002),
    ("opcode-7", wsf(7, b""), 1002),
    ("opcode-11", wsf(11, b"ctl"), 1002),
    ("rsv1-no-ext", wsf(1, b"x", rsv=4), 1002),
    ("rsv2", wsf(2, b"x", rsv=2), 1002),
    ("rsv3", wsf(2, b"x", rsv=1), 1002),
    ("bad-utf8", wsf(1, b"ok \xc3\x28 bad"), 1007),
    ("bad-utf8-overlong", wsf(1, b"\xc0\xaf"), 1007),
    ("bad-utf8-surrogate", wsf(1, b"\xed\xa0\x80"), 1007),
    ("bad-utf8-fragmented", wsf(1, b"\xf0\x9f", fin=False) + wsf(0, b"\x98"), 1007),
    ("bad-utf8-close-reason", wsf(8, b"\x03\xe8\xff\xfe"), 1007),
    ("ping-126", wsf(9, b"p" * 126), 1002),
    ("close-126", wsf(8, b"\x03\xe8" + b"r" * 124), 1002),
    ("pong-64k-len", wsf(10, b"q" * 70000), 1002),
    ("fragmented-ping", wsf(9, b"p", fin=False), 1002),
    ("close-1-byte", wsf(8, b"\x03"), 1002),
    ("close-999", wsf(8, struct.pack("!H", 999)), 1002),
    ("close-1005", wsf(8, struct.pack("!H", 1005)), 1002),
    ("close-1006", wsf(8, struct.pack("!H", 1006)), 1002),
    ("close-2000", wsf(8, struct.pack("!H", 2000)), 1002),
    ("continuation-first", wsf(0, b"orphan"), 1002),
    ("data-inside-fragmented", wsf(1, b"a", fin=False) + wsf(2, b"b"), 1002),
    ("len-64bit-msb", bytes([0x82, 0xFF]) + b"\x80" + b"\x00" * 7 + b"mask", 1002),
    ("over-max-size-header", bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 40) + b"mask", 1009),
]


@pytest.mark.parametrize("name,frames,code", WS_VIOLATIONS, ids=[v[0] for v in WS_VIOLATIONS])
def test_ws_protocol_violations(a, name, frames, code):
    c, _ = ws_open(a, f"/ws/echo?tag=viol-{name}")
    c.send(wsf(1, b"fine"))
    assert ws_read(c)[2:] == (1, b"fine")
    try:
        c.send(frames + wsf(1, b"after the violation"))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert ws_close_code(c) == code
    c.close()
    assert a.wait_record(f"viol-{name} disconnect") == f"viol-{name} disconnect {code} after 1"


def test_ws_garbage_deflate(a):
    """permessage-deflate negotiated by hand; RSV1 frames whose payload is not deflate data."""
    import zlib
    rnd = random.Random(99)
    cases = [("rand-%d" % i, wsf(2 if i % 2 else 1, rnd.randbytes(rnd.choice((1, 7, 100, 5000, 70000))), rsv=4))
             for i in range(8)]
    cases.append(("reserved-block", wsf(2, b"\x07" + rnd.randbytes(300), rsv=4)))
    z = zlib.compressobj(wbits=-15)
    good = z.compress(b"valid start " * 100) + z.flush(zlib.Z_SYNC_FLUSH)
    cases.append(("valid-then-garbage", wsf(1, good[:-4] + b"\xff" * 50, rsv=4)))
    cases.append(("fragmented-garbage", wsf(2, good[:-4], rsv=4, fin=False) + wsf(0, rnd.randbytes(3000))))
    for name, frames in cases:
        ext = b"permessage-deflate; client_max_window_bits" if len(name) % 2 else b"permessage-deflate"
        c, h = ws_open(a, f"/ws/echo?tag=gz-{name}", extensions=ext)
        assert "permessage-deflate" in h.get("sec-websocket-extensions", ""), h
        # a proper compressed message first: the inflater is warm when the garbage arrives
        zc = zlib.compressobj(wbits=-15)
        ok = zc.compress(b"warm-up") + zc.flush(zlib.Z_SYNC_FLUSH)
        c.send(wsf(1, ok[:-4], rsv=4))
        fin, rsv, op, payload = ws_read(c)
        assert op == 1 and (zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
                            if rsv & 4 else payload) == b"warm-up"
        try:
            c.send(frames)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert ws_close_code(c) == 1007, name
        c.close()
        assert a.wait_record(f"gz-{name} disconnect") == f"gz-{name} disconnect 1007 after 1"
    # RSV1 on a control frame is a protocol error even with the extension
    c, _ = ws_open(a, "/ws/echo?tag=gz-ctl", extensions=b"permessage-deflate")
    c.send(wsf(9, b"p", rsv=4))
    assert ws_close_code(c) == 1002
    c.close()
    assert a.wait_record("gz-ctl disconnect") == "gz-ctl disconnect 1002 after 0"


def test_ws_max_size(a):
    over = WS_MAX + 1000
    # plain, and compressed (a deflate bomb: tiny on the wire, over the limit once inflated)
    for name, kw in (("plain", dict(compression=None)), ("deflate", dict())):
        with ws_connect(a, f"/ws/echo?tag=max-{name}", **kw) as ws:
            ws.send(b"\x00" * WS_MAX)                  # exactly at the limit: fine
            assert ws.recv(timeout=15) == b"\x00" * WS_MAX
            ws.send(b"\x00" * over)
            assert ws_closed_code(ws, timeout=15)[0] == 1009
        assert a.wait_record(f"max-{name} disconnect") == f"max-{name} disconnect 1009 after 1"
    # fragmented: every fragment small, the sum over the limit
    with ws_connect(a, "/ws/echo?tag=max-frag", compression=None) as ws:
        ws.send(iter([b"f" * 300000] * (over // 300000 + 1)))
        assert ws_closed_code(ws, timeout=15)[0] == 1009
    assert a.wait_record("max-frag disconnect") == "max-frag disconnect 1009 after 0"


def test_ws_ping_pong(a):
    """--ws-ping-interval 0.2: the server pings; a client that answers stays; the server answers ours."""
    c, _ = ws_open(a, "/ws/echo?tag=ping-raw")
    pings, t0 = [], time.monotonic()
    while len(pings) < 4:
        fin, rsv, op, payload = ws_read(c)
        assert op == 9 and len(payload) <= 125, (op, payload)
        pings.append(payload)
        c.send(wsf(10, payload))
    assert time.monotonic() - t0 < 5 and len(set(pings)) == 4, pings
    c.send(wsf(9, b"client-ping") + wsf(1, b"still here"))
    got = []
    while len(got) < 2:
        f = ws_read(c)
        if f[2] == 9:
            c.send(wsf(10, f[3]))
        else:
            got.append(f[2:])
    assert (10, b"client-ping") in got and (1, b"still here") in got, got
    c.send(wsf(8, b"\x03\xe8"))
    assert ws_close_code(c) == 1000
    c.close()
    assert a.wait_record("ping-raw disconnect") == "ping-raw disconnect 1000 after 1"
    # the library client answers the pings by itself: idle for a while, then still usable
    with ws_connect(a, "/ws/echo?tag=ping-lib") as ws:
        time.sleep(1.2)
        for i in range(5):
            assert ws.ping(b"lib-%d" % i).wait(5)
        ws.send("after idle")
        assert ws.recv(timeout=5) == "after idle"
    assert a.wait_record("ping-lib disconnect") == "ping-lib disconnect 1000 after 1"
    # unsolicited pongs are ignored
    c, _ = ws_open(a, "/ws/echo?tag=ping-unsolicited")
    c.send(wsf(10, b"") + wsf(10, b"u" * 125) + wsf(1, b"x"))
    while (f := ws_read(c))[2] == 9:
        pass
    assert f[2:] == (1, b"x")
    c.close()
    assert a.wait_record("ping-unsolicited disconnect") == "ping-unsolicited disconnect 1006 after 1"


def test_ws_never_reads(a):
    """A client that never reads while the app sends a lot: the app's send waits (backpressure),
    and the server drops the connection after --body-read-timeout (2 s); the app's send raises."""
    c, _ = ws_open(a, "/ws/flood?tag=flood-1&mb=400", rcvbuf=4096)
    c2, _ = ws_open(a, "/ws/flood?tag=flood-2&mb=400", extensions=b"permessage-deflate", rcvbuf=4096)
    t0 = time.monotonic()
    a.wait_record("flood-1 started")
    assert a.wait_record("flood-1 raised", timeout=15) == "flood-1 raised ClientDisconnected"
    assert a.wait_record("flood-2 raised", timeout=15) == "flood-2 raised ClientDisconnected"
    assert 1.5 < time.monotonic() - t0 < 15
    assert "stopped reading; dropping the connection" in a.server.log()
    for conn in (c, c2):
        assert conn.server_closed(timeout=10)
        conn.close()


def test_zz_ws_sigterm_clean_exit(asan):
    """Last for each server: SIGTERM with WebSockets open (library clients, a raw client mid-message,
    a flood that the client does not read): close 1001 to each, exit 0, a clean log."""
    a = asan
    if a.server.proc.poll() is not None:
        pytest.fail(f"server already dead (rc {a.server.proc.returncode}):\n"
                    f"{sanitizer_report(a.server.log()) or a.server.log()[-6000:]}", pytrace=False)
    import contextlib
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(ws_connect(a, f"/ws/hold?tag=term-{i}",
                                              **({} if i % 2 else {"compression": None})))
               for i in range(6)]
    for ws in clients:
        assert ws.recv(timeout=5) == "held"
    raw, _ = ws_open(a, "/ws/hold?tag=term-raw")
    assert ws_read(raw)[2:] == (1, b"held")
    raw.send(wsf(1, b"m" * 1000)[:500])
    flood, _ = ws_open(a, "/ws/flood?tag=term-flood&mb=400", rcvbuf=4096)
    a.wait_record("term-flood started")
    http = Conn(a)
    http.send(req("GET", "/health"))
    assert http.response().status == 200
    codes, threads = {}, []

    def wait_close(i, ws):
        codes[i] = ws_closed_code(ws, timeout=10)

    for i, ws in enumerate(clients):
        threads.append(threading.Thread(target=wait_close, args=(i, ws)))
        threads[-1].start()
    time.sleep(0.2)
    rc = a.server.stop(signal.SIGTERM, timeout=20)
    for t in threads:
        t.join(10)
    raw_code = None
    try:
        while True:
            fin, rsv, op, payload = ws_read(raw)
            if op == 8:
                raw_code = struct.unpack("!H", payload[:2])[0]
                break
    except (OSError, EOFError, AssertionError):
        pass
    for conn in (raw, flood, http):
        conn.close()
    stack.close()
    log = a.server.log()
    rep = sanitizer_report(log)
    assert rep is None, f"sanitizer report ({a.threads}) at SIGTERM:\n{rep}"
    assert "runtime error:" not in log and "ERROR: AddressSanitizer" not in log
    assert not DEATH_RE.search(log), log[-6000:]
    assert rc == 0, f"exit code {rc}:\n{log[-6000:]}"
    assert all(codes.get(i, (None,))[0] == 1001 for i in range(len(clients))), codes
    assert raw_code == 1001, raw_code
    for i in range(len(clients)):
        assert a.wait_record(f"term-{i} disconnect", timeout=1) == f"term-{i} disconnect 1001 after 0"


# =========================================================================== TLS and HTTP/2
#
# Three more sanitized servers for tls.c, h2.c and their glue in conn.c: the WSGI dispatcher
# (--threads 1: the app runs on the I/O thread, HTTP/2 streams too) and the ASGI app (--loop
# asyncio), both with --ssl-certfile/--ssl-keyfile from a trustme CA (h2 through ALPN, HTTP/1.1
# otherwise), and the ASGI app on a plaintext port, where a connection that starts with the h2
# preface speaks h2c.  HTTPS/1.1 and broken handshakes on the TLS ones; HTTP/2 through httpx and
# through the h2 library on raw sockets on all three, with hand-made frames for what no library
# sends (protocol errors, floods); SIGTERM with streams in flight last for each server.

T_BODY_LIMIT = 8 << 20
TLS_KINDS = ["wsgi-tls", "asgi-tls"]
H2_KINDS = ["wsgi-tls", "asgi-tls", "asgi-h2c"]
on_tls = pytest.mark.parametrize("tsrv", TLS_KINDS, indirect=True)
on_h2 = pytest.mark.parametrize("tsrv", H2_KINDS, indirect=True)
# (WSGI route, ASGI route); both sha routes answer with the sha256 hex of what they read
T_ROUTES = {"health": ("/r/health", "/health"), "echo": ("/r/echo", "/echo"),
            "sha": ("/in/?mode=readn&n=65536", "/sha"), "big": ("/r/big?gen=1", "/big"),
            "slow": ("/r/slow", "/slow")}
H2_MAGIC = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# frame types and flags
F_DATA, F_HEADERS, F_PRIORITY, F_RST, F_SETTINGS, F_PING, F_GOAWAY, F_WU, F_CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x6, 0x9, 0xb


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("certs")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for i, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    return paths


class TSan(ASan):
    """One sanitized TLS or h2c server: the app it runs, how to reach it, its routes."""

    def __init__(self, server, kind, record, ca):
        super().__init__(server, "asyncio", record)
        self.kind = self.threads = kind
        self.asgi = kind.startswith("asgi")
        self.tls = kind.endswith("tls")
        self.ca = ca

    @property
    def base(self):
        return f"{'https' if self.tls else 'http'}://{self.server.host}:{self.server.port}"

    def ctx(self, alpn=("http/1.1",)):
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def path(self, route, **q):
        p = T_ROUTES[route][self.asgi]
        if q:
            p += ("&" if "?" in p else "?") + "&".join(f"{k}={v}" for k, v in q.items())
        return p

    def ended(self, tag, timeout=10.0):
        """ASGI: the app's record line for tag (how its read or send ended); WSGI: nothing to wait for."""
        return self.wait_record(tag, timeout) if self.asgi else None


def _start_tsrv(kind, sanitized, certs, tmp, extra=()):
    record = tmp / "record.txt"
    common = ["--header-read-timeout", "3", "--body-read-timeout", "2", "--graceful-timeout", "5",
              "--limit-request-body", str(T_BODY_LIMIT)]
    if kind.startswith("asgi"):
        app, args = ASGI_APP, ["--interface", "asgi", "--loop", "asyncio"] + common
    else:
        app, args = "corsac_sanitizer_mux:app", ["--threads", "1"] + common
    if kind.endswith("tls"):
        args += ["--ssl-certfile", str(certs["cert"]), "--ssl-keyfile", str(certs["key"])]
    env = dict(sanitized, CORSAC_TEST_RECORD=str(record), CORSAC_TEST_FILE=str(ROOT / "README.md"),
               CORSAC_TEST_CLOSED=str(tmp / "closed.txt"))
    srv = Server(app, args + list(extra), env=env, tmp_path=tmp, wait=False)
    try:
        srv.wait_listening(timeout=60)
    except RuntimeError as e:
        srv.stop()
        pytest.fail(f"sanitized server ({kind}) did not start: {e}")
    t = TSan(srv, kind, record, certs["ca"])
    assert f"Listening at: {'https' if t.tls else 'http'}://" in srv.log(), srv.log()[-2000:]
    return t


def _stop_tsrv(t, clean_exit=True):
    rc = t.server.stop()
    log = t.server.log()
    rep = sanitizer_report(log)
    if rep:
        pytest.fail(f"sanitizer report ({t.kind}) at shutdown (rc {rc}):\n{rep}", pytrace=False)
    death = DEATH_RE.search(log)
    if clean_exit and (death or rc != 0):
        pytest.fail(f"worker died or exit code {rc} ({t.kind}):\n{log[-4000:]}", pytrace=False)


@pytest.fixture(scope="module")
def tsrv(request, sanitized, certs, tmp_path_factory):
    """The shared server of one kind (wsgi-tls, asgi-tls, asgi-h2c) for the tests of this part."""
    t = _start_tsrv(request.param, sanitized, certs, tmp_path_factory.mktemp(f"tsan-{request.param}"))
    yield t
    _stop_tsrv(t, clean_exit=False)       # (the SIGTERM test checks the exit)


@pytest.fixture
def own_srv(request, sanitized, certs, tmp_path):
    """A server of one kind for one test only: for scenarios that leave something behind (see the
    tests that use it).  Its log must be clean and its exit 0 at the end."""
    t = _start_tsrv(request.param, sanitized, certs, tmp_path, extra=["--graceful-timeout", "1"])
    yield t
    _stop_tsrv(t)


def tls_healthy(t, what=""):
    """No report, no dead worker; a new h2 connection is answered."""
    log = t.server.log()
    rep = sanitizer_report(log)
    if rep:
        pytest.fail(f"sanitizer report ({t.kind}) {what}:\n{rep}", pytrace=False)
    death = DEATH_RE.search(log)
    if t.server.proc.poll() is not None or death:
        pytest.fail(f"server/worker died (rc {t.server.proc.poll()}, {t.kind}) {what}:\n"
                    f"{log[max(0, death.start() - 4000) if death else -6000:][:8000]}", pytrace=False)
    c = H2C(t)
    try:
        st = c.get(t.path("health"))
        assert st["status"] == 200, (what, st)
    finally:
        c.close()


@pytest.fixture
def t(tsrv):
    log = tsrv.server.log()
    if tsrv.server.proc.poll() is not None or sanitizer_report(log) or DEATH_RE.search(log):
        pytest.fail(f"the sanitized server ({tsrv.kind}) failed in an earlier test "
                    f"(rc {tsrv.server.proc.poll()}):\n{sanitizer_report(log) or log[-6000:]}", pytrace=False)
    yield tsrv
    tls_healthy(tsrv)


# --------------------------------------------------------------------------- TLS and h2 client helpers


class TConn(Conn):
    """Conn over TLS (ALPN http/1.1 unless told otherwise)."""

    def __init__(self, t, timeout=10.0, rcvbuf=None, alpn=("http/1.1",)):
        super().__init__(t, timeout=timeout, rcvbuf=rcvbuf)
        self.s = t.ctx(alpn).wrap_socket(self.s, server_hostname="127.0.0.1")

    def _more(self, n=65536):
        import ssl
        try:
            super()._more(n)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
            raise EOFError(f"server closed the connection ({e})") from None

    def server_closed(self, timeout=3.0):
        import ssl
        self.s.settimeout(timeout)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True
        except socket.timeout:
            return False


def h2f(ftype, flags=0, sid=0, payload=b""):
    """One raw HTTP/2 frame."""
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


class H2C:
    """One HTTP/2 connection driven by the h2 library over a raw socket: TLS with ALPN h2, or h2c
    with prior knowledge.  raw() and frames() send and read hand-made frames instead; once they
    are used the h2 library's view of the connection is stale (only its HPACK coder is reused)."""

    def __init__(self, t, timeout=10.0, rcvbuf=None, window=None, auto_ack=True, preface=True):
        import h2.config
        import h2.connection
        import h2.settings
        self.t = t
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect((t.server.host, t.server.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if t.tls:
            s = t.ctx(("h2",)).wrap_socket(s, server_hostname="127.0.0.1")
            assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
        self.sock, self.timeout, self.auto_ack = s, timeout, auto_ack
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams, self.goaway, self.eof, self.rbuf = {}, None, False, bytearray()
        self.next_raw_sid = 1
        if preface:
            self.conn.initiate_connection()
            if window:
                self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
                self.conn.increment_flow_control_window(window)
            self.flush()

    # -- through the h2 library

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, method, path, extra=()):
        return [(b":method", method.encode()), (b":scheme", b"https" if self.t.tls else b"http"),
                (b":authority", b"127.0.0.1:%d" % self.t.server.port), (b":path", path.encode())] + \
            [(k.encode(), str(v).encode()) for k, v in extra]

    def request(self, method, path, body=None, headers=(), end=True):
        """Opens a stream: HEADERS, then body (within the windows) when given; END_STREAM if end."""
        sid = self.conn.get_next_available_stream_id()
        self.next_raw_sid = sid + 2
        self.streams[sid] = {"status": None, "headers": [], "data": bytearray(), "ended": False, "reset": None}
        self.conn.send_headers(sid, self.headers(method, path, headers), end_stream=body is None and end)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid, data, end=True, timeout=30):
        deadline = time.monotonic() + timeout
        view, pos = memoryview(data), 0
        while pos < len(data):
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size, len(data) - pos)
            if room <= 0:
                assert time.monotonic() < deadline, f"stream {sid}: no window to send in for {timeout} s"
                assert self.pump(0.5), f"stream {sid}: EOF while sending its body"
                continue
            self.conn.send_data(sid, view[pos:pos + room].tobytes(), end_stream=end and pos + room == len(data))
            pos += room
            self.flush()
            self.pump(0)
        if end and not data:
            self.conn.end_stream(sid)
            self.flush()

    def reset(self, sid, code=8):
        self.conn.reset_stream(sid, error_code=code)
        self.flush()

    def pump(self, timeout=None):
        """Reads once (waiting up to timeout) and processes it; False once the server closed."""
        import ssl
        if self.eof:
            return False
        if not (self.t.tls and self.sock.pending()):
            r, _, _ = select.select([self.sock], [], [], self.timeout if timeout is None else timeout)
            if not r:
                return True
        try:
            data = self.sock.recv(262144)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.feed(data)
        return True

    def feed(self, data):
        import h2.events as ev
        for e in self.conn.receive_data(data):
            st = self.streams.get(getattr(e, "stream_id", 0))
            if isinstance(e, ev.ResponseReceived):
                st["headers"] = e.headers
                st["status"] = int(dict(e.headers)[b":status"])
            elif isinstance(e, ev.DataReceived):
                st["data"] += e.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, ev.StreamEnded):
                st["ended"] = True
            elif isinstance(e, ev.StreamReset):
                if st is not None:
                    st["reset"] = int(e.error_code)
            elif isinstance(e, ev.ConnectionTerminated):
                self.goaway = (int(e.error_code), e.last_stream_id)
        try:
            self.flush()
        except OSError:
            pass

    def wait(self, sids, timeout=30):
        """Pumps until every stream ended or was reset; returns their states."""
        one = isinstance(sids, int)
        sids = [sids] if one else list(sids)
        deadline = time.monotonic() + timeout
        while not all(self.streams[s]["ended"] or self.streams[s]["reset"] is not None for s in sids):
            left = deadline - time.monotonic()
            pending = [s for s in sids if not (self.streams[s]["ended"] or self.streams[s]["reset"] is not None)]
            assert left > 0, f"streams {pending} not done after {timeout} s"
            if not self.pump(min(left, 1.0)):
                raise EOFError(f"server closed the connection (GOAWAY {self.goaway}); streams {pending} open")
        got = [self.streams[s] for s in sids]
        return got[0] if one else got

    def get(self, path, timeout=30):
        return self.wait(self.request("GET", path), timeout)

    def close(self):
        self.sock.close()

    def abort(self):
        """Close with an RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    # -- raw frames

    def raw(self, data):
        """Sends raw bytes; False when the server had already gone."""
        import ssl
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return False

    def raw_headers(self, method, path, extra=(), flags=END_HEADERS | END_STREAM, sid=None):
        """A HEADERS frame on a new stream (sid), encoded with the connection's HPACK encoder."""
        if sid is None:
            sid, self.next_raw_sid = self.next_raw_sid, self.next_raw_sid + 2
        return sid, h2f(F_HEADERS, flags, sid, self.conn.encoder.encode(self.headers(method, path, extra)))

    def frames(self, timeout=5.0):
        """Yields the server's frames (type, flags, stream, payload) until EOF or timeout."""
        import ssl
        deadline = time.monotonic() + timeout
        while True:
            while len(self.rbuf) >= 9:
                n = int.from_bytes(self.rbuf[:3], "big")
                if len(self.rbuf) < 9 + n:
                    break
                ftype, flags = self.rbuf[3], self.rbuf[4]
                sid = int.from_bytes(self.rbuf[5:9], "big") & 0x7FFFFFFF
                payload = bytes(self.rbuf[9:9 + n])
                del self.rbuf[:9 + n]
                yield ftype, flags, sid, payload
            if self.eof:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not (self.t.tls and self.sock.pending()):
                r, _, _ = select.select([self.sock], [], [], left)
                if not r:
                    return
            try:
                data = self.sock.recv(262144)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
            self.rbuf += data

    def goaway_and_close(self, timeout=5.0, after=1.0):
        """Reads raw frames until the server closes (at most timeout, and after seconds past a GOAWAY):
        ((error code, last stream id) of its GOAWAY or None, EOF seen)."""
        got = None
        for ftype, flags, sid, payload in self.frames(timeout):
            if ftype == F_GOAWAY and got is None:
                got = (int.from_bytes(payload[4:8], "big"), int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
                for _ in self.frames(after):
                    pass
                break
        return got, self.eof


def _client_hello(lo=None, hi=None, alpn=None):
    """The first flight of a client made by the ssl module in memory (not sent anywhere)."""
    import ssl
    import warnings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if lo or hi:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        if lo:
            ctx.minimum_version = lo
        if hi:
            ctx.maximum_version = hi
    if alpn:
        ctx.set_alpn_protocols(alpn)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def _raw_conn(t, data, shut=False, rst=False, read=True, timeout=5.0):
    """Plain TCP to the server: send data; then FIN (shut) or RST (rst) or nothing; read until the
    server closes.  Returns (bytes read, closed by the server)."""
    s = socket.create_connection((t.server.host, t.server.port), timeout=timeout)
    out, closed = bytearray(), False
    try:
        try:
            if data:
                s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except OSError:                       # reset (or ENOTCONN) already: the server closed
            return bytes(out), True
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return bytes(out), False
        if not read:
            return bytes(out), False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            out += b
        return bytes(out), closed
    finally:
        s.close()


# --------------------------------------------------------------------------- TLS


@on_tls
def test_tls_https11_keepalive_and_bodies(t):
    """HTTPS/1.1: keep-alive, 2 MB uploads (Content-Length and chunked) and downloads, pipelining,
    a slow reader (the TLS writer waits for the socket), clients gone mid-response and mid-body."""
    import json

    import httpx
    rnd = random.Random(31)
    data = rnd.randbytes(2 << 20)
    c = TConn(t, timeout=20)
    assert c.s.selected_alpn_protocol() == "http/1.1"
    for i in range(10):
        c.send(req("GET", t.path("health", i=i), [b"X-A: 1", b"Cookie: a=b", b"X-Long: " + b"v" * 3000]))
        assert c.response().status == 200
    c.send(req("POST", t.path("echo"), body=data))
    assert c.response().body == data
    c.send(req("POST", t.path("echo"), [b"Transfer-Encoding: chunked"], chunked(data, sizes=(1, 70000, 4096))))
    assert c.response().body == data
    c.send(req("POST", t.path("sha"), body=data))
    assert sha(data).encode() in c.response().body
    c.send(req("GET", t.path("big", n=2 << 20)))
    assert c.response().body == b"x" * (2 << 20)
    c.send(req("GET", t.path("health")) + req("POST", t.path("echo"), body=data[:100000])
           + req("GET", t.path("health")))
    got = [c.response() for _ in range(3)]
    assert [r.status for r in got] == [200] * 3 and got[1].body == data[:100000]
    if not t.asgi:
        c.send(req("GET", "/env/scheme"))
        env = json.loads(c.response().body)["environ"]
        assert (env["wsgi.url_scheme"], env.get("HTTPS")) == ("https", "on"), env
    c.close()
    # a slow reader with a small receive buffer
    c = TConn(t, timeout=15, rcvbuf=16384)
    n = 3 << 20
    c.send(req("GET", t.path("big", n=n, tag="tls-slow")))
    status, headers = c.head()
    assert status == 200
    t0 = time.monotonic()
    if "chunked" in headers.get("transfer-encoding", ""):
        got = 0                                     # the WSGI generator: chunked
        while True:
            k = int(c._line().split(b";")[0], 16)
            if k == 0:
                break
            got += len(c._take(k))
            c._take(2)
            if time.monotonic() - t0 < 1.0:
                time.sleep(0.01)
    else:
        got = len(c.buf)
        c.buf.clear()
        while got < n:
            b = c.s.recv(16384)
            assert b, f"EOF after {got} of {n}"
            got += len(b)
            if time.monotonic() - t0 < 1.0:
                time.sleep(0.01)
    assert got == n, (got, headers)
    c.close()
    # gone mid-response and mid-body, with FIN and with RST
    for i, rst in enumerate((False, True)):
        c = TConn(t, rcvbuf=16384)
        c.send(req("GET", t.path("big", n=64 << 20, tag=f"tls-mid-resp-{i}")))
        c._more(4096)
        c.reset() if rst else c.close()
        c = TConn(t)
        c.send(req("POST", t.path("sha", tag=f"tls-mid-body-{i}"), cl=1 << 20) + b"b" * 100000)
        time.sleep(0.05)
        c.reset() if rst else c.close()
        if t.asgi:
            assert t.ended(f"tls-mid-resp-{i} big").startswith(f"tls-mid-resp-{i} big raised")
            assert t.ended(f"tls-mid-body-{i} sha").startswith(f"tls-mid-body-{i} sha disconnect")
    # an ordinary client library
    with httpx.Client(base_url=t.base, verify=t.ctx(None), timeout=15) as h:
        for _ in range(3):
            r = h.post(t.path("echo"), content=data[:300000])
            assert r.http_version == "HTTP/1.1" and r.content == data[:300000]
    time.sleep(0.2)


@pytest.mark.parametrize("own_srv", TLS_KINDS, indirect=True)
def test_tls_handshake_failures(own_srv):
    """Garbage, old protocol versions, clients gone mid-handshake: each connection just closes.
    (On a server of its own: these found a use-after-free, a connection freed by its TLS kick while its
    own event was still in the epoll batch, which would have ended every later test of a shared one.)"""
    import ssl
    t = own_srv
    rnd = random.Random(53)
    hello13 = _client_hello()
    hello12 = _client_hello(hi=ssl.TLSVersion.TLSv1_2)
    assert hello13[:1] == b"\x16" and hello12[:1] == b"\x16"
    # garbage (FIN after it: a server that waits for more sees EOF)
    garbage = [rnd.randbytes(3000), b"\x16\x03\x01\xff\xff" + rnd.randbytes(500),
               b"\x16\x03\x03\x00\x05\x01\x00\x00\x01\x00", b"\x15\x03\x03\x00\x02\x02\x28",
               b"\x17\x03\x03\x00\x20" + rnd.randbytes(32), b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10",
               hello13[:5] + rnd.randbytes(len(hello13) - 5), b"\x16\x03\x01\x00\x00", b"\x00" * 100]
    for i, g in enumerate(garbage):
        out, closed = _raw_conn(t, g, shut=True)
        assert closed and not out.startswith(b"HTTP/"), (i, g[:16], out[:100])
    # TLS 1.0 and 1.1 only clients: refused (an alert or a close, never a ServerHello)
    for ver in ("TLSv1", "TLSv1_1"):
        hello = _client_hello(lo=getattr(ssl.TLSVersion, ver), hi=getattr(ssl.TLSVersion, ver))
        assert hello[9:11] == {"TLSv1": b"\x03\x01", "TLSv1_1": b"\x03\x02"}[ver], hello[:16]
        out, closed = _raw_conn(t, hello)
        assert closed and (out == b"" or out[:1] == b"\x15"), (ver, out[:50])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    with socket.create_connection((t.server.host, t.server.port), timeout=5) as s:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            ctx.wrap_socket(s, server_hostname="localhost")
    # clients gone mid-handshake: half a ClientHello, a whole one, after the server's first flight
    for hello in (hello13, hello12):
        for cut in (1, 5, 6, len(hello) // 2, len(hello) - 1, len(hello)):
            _raw_conn(t, hello[:cut], shut=cut % 2 == 1, rst=cut % 2 == 0)
        for rst in (False, True):
            s = socket.create_connection((t.server.host, t.server.port), timeout=5)
            s.sendall(hello)
            first = s.recv(100)
            assert first[:1] == b"\x16", first[:20]
            if rst:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                s.sendall(b"\x16\x03\x03\x00\x10" + rnd.randbytes(16))    # a bogus second flight
            s.close()
    # a finished handshake, then: nothing; close_notify; half a request then RST; an unknown ALPN only
    for how in ("nothing", "close_notify", "half-request"):
        c = TConn(t)
        if how == "close_notify":
            try:
                c.s = c.s.unwrap()              # our close_notify; the server may just close
            except (ssl.SSLError, OSError):
                pass
        elif how == "half-request":
            c.send(b"GET /health HTTP/1.1\r\nHo")
            c.reset()
            continue
        c.close()
    try:
        c = TConn(t, alpn=("spdy/3", "corsac-nothing"))
    except ssl.SSLError:
        pass                                      # no_application_protocol: fine too
    else:
        c.send(req("GET", t.path("health"), [b"Connection: close"]))
        assert c.response().status == 200
        c.close()
    # many at once, interleaved with real requests
    errors = []

    def flaky(i):
        try:
            h = hello13 if i % 2 else hello12
            _raw_conn(t, h[:rnd.randrange(1, len(h))] if i % 3 else h, rst=i % 4 == 0, read=i % 3 == 0, timeout=0.7)
        except OSError as e:
            errors.append(repr(e))

    for round_ in range(4):                       # (rounds: the use-after-free needs bad luck)
        threads = [threading.Thread(target=flaky, args=(i,)) for i in range(24)]
        for th in threads:
            th.start()
        for i in range(5):
            c = TConn(t)
            c.send(req("GET", t.path("health", i=i), [b"Connection: close"]))
            assert c.response().status == 200
            c.close()
        for th in threads:
            th.join(10)
        assert not errors, (round_, errors[:3])
    time.sleep(0.2)
    tls_healthy(t, "after the broken handshakes")


@on_tls
def test_tls_plain_http_on_tls_port(t):
    out, closed = _raw_conn(t, req("GET", t.path("health")))
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"plain HTTP request was sent to HTTPS port" in out and closed, out[:400]
    for data in (b"GET", b"GET / HTTP/1.1\r\n", req("POST", t.path("echo"), body=b"x" * 100000),
                 H2_MAGIC + h2f(F_SETTINGS), b"\r\n\r\n"):
        out, closed = _raw_conn(t, data, shut=True)
        # too short to tell: a TLS alert (decode_error) is fine too
        assert closed and (out == b"" or out.startswith((b"HTTP/1.1 400 ", b"\x15\x03"))), (data[:20], out[:200])


@on_tls
def test_tls_request_after_a_pause(t):
    """Clients that complete the handshake, then pause before their request (keep-alive clients,
    connection pools): every request must be answered.  (Under ASan the handshake often finished in
    the call made at accept, before the socket was in epoll, and such requests were never read.)"""
    results = []

    def one(i):
        try:
            c = TConn(t, timeout=10)
        except OSError as e:
            results.append(repr(e))
            return
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            c.send(req("GET", t.path("health", i=i), [b"Connection: close"]))
            try:
                results.append(c.response().status)
            except (OSError, EOFError) as e:
                results.append(f"{e!r} after {time.monotonic() - t0:.1f} s")
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    bad = [r for r in results if r != 200]
    assert len(results) == 30 and not bad, f"{len(bad)} of 30 unanswered: {bad[:3]}"


# --------------------------------------------------------------------------- HTTP/2


@on_h2
def test_h2_httpx_concurrent_and_big_bodies(t):
    """httpx over h2 (TLS: ALPN with verify=CA; h2c: prior knowledge): 50 concurrent streams on one
    connection, 4 MB up and down with the sha256 checked."""
    import asyncio
    import httpx
    rnd = random.Random(41)
    big = rnd.randbytes(4 << 20)
    bodies = [rnd.randbytes(rnd.choice((0, 10, 5000, 70000, 300000))) for _ in range(50)]

    async def main():
        kw = dict(http2=True, verify=t.ctx(None)) if t.tls else dict(http1=False, http2=True)
        async with httpx.AsyncClient(base_url=t.base, timeout=30, **kw) as cl:
            async def one(i):
                if i % 3 == 0:
                    r = await cl.get(t.path("health", i=i), headers={"cookie": "a=1", "x-i": str(i)})
                    assert r.status_code == 200, r
                elif i % 3 == 1:
                    r = await cl.post(t.path("echo", i=i), content=bodies[i])
                    assert r.content == bodies[i], (i, len(r.content), len(bodies[i]))
                else:
                    r = await cl.post(t.path("sha", i=i), content=bodies[i])
                    assert sha(bodies[i]).encode() in r.content, (i, r.content[:200])
                assert r.http_version == "HTTP/2", r.http_version
            await asyncio.gather(*(one(i) for i in range(50)))
            r = await cl.post(t.path("sha"), content=big)
            assert r.status_code == 200 and sha(big).encode() in r.content, r.content[:200]
            r = await cl.post(t.path("echo"), content=big)
            assert r.status_code == 200 and sha(r.content) == sha(big), len(r.content)
            r = await cl.get(t.path("big", n=4 << 20))
            assert r.content == b"x" * (4 << 20), len(r.content)
            assert r.http_version == "HTTP/2"

    asyncio.run(asyncio.wait_for(main(), 60))


@on_h2
def test_h2_raw_streams_and_big_bodies(t):
    """The h2 library over a raw socket: 50 streams open at once (bodies of mixed sizes), then 4 MB
    up and down with the sha256 checked, and a big response read with a small window."""
    rnd = random.Random(43)
    c = H2C(t, window=16 << 20)
    want = {}
    for i in range(50):
        if i % 2:
            sid = c.request("GET", t.path("health", i=i), headers=[("cookie", "a=1"), ("cookie", "b=2")])
            want[sid] = None
        else:
            body = rnd.randbytes(rnd.choice((0, 1, 16384, 16385, 100000)))
            sid = c.request("POST", t.path("echo", i=i), body=body, headers=[("content-length", len(body))])
            want[sid] = body
    for sid, st in zip(want, c.wait(list(want))):
        assert st["status"] == 200 and st["reset"] is None, (sid, st["status"], st["reset"])
        if want[sid] is not None:
            assert bytes(st["data"]) == want[sid], (sid, len(st["data"]), len(want[sid]))
    big = rnd.randbytes(4 << 20)
    st = c.wait(c.request("POST", t.path("echo"), body=big, headers=[("content-length", len(big))]))
    assert st["status"] == 200 and sha(bytes(st["data"])) == sha(big), len(st["data"])
    st = c.wait(c.request("POST", t.path("sha"), body=big))        # no content-length
    assert st["status"] == 200 and sha(big).encode() in st["data"], bytes(st["data"][:200])
    st = c.get(t.path("big", n=4 << 20))
    assert st["status"] == 200 and st["data"] == b"x" * (4 << 20), len(st["data"])
    c.close()
    # the default 64 KiB window, acknowledged as it is read: many WINDOW_UPDATEs, the app suspended often
    c = H2C(t)
    st = c.get(t.path("big", n=3 << 20))
    assert st["status"] == 200 and len(st["data"]) == 3 << 20
    c.close()


@on_h2
def test_h2_window_never_opened(t):
    """A client that never opens its window on big responses (the server fills the 64 KiB and must
    wait, the app suspended), then disconnects (FIN, then RST)."""
    for how in ("close", "reset"):
        c = H2C(t, auto_ack=False)
        sids = [c.request("GET", t.path("big", n=64 << 20, tag=f"nowin-{how}-{i}")) for i in range(2)]
        deadline = time.monotonic() + 5
        while sum(len(c.streams[s]["data"]) for s in sids) < 65535 and time.monotonic() < deadline:
            assert c.pump(0.5)
        time.sleep(0.5)
        c.pump(0.2)
        got = sum(len(c.streams[s]["data"]) for s in sids)
        assert got == 65535, got                           # exactly the connection window, no more
        other = H2C(t)                                      # others are served meanwhile
        assert other.get(t.path("health"))["status"] == 200
        other.close()
        c.abort() if how == "reset" else c.close()
        if t.asgi:
            for i in range(2):
                assert t.ended(f"nowin-{how}-{i} big").startswith((f"nowin-{how}-{i} big raised",
                                                                  f"nowin-{how}-{i} big done"))
    time.sleep(0.2)


@on_h2
def test_h2_rst_stream_in_flight(t):
    """RST_STREAM from the client on streams in flight: uploads in progress (inside and at the end of
    the window), responses in progress, streams reset right after their HEADERS; the connection
    keeps serving.  The client keeps the default 64 KiB receive window, so little of a reset
    response is still on its way (see test_h2_reset_download_with_wide_window)."""
    c = H2C(t)
    up = c.request("POST", t.path("sha", tag="rst-up"), body=b"u" * 300000,
                   headers=[("content-length", 4 << 20)], end=False)
    time.sleep(0.1)
    c.reset(up)
    up2 = c.request("POST", t.path("echo", tag="rst-up2"), body=b"w" * (1 << 20),
                    headers=[("content-length", 3 << 20)], end=False)
    c.reset(up2)
    dn = c.request("GET", t.path("big", n=64 << 20, tag="rst-down"))
    deadline = time.monotonic() + 10
    while len(c.streams[dn]["data"]) < 300000 and time.monotonic() < deadline:
        assert c.pump(0.5)
    c.reset(dn)
    for i in range(6):
        sid = c.request("GET" if i % 2 else "POST", t.path("slow", s="0.05", tag=f"rst-early-{i}"), end=i % 2 == 1)
        c.reset(sid, code=8 if i % 3 else 0)
    if t.asgi:                                               # a streamed echo, reset mid-way
        sid = c.request("POST", "/echo-stream?tag=rst-es", body=b"e" * 100000, end=False)
        while len(c.streams[sid]["data"]) < 100000 and time.monotonic() < deadline:
            assert c.pump(0.5)
        c.reset(sid)
    st = c.wait(c.request("POST", t.path("echo"), body=b"after the resets"))
    assert st["status"] == 200 and st["data"] == b"after the resets", st
    if t.asgi:
        assert t.ended("rst-up sha").startswith("rst-up sha disconnect")
        assert t.ended("rst-up2 echo") == "rst-up2 echo disconnect"
        assert t.ended("rst-down big").startswith(("rst-down big raised", "rst-down big done"))
        assert t.ended("rst-es echo-stream").startswith(("rst-es echo-stream disconnect",
                                                         "rst-es echo-stream raised"))
    # uploads and downloads reset while they interleave
    for i in range(10):
        a_ = c.request("POST", t.path("echo", tag=f"rst-mix-{i}"), body=b"m" * 50000,
                       headers=[("content-length", 90000)], end=False)
        b_ = c.request("GET", t.path("big", n=1 << 20, tag=f"rst-mixdn-{i}"))
        c.pump(0.01)
        c.reset(b_)
        c.reset(a_, code=2)
    st = c.get(t.path("health"))
    assert st["status"] == 200
    big = c.get(t.path("big", n=1 << 20))                   # the connection window was not lost either
    assert big["status"] == 200 and len(big["data"]) == 1 << 20
    c.close()


@on_h2
def test_h2_reset_download_with_wide_window(t):
    """A client with a 16 MiB receive window resets a big download; its other streams go on."""
    c = H2C(t, window=16 << 20)
    dn = c.request("GET", t.path("big", n=64 << 20, tag="rst-wide"))
    deadline = time.monotonic() + 10
    while len(c.streams[dn]["data"]) < 300000 and time.monotonic() < deadline:
        assert c.pump(0.5)
    c.reset(dn)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5 and c.pump(0.1):
        pass                        # the rest of the download arrives (python-h2 answers each DATA)
    try:
        st = c.get(t.path("health"))
    finally:
        c.close()
    assert st["status"] == 200


@on_h2
def test_h2_client_drops_with_streams_open(t):
    """The client goes (FIN, then RST) with streams open in every state: an upload halfway, HEADERS
    only, a response halfway, an app still running, answered but unread."""
    for how in ("close", "reset"):
        c = H2C(t, window=16 << 20)
        tag = f"drop-{how}"
        dn = c.request("GET", t.path("big", n=32 << 20, tag=f"{tag}-down"))
        for i in range(10):
            c.request("GET", t.path("health", i=i))
        deadline = time.monotonic() + 10
        while len(c.streams[dn]["data"]) < 100000 and time.monotonic() < deadline:
            assert c.pump(0.5)
        # then streams still waiting for their bodies, and an app still running
        c.request("GET", t.path("slow", s="0.2", tag=f"{tag}-slow"))
        c.request("POST", t.path("sha", tag=f"{tag}-up"), body=b"d" * 200000, headers=[("content-length", 2 << 20)],
                  end=False)
        c.request("POST", t.path("echo", tag=f"{tag}-hdr"), end=False)
        time.sleep(0.1)
        c.abort() if how == "reset" else c.close()
        if t.asgi:
            assert t.ended(f"{tag}-up sha").startswith(f"{tag}-up sha disconnect")
            assert t.ended(f"{tag}-hdr echo") == f"{tag}-hdr echo disconnect"
            assert t.ended(f"{tag}-down big").startswith((f"{tag}-down big raised", f"{tag}-down big done"))
    time.sleep(0.5)                                          # the slow app finishes into a gone stream


# (name, the bytes to send after the client preface (the *-after-magic ones write their own), GOAWAY codes)
H2_PROTOCOL_ERRORS = [
    ("bad-preface-after-magic", lambda c: H2_MAGIC + h2f(F_WU, 0, 0, (1000).to_bytes(4, "big")), {PROTOCOL_ERROR}),
    ("http1-after-magic", lambda c: H2_MAGIC + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
     {PROTOCOL_ERROR, FRAME_SIZE_ERROR}),
    ("data-on-stream-0", lambda c: h2f(F_DATA, 0, 0, b"hello"), {PROTOCOL_ERROR}),
    ("headers-even-stream", lambda c: c.raw_headers("GET", "/", sid=2)[1], {PROTOCOL_ERROR}),
    ("frame-too-big", lambda c: h2f(F_DATA, 0, 1, b"x" * 20000), {FRAME_SIZE_ERROR}),
    ("window-overflow", lambda c: h2f(F_WU, 0, 0, (0x7FFFFFFF).to_bytes(4, "big")), {FLOW_CONTROL_ERROR}),
    ("settings-bad-length", lambda c: h2f(F_SETTINGS, 0, 0, b"\x00\x04\x00"), {FRAME_SIZE_ERROR}),
    # header blocks HPACK cannot decode (the first: an integer past 2^32)
    ("bad-hpack-integer", lambda c: h2f(F_HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\xff\xff\x7f"),
     {COMPRESSION_ERROR}),
    ("bad-hpack-index-0", lambda c: h2f(F_HEADERS, END_HEADERS | END_STREAM, 1, b"\x80"), {COMPRESSION_ERROR}),
    ("bad-hpack-after-a-good-stream", lambda c: c.raw_headers("GET", c.t.path("health"))[1]
     + h2f(F_HEADERS, END_HEADERS | END_STREAM, 3, b"\x82\x87\x84\x41\x8a" + b"\xff" * 3), {COMPRESSION_ERROR}),
]


@on_h2
@pytest.mark.parametrize("name,build,codes", H2_PROTOCOL_ERRORS, ids=[e[0] for e in H2_PROTOCOL_ERRORS])
def test_h2_protocol_errors(t, name, build, codes):
    """Connection errors: GOAWAY with the RFC 9113 code, then the connection closes."""
    preface = not name.endswith("after-magic")
    c = H2C(t, preface=preface)
    c.raw(build(c))
    got, eof = c.goaway_and_close()
    c.close()
    assert got is not None and got[0] in codes, (name, got, eof)
    assert eof, f"{name}: no close after the GOAWAY"


def _flood_rapid_reset(c):
    out = []
    for _ in range(400):
        sid, hdr = c.raw_headers("GET", c.t.path("health"))
        out.append(hdr + h2f(F_RST, 0, sid, (8).to_bytes(4, "big")))
    return b"".join(out)


def _flood_continuation(c):
    sid, hdr = c.raw_headers("GET", c.t.path("health"), extra=[("x-big", "v" * 6000)], flags=0)
    block = hdr[9:]
    pieces = [block[i:i + 20] for i in range(0, len(block), 20)]
    return h2f(F_HEADERS, 0, sid, pieces[0]) + b"".join(h2f(F_CONT, 0, sid, p) for p in pieces[1:])


def _flood_empty_data(c):
    sid, hdr = c.raw_headers("POST", c.t.path("echo"), flags=END_HEADERS)
    return hdr + h2f(F_DATA, 0, sid, b"") * 600


H2_FLOODS = [
    ("ping", lambda c: b"".join(h2f(F_PING, 0, 0, i.to_bytes(8, "big")) for i in range(400))),
    ("settings", lambda c: h2f(F_SETTINGS) * 400),
    ("rapid-reset", _flood_rapid_reset),
    ("continuation", _flood_continuation),
    ("empty-data", _flood_empty_data),
    ("priority", lambda c: b"".join(h2f(F_PRIORITY, 0, 2 * i + 1, b"\x00\x00\x00\x00\x10") for i in range(2500))),
    ("tiny-window-update", lambda c: h2f(F_WU, 0, 0, (1).to_bytes(4, "big")) * 800),
]


@pytest.mark.parametrize("own_srv", H2_KINDS, indirect=True)
def test_h2_floods(own_srv):
    """Each flood: GOAWAY(ENHANCE_YOUR_CALM) and the connection closes; another connection with a
    stream in flight meanwhile is unharmed.  On a server of its own per kind (a flood that went wrong
    here, a use-after-free among others, would end every later test of a shared one); the rapid reset
    a few more times, as an unlucky epoll batch is what such bugs need."""
    t = own_srv
    for name, build in H2_FLOODS + [(f"rapid-reset-{i}", _flood_rapid_reset) for i in range(2, 10)]:
        bystander = H2C(t, window=16 << 20)
        assert bystander.get(t.path("health"))["status"] == 200
        sid = bystander.request("POST", t.path("echo", tag=f"flood-{name}"), body=b"b" * 5000, end=False)
        c = H2C(t)
        c.raw(build(c))
        got, eof = c.goaway_and_close()
        c.close()
        assert got is not None and got[0] == ENHANCE_YOUR_CALM, (name, got, eof)
        assert eof, f"{name}: the flooding connection was not closed"
        bystander.send_body(sid, b"y" * 5000)
        st = bystander.wait(sid)
        assert st["status"] == 200 and st["data"] == b"b" * 5000 + b"y" * 5000, name
        st = bystander.wait(bystander.request("POST", t.path("echo"), body=b"after the flood"))
        assert st["status"] == 200 and st["data"] == b"after the flood", name
        bystander.close()
        tls_healthy(t, f"after the {name} flood")


@on_h2
def test_zz_h2_sigterm_streams_in_flight(tsrv):
    """Last for each server: SIGTERM with h2 streams in flight (apps running, a response streaming,
    an upload halfway): GOAWAY(NO_ERROR) naming the last stream, those streams finish, the connection
    closes, exit 0 and a clean log."""
    t = tsrv
    if t.server.proc.poll() is not None:
        pytest.fail(f"server already dead (rc {t.server.proc.returncode}):\n"
                    f"{sanitizer_report(t.server.log()) or t.server.log()[-6000:]}", pytrace=False)
    idle = H2C(t)                                            # an idle h2 connection too
    assert idle.get(t.path("health"))["status"] == 200
    c = H2C(t, window=16 << 20)
    assert c.get(t.path("health"))["status"] == 200
    slow = "0.8" if t.asgi else "0.2"
    sids = {f"slow-{i}": c.request("GET", t.path("slow", s=slow, tag=f"term-slow-{i}")) for i in range(3)}
    sids["big"] = c.request("GET", t.path("big", n=2 << 20, tag="term-big"))
    upload = random.Random(61).randbytes(1000000)
    sids["up"] = c.request("POST", t.path("sha", tag="term-up"), body=upload[:500000],
                           headers=[("content-length", len(upload))], end=False)
    c.pump(0.1)
    # from here on raw frames, with the h2 library's HPACK decoder
    state = {sid: dict(c.streams[sid]) for sid in sids.values()}
    for st in state.values():
        st["data"] = bytearray(st["data"])
    rc = []
    stopper = threading.Thread(target=lambda: rc.append(t.server.stop(signal.SIGTERM, timeout=20)))
    stopper.start()
    time.sleep(0.2)
    rest = upload[500000:]                                   # the rest of the upload, in flight at SIGTERM
    c.raw(b"".join(h2f(F_DATA, END_STREAM if i + 16384 >= len(rest) else 0, sids["up"], rest[i:i + 16384])
                   for i in range(0, len(rest), 16384)))
    goaway, block, extra_sent = None, b"", False
    for ftype, flags, sid, payload in c.frames(timeout=20):
        if ftype in (F_HEADERS, F_CONT):
            if ftype == F_HEADERS:
                pad = payload[0] if flags & 0x8 else 0
                payload = payload[(1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0):len(payload) - pad]
            block += payload
            if flags & END_HEADERS:
                hdrs = dict(c.conn.decoder.decode(block, raw=True))
                block = b""
                if sid in state and b":status" in hdrs:
                    state[sid]["status"] = int(hdrs[b":status"])
            if flags & END_STREAM and sid in state:
                state[sid]["ended"] = True
        elif ftype == F_DATA and sid in state:
            state[sid]["data"] += payload
            if flags & END_STREAM:
                state[sid]["ended"] = True
        elif ftype == F_RST and sid in state:
            state[sid]["reset"] = int.from_bytes(payload, "big")
        elif ftype == F_GOAWAY:
            goaway = (int.from_bytes(payload[4:8], "big"), int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
            if not extra_sent:                 # a new stream after the GOAWAY: refused or ignored
                extra_sent = True
                c.raw(c.raw_headers("GET", t.path("health"))[1])
        elif ftype == F_PING and not flags & 1:
            c.raw(h2f(F_PING, 1, 0, payload))
    stopper.join(25)
    idle_goaway, idle_eof = idle.goaway_and_close(timeout=2)
    idle.close()
    c.close()
    log = t.server.log()
    rep = sanitizer_report(log)
    assert rep is None, f"sanitizer report ({t.kind}) at SIGTERM:\n{rep}"
    assert "runtime error:" not in log and "ERROR: AddressSanitizer" not in log
    assert not DEATH_RE.search(log), log[-6000:]
    assert rc == [0], f"exit code {rc}:\n{log[-6000:]}"
    assert "graceful timeout" not in log, log[-3000:]        # every connection closed by itself
    assert c.eof, "the server did not close the h2 connection"
    assert goaway is not None and goaway[0] == 0 and goaway[1] >= max(sids.values()), goaway
    for name, sid in sids.items():
        st = state[sid]
        assert st["status"] == 200 and st["ended"] and st["reset"] is None, (name, st["status"], st["ended"],
                                                                             st["reset"], len(st["data"]))
    assert state[sids["big"]]["data"] == b"x" * (2 << 20)
    assert sha(upload).encode() in state[sids["up"]]["data"], bytes(state[sids["up"]]["data"][:200])
    assert idle_eof and idle_goaway is not None and idle_goaway[0] == 0, (idle_goaway, idle_eof)
