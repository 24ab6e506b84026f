"""ASGI 3 (HTTP) semantics of the real `corsac` process, over real sockets.

Apps live in tests/apps/asgi_apps.py.  Every test runs under both event loops: the
`loop` fixture is parametrized over asyncio and uvloop and every server gets
`--loop <name>`.  Most tests share one server per (app, flags, loop) for the whole
module; tests about lifespan, limits, memory or process exit start their own.

Apps report what they saw through the response, or by appending lines to the file
named by CORSAC_TEST_RECORD (tagged per test, so the shared file stays readable)."""
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server, exchange, read_until_close, status_of  # noqa: E402

TIMEOUT = 5
pytestmark = pytest.mark.timeout(60)
LOOPS = ["asyncio", "uvloop"]


# --------------------------------------------------------------------------- raw HTTP client

class Response:
    def __init__(self, status, reason, headers, head_raw):
        self.status = status
        self.reason = reason
        self.headers = headers          # list of (lower-case name, value)
        self.head_raw = head_raw
        self.body = b""
        self.complete = True            # framing satisfied (CL reached / last chunk seen)
        self.chunked = False
        self.trailers = []              # list of (lower-case name, value) after the last chunk

    def header(self, name):
        vals = [v for k, v in self.headers if k == name.lower()]
        return vals[-1] if vals else None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:300]!r}>"


