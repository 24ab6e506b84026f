"""PEP 3333 semantics of the real `corsac` process, over real sockets.

Apps live in tests/apps/wsgi_apps.py.  Most tests share one server per
(app, flags) for the whole module to keep the run short; tests that count log
lines look only at what was logged after they started."""
import hashlib
import json
import os
import random
import re
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server  # noqa: E402

TIMEOUT = 5
pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- helpers

class Response:
    def __init__(self, status, reason, headers, body, complete, head_raw):
        self.status = status
        self.reason = reason
        self.headers = headers          # list of (lower-case name, value)
        self.body = body
        self.complete = complete        # framing satisfied (CL reached / last chunk seen)
        self.head_raw = head_raw

    def header(self, name):
        vals = [v for k, v in self.headers if k == name.lower()]
        return vals[-1] if vals else None

    def all(self, name):
        return [v for k, v in self.headers if k == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class Conn:
    """A raw client connection with a tiny, strict HTTP/1.x response reader."""

    def __init__(self, server, timeout=TIMEOUT):
        self.server = server
        self.sock = server.connect(timeout)
        self.buf = b""
        self.deadline_s = timeout

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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

    def read_response(self, method="GET"):
        """Reads one final response (skipping 1xx).  EOF in the middle of the body gives
        complete=False; EOF/timeout before a status line raises."""
        while True:
            head = self._until(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            m = re.match(rb"HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
            assert m, f"bad status line {lines[0]!r}"
            status = int(m.group(1))
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                assert sep, f"bad header line {line!r}"
                headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
            if not 100 <= status < 200:
                break
        resp = Response(status, m.group(2).decode("latin-1"), headers, b"", True, head)
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or status in (204, 304):
            return resp
        body = []
        try:
            if te is not None:
                assert te.lower() == "chunked", te
                while True:
                    size_line = self._until(b"\r\n")
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while self._until(b"\r\n") != b"\r\n":  # trailers
                            pass
                        break
                    body.append(self._exact(size))
                    assert self._exact(2) == b"\r\n"
            elif cl is not None:
                n = int(cl)
                while len(self.buf) < n:
                    self._more()
                body.append(self._exact(n))
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
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.deadline_s)
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


def abort(conn):
    """Close with a reset (SO_LINGER 0), like a client that goes away."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def wait_for(pred, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def log_lines_since(server, mark, needle):
    return [line for line in server.log()[mark:].splitlines() if needle in line]


def error_lines(server, mark, needle):
    return [line for line in log_lines_since(server, mark, needle) if "[ERROR]" in line]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("wsgi")
    rnd = random.Random(3333)
    big = d / "big.bin"
    big.write_bytes(rnd.randbytes(3 * 1024 * 1024 + 123))
    return {"dir": d, "closed": d / "closed.txt", "file": big}


@pytest.fixture(scope="module")
def srv(paths):
    """srv("wsgi_apps:environ_app", "--threads", "4") -> a Server shared by the module."""
    made, dead = {}, []
    env = {"CORSAC_TEST_CLOSED": str(paths["closed"]), "CORSAC_TEST_FILE": str(paths["file"])}

    def get(app, *args):
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


def closed_tags(paths):
    try:
        text = paths["closed"].read_text()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        tag, _, detail = line.partition(" ")
        out.setdefault(tag, []).append(detail)
    return out


_tag_counter = [0]


def new_tag(name):
    _tag_counter[0] += 1
    return f"{name}-{os.getpid()}-{_tag_counter[0]}"


THREADS = pytest.mark.parametrize("threads", ["1", "4"])


def env_of(server, **kw):
    r = request(server, **kw)
    assert r.status == 200, r
    return r.json()


# --------------------------------------------------------------------------- environ

REQUIRED_STR_KEYS = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
                     "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL"]


@THREADS
def test_environ_required_keys_and_types(srv, threads):
    s = srv("wsgi_apps:environ_app", "--threads", threads)
    data = env_of(s, path="/some/path?x=1")
    env, types, extras = data["environ"], data["types"], data["extras"]
    for key in REQUIRED_STR_KEYS + ["REMOTE_ADDR", "REMOTE_PORT", "RAW_URI", "HTTP_HOST"]:
        assert key in env, key
    # every CGI-style key (no dot) must be exactly str
    for key, t in types.items():
        if "." not in key:
            assert t == "str", (key, t)
    for key in ["wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors",
                "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once"]:
        assert key in env, key
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/some/path"
    assert env["QUERY_STRING"] == "x=1"
    assert env["RAW_URI"] == "/some/path?x=1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_PORT"] == str(s.port)
    assert env["SERVER_NAME"]
    assert env["HTTP_HOST"] == f"127.0.0.1:{s.port}"
    assert env["wsgi.url_scheme"] == "http"
    assert extras["version"] == [1, 0] and extras["version_is_tuple"]
    assert types["wsgi.multithread"] == "bool" and types["wsgi.multiprocess"] == "bool"
    assert types["wsgi.run_once"] == "bool" and extras["run_once"] is False
    assert extras["multithread"] is (threads != "1")
    assert extras["input_terminated"] is True
    assert extras["file_wrapper_callable"] is True
    assert all(extras["input_methods"].values()), extras["input_methods"]
    assert all(extras["errors_methods"].values()), extras["errors_methods"]
    assert extras["body"] == "" and extras["body_type"] == "bytes"
    # GET without a body: no CONTENT_LENGTH (or an empty one), never HTTP_CONTENT_*
    assert env.get("CONTENT_LENGTH", "") in ("", "0")
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env


def test_wsgi_errors_goes_to_log(srv):
    s = srv("wsgi_apps:environ_app")
    env_of(s, path="/?errors_marker=corsac-errors-7731")
    assert wait_for(lambda: "wsgi.errors says corsac-errors-7731" in s.log(), 3), s.log()[-2000:]
    assert wait_for(lambda: "wsgi.errors writelines corsac-errors-7731" in s.log(), 3)


def test_path_info_percent_decoded_as_latin1(srv):
    s = srv("wsgi_apps:environ_app")
    env = env_of(s, path="/caf%C3%A9/x%20y?q=caf%C3%A9")["environ"]
    assert env["PATH_INFO"] == "/caf\u00c3\u00a9/x y"        # 'cafÃ©' : bytes as latin-1
    assert env["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/x y"
    assert env["QUERY_STRING"] == "q=caf%C3%A9"               # raw, not decoded
    assert env["RAW_URI"] == "/caf%C3%A9/x%20y?q=caf%C3%A9"


def test_path_info_decodes_encoded_slash_and_keeps_plus(srv):
    s = srv("wsgi_apps:environ_app")
    env = env_of(s, path="/a%2Fb/c+d%25")["environ"]
    assert env["PATH_INFO"] == "/a/b/c+d%"
    assert env["RAW_URI"] == "/a%2Fb/c+d%25"


def test_query_string_raw_and_empty(srv):
    s = srv("wsgi_apps:environ_app")
    env = env_of(s, path="/p?a=1&b=%20x+y&c&&d=%zz&e=?")["environ"]
    assert env["QUERY_STRING"] == "a=1&b=%20x+y&c&&d=%zz&e=?"
    assert env["PATH_INFO"] == "/p"
    env = env_of(s, path="/p")["environ"]
    assert env["QUERY_STRING"] == ""
    env = env_of(s, path="/p?")["environ"]
    assert env["QUERY_STRING"] == ""
    assert env["PATH_INFO"] == "/p"


def test_absolute_form_target(srv):
    s = srv("wsgi_apps:environ_app")
    env = env_of(s, path=f"http://127.0.0.1:{s.port}/abs/path?k=v")["environ"]
    assert env["PATH_INFO"] == "/abs/path"
    assert env["QUERY_STRING"] == "k=v"


def test_script_name_from_root_path(srv):
    s = srv("wsgi_apps:environ_app", "--root-path", "/mount")
    env = env_of(s, path="/x/y?q=1")["environ"]
    assert env["SCRIPT_NAME"] == "/mount"
    assert env["PATH_INFO"] == "/x/y"
    # a request that carries the prefix: SCRIPT_NAME + PATH_INFO must be the request path
    env = env_of(s, path="/mount/x/y")["environ"]
    assert env["SCRIPT_NAME"] == "/mount"
    assert env["SCRIPT_NAME"] + env["PATH_INFO"] == "/mount/x/y"


def test_remote_addr_and_port(srv):
    s = srv("wsgi_apps:environ_app")
    with Conn(s) as c:
        local_port = c.sock.getsockname()[1]
        c.send(build(s, path="/"))
        env = c.read_response().json()["environ"]
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)


def test_server_protocol_http10(srv):
    s = srv("wsgi_apps:environ_app")
    r = request(s, path="/v", version="HTTP/1.0")
    assert r.status == 200
    assert r.json()["environ"]["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_header_mapping(srv):
    s = srv("wsgi_apps:environ_app")
    env = env_of(s, path="/h", headers=[
        ("X-Dup", "first"), ("X-Custom-Header", "v1"), ("X-Dup", "second"),
        ("x-lower-case", "lc"), ("X-Ws", "  padded value \t"),
        ("X-Latin", b"caf\xc3\xa9 \xff"), ("X-Empty", ""),
    ])["environ"]
    assert env["HTTP_X_DUP"] == "first, second"
    assert env["HTTP_X_CUSTOM_HEADER"] == "v1"
    assert env["HTTP_X_LOWER_CASE"] == "lc"
    assert env["HTTP_X_WS"] == "padded value"
    assert env["HTTP_X_LATIN"] == "caf\u00c3\u00a9 \u00ff"
    assert env["HTTP_X_EMPTY"] == ""


def test_content_type_and_length_not_prefixed(srv):
    s = srv("wsgi_apps:environ_app")
    data = env_of(s, method="POST", path="/post",
                  headers=[("Content-Type", "text/plain; charset=utf-8")], body=b"hello")
    env = data["environ"]
    assert env["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert env["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["REQUEST_METHOD"] == "POST"
    assert data["extras"]["body"] == "hello"


def test_chunked_request_has_no_content_length(srv):
    s = srv("wsgi_apps:environ_app")
    with Conn(s) as c:
        c.send(build(s, "POST", "/c", [("Transfer-Encoding", "chunked"),
                                       ("Content-Type", "application/octet-stream")]))
        c.send(chunked(b"abcdefghij", [3]))
        data = c.read_response().json()
    env = data["environ"]
    assert env.get("CONTENT_LENGTH", "") == ""
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["CONTENT_TYPE"] == "application/octet-stream"
    assert data["extras"]["body"] == "abcdefghij"


# --------------------------------------------------------------------------- wsgi.input

def _lines_body(n_lines=300, seed=1):
    rnd = random.Random(seed)
    lines = []
    for i in range(n_lines):
        ln = rnd.choice([0, 1, 5, 80, 300, 5000])
        lines.append(bytes(rnd.choice(b"abcdefgh \t\r") for _ in range(ln)) + b"\n")
    return b"".join(lines) + b"no newline at the end"


BODY = _lines_body()


def _split_lines(body, limit=None):
    out = []
    for line in body.splitlines(keepends=True):
        # splitlines also splits on \r; only \n ends a line for readline()
        out.append(line)
    # re-join on \n only
    pieces, cur = [], b""
    for line in out:
        cur += line
        if cur.endswith(b"\n"):
            pieces.append(cur)
            cur = b""
    if cur:
        pieces.append(cur)
    if limit:
        limited = []
        for p in pieces:
            while p:
                limited.append(p[:limit])
                p = p[limit:]
        pieces = limited
    return pieces


def _check_input(result, body, mode, n):
    assert result["total"] == len(body), result
    assert result["sha256"] == hashlib.sha256(body).hexdigest()
    assert result["types"] in (["bytes"], []), result["types"]
    if result["after"] is not None:
        assert result["after"] == ["bytes", ""], "reading after EOF must give b''"
    lens = result["lens"]
    if mode in ("read", "read_minus1"):
        assert lens == [len(body)]
    elif mode == "readn":
        # file semantics: read(n) returns n bytes unless EOF is reached
        assert all(x == n for x in lens[:-1]) and 0 < lens[-1] <= n, lens[:20]
    elif mode in ("readline", "readlines", "iter"):
        assert lens == [len(p) for p in _split_lines(body)]
    elif mode == "readline_limit":
        assert lens == [len(p) for p in _split_lines(body, n)]
    elif mode == "readlines_hint":
        assert lens == [len(p) for p in _split_lines(body)]
        assert all(g > 0 for g in result["groups"])


INPUT_MODES = [("read", 0), ("read_minus1", 0), ("readn", 1), ("readn", 1000), ("readn", 65536),
               ("readn", len(BODY)), ("readn", len(BODY) + 10), ("readline", 0),
               ("readline_limit", 7), ("readline_limit", 4096), ("readlines", 0),
               ("readlines_hint", 10000), ("iter", 0)]


@THREADS
@pytest.mark.parametrize("mode,n", INPUT_MODES)
def test_input_content_length(srv, threads, mode, n):
    s = srv("wsgi_apps:input_app", "--threads", threads)
    r = request(s, "POST", f"/in?mode={mode}&n={n}", body=BODY, timeout=10)
    assert r.status == 200, r
    res = r.json()
    assert res["content_length"] == str(len(BODY))
    _check_input(res, BODY, mode, n)


@THREADS
@pytest.mark.parametrize("mode,n", [("read", 0), ("readn", 1000), ("readn", 100000),
                                    ("readline", 0), ("readline_limit", 50), ("readlines", 0),
                                    ("iter", 0)])
def test_input_chunked(srv, threads, mode, n):
    """Chunked upload from a raw socket, sent in pieces with pauses; the app sees the
    decoded body with every read style, then b''."""
    s = srv("wsgi_apps:input_app", "--threads", threads)
    encoded = chunked(BODY, [1, 10, 4096, 65536, 333])
    with Conn(s, 10) as c:
        c.send(build(s, "POST", f"/in?mode={mode}&n={n}", [("Transfer-Encoding", "chunked")]))
        step = len(encoded) // 4 + 1
        for i in range(0, len(encoded), step):
            c.send(encoded[i:i + step])
            time.sleep(0.02)
        r = c.read_response()
    assert r.status == 200, r
    _check_input(r.json(), BODY, mode, n)


def test_input_chunked_extensions_hex_case_and_trailers(srv):
    s = srv("wsgi_apps:input_app")
    data = (b"5;name=value\r\nhello\r\n"
            b"A\r\n0123456789\r\n"
            b"1a;x\r\n" + b"z" * 26 + b"\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n")
    with Conn(s) as c:
        c.send(build(s, "POST", "/in?mode=read&echo=1", [("Transfer-Encoding", "chunked")]) + data)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["data"] == "hello0123456789" + "z" * 26


def test_input_empty_bodies(srv):
    s = srv("wsgi_apps:input_app")
    for mode in ("read", "readline", "readlines", "iter", "readn"):
        r = request(s, "GET", f"/in?mode={mode}&n=10")
        assert r.status == 200, r
        res = r.json()
        assert res["total"] == 0 and res["after"] == ["bytes", ""], res
    # POST with Content-Length: 0 and an empty chunked body
    r = request(s, "POST", "/in?mode=read", headers=[("Content-Length", "0")])
    assert r.json()["total"] == 0
    with Conn(s) as c:
        c.send(build(s, "POST", "/in?mode=read", [("Transfer-Encoding", "chunked")]) + b"0\r\n\r\n")
        assert c.read_response().json()["total"] == 0


def test_input_mixed_reads(srv):
    s = srv("wsgi_apps:input_app")
    body = b"abc\ndef\nghi\njkl"
    r = request(s, "POST", "/in?mode=mixed&n=2&echo=1", body=body)
    res = r.json()
    assert res["lens"] == [2, 2, len(body) - 4]
    assert res["data"] == body.decode()


@THREADS
@pytest.mark.parametrize("mode", ["none", "partial"])
def test_unread_body_does_not_break_keepalive(srv, threads, mode):
    """An app that reads none / part of the body: the next request on the connection must
    be parsed correctly (the rest of the body is discarded, not taken as a request)."""
    s = srv("wsgi_apps:input_app", "--threads", threads)
    body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 500
    with Conn(s) as c:
        c.send(build(s, "POST", f"/in?mode={mode}&n=10", body=body)
               + build(s, "POST", "/in?mode=read&echo=1", body=b"second body"))
        r1 = c.read_response()
        assert r1.status == 200, r1
        if (r1.header("connection") or "").lower() == "close":
            assert c.closed_by_peer()
            return
        r2 = c.read_response()
    assert r2.status == 200, r2
    assert r2.json()["data"] == "second body"


# --------------------------------------------------------------------------- write()

@THREADS
@pytest.mark.parametrize("query,expect_cl", [("", False), ("?cl=1", True), ("?only=1", False)])
def test_write_callable(srv, threads, query, expect_cl):
    s = srv("wsgi_apps:write_app", "--threads", threads)
    r = request(s, "GET", "/w" + query)
    assert r.status == 200 and r.complete, r
    assert r.body == b"one,two,three,four"
    if expect_cl:
        assert r.header("content-length") == str(len(r.body))
        assert r.header("transfer-encoding") is None
    # HTTP/1.0: close-delimited, same bytes
    r = request(s, "GET", "/w" + query, version="HTTP/1.0")
    assert r.status == 200 and r.body == b"one,two,three,four"


@THREADS
def test_write_big(srv, threads):
    s = srv("wsgi_apps:write_app", "--threads", threads)
    r = request(s, "GET", "/w?big=1", timeout=10)
    assert r.status == 200 and r.complete
    assert r.body == b"a" * (1 << 20) + b"b" * (1 << 20) + b"c" * (1 << 20) + b"end"


# --------------------------------------------------------------------------- exc_info / errors

@THREADS
def test_exc_info_before_sending_replaces_response(srv, threads):
    s = srv("wsgi_apps:exc_info_app", "--threads", threads)
    r = request(s, "GET", "/e")
    assert r.status == 500, r
    assert r.header("x-handled") == "yes"
    assert r.header("x-first") is None, "headers of the first start_response must be dropped"
    assert r.body == b"app's own error page"


@THREADS
def test_exc_info_after_headers_sent_reraises(srv, threads):
    s = srv("wsgi_apps:exc_info_late_app", "--threads", threads)
    mark = len(s.log())
    with Conn(s) as c:
        c.send(build(s, "GET", "/late"))
        r = c.read_response()
    assert r.status == 200
    assert not r.complete, "a response that failed mid-way must not look complete"
    assert r.body.startswith(b"partial body;")
    assert b"SHOULD-NOT-BE-SENT" not in r.body
    assert wait_for(lambda: log_lines_since(s, mark, "Error handling request GET /late"), 3), \
        s.log()[mark:]
    assert request(s, "GET", "/again").status == 200


@THREADS
def test_start_response_twice_without_exc_info_is_an_error(srv, threads):
    s = srv("wsgi_apps:twice_app", "--threads", threads)
    r = request(s, "GET", "/twice")
    assert r.status == 500, r
    assert b"accepted" not in r.body


@THREADS
def test_exception_before_start_response_is_500(srv, threads):
    s = srv("wsgi_apps:raise_app", "--threads", threads)
    mark = len(s.log())
    r = request(s, "GET", "/boom?q=1")
    assert r.status == 500, r
    assert len(r.body) < 1024
    for secret in (b"Traceback", b"corsac-secret-marker", b"RuntimeError", b"wsgi_apps"):
        assert secret not in r.body, r.body
    assert wait_for(lambda: log_lines_since(s, mark, "Error handling request GET /boom"), 3), \
        s.log()[mark:]
    lines = log_lines_since(s, mark, "Error handling request GET /boom")
    assert "[ERROR]" in lines[0]
    assert wait_for(lambda: "corsac-secret-marker" in s.log()[mark:], 3), "traceback not logged"
    assert "Traceback" in s.log()[mark:]
    # still serving, also on a kept-alive connection
    with Conn(s) as c:
        c.send(build(s, "GET", "/boom2") + build(s, "GET", "/boom3"))
        r1 = c.read_response()
        assert r1.status == 500
        if (r1.header("connection") or "").lower() != "close":
            assert c.read_response().status == 500


@THREADS
def test_exception_after_first_chunk_truncates(srv, threads):
    s = srv("wsgi_apps:raise_after_app", "--threads", threads)
    mark = len(s.log())
    with Conn(s) as c:
        c.send(build(s, "GET", "/after"))
        r = c.read_response()
        assert r.status == 200
        assert not r.complete, "truncated body must not be terminated properly"
        assert r.body == b"first chunk;"
    assert wait_for(lambda: log_lines_since(s, mark, "Error handling request GET /after"), 3)
    assert request(s, "GET", "/next").status == 200


# --------------------------------------------------------------------------- invalid status/headers

BAD_PATHS = ["/value-crlf", "/value-lf", "/value-cr", "/value-nul", "/value-nonlatin1",
             "/value-bytes", "/value-int", "/name-space", "/name-colon", "/name-empty",
             "/name-crlf", "/name-nonlatin1", "/name-bytes", "/status-nospace", "/status-4digit",
             "/status-2digit", "/status-alpha", "/status-crlf", "/status-bytes", "/status-int",
             "/headers-not-pairs"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_invalid_response_is_500(srv, path):
    s = srv("wsgi_apps:bad_header_app")
    mark = len(s.log())
    raw = s.raw(build(s, "GET", path, [("Connection", "close")]))
    head = raw.split(b"\r\n\r\n")[0]
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:300]
    assert b"Injected" not in raw, "response splitting!"
    assert b"this body must never be sent" not in raw
    assert raw.count(b"HTTP/1.") == 1, raw
    assert b"X-Test" not in head
    assert wait_for(lambda: error_lines(s, mark, "invalid response"), 3), s.log()[mark:]
    time.sleep(0.05)
    assert len(error_lines(s, mark, "invalid response")) == 1, s.log()[mark:]
    r = request(s, "GET", "/ok")
    assert r.status == 200 and r.body == b"ok"


@pytest.mark.parametrize("app", ["bad_header_crlf_app", "bad_header_nul_app",
                                 "bad_header_nonlatin1_app", "bad_header_name_app",
                                 "bad_status_app", "bad_status_4digit_app", "bad_status_type_app"])
def test_invalid_response_apps_threads4(srv, app):
    s = srv(f"wsgi_apps:{app}", "--threads", "4")
    mark = len(s.log())
    for _ in range(2):
        raw = s.raw(build(s, "GET", "/x", [("Connection", "close")]))
        assert raw.startswith(b"HTTP/1.1 500 "), raw[:300]
        assert b"Injected" not in raw and b"this body must never be sent" not in raw
    assert wait_for(lambda: len(error_lines(s, mark, "invalid response")) >= 2, 3), s.log()[mark:]
    time.sleep(0.05)
    assert len(error_lines(s, mark, "invalid response")) == 2, s.log()[mark:]


# --------------------------------------------------------------------------- close()

@THREADS
@pytest.mark.parametrize("mode,method,expect_status", [
    ("normal", "GET", 200), ("normal", "HEAD", 200), ("lazy", "GET", 200),
    ("fail", "GET", 200), ("failfirst", "GET", 500), ("badheader", "GET", 500),
    ("short", "GET", 200)])
def test_close_called(srv, paths, threads, mode, method, expect_status):
    s = srv("wsgi_apps:close_app", "--threads", threads)
    tag = new_tag(mode)
    with Conn(s) as c:
        c.send(build(s, method, f"/c?tag={tag}&mode={mode}"))
        r = c.read_response(method)
    assert r.status == expect_status, r
    if mode == "normal" and method == "GET":
        assert r.body == b"abc"
    if mode == "lazy":
        assert r.body == b"lazy;body"
    if method == "HEAD":
        assert r.body == b""
    assert wait_for(lambda: tag in closed_tags(paths), 5), f"close() not called for {mode}"
    time.sleep(0.05)
    assert len(closed_tags(paths)[tag]) == 1, "close() called more than once"


@THREADS
def test_close_called_on_client_disconnect(srv, paths, threads):
    s = srv("wsgi_apps:close_app", "--threads", threads)
    tag = new_tag("disconnect")
    c = Conn(s)
    c.send(build(s, "GET", f"/c?tag={tag}&mode=long"))
    got = b""
    while len(got) < 200_000:
        more = c.sock.recv(65536)
        assert more, "server closed the long response early"
        got += more
    assert got.startswith(b"HTTP/1.1 200 ")
    t0 = time.monotonic()
    abort(c)
    assert wait_for(lambda: tag in closed_tags(paths), 8), \
        "close() not called after the client went away"
    assert time.monotonic() - t0 < 8
    # the server stopped iterating early (the body would go on for 20 s)
    count = int(closed_tags(paths)[tag][0])
    assert count < 5000, count
    r = request(s, "GET", f"/c?tag={new_tag('after')}")
    assert r.status == 200 and r.body == b"abc"


# --------------------------------------------------------------------------- wsgi.file_wrapper

@THREADS
@pytest.mark.parametrize("query", ["", "?cl=1", "?kind=nofileno", "?kind=nofileno&cl=1"])
def test_file_wrapper_3mb(srv, paths, threads, query):
    s = srv("wsgi_apps:file_app", "--threads", threads)
    data = paths["file"].read_bytes()
    r = request(s, "GET", "/f" + query, timeout=10)
    assert r.status == 200 and r.complete, r
    assert len(r.body) == len(data)
    assert hashlib.sha256(r.body).hexdigest() == hashlib.sha256(data).hexdigest()
    if "nofileno" not in query or "cl=1" in query:
        # contract: Content-Length is set from the file size when the app gives none
        assert r.header("content-length") == str(len(data)), r.headers
        assert r.header("transfer-encoding") is None


@THREADS
@pytest.mark.parametrize("query", ["?offset=1000000&cl=1", "?offset=1000000"])
def test_file_wrapper_starts_at_current_position(srv, paths, threads, query):
    """PEP 3333: returning file_wrapper(f) must behave like iter(lambda: f.read(blk), b''),
    so a file already positioned at an offset is sent from there."""
    s = srv("wsgi_apps:file_app", "--threads", threads)
    data = paths["file"].read_bytes()[1000000:]
    r = request(s, "GET", "/f" + query, timeout=10)
    assert r.status == 200 and r.complete, r
    assert len(r.body) == len(data)
    assert r.body == data
    if r.header("content-length") is not None:
        assert r.header("content-length") == str(len(data))


@THREADS
def test_file_wrapper_head_and_http10(srv, paths, threads):
    s = srv("wsgi_apps:file_app", "--threads", threads)
    size = paths["file"].stat().st_size
    with Conn(s) as c:
        c.send(build(s, "HEAD", "/f") + build(s, "GET", "/f?cl=1"))
        r = c.read_response("HEAD")
        assert r.status == 200 and r.body == b""
        assert r.header("content-length") == str(size)
        r2 = c.read_response()
        assert r2.status == 200 and len(r2.body) == size
    r = request(s, "GET", "/f", version="HTTP/1.0", timeout=10)
    assert r.status == 200 and r.body == paths["file"].read_bytes()


@THREADS
@pytest.mark.parametrize("kind", ["record", "nofileno"])
def test_file_wrapper_closes_file(srv, paths, threads, kind):
    s = srv("wsgi_apps:file_app", "--threads", threads)
    tag = new_tag(kind)
    r = request(s, "GET", f"/f?kind={kind}&tag={tag}", timeout=10)
    assert r.status == 200 and len(r.body) == paths["file"].stat().st_size
    assert wait_for(lambda: tag in closed_tags(paths), 5), "file_wrapper did not close the file"


def test_file_wrapper_client_disconnect_closes_file(srv, paths):
    s = srv("wsgi_apps:file_app")
    tag = new_tag("fdisc")
    c = Conn(s)
    c.send(build(s, "GET", f"/f?kind=record&tag={tag}"))
    assert c.sock.recv(1000)
    abort(c)
    assert wait_for(lambda: tag in closed_tags(paths), 8), "file not closed after disconnect"
    assert request(s, "GET", "/f?cl=1", timeout=10).status == 200


# --------------------------------------------------------------------------- wsgiref.validate

@THREADS
def test_wsgiref_validate(srv, paths, threads):
    s = srv("wsgi_apps:validated_app", "--threads", threads)
    mark = len(s.log())
    body = _lines_body(200, seed=7)
    sha = hashlib.sha256(body).hexdigest().encode()
    nlines = len(_split_lines(body))
    filedata = paths["file"].read_bytes()
    checks = []

    def check(method, path, expect_status, expect_body, req_body=b"", chunk=False):
        with Conn(s, 10) as c:
            if chunk:
                c.send(build(s, method, path, [("Transfer-Encoding", "chunked")]) +
                       chunked(req_body, [1000, 7]))
            else:
                c.send(build(s, method, path, [("Content-Type", "text/plain")] if req_body else [],
                             req_body))
            r = c.read_response(method)
        checks.append((method, path, r.status))
        assert r.status == expect_status, (method, path, r, s.log()[mark:][-3000:])
        if expect_body is not None:
            assert r.body == expect_body, (method, path, r.body[:200])

    check("GET", "/hello", 200, b"hello validated")
    check("HEAD", "/hello", 200, b"")
    check("GET", "/hello?a=b", 200, b"hello validated")
    check("GET", "/empty", 200, b"")
    check("GET", "/nocontent", 204, b"")
    check("GET", "/write", 200, b"written;returned")
    check("GET", "/generator", 200, b"0;1;2;3;4;")
    check("GET", "/file", 200, filedata)
    check("GET", "/missing", 404, b"not found")
    check("POST", "/read", 200, sha, body)
    check("POST", "/read", 200, sha, body, chunk=True)
    check("POST", "/readline", 200, b"%d %s" % (nlines, sha), body)
    check("POST", "/readline", 200, b"%d %s" % (nlines, sha), body, chunk=True)
    check("POST", "/readlines", 200, b"%d %s" % (nlines, sha), body)
    check("POST", "/iter", 200, b"%d %s" % (nlines, sha), body)
    check("POST", "/iter", 200, b"%d %s" % (nlines, sha), body, chunk=True)
    check("POST", "/read", 200, hashlib.sha256(b"").hexdigest().encode(), b"")
    time.sleep(0.2)
    log = s.log()[mark:]
    for bad in ("AssertionError", "WSGIWarning", "Error handling", "without being closed",
                "Traceback"):
        assert bad not in log, log[-3000:]


# --------------------------------------------------------------------------- more edge cases

def test_environ_is_fresh_per_request(srv):
    """An app that scribbles on its environ must not affect the next request on the
    same connection."""
    s = srv("wsgi_apps:environ_app")
    with Conn(s) as c:
        c.send(build(s, "GET", "/?pollute=1") + build(s, "POST", "/second", body=b"body2"))
        r1 = c.read_response()
        r2 = c.read_response()
    assert r1.status == 200 and r2.status == 200, (r1, r2)
    env2 = r2.json()["environ"]
    assert "HTTP_X_POLLUTED" not in env2 and "corsac_test.polluted" not in env2
    assert env2["PATH_INFO"] == "/second" and env2["QUERY_STRING"] == ""
    assert r2.json()["extras"]["body"] == "body2"


def test_http10_without_host(srv):
    s = srv("wsgi_apps:environ_app")
    with Conn(s) as c:
        c.send(b"GET /nohost HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    env = r.json()["environ"]
    assert "HTTP_HOST" not in env
    assert env["SERVER_NAME"] and env["SERVER_PORT"] == str(s.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_repeated_and_latin1_response_headers(srv):
    s = srv("wsgi_apps:bad_header_app")
    raw = s.raw(build(s, "GET", "/multi", [("Connection", "close")]))
    head = raw.split(b"\r\n\r\n")[0]
    assert raw.startswith(b"HTTP/1.1 200 "), raw
    lines = head.split(b"\r\n")
    cookies = [ln for ln in lines if ln.lower().startswith(b"set-cookie:")]
    assert cookies == [b"Set-Cookie: a=1; Path=/", b"Set-Cookie: b=2"], lines
    assert b"X-Latin: caf\xe9" in lines
    assert raw.endswith(b"multi")


@pytest.mark.parametrize("path", ["/str-item", "/str-item-cl", "/none", "/bare-bytes", "/int"])
def test_body_not_iterable_of_bytes_is_500(srv, path):
    s = srv("wsgi_apps:bad_body_app")
    raw = s.raw(build(s, "GET", path, [("Connection", "close")]))
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:300]
    assert b"never be sent" not in raw
    assert raw.count(b"HTTP/1.") == 1
    assert request(s, "GET", "/fine").status == 200


@THREADS
def test_input_read_after_response_started(srv, threads):
    s = srv("wsgi_apps:input_app", "--threads", threads)
    body = os.urandom(300_000)
    with Conn(s, 10) as c:
        c.send(build(s, "POST", "/in?mode=late", body=body)[:-200_000])
        time.sleep(0.2)
        c.send(body[-200_000:])
        r = c.read_response()
    assert r.status == 200 and r.complete, r
    assert r.body == b"start;" + hashlib.sha256(body).hexdigest().encode()


@THREADS
def test_body_read_timeout_raises_oserror_in_app(srv, paths, threads):
    s = srv("wsgi_apps:input_app", "--threads", threads, "--body-read-timeout", "1")
    tag = new_tag("stall")
    with Conn(s, 6) as c:
        c.send(build(s, "POST", f"/in?mode=stall&tag={tag}",
                     [("Content-Length", "1000000")]) + b"x" * 300_000)
        t0 = time.monotonic()
        r = c.read_response()
        elapsed = time.monotonic() - t0
    assert r.status == 408, r
    assert elapsed < 4, elapsed
    # if the app got to read (the server may also reject before calling it), its read
    # must have raised an OSError
    rec = closed_tags(paths).get(tag)
    if rec is not None:
        assert rec == ["OSError:True"] or rec[0].endswith(":True"), rec
    assert request(s, "GET", "/in?mode=read").status == 200


def test_file_wrapper_shorter_than_content_length_closes(corsac, tmp_path):
    """The file has fewer bytes than the app's Content-Length: the server sends what there is and
    closes, so the client is never left waiting on a keep-alive connection for bytes that never come."""
    path = tmp_path / "short.bin"
    path.write_bytes(b"z" * 5000)
    s = corsac("wsgi_apps:file_app", env={"CORSAC_TEST_FILE": str(path)})
    sock = socket.create_connection((s.host, s.port), timeout=5)
    try:
        sock.sendall(b"GET /?cl=1&extra=10 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        sock.settimeout(5)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"Content-Length: 5010" in head and body == b"z" * 5000
    finally:
        sock.close()