class Conn:
    """A raw client connection with a small, strict HTTP/1.x response reader."""

    def __init__(self, server, timeout=TIMEOUT):
        self.server = server
        self.timeout = timeout
        self.sock = server.connect(timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def _until(self, delim):
        while delim not in self.buf:
            self._more()
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self, allow_1xx=False):
        head = self._until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r}"
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return Response(int(m.group(1)), m.group(2).decode("latin-1"), headers, head)

    def read_response(self, method="GET"):
        """One final response (1xx skipped).  EOF or timeout in the body gives complete=False;
        EOF/timeout before the status line raises."""
        while True:
            resp = self.read_head()
            if not 100 <= resp.status < 200:
                break
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or resp.status in (204, 304):
            return resp
        body = []
        try:
            if te is not None:
                assert te.lower() == "chunked", te
                resp.chunked = True
                while True:
                    size = int(self._until(b"\r\n").split(b";")[0].strip(), 16)
                    if size == 0:
                        while True:
                            line = self._until(b"\r\n")
                            if line == b"\r\n":
                                break
                            name, _, value = line[:-2].partition(b":")
                            resp.trailers.append((name.decode("latin-1").lower(),
                                                  value.strip().decode("latin-1")))
                        break
                    body.append(self._exact(size))
                    assert self._exact(2) == b"\r\n", "chunk not followed by CRLF"
            elif cl is not None:
                body.append(self._exact(int(cl)))
            else:
                while True:
                    try:
                        self._more()
                    except EOFError:
                        break
                body.append(self.buf)
                self.buf = b""
        except (EOFError, ConnectionResetError, socket.timeout):
            body.append(self.buf)
            self.buf = b""
            resp.complete = False
        resp.body = b"".join(body)
        return resp

    def closed_by_peer(self, timeout=3):
        """True when the server closes (EOF or reset) within timeout with no extra bytes."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            self.buf += data
            return False
        return True


def build(server, method="GET", path="/", headers=(), body=b"", version="HTTP/1.1",
          host=True, content_length=True):
    lines = [f"{method} {path} {version}".encode("latin-1")]
    if host:
        lines.append(f"Host: 127.0.0.1:{server.port}".encode())
    for name, value in headers:
        lines.append(name.encode("latin-1") + b": " +
                     (value if isinstance(value, bytes) else value.encode("latin-1")))
    if body and content_length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def request(server, method="GET", path="/", headers=(), body=b"", version="HTTP/1.1",
            timeout=TIMEOUT):
    with Conn(server, timeout) as c:
        c.send(build(server, method, path, headers, body, version))
        return c.read_response(method)


def chunked(body, sizes):
    """Encode body as chunks of the given sizes (cycled)."""
    out, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        k += 1
        piece = body[i:i + n]
        i += n
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ")


def count_responses(raw):
    """How many status lines (at the start or right after a CRLF) raw bytes hold."""
    return len(STATUS_LINE.findall(raw))


def wait_for(pred, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def read_lines(path):
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


_tag_counter = [0]


def new_tag(name):
    _tag_counter[0] += 1
    return f"{name}-{os.getpid()}-{_tag_counter[0]}"


def worker_pids(server):
    pid = server.proc.pid
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [int(k) for k in kids] or [pid]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", params=LOOPS)
def loop(request):
    """Module-scoped, so pytest runs all the asyncio tests, then all the uvloop ones, and the
    shared servers of one loop are stopped before those of the other start."""
    return request.param


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("asgi")
    rnd = random.Random(2024)
    big = d / "big.bin"
    big.write_bytes(rnd.randbytes(3 * 1024 * 1024 + 123))
    record = d / "record.txt"
    record.write_text("")
    return {"dir": d, "file": big, "record": record}


@pytest.fixture(scope="module")
def _pool(paths, loop):
    made, dead = {}, []
    env = {"CORSAC_TEST_RECORD": str(paths["record"]), "CORSAC_TEST_FILE": str(paths["file"])}

    def get(app, args):
        args = ("--loop", loop) + tuple(args)
        key = (app, args)
        s = made.get(key)
        if s is not None and s.proc.poll() is not None:
            dead.append(s)          # reported at teardown; start a fresh one meanwhile
            s = None
        if s is None:
            s = Server(app, args, env=env, tmp_path=paths["dir"])
            made[key] = s
        return s
    yield get
    for s in made.values():
        if s.proc.poll() is not None:
            dead.append(s)
        s.stop()
    assert not dead, "corsac died during the tests:\n" + "\n".join(
        f"{d.app} {d.args} rc={d.proc.returncode}\n{d.log()[-3000:]}" for d in dead)


@pytest.fixture
def srv(_pool):
    """srv("asgi_apps:hello", "--root-path", "/x") -> a module-shared Server on this loop."""
    def get(app, *args):
        return _pool(app, args)
    return get


@pytest.fixture
def fresh(corsac, loop, tmp_path, paths):
    """fresh(app, *args, env=..., wait=True) -> a new Server of its own on this loop; its
    CORSAC_TEST_RECORD file is server.record."""
    def start(app, *args, env=None, wait=True):
        rec = tmp_path / f"record-{new_tag('f')}.txt"
        rec.write_text("")
        e = {"CORSAC_TEST_RECORD": str(rec), "CORSAC_TEST_FILE": str(paths["file"])}
        e.update(env or {})
        s = corsac(app, "--loop", loop, *args, env=e, wait=wait)
        s.record = rec
        return s
    return start


def tagged(paths, tag):
    """The record lines of one tag, without the tag."""
    return [line.split(" ", 1)[1] for line in read_lines(paths["record"])
            if line.startswith(tag + " ")]


def scope_of(server, path="/", **kw):
    r = request(server, path=path, **kw)
    assert r.status == 200, r
    return r.json()


# --------------------------------------------------------------------------- scope

def test_scope_basics(srv):
    s = srv("asgi_apps:scope_app")
    with Conn(s) as c:
        c.send(build(s, "GET", "/some/path?x=1&y=%20z"))
        data = c.read_response().json()
        port = c.local_port
    sc, types = data["scope"], data["types"]
    assert sc["type"] == "http"
    assert sc["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert data["asgi_types"] == {"version": "str", "spec_version": "str"}
    assert sc["http_version"] == "1.1"
    assert sc["method"] == "GET"
    assert sc["scheme"] == "http"
    assert sc["path"] == "/some/path"
    assert sc["raw_path"] == "/some/path"
    assert sc["query_string"] == "x=1&y=%20z"
    assert sc["root_path"] == ""
    assert sc["client"] == ["127.0.0.1", port]
    assert sc["server"] == ["127.0.0.1", s.port]
    assert types["type"] == "str" and types["http_version"] == "str" and types["method"] == "str"
    assert types["scheme"] == "str" and types["path"] == "str" and types["root_path"] == "str"
    assert types["raw_path"] == "bytes" and types["query_string"] == "bytes"
    assert types["headers"] == "list"
    assert data["header_types"] == [["tuple", 2, "bytes", "bytes"]]
    assert data["client_types"] == ["tuple", 2, "str", "int"]
    assert data["server_types"] == ["tuple", 2, "str", "int"]
    # no lifespan state was set: an empty dict
    assert types["state"] == "dict" and data["state"] == {}
    assert data["body"] == ""


def test_scope_http10(srv):
    s = srv("asgi_apps:scope_app")
    r = request(s, path="/v10", version="HTTP/1.0")
    assert r.status == 200, r
    assert r.json()["scope"]["http_version"] == "1.0"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "PURGE", "OPTIONS"])
def test_scope_method_as_sent(srv, method):
    s = srv("asgi_apps:scope_app")
    data = scope_of(s, "/m", method=method, body=b"abc")
    assert data["scope"]["method"] == method
    assert data["body"] == "abc"


def test_scope_path_percent_decoded_utf8(srv):
    s = srv("asgi_apps:scope_app")
    sc = scope_of(s, "/caf%C3%A9/x%20y?q=caf%C3%A9")["scope"]
    assert sc["path"] == "/café/x y"
    assert sc["raw_path"] == "/caf%C3%A9/x%20y"      # bytes, as sent, without the query
    assert sc["query_string"] == "q=caf%C3%A9"       # not decoded


def test_scope_path_encoded_slash_and_plus(srv):
    s = srv("asgi_apps:scope_app")
    sc = scope_of(s, "/a%2Fb/c+d%25")["scope"]
    assert sc["path"] == "/a/b/c+d%"
    assert sc["raw_path"] == "/a%2Fb/c+d%25"
    assert sc["query_string"] == ""


@pytest.mark.parametrize("target,path,query", [
    ("/p", "/p", ""),
    ("/p?", "/p", ""),
    ("/p?a=1&b=%20x+y&c&&d=%zz&e=?", "/p", "a=1&b=%20x+y&c&&d=%zz&e=?"),
    ("/", "/", ""),
])
def test_scope_query_string(srv, target, path, query):
    s = srv("asgi_apps:scope_app")
    sc = scope_of(s, target)["scope"]
    assert (sc["path"], sc["query_string"]) == (path, query)


def test_scope_absolute_form_target(srv):
    s = srv("asgi_apps:scope_app")
    sc = scope_of(s, f"http://127.0.0.1:{s.port}/abs/path?k=v")["scope"]
    assert sc["path"] == "/abs/path"
    assert sc["query_string"] == "k=v"


def test_scope_root_path(srv):
    s = srv("asgi_apps:scope_app", "--root-path", "/mnt")
    sc = scope_of(s, "/x/y?q=1")["scope"]
    assert sc["root_path"] == "/mnt"
    assert sc["path"] == "/mnt/x/y"
    assert sc["raw_path"] == "/mnt/x/y"
    assert sc["query_string"] == "q=1"


def test_scope_headers_lowercase_in_order_with_duplicates(srv):
    s = srv("asgi_apps:scope_app")
    data = scope_of(s, "/h", headers=[
        ("X-Dup", "first"), ("X-Custom-Header", "v1"), ("X-Dup", "second"),
        ("x-lower", "lc"), ("X-Ws", "  padded value \t"), ("X-Latin", b"caf\xc3\xa9 \xff"),
        ("X-Empty", ""), ("Content-Type", "text/plain; charset=utf-8"),
    ])
    assert data["scope"]["headers"] == [
        ["host", f"127.0.0.1:{s.port}"],
        ["x-dup", "first"],
        ["x-custom-header", "v1"],
        ["x-dup", "second"],
        ["x-lower", "lc"],
        ["x-ws", "padded value"],
        ["x-latin", "caf\u00c3\u00a9 \u00ff"],      # raw bytes (shown as latin-1)
        ["x-empty", ""],
        ["content-type", "text/plain; charset=utf-8"],
    ]
    assert data["header_types"] == [["tuple", 2, "bytes", "bytes"]]


def test_scope_client_port_is_the_clients(srv):
    s = srv("asgi_apps:scope_app")
    ports = []
    for _ in range(2):
        with Conn(s) as c:
            c.send(build(s, "GET", "/c"))
            client = c.read_response().json()["scope"]["client"]
            assert client == ["127.0.0.1", c.local_port]
            ports.append(client[1])
    assert ports[0] != ports[1]


@pytest.mark.parametrize("te,version,expect_trailers", [
    (None, "HTTP/1.1", False), ("trailers", "HTTP/1.1", True), ("deflate", "HTTP/1.1", False),
    ("trailers", "HTTP/1.0", False)])
def test_scope_extensions(srv, te, version, expect_trailers):
    s = srv("asgi_apps:scope_app")
    headers = [("TE", te)] if te else []
    data = scope_of(s, "/ext", headers=headers, version=version)
    ext = data["extensions"]
    assert "http.response.pathsend" in ext
    assert "http.response.zerocopysend" in ext
    assert ("http.response.trailers" in ext) is expect_trailers, ext
    assert data["extension_values"]["http.response.pathsend"] == {}
    assert data["extension_values"]["http.response.zerocopysend"] == {}
    if expect_trailers:
        assert data["extension_values"]["http.response.trailers"] == {}


def test_scope_interface_asgi_flag_and_class_app(srv):
    s = srv("asgi_apps:hello", "--interface", "asgi")
    r = request(s, path="/")
    assert r.status == 200 and r.body == b"Hello, world!"
    s = srv("asgi_apps:class_app")
    r = request(s, path="/")
    assert r.status == 200 and r.body == b"class app"


# --------------------------------------------------------------------------- request bodies

def test_body_empty_get(srv):
    s = srv("asgi_apps:body_app")
    res = request(s, "GET", "/").json()
    assert res["events"] == 1 and res["bytes"] == 0, res
    assert res["more_flags_ok"] and res["all_bytes"], res
    assert res["last_type"] == "http.request"


@pytest.mark.parametrize("kind", ["content-length-0", "chunked-empty"])
def test_body_empty_post(srv, kind):
    s = srv("asgi_apps:body_app")
    with Conn(s) as c:
        if kind == "content-length-0":
            c.send(build(s, "POST", "/", [("Content-Length", "0")]))
        else:
            c.send(build(s, "POST", "/", [("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n")
        res = c.read_response().json()
    assert res["bytes"] == 0 and res["more_flags_ok"] and res["all_bytes"], res
    assert res["sha256"] == hashlib.sha256(b"").hexdigest()


def test_body_small_content_length(srv):
    s = srv("asgi_apps:body_app")
    res = request(s, "POST", "/?echo=1", body=b"hello asgi").json()
    assert res["body"] == "hello asgi"
    assert res["bytes"] == 10 and res["more_flags_ok"] and res["all_bytes"], res


def test_body_large_content_length(srv):
    s = srv("asgi_apps:body_app")
    body = random.Random(7).randbytes(3 * 1024 * 1024)
    res = request(s, "POST", "/big", body=body, timeout=15).json()
    assert res["bytes"] == len(body)
    assert res["sha256"] == hashlib.sha256(body).hexdigest()
    assert res["events"] >= 2, "a 3 MB body must arrive in several http.request events"
    assert res["more_flags_ok"] and res["all_bytes"], res["event_list"]
    assert res["last_type"] == "http.request"


def test_body_chunked_in_pieces(srv):
    s = srv("asgi_apps:body_app")
    body = random.Random(8).randbytes(300_000)
    encoded = chunked(body, [1, 10, 4096, 65536, 333])
    with Conn(s, 10) as c:
        c.send(build(s, "POST", "/c", [("Transfer-Encoding", "chunked")]))
        step = len(encoded) // 4 + 1
        for i in range(0, len(encoded), step):
            c.send(encoded[i:i + step])
            time.sleep(0.03)
        res = c.read_response().json()
    assert res["bytes"] == len(body)
    assert res["sha256"] == hashlib.sha256(body).hexdigest()
    assert res["events"] >= 2, res["event_list"]
    assert res["more_flags_ok"] and res["all_bytes"], res["event_list"]


def test_body_expect_100_continue(srv):
    s = srv("asgi_apps:body_app")
    body = b"b" * 5000
    with Conn(s) as c:
        c.send(build(s, "POST", "/e", [("Expect", "100-continue"),
                                       ("Content-Length", str(len(body)))]))
        interim = c.read_head()
        assert interim.status == 100, interim
        c.send(body)
        r = c.read_response()
    assert r.status == 200, r
    res = r.json()
    assert res["bytes"] == len(body) and res["more_flags_ok"], res


def _start_partial_body(s, paths, tag, how):
    """Starts a POST whose body never completes, in a way that has the app running already
    (the server may hold back a small body until it is complete): 300 KB of an announced
    3 MB, or a few bytes after `Expect: 100-continue`.  Returns the open Conn."""
    c = Conn(s)
    if how == "large":
        c.send(build(s, "POST", f"/w?tag={tag}", [("Content-Length", str(3_000_000))])
               + b"x" * 300_000)
    else:
        c.send(build(s, "POST", f"/w?tag={tag}", [("Content-Length", "5000"),
                                                  ("Expect", "100-continue")]))
        assert c.read_head().status == 100
        c.send(b"0123456789")
    assert wait_for(lambda: tagged(paths, tag), 3) == ["entered"], "the app was not called"
    time.sleep(0.1)
    assert tagged(paths, tag) == ["entered"], tagged(paths, tag)
    return c


@pytest.mark.parametrize("how", ["large", "expect-continue"])
def test_body_cut_short_delivers_disconnect(srv, paths, how):
    """The client goes away in the middle of the body: the app, still reading it, gets
    http.disconnect."""
    s = srv("asgi_apps:wait_disconnect")
    tag = new_tag("midbody")
    c = _start_partial_body(s, paths, tag, how)
    c.close()
    assert wait_for(lambda: len(tagged(paths, tag)) >= 2, 5), "the app never saw the disconnect"
    assert tagged(paths, tag)[1] == "during-body http.disconnect", tagged(paths, tag)


# --------------------------------------------------------------------------- responses

def test_response_content_length_from_app(srv):
    s = srv("asgi_apps:hello")
    r = request(s, "GET", "/")
    assert r.status == 200 and r.complete
    assert r.header("content-length") == "13"
    assert r.header("transfer-encoding") is None
    assert r.header("content-type") == "text/plain"
    assert r.body == b"Hello, world!"


def test_response_head_has_no_body(srv):
    s = srv("asgi_apps:hello")
    with Conn(s) as c:
        c.send(build(s, "HEAD", "/") + build(s, "GET", "/after-head"))
        r1 = c.read_response("HEAD")
        r2 = c.read_response()
    assert r1.status == 200 and r1.body == b""
    assert r2.status == 200 and r2.body == b"Hello, world!"


def _expected_stream(n, size):
    return b"".join(b"%d:" % i + b"x" * size + b";" for i in range(n))


@pytest.mark.parametrize("n,size", [(7, 100), (2, 3_000_000)])
def test_streaming_response_is_chunked(srv, n, size):
    s = srv("asgi_apps:stream")
    r = request(s, "GET", f"/?n={n}&size={size}", timeout=10)
    assert r.status == 200 and r.complete, r
    assert r.chunked and r.header("content-length") is None, r.headers
    assert r.body == _expected_stream(n, size)


def test_streaming_with_app_content_length_is_not_chunked(srv):
    s = srv("asgi_apps:stream")
    r = request(s, "GET", "/?n=7&size=100&cl=1")
    assert r.status == 200 and r.complete, r
    assert r.header("transfer-encoding") is None
    assert r.header("content-length") == str(len(_expected_stream(7, 100)))
    assert r.body == _expected_stream(7, 100)


def test_single_body_message_gets_content_length(srv):
    s = srv("asgi_apps:stream")
    r = request(s, "GET", "/?n=4&size=10&single=1")
    assert r.status == 200 and r.complete, r
    assert r.header("transfer-encoding") is None
    assert r.header("content-length") == str(len(_expected_stream(4, 10)))
    assert r.body == _expected_stream(4, 10)


def test_streaming_http10_is_close_delimited(srv):
    s = srv("asgi_apps:stream")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?n=5&size=10", version="HTTP/1.0"))
        r = c.read_response()
        assert r.header("transfer-encoding") is None
        assert r.body == _expected_stream(5, 10)
        assert c.closed_by_peer()


def test_concurrent_requests_overlap(srv):
    """30 clients at once, each on a response that sleeps 0.4 s in the app: they run
    concurrently in the worker's loop, so all are done long before 30 x 0.4 s."""
    s = srv("asgi_apps:slow_stream")
    conns = [Conn(s, 10) for _ in range(30)]
    try:
        t0 = time.monotonic()
        for c in conns:
            c.send(build(s, "GET", "/?n=2&delay=0.4"))
        bodies = [c.read_response().body for c in conns]
        elapsed = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
    assert bodies == [b"tick0\ntick1\n"] * 30
    assert elapsed < 4, elapsed


def test_streaming_arrives_incrementally(srv):
    s = srv("asgi_apps:slow_stream")
    n, delay = 4, 0.3
    with Conn(s) as c:
        t0 = time.monotonic()
        c.send(build(s, "GET", f"/?n={n}&delay={delay}"))
        seen = {}
        data = b""
        while len(seen) < n and time.monotonic() - t0 < 4:
            data += c.sock.recv(65536)
            for i in range(n):
                if i not in seen and b"tick%d\n" % i in data:
                    seen[i] = time.monotonic() - t0
        assert sorted(seen) == list(range(n)), data
        assert b"\r\ntransfer-encoding: chunked\r\n" in data.lower()
    # the first chunk did not wait for the rest, and they came at separate times
    assert seen[n - 1] - seen[0] >= (n - 1) * delay * 0.8, seen
    assert len(set(seen.values())) >= n - 1, seen


# --------------------------------------------------------------------------- keep-alive and pipelining

def test_keep_alive_sequential(srv):
    s = srv("asgi_apps:scope_app")
    with Conn(s) as c:
        ports = []
        for i in range(3):
            c.send(build(s, "GET", f"/seq{i}"))
            r = c.read_response()
            assert r.status == 200 and r.complete, r
            sc = r.json()["scope"]
            assert sc["path"] == f"/seq{i}"
            ports.append(sc["client"][1])
        assert ports == [c.local_port] * 3


def test_pipelining_three_requests_in_one_write(srv):
    s = srv("asgi_apps:scope_app")
    with Conn(s) as c:
        c.send(build(s, "GET", "/first?a=1")
               + build(s, "POST", "/second", body=b"payload-two")
               + build(s, "GET", "/third"))
        got = [c.read_response() for _ in range(3)]
    assert [r.status for r in got] == [200, 200, 200], got
    scopes = [r.json() for r in got]
    assert [d["scope"]["path"] for d in scopes] == ["/first", "/second", "/third"]
    assert [d["scope"]["method"] for d in scopes] == ["GET", "POST", "GET"]
    assert [d["body"] for d in scopes] == ["", "payload-two", ""]
    assert scopes[0]["scope"]["query_string"] == "a=1"


def test_pipelining_streaming_responses_in_order(srv):
    s = srv("asgi_apps:stream")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?n=3&size=5") + build(s, "GET", "/?n=20&size=1000")
               + build(s, "GET", "/?n=1&size=1"))
        got = [c.read_response() for _ in range(3)]
    assert [r.body for r in got] == [_expected_stream(3, 5), _expected_stream(20, 1000),
                                     _expected_stream(1, 1)]


def test_pipelining_slow_first_request(srv):
    """The first pipelined request sleeps in the app between chunks; the quick ones behind
    it wait their turn and come back in order."""
    s = srv("asgi_apps:slow_stream")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?n=3&delay=0.2") + build(s, "GET", "/?n=1")
               + build(s, "GET", "/?n=2&delay=0"))
        got = [c.read_response() for _ in range(3)]
    assert [r.body for r in got] == [b"tick0\ntick1\ntick2\n", b"tick0\n", b"tick0\ntick1\n"]
    assert all(r.complete and r.status == 200 for r in got), got


@pytest.mark.parametrize("size", [40, 200_000])
def test_unread_body_does_not_break_keepalive(srv, size):
    """An app that never calls receive(): the body it left must be skipped, not parsed as the
    next request (it holds a request line of its own)."""
    s = srv("asgi_apps:noread")
    body = (b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * size)
    with Conn(s, 10) as c:
        c.send(build(s, "POST", "/first", body=body) + build(s, "GET", "/second"))
        r1 = c.read_response()
        assert r1.status == 200 and r1.body == b"POST /first", r1
        if (r1.header("connection") or "").lower() == "close":
            assert c.closed_by_peer()
            return
        r2 = c.read_response()
    assert r2.status == 200 and r2.body == b"GET /second", r2


# --------------------------------------------------------------------------- errors

def _log_since(server, mark):
    return server.log()[mark:]


def test_raise_before_start_is_500(srv):
    s = srv("asgi_apps:raise_before")
    mark = len(s.log())
    with Conn(s) as c:
        c.send(build(s, "GET", "/boom"))
        r = c.read_response()
    assert r.status == 500, r
    assert r.complete and len(r.body) < 1024
    for secret in (b"Traceback", b"corsac-asgi-secret-before", b"RuntimeError", b"asgi_apps"):
        assert secret not in r.body, r.body
    assert wait_for(lambda: "Exception in ASGI application" in _log_since(s, mark), 3), \
        _log_since(s, mark)
    assert wait_for(lambda: "corsac-asgi-secret-before" in _log_since(s, mark), 3)
    assert "Traceback" in _log_since(s, mark)
    # still serving, on a kept-alive connection too
    with Conn(s) as c:
        c.send(build(s, "GET", "/boom2") + build(s, "GET", "/boom3"))
        r1 = c.read_response()
        assert r1.status == 500
        if (r1.header("connection") or "").lower() != "close":
            assert c.read_response().status == 500


def test_raise_after_start_closes_connection(srv):
    s = srv("asgi_apps:raise_after")
    mark = len(s.log())
    with Conn(s, 3) as c:
        c.send(build(s, "GET", "/after"))
        r = c.read_response()
        assert r.status == 200, r
        assert r.chunked
        assert not r.complete, "a failed response must not end with the terminating 0-chunk"
        assert r.body == b"first chunk;"
        assert c.closed_by_peer(1)
    assert wait_for(lambda: "Exception in ASGI application" in _log_since(s, mark), 3), \
        _log_since(s, mark)
    assert "corsac-asgi-secret-after" in _log_since(s, mark)
    assert request(s, "GET", "/next").status == 200


def test_no_response_is_500(srv):
    s = srv("asgi_apps:no_response")
    mark = len(s.log())
    with Conn(s) as c:
        c.send(build(s, "GET", "/nothing"))
        r = c.read_response()
    assert r.status == 500 and r.complete, r
    assert wait_for(lambda: "ASGI app returned without starting a response"
                    in _log_since(s, mark), 3), _log_since(s, mark)


def test_return_after_start_only_is_500(srv):
    """The start is held until the first body message: an app that returns after it has
    had nothing sent, so the client gets a 500."""
    s = srv("asgi_apps:unfinished")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?stage=start"))
        r = c.read_response()
    assert r.status == 500 and r.complete, r


def test_return_with_unfinished_body_closes(srv):
    s = srv("asgi_apps:unfinished")
    with Conn(s, 3) as c:
        c.send(build(s, "GET", "/?stage=body"))
        r = c.read_response()
        assert r.status == 200 and r.chunked, r
        assert not r.complete and r.body == b"partial;", r
        assert c.closed_by_peer(1)
    assert request(s, "GET", "/?stage=body").status == 200


INVALID_CASES = ["unknown-type", "websocket-type", "type-not-str", "body-before-start",
                 "start-twice", "status-str", "status-float", "status-none", "status-99",
                 "status-600", "header-name-str", "header-value-str", "header-name-space",
                 "header-value-crlf", "header-value-lf", "header-value-cr",
                 "content-length-invalid", "body-str"]


@pytest.mark.parametrize("case", INVALID_CASES)
def test_invalid_message_raises_runtime_error(srv, case):
    s = srv("asgi_apps:invalid")
    mark = len(s.log())
    with Conn(s) as c:
        c.send(build(s, "GET", f"/?case={case}", [("Connection", "close")]))
        r = c.read_response()
        rest = read_until_close(c.sock, 2)
    # (the exception text in the body may quote the bad value: only the head is checked
    # for "Injected")
    assert r.status == 200 and r.complete, r
    assert b"injected" not in r.head_raw.lower(), "response splitting!"
    assert rest == b"" and count_responses(r.head_raw) == 1, (r.head_raw, rest)
    assert r.body != b"ACCEPTED-INVALID", f"the server accepted {case}"
    # the app caught the RuntimeError and reported its text
    assert r.body.startswith(b"RuntimeError: "), r
    if case == "start-twice":
        assert r.header("x-first") == "1" and r.header("x-second") is None, r.headers
    assert wait_for(lambda: "ASGI app sent an invalid message" in _log_since(s, mark), 3), \
        _log_since(s, mark)


@pytest.mark.parametrize("case", ["body-before-start", "status-str", "header-value-crlf",
                                  "header-name-space"])
def test_invalid_message_propagated_is_500(srv, case):
    s = srv("asgi_apps:invalid")
    mark = len(s.log())
    raw = s.raw(build(s, "GET", f"/?case={case}&propagate=1", [("Connection", "close")]))
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:500]
    assert count_responses(raw) == 1, raw
    assert b"Injected" not in raw
    assert wait_for(lambda: "Exception in ASGI application" in _log_since(s, mark), 3), \
        _log_since(s, mark)
    assert "RuntimeError" in _log_since(s, mark)


# --------------------------------------------------------------------------- disconnects

SEND_FAILED = "send ClientDisconnected oserror=True corsac=True"


def test_disconnect_while_app_waits_after_body(srv, paths):
    """The whole request arrived; the app waits on receive(); the client closes: the app
    gets http.disconnect, and a send after that raises an OSError."""
    s = srv("asgi_apps:wait_disconnect")
    tag = new_tag("wait")
    c = Conn(s)
    c.send(build(s, "POST", f"/w?tag={tag}", body=b"abc"))
    assert wait_for(lambda: len(tagged(paths, tag)) >= 2, 3)
    time.sleep(0.1)
    assert tagged(paths, tag) == ["entered", "body-complete 3"], \
        "receive() returned before the disconnect"
    c.close()
    assert wait_for(lambda: len(tagged(paths, tag)) >= 4, 5), tagged(paths, tag)
    lines = tagged(paths, tag)
    assert lines[2] == "after-body http.disconnect", lines
    assert lines[3] == SEND_FAILED, lines


@pytest.mark.parametrize("how", ["large", "expect-continue"])
def test_send_after_disconnect_mid_body_raises_oserror(srv, paths, how):
    s = srv("asgi_apps:wait_disconnect")
    tag = new_tag("sendafter")
    c = _start_partial_body(s, paths, tag, how)
    # a reset, like a client that crashes
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    assert wait_for(lambda: len(tagged(paths, tag)) >= 3, 5), tagged(paths, tag)
    lines = tagged(paths, tag)
    assert lines[1] == "during-body http.disconnect", lines
    assert lines[2] == SEND_FAILED, lines


@pytest.mark.parametrize("how", ["reset", "close", "half-close"])
def test_send_after_disconnect_while_app_sleeps_raises_oserror(srv, paths, how):
    """The app is busy elsewhere (asyncio.sleep, not receive) when the client goes away (a
    reset, a close, or a half-close); its later sends raise corsac.ClientDisconnected."""
    s = srv("asgi_apps:wait_disconnect")
    tag = new_tag("sleeping")
    c = Conn(s)
    c.send(build(s, "POST", f"/w?tag={tag}&mode=sleep&sleep=0.5", body=b"abc"))
    assert wait_for(lambda: len(tagged(paths, tag)) >= 2, 3), tagged(paths, tag)
    if how == "reset":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    elif how == "close":
        c.close()
    else:
        c.sock.shutdown(socket.SHUT_WR)
    assert wait_for(lambda: len(tagged(paths, tag)) >= 4, 5), tagged(paths, tag)
    assert tagged(paths, tag) == ["entered", "body-complete 3", "slept", SEND_FAILED]
    c.close()


def test_disconnect_after_response_complete(srv, paths):
    """Once the response has been sent completely, receive() returns http.disconnect even
    though the client keeps the connection open."""
    s = srv("asgi_apps:wait_disconnect")
    tag = new_tag("after")
    with Conn(s) as c:
        c.send(build(s, "GET", f"/w?tag={tag}&mode=after-response"))
        r = c.read_response()
        assert r.status == 200 and r.body == b"complete"
        assert wait_for(lambda: len(tagged(paths, tag)) >= 4, 3), tagged(paths, tag)
        assert tagged(paths, tag) == ["entered", "body-complete 0",
                                      "after-response http.disconnect",
                                      "after-response http.disconnect"]
        # and the connection is still usable
        c.send(build(s, "GET", f"/w?tag={tag}-2&mode=after-response"))
        assert c.read_response().body == b"complete"


# --------------------------------------------------------------------------- flow control

def test_slow_reader_flow_control_bounds_rss(fresh):
    s = fresh("asgi_apps:flood")
    # warm up (imports, buffers) before the baseline
    r = request(s, "GET", "/?mb=1&tag=warmup", timeout=10)
    assert r.status == 200 and len(r.body) == 1024 * 1024
    pids = worker_pids(s)
    base = sum(rss_kib(p) for p in pids)
    tag = new_tag("flood")
    mb = 50
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    try:
        sock.connect((s.host, s.port))
        sock.sendall(f"GET /?mb={mb}&tag={tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert wait_for(lambda: f"{tag} started" in read_lines(s.record), 3)
        peak = base
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            peak = max(peak, sum(rss_kib(p) for p in pids))
            time.sleep(0.1)
        assert f"{tag} done" not in read_lines(s.record), \
            "the app wrote 50 MB to a client that reads nothing: send() did not wait"
        assert peak - base < 30 * 1024, f"worker RSS grew by {(peak - base) // 1024} MiB"
        # now read it all: every byte arrives and the app finishes
        total, data = 0, b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        total = len(rest)
        while total < mb * 1024 * 1024:
            b = sock.recv(1 << 20)
            assert b, f"EOF after {total} bytes"
            total += len(b)
        assert total == mb * 1024 * 1024
    finally:
        sock.close()
    assert wait_for(lambda: f"{tag} done" in read_lines(s.record), 5), read_lines(s.record)


# --------------------------------------------------------------------------- pathsend / zerocopysend

@pytest.mark.parametrize("query", ["?cl=1", ""])
def test_pathsend_exact_bytes(srv, paths, query):
    s = srv("asgi_apps:pathsend")
    data = paths["file"].read_bytes()
    with Conn(s, 10) as c:
        c.send(build(s, "GET", "/p" + query) + build(s, "GET", "/p?cl=1"))
        r = c.read_response()
        assert r.status == 200 and r.complete, r
        if query:
            assert r.header("content-length") == str(len(data))
            assert r.header("transfer-encoding") is None
        else:
            assert r.chunked or r.header("content-length") == str(len(data)), r.headers
        assert len(r.body) == len(data)
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
        # the framing was right: the next response on the connection parses
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == data


@pytest.mark.parametrize("app", ["pathsend", "zerocopysend"])
def test_file_send_http10(srv, paths, app):
    s = srv(f"asgi_apps:{app}")
    data = paths["file"].read_bytes()
    with Conn(s, 10) as c:
        c.send(build(s, "GET", "/f", version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200 and r.complete, r
        assert not r.chunked, "no chunked framing for an HTTP/1.0 client"
        assert r.body == data
        assert c.closed_by_peer()


ZC_CASES = [
    ("", lambda d: d),
    ("?cl=1", lambda d: d),
    ("?offset=1000&count=5000", lambda d: d[1000:6000]),
    ("?offset=1000&count=5000&cl=1", lambda d: d[1000:6000]),
    ("?seek=777&cl=1", lambda d: d[777:]),
    ("?seek=777", lambda d: d[777:]),
    ("?offset=3145000&cl=1", lambda d: d[3145000:]),
    ("?offset=0&count=1", lambda d: d[:1]),
    ("?split=1&offset=100&count=2000000&cl=1", lambda d: d[100:2000100]),
    ("?split=1&offset=5", lambda d: d[5:]),
]


@pytest.mark.parametrize("query,expect", ZC_CASES, ids=[q or "plain" for q, _ in ZC_CASES])
def test_zerocopysend_exact_bytes(srv, paths, query, expect):
    s = srv("asgi_apps:zerocopysend")
    data = paths["file"].read_bytes()
    want = expect(data)
    with Conn(s, 10) as c:
        c.send(build(s, "GET", "/z" + query) + build(s, "GET", "/z?offset=10&count=20&cl=1"))
        r = c.read_response()
        assert r.status == 200 and r.complete, r
        if "cl=1" in query:
            assert r.header("content-length") == str(len(want))
        assert len(r.body) == len(want)
        assert r.body == want
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == data[10:30]


# --------------------------------------------------------------------------- trailers

def test_trailers_sent_with_te_trailers(srv):
    s = srv("asgi_apps:trailers")
    with Conn(s) as c:
        c.send(build(s, "GET", "/t", [("TE", "trailers")]))
        r = c.read_response()
        assert r.status == 200 and r.complete, r
        assert r.header("x-trailers-ext") == "yes"
        assert r.chunked
        assert r.body == b"part one;part two;"
        assert r.trailers == [("x-checksum", "abc123"), ("x-count", "2")]
        assert r.header("x-checksum") is None, "trailers must not go in the head"
        c.send(build(s, "GET", "/t2"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.complete and r2.trailers == [], r2


def test_trailers_dropped_without_te(srv):
    s = srv("asgi_apps:trailers")
    with Conn(s) as c:
        c.send(build(s, "GET", "/t"))
        r = c.read_response()
        assert r.status == 200 and r.complete, r
        assert r.header("x-trailers-ext") == "no"
        assert r.body == b"part one;part two;"
        assert r.trailers == []
        assert b"abc123" not in r.head_raw
        c.send(build(s, "GET", "/t2", [("TE", "trailers")]))
        r2 = c.read_response()
        assert r2.status == 200 and r2.trailers == [("x-checksum", "abc123"), ("x-count", "2")]


# --------------------------------------------------------------------------- lifespan

@pytest.mark.parametrize("mode", ["auto", "on"])
def test_lifespan_state_visible_in_requests(fresh, mode):
    s = fresh("asgi_apps:lifespan_state", "--lifespan", mode)
    pid = worker_pids(s)[0]
    with Conn(s) as c:
        c.send(build(s, "GET", "/?tag=r1"))
        r1 = c.read_response()
        c.send(build(s, "GET", "/?tag=r2"))
        r2 = c.read_response()
    assert r1.status == 200 and r2.status == 200, (r1, r2)
    expected = {"started": "yes", "answer": 42, "pid": pid}
    assert r1.json()["state"] == expected
    # each request gets its own shallow copy: r1's scribble is not in r2's state
    assert r2.json()["state"] == expected
    lines = read_lines(s.record)
    startup = [i for i, ln in enumerate(lines) if ln.startswith("lifespan startup")]
    assert startup and lines[startup[0]] == f"lifespan startup state=True pid={pid}", lines
    assert startup[0] < lines.index("r1 request-start"), lines
    assert "'state'" in lines[0] and "'asgi'" in lines[0] and "'type'" in lines[0], lines


def test_lifespan_startup_before_serving(fresh):
    """The first request of all, sent as soon as the port is known, already sees the state
    (startup sleeps 0.2 s before filling it)."""
    s = fresh("asgi_apps:lifespan_state")
    r = request(s, "GET", "/?tag=first")
    assert r.status == 200 and r.json()["state"]["started"] == "yes", r


@pytest.mark.parametrize("workers", ["1", "2"])
def test_lifespan_startup_failed_exits_1(fresh, workers):
    s = fresh("asgi_apps:lifespan_failed", "--workers", workers, wait=False)
    try:
        rc = s.proc.wait(20)
    except Exception:
        pytest.fail("corsac kept running after lifespan.startup.failed:\n" + s.log()[-3000:])
    assert rc == 1, s.log()[-3000:]
    assert "Application startup failed: corsac-startup-failed-7391 (database unreachable)" \
        in s.log(), s.log()[-3000:]
    assert "http request served" not in read_lines(s.record)


def test_lifespan_shutdown_on_sigterm_after_inflight(fresh):
    s = fresh("asgi_apps:lifespan_state")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?tag=inflight&slow=1.0"))
        assert wait_for(lambda: "inflight request-start" in read_lines(s.record), 3)
        s.proc.send_signal(signal.SIGTERM)
        r = c.read_response()
    assert r.status == 200 and r.complete, r
    assert r.json()["state"]["started"] == "yes"
    assert s.proc.wait(15) == 0, s.log()[-3000:]
    lines = read_lines(s.record)
    shutdown = [i for i, ln in enumerate(lines) if ln.startswith("lifespan shutdown")]
    assert len(shutdown) == 1, lines
    assert lines.index("inflight request-end") < shutdown[0], lines


def test_lifespan_shutdown_marker_on_plain_stop(fresh):
    s = fresh("asgi_apps:lifespan_state", "--workers", "2")
    assert wait_for(lambda: len([ln for ln in read_lines(s.record)
                                 if ln.startswith("lifespan startup")]) == 2, 10), \
        read_lines(s.record)
    assert request(s, "GET", "/?tag=x").status == 200
    assert s.stop() == 0, s.log()[-3000:]
    lines = read_lines(s.record)
    assert len([ln for ln in lines if ln.startswith("lifespan startup")]) == 2, lines
    assert len([ln for ln in lines if ln.startswith("lifespan shutdown")]) == 2, lines


@pytest.mark.parametrize("flag", [(), ("--lifespan", "auto")])
def test_lifespan_auto_serves_app_without_lifespan(fresh, flag):
    s = fresh("asgi_apps:lifespan_raise", *flag)
    r = request(s, "GET", "/")
    assert r.status == 200 and r.body == b"served without lifespan", r
    assert "ASGI 'lifespan' protocol appears unsupported" in s.log(), s.log()[-3000:]
    assert "lifespan scope-seen" in read_lines(s.record)
    assert s.stop() == 0


def test_lifespan_on_with_app_without_lifespan_exits_1(fresh):
    s = fresh("asgi_apps:lifespan_raise", "--lifespan", "on", wait=False)
    try:
        rc = s.proc.wait(20)
    except Exception:
        pytest.fail("corsac kept running with --lifespan on and a failing lifespan:\n"
                    + s.log()[-3000:])
    assert rc == 1, s.log()[-3000:]


@pytest.mark.parametrize("app", ["lifespan_state", "lifespan_raise"])
def test_lifespan_off_never_sends_lifespan_scope(fresh, app):
    s = fresh(f"asgi_apps:{app}", "--lifespan", "off")
    r = request(s, "GET", "/?tag=off")
    assert r.status == 200, r
    if app == "lifespan_state":
        assert r.json()["state"] in (None, {}), r.json()
    assert s.stop() == 0
    assert not [ln for ln in read_lines(s.record) if ln.startswith("lifespan")], \
        read_lines(s.record)
    assert "appears unsupported" not in s.log()


# --------------------------------------------------------------------------- --limit-concurrency

def test_limit_concurrency_503(fresh, tmp_path):
    s = fresh("asgi_apps:concurrency", "--limit-concurrency", "2")
    release = tmp_path / "release"
    slow = [Conn(s), Conn(s)]
    try:
        for i, c in enumerate(slow):
            c.send(build(s, "GET", f"/?tag=slow{i}&release={quote(str(release))}"))
        assert wait_for(lambda: {"slow0 start", "slow1 start"} <= set(read_lines(s.record)), 3), \
            read_lines(s.record)
        with Conn(s, 3) as c:
            c.send(build(s, "GET", "/?tag=extra"))
            r = c.read_response()
            assert r.status == 503, r
            assert r.reason == "Service Unavailable"
            assert (r.header("connection") or "").lower() == "close"
            assert c.closed_by_peer()
        time.sleep(0.05)
        assert not [ln for ln in read_lines(s.record) if ln.endswith(" end")], \
            "the slow requests were not running any more when the extra one came"
        release.write_text("")
        for c in slow:
            r = c.read_response()
            assert r.status == 200 and r.body.startswith(b"done slow"), r
    finally:
        for c in slow:
            c.close()
    r = request(s, "GET", "/?tag=later")
    assert r.status == 200 and r.body == b"done later"
    lines = read_lines(s.record)
    assert not [ln for ln in lines if ln.startswith("extra ")], "the app saw the 503'd request"
    assert "later end" in lines


# --------------------------------------------------------------------------- contextvars and tasks

def test_contextvars_isolated_between_requests(srv):
    s = srv("asgi_apps:ctxvar")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?set=one"))
        assert c.read_response().json() == {"seen": "unset", "after": "one"}
        c.send(build(s, "GET", "/?set=two"))
        assert c.read_response().json() == {"seen": "unset", "after": "two"}
        c.send(build(s, "GET", "/"))
        assert c.read_response().json() == {"seen": "unset", "after": "unset"}
    assert request(s, "GET", "/").json()["seen"] == "unset"


def test_contextvars_isolated_between_concurrent_requests(srv):
    s = srv("asgi_apps:ctxvar")
    with Conn(s) as a, Conn(s) as b:
        a.send(build(s, "GET", "/?set=A&sleep=0.3"))
        time.sleep(0.05)
        b.send(build(s, "GET", "/?sleep=0.1"))
        rb = b.read_response().json()
        ra = a.read_response().json()
    assert ra == {"seen": "unset", "after": "A"}
    assert rb == {"seen": "unset", "after": "unset"}


def test_app_runs_in_a_task(srv, loop):
    s = srv("asgi_apps:task_info")
    res = request(s, "GET", "/").json()
    assert res["task_is_task"] is True, res
    assert res["task_done"] is False
    assert res["timeout_ok"] is True, res
    assert res["timeout_fired"] is True, res
    assert res["timeout_elapsed"] < 1.0, res
    assert res["child"] == "child-ok"
    assert ("uvloop" in res["loop_type"]) is (loop == "uvloop"), res["loop_type"]
    assert f"Using worker: asgi, {loop} event loop" in s.log()


def test_limit_max_requests_recycles_worker(fresh):
    """--limit-max-requests is --max-requests: after 2 requests the worker is replaced (the
    old one may serve on until its replacement is ready); no request fails meanwhile."""
    s = fresh("asgi_apps:hello", "--limit-max-requests", "2")
    pids = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and len(set(pids)) < 2:
        r = request(s, "GET", f"/{len(pids)}", headers=[("Connection", "close")])
        assert r.status == 200, r
        pids.append(r.header("x-pid"))
        time.sleep(0.05)
    assert len(pids) >= 3 and pids[0] == pids[1], pids
    assert len(set(pids)) == 2, f"the worker was never replaced: {pids[:5]}..."
    assert "Worker retiring: --max-requests reached" in s.log()


# --------------------------------------------------------------------------- malformed requests

H = b"Host: x\r\n"


def _req(head_lines, body=b"", first=b"GET / HTTP/1.1"):
    return first + b"\r\n" + b"".join(line + b"\r\n" for line in head_lines) + b"\r\n" + body


def _chunked_req(body):
    return _req([b"Host: x", b"Transfer-Encoding: chunked"], body, first=b"POST /c HTTP/1.1")


# a subset of the table in test_http1_malformed.py: rejected while parsing the head
MALFORMED = [
    ("bare-lf-after-field", b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    ("space-before-colon", _req([b"Host: x", b"X-A : 1"]), 400),
    ("obs-fold-space", _req([b"Host: x", b"X-A: 1", b" 2"]), 400),
    ("cl-then-te", _req([b"Host: x", b"Content-Length: 5", b"Transfer-Encoding: chunked"],
                        b"0\r\n\r\n", first=b"POST / HTTP/1.1"), 400),
    ("cl-duplicate-different", _req([b"Host: x", b"Content-Length: 5", b"Content-Length: 6"],
                                    b"hello!", first=b"POST / HTTP/1.1"), 400),
    ("cl-letters", _req([b"Host: x", b"Content-Length: abc"], first=b"POST / HTTP/1.1"), 400),
    ("te-gzip-chunked", _req([b"Host: x", b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n",
                             first=b"POST / HTTP/1.1"), 400),
    ("host-missing", _req([]), 400),
    ("host-repeated-different", _req([b"Host: x", b"Host: y"]), 400),
    ("target-nul-byte", _req([b"Host: x"], first=b"GET /a\x00b HTTP/1.1"), 400),
    ("value-nul", _req([b"Host: x", b"X-A: a\x00b"]), 400),
    ("method-paren", _req([b"Host: x"], first=b"G(ET / HTTP/1.1"), 400),
    ("version-2.0", _req([b"Host: x"], first=b"GET / HTTP/2.0"), 505),
]

# rejected while reading the body: the app may already run, but never gets a whole body
MALFORMED_BODY = [
    ("chunk-size-not-hex", _chunked_req(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-longer-than-size", _chunked_req(b"3\r\nhello\r\n0\r\n\r\n"), 400),
]


LIMITED = ("--limit-request-line", "200", "--limit-request-body", "1000")
MALFORMED_LIMITS = [
    ("limited-line-201", _req([b"Host: x"], first=b"GET /" + b"a" * (201 - 14) + b" HTTP/1.1"), 414),
    ("limited-body-1001", _req([b"Host: x", b"Content-Length: 1001"], b"b" * 1001,
                               first=b"POST / HTTP/1.1"), 413),
]


def _recorder_lines(paths):
    return [ln for ln in read_lines(paths["record"]) if ln.startswith(("called ", "complete "))]


def _check_rejected(server, paths, data, expected):
    before = len(_recorder_lines(paths))
    resp, closed = exchange(server, data)
    assert status_of(resp) == expected, f"expected {expected}, got {resp[:300]!r}"
    assert count_responses(resp) == 1, resp[:600]
    assert closed, "server did not close the connection after the error response"
    time.sleep(0.05)
    assert server.proc.poll() is None, "server process died"
    return _recorder_lines(paths)[before:]


@pytest.mark.parametrize("data,expected", [pytest.param(d, e, id=i) for i, d, e in MALFORMED])
def test_malformed_rejected_app_never_called(srv, paths, data, expected):
    s = srv("asgi_apps:recorder")
    new = _check_rejected(s, paths, data, expected)
    assert new == [], f"the application was called: {new}"


@pytest.mark.parametrize("data,expected",
                         [pytest.param(d, e, id=i) for i, d, e in MALFORMED_BODY])
def test_malformed_body_rejected_app_gets_no_body(srv, paths, data, expected):
    s = srv("asgi_apps:recorder")
    new = _check_rejected(s, paths, data, expected)
    assert not [ln for ln in new if ln.startswith("complete ")], new


@pytest.mark.parametrize("data,expected",
                         [pytest.param(d, e, id=i) for i, d, e in MALFORMED_LIMITS])
def test_limits_rejected_app_never_called(srv, paths, data, expected):
    s = srv("asgi_apps:recorder", *LIMITED)
    new = _check_rejected(s, paths, data, expected)
    assert new == [], f"the application was called: {new}"
    # exactly at the limits is fine
    resp, _ = exchange(s, _req([b"Host: x", b"Connection: close", b"Content-Length: 1000"],
                                b"b" * 1000, first=b"POST /" + b"a" * (200 - 15) + b" HTTP/1.1"))
    assert status_of(resp) == 200, resp[:300]


def test_malformed_sanity_valid_request_is_recorded(srv, paths):
    """Without this the "app was not called" checks above would prove nothing."""
    s = srv("asgi_apps:recorder")
    before = len(_recorder_lines(paths))
    resp, _ = exchange(s, _req([b"Host: x", b"Connection: close"], first=b"GET /sanity HTTP/1.1"))
    assert status_of(resp) == 200, resp
    assert resp.endswith(b"GET /sanity len=0\n"), resp
    assert _recorder_lines(paths)[before:] == ["called GET /sanity", "complete GET /sanity"]
    resp, _ = exchange(s, _req([b"Host: x", b"Connection: close", b"Transfer-Encoding: chunked"],
                                b"5\r\nhello\r\n0\r\n\r\n", first=b"POST /c HTTP/1.1"))
    assert status_of(resp) == 200 and resp.endswith(b"POST /c len=5\n"), resp
