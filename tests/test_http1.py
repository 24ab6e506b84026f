"""HTTP/1.1 engine behaviour of the real server, over real sockets (raw, http.client,
httpx and curl): keep-alive, pipelining, framing, 100-continue, HEAD, Date/Server,
timeouts, body limits, large bodies and concurrency."""
import email.utils
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import Server

# --------------------------------------------------------------------------- helpers


class Reader:
    """Incremental HTTP/1.x response reader over a socket (strict about framing)."""

    def __init__(self, sock, timeout=5.0):
        self.sock = sock
        self.buf = bytearray()
        self.timeout = timeout
        sock.settimeout(timeout)

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise EOFError("server closed the connection; buffered: %r" % self.buf[:200])
        self.buf += b

    def _take_until(self, sep):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                break
            start = max(0, len(self.buf) - len(sep) + 1)
            self._fill()
        out = bytes(self.buf[:i])
        del self.buf[:i + len(sep)]
        return out

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self):
        head = self._take_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"HTTP/1\.([01]) (\d{3}) ?(.*)$", lines[0])
        assert m, "bad status line %r" % lines[0]
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            assert sep and k == k.strip(), "bad header line %r" % line
            headers.setdefault(k.lower(), []).append(v.strip())
        return int(m.group(2)), headers, lines[0]

    def read_response(self, head=False, skip_100=True):
        """Returns (status, headers, body, chunks); chunks is None unless chunked."""
        while True:
            status, headers, line = self.read_head()
            if status == 100 and skip_100:
                continue
            break
        chunks = None
        if head or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "transfer-encoding" in headers:
            assert headers["transfer-encoding"] == ["chunked"], headers
            assert "content-length" not in headers, headers
            chunks = []
            while True:
                size_line = self._take_until(b"\r\n")
                assert re.fullmatch(rb"[0-9a-fA-F]+(;.*)?", size_line), size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    trailer = self._take_until(b"\r\n")
                    assert trailer == b"", "unexpected trailer %r" % trailer
                    break
                chunks.append(self._take(size))
                assert self._take(2) == b"\r\n", "chunk data not followed by CRLF"
            body = b"".join(chunks)
        elif "content-length" in headers:
            assert len(headers["content-length"]) == 1, headers
            body = self._take(int(headers["content-length"][0]))
        else:
            body = self.read_to_close()
        return status, headers, body, chunks

    def read_to_close(self):
        while True:
            try:
                self._fill()
            except EOFError:
                break
        out = bytes(self.buf)
        del self.buf[:]
        return out

    def closed_within(self, seconds):
        """True if the server closes (EOF or reset) within `seconds` without sending anything."""
        self.sock.settimeout(seconds)
        try:
            b = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout)
        assert not self.buf and not b, "unexpected bytes %r" % (self.buf + b)[:200]
        return True


def one(headers, name):
    vals = headers.get(name.lower(), [])
    assert len(vals) == 1, f"{name}: {vals}"
    return vals[0]


def get(path="/", extra=b"", version=b"1.1", method=b"GET"):
    return method + b" " + path.encode() + b" HTTP/" + version + b"\r\nHost: t\r\n" + extra + b"\r\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One server with default settings shared by the tests that need nothing special."""
    tmp = tmp_path_factory.mktemp("http1")
    rec = tmp / "record"
    rec.write_text("")
    s = Server("recorder:app", [], env={"CORSAC_TEST_RECORD": str(rec)}, tmp_path=tmp)
    s.record = rec
    yield s
    s.stop()


@pytest.fixture
def rec_env(tmp_path):
    rec = tmp_path / "record"
    rec.write_text("")
    return rec, {"CORSAC_TEST_RECORD": str(rec)}


# --------------------------------------------------------------------------- keep-alive

def test_keepalive_http_client(srv):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        ports = set()
        for i in range(5):
            conn.request("GET", f"/environ?i={i}")
            r = conn.getresponse()
            assert r.status == 200
            env = json.loads(r.read())
            assert env["QUERY_STRING"] == f"i={i}"
            ports.add(env["REMOTE_PORT"])
            first_sock = conn.sock if i == 0 else first_sock
            assert conn.sock is first_sock, "http.client had to reconnect"
        conn.request("POST", "/echo", body=b"payload-1")
        r = conn.getresponse()
        assert r.read() == b"payload-1"
        conn.request("GET", "/environ")
        ports.add(json.loads(conn.getresponse().read())["REMOTE_PORT"])
        assert len(ports) == 1, f"requests arrived over several connections: {ports}"
    finally:
        conn.close()


def test_keepalive_raw(srv):
    s = srv.connect()
    try:
        r = Reader(s)
        for i in range(4):
            s.sendall(get(f"/k{i}"))
            status, headers, body, _ = r.read_response()
            assert status == 200
            assert body == f"GET /k{i} len=0\n".encode()
            assert "close" not in [v.lower() for v in headers.get("connection", [])]
        assert not r.closed_within(0.3), "server closed a keep-alive connection"
    finally:
        s.close()


def test_http10_closes_by_default(srv):
    s = srv.connect()
    try:
        s.sendall(b"GET /ten HTTP/1.0\r\n\r\n")
        r = Reader(s)
        status, headers, body, _ = r.read_response()
        assert status == 200 and body == b"GET /ten len=0\n"
        assert "transfer-encoding" not in headers
        assert r.closed_within(2), "HTTP/1.0 without keep-alive: the server must close"
    finally:
        s.close()


def test_http10_keepalive(srv):
    s = srv.connect()
    try:
        r = Reader(s)
        for i in range(3):
            s.sendall(f"GET /ten{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            status, headers, body, _ = r.read_response()
            assert status == 200 and body == f"GET /ten{i} len=0\n".encode()
            assert [v.lower() for v in headers.get("connection", [])] == ["keep-alive"]
        assert not r.closed_within(0.3)
    finally:
        s.close()


def test_http10_stream_is_close_delimited(srv):
    """No Content-Length known and HTTP/1.0: no chunking, the end is marked by closing."""
    s = srv.connect()
    try:
        s.sendall(b"GET /stream?n=4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = Reader(s)
        status, headers, body, chunks = r.read_response()
        assert status == 200
        assert "transfer-encoding" not in headers and "content-length" not in headers
        assert chunks is None
        assert body == b"chunk-0\nchunk-1\nchunk-2\nchunk-3\n"
    finally:
        s.close()


def test_connection_close_honoured(srv):
    s = srv.connect()
    try:
        s.sendall(get("/bye", b"Connection: close\r\n"))
        r = Reader(s)
        status, headers, body, _ = r.read_response()
        assert status == 200 and body == b"GET /bye len=0\n"
        assert [v.lower() for v in headers.get("connection", [])] == ["close"]
        assert r.closed_within(2)
    finally:
        s.close()


def test_connection_close_stops_pipeline(srv):
    s = srv.connect()
    try:
        s.sendall(get("/a", b"Connection: close\r\n") + get("/b"))
        r = Reader(s)
        assert r.read_response()[2] == b"GET /a len=0\n"
        assert r.closed_within(2)
    finally:
        s.close()


# --------------------------------------------------------------------------- pipelining

def test_pipelining_in_order(srv):
    reqs = []
    expect = []
    for i in range(10):
        reqs.append(get(f"/p{i}"))
        expect.append(("GET", f"GET /p{i} len=0\n".encode()))
    reqs.append(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\npayload")
    expect.append(("POST", b"payload"))
    reqs.append(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    expect.append(("POST", b"abcde"))
    reqs.append(get("/fixed", method=b"HEAD"))
    expect.append(("HEAD", b""))
    reqs.append(get("/stream?n=3"))
    expect.append(("GET", b"chunk-0\nchunk-1\nchunk-2\n"))
    reqs.append(get("/last", b"Connection: close\r\n"))
    expect.append(("GET", b"GET /last len=0\n"))
    s = srv.connect()
    try:
        s.sendall(b"".join(reqs))
        r = Reader(s)
        for method, body in expect:
            status, headers, got, _ = r.read_response(head=(method == "HEAD"))
            assert status == 200
            assert got == body
        assert r.closed_within(2)
    finally:
        s.close()


def test_pipelining_split_across_sends(srv):
    """Requests cut at arbitrary points (inside the request line, a field, the body)."""
    data = b"".join(get(f"/s{i}") for i in range(5)) + \
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world" + get("/end")
    s = srv.connect()
    try:
        for i in range(0, len(data), 7):
            s.sendall(data[i:i + 7])
            time.sleep(0.002)
        r = Reader(s)
        bodies = [r.read_response()[2] for _ in range(7)]
        assert bodies == [f"GET /s{i} len=0\n".encode() for i in range(5)] + [b"hello world", b"GET /end len=0\n"]
    finally:
        s.close()


def test_pipelining_many(srv):
    s = srv.connect()
    try:
        s.sendall(b"".join(get(f"/many{i}") for i in range(150)))
        r = Reader(s)
        for i in range(150):
            assert r.read_response()[2] == f"GET /many{i} len=0\n".encode()
    finally:
        s.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_unread_body_is_skipped_not_parsed(srv, framing):
    """When the app does not read the body, the server discards it: a body that looks like a
    request is never taken for one, and the next real request is answered."""
    inner = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    if framing == "chunked":
        head = b"POST /read-nothing HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    else:
        head = b"POST /read-nothing HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(inner)
        body = inner
    before = srv.record.read_text().splitlines()
    s = srv.connect()
    try:
        s.sendall(head + body + get("/after", b"Connection: close\r\n"))
        r = Reader(s)
        assert r.read_response()[2] == b"did not read\n"
        status, _, got, _ = r.read_response()
        assert status == 200 and got == b"GET /after len=0\n"
        assert r.closed_within(2)
    finally:
        s.close()
    assert srv.record.read_text().splitlines()[len(before):] == ["POST /read-nothing", "GET /after"]


# --------------------------------------------------------------------------- chunked

def test_chunked_request_body(srv):
    payload = [b"first chunk|", b"x" * 5000, b"|", b"\x00\xff\r\n binary"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payload)
    body += b"0\r\nX-Trailer: yes\r\n\r\n"
    s = srv.connect()
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        status, headers, got, _ = Reader(s).read_response()
        assert status == 200
        assert got == b"".join(payload)
    finally:
        s.close()


def test_chunked_request_body_byte_by_byte(srv):
    """The chunked decoder must cope with any split of its input."""
    body = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    s = srv.connect()
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(len(body)):
            s.sendall(body[i:i + 1])
            time.sleep(0.003)
        status, _, got, _ = Reader(s).read_response()
        assert status == 200 and got == b"hello world"
    finally:
        s.close()


def test_chunked_request_body_readline_iteration(srv):
    body = b"6\r\nline1\n\r\n8\r\nline2\nli\r\n4\r\nne3\n\r\n0\r\n\r\n"
    s = srv.connect()
    try:
        s.sendall(b"POST /echo-lines HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        status, _, got, _ = Reader(s).read_response()
        assert status == 200 and got == b"line1\nline2\nline3\n"
    finally:
        s.close()


@pytest.mark.parametrize("path,expected", [
    ("/stream?n=6", b"".join(b"chunk-%d\n" % i for i in range(6))),
    ("/nolength", b"generated body\n"),
    ("/write", b"written-1\nwritten-2\nreturned\n"),
])
def test_chunked_response(srv, path, expected):
    s = srv.connect()
    try:
        s.sendall(get(path) + get("/after"))
        r = Reader(s)
        status, headers, body, chunks = r.read_response()
        assert status == 200
        assert one(headers, "transfer-encoding") == "chunked"
        assert chunks is not None and all(chunks)  # no empty chunk before the last
        assert body == expected
        # the stream was terminated correctly: the next response follows at once
        assert r.read_response()[2] == b"GET /after len=0\n"
    finally:
        s.close()


def test_single_item_list_gets_content_length(srv):
    s = srv.connect()
    try:
        s.sendall(get("/cl") + get("/fixed"))
        r = Reader(s)
        status, headers, body, chunks = r.read_response()
        assert chunks is None and "transfer-encoding" not in headers
        assert one(headers, "content-length") == str(len(body)) and body == b"GET /cl len=0\n"
        status, headers, body, chunks = r.read_response()
        assert one(headers, "content-length") == "10" and body == b"fixed-body"
    finally:
        s.close()


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(srv, code):
    s = srv.connect()
    try:
        s.sendall(get(f"/status?code={code}") + get("/after"))
        r = Reader(s)
        status, headers, _, _ = r.read_response()
        assert status == code
        assert "transfer-encoding" not in headers
        assert r.buf.startswith(b"HTTP/1.1 ") or r.buf == b""
        assert r.read_response()[2] == b"GET /after len=0\n"
    finally:
        s.close()


# --------------------------------------------------------------------------- Expect: 100-continue

def _expect_head(path, length=5):
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
            f"Expect: 100-continue\r\n\r\n").encode()


def test_expect_100_sent_when_app_reads(srv):
    s = srv.connect()
    try:
        s.sendall(_expect_head("/expect"))
        r = Reader(s, timeout=3)
        status, _, line = r.read_head()
        assert status == 100, line
        assert line == "HTTP/1.1 100 Continue"
        s.sendall(b"hello")
        status, _, body, _ = r.read_response(skip_100=False)
        assert status == 200 and body == b"len=5\n"
    finally:
        s.close()


def test_expect_100_not_sent_when_app_does_not_read(srv):
    s = srv.connect()
    try:
        s.sendall(_expect_head("/read-nothing"))
        r = Reader(s, timeout=3)
        status, _, body, _ = r.read_response(skip_100=False)
        assert status == 200, "got %d before the final response" % status
        assert body == b"did not read\n"
        time.sleep(0.2)
        try:
            s.settimeout(0.2)
            extra = s.recv(100)
        except (socket.timeout, ConnectionResetError):
            extra = b""
        assert b"100 Continue" not in r.buf + extra
    finally:
        s.close()


def test_expect_ignored_for_http10(srv):
    """RFC 9110: a 100-continue expectation in an HTTP/1.0 request is ignored (no 100 sent)."""
    s = srv.connect()
    try:
        s.sendall(b"POST /expect HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        time.sleep(0.5)
        s.sendall(b"hello")
        status, _, body, _ = Reader(s, timeout=3).read_response(skip_100=False)
        assert status == 200 and body == b"len=5\n"
    finally:
        s.close()


def test_expect_100_not_sent_before_413(corsac, rec_env):
    rec, env = rec_env
    server = corsac("recorder:app", "--limit-request-body", "100", env=env)
    s = server.connect()
    try:
        s.sendall(_expect_head("/expect", length=101))
        r = Reader(s, timeout=3)
        status, headers, body, _ = r.read_response(skip_100=False)
        assert status == 413
        assert r.closed_within(2)
        assert rec.read_text() == ""
    finally:
        s.close()


# --------------------------------------------------------------------------- HEAD

def test_head_sends_no_body(srv):
    s = srv.connect()
    try:
        s.sendall(get("/hd", method=b"HEAD") + get("/fixed", method=b"HEAD")
                  + get("/stream", method=b"HEAD") + get("/hd"))
        r = Reader(s)
        status, h1, body, _ = r.read_response(head=True)
        assert status == 200
        assert r.buf == b"" or r.buf.startswith(b"HTTP/1.1 "), "HEAD wrote body bytes"
        cl_head = one(h1, "content-length")
        status, h2, _, _ = r.read_response(head=True)
        assert one(h2, "content-length") == "10"
        assert r.buf == b"" or r.buf.startswith(b"HTTP/1.1 ")
        status, h3, _, _ = r.read_response(head=True)
        assert status == 200
        assert r.buf == b"" or r.buf.startswith(b"HTTP/1.1 "), "HEAD of a streamed body wrote body bytes"
        status, h4, body, _ = r.read_response()
        assert body == b"GET /hd len=0\n"
        assert cl_head == str(len(b"HEAD /hd len=0\n")), "HEAD must carry the Content-Length GET would"
    finally:
        s.close()


# --------------------------------------------------------------------------- Date and Server

DATE_RE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"\d{4} \d{2}:\d{2}:\d{2} GMT")


@pytest.mark.parametrize("path", ["/", "/stream", "/status?code=204"])
def test_date_and_server_headers(srv, path):
    s = srv.connect()
    try:
        s.sendall(get(path))
        status, headers, _, _ = Reader(s).read_response()
        assert one(headers, "server") == "corsac"
        date = one(headers, "date")
        assert DATE_RE.fullmatch(date), date
        when = email.utils.parsedate_to_datetime(date).timestamp()
        assert abs(when - time.time()) < 5
    finally:
        s.close()


def test_app_date_not_duplicated(srv):
    s = srv.connect()
    try:
        s.sendall(get("/own-date"))
        _, headers, _, _ = Reader(s).read_response()
        assert headers["date"] == ["Thu, 01 Jan 2004 00:00:00 GMT"]
        assert one(headers, "server") == "corsac"
    finally:
        s.close()


# --------------------------------------------------------------------------- timeouts

def test_header_read_timeout_partial_head(corsac, rec_env):
    rec, env = rec_env
    server = corsac("recorder:app", "--header-read-timeout", "1", env=env)
    s = server.connect()
    try:
        t0 = time.monotonic()
        s.sendall(b"GET /partial HTTP/1.1\r\nHost: t\r\n")
        r = Reader(s, timeout=4)
        status, headers, _, _ = r.read_response()
        assert status == 408
        assert r.closed_within(2)
        assert time.monotonic() - t0 < 3
        assert rec.read_text() == ""
    finally:
        s.close()


def test_header_read_timeout_slowloris_trickle(corsac):
    """The timeout covers the whole head, not each recv: trickling bytes does not reset it."""
    server = corsac("recorder:app", "--header-read-timeout", "1")
    s = server.connect()
    head = b"GET /slowloris HTTP/1.1\r\nHost: t\r\n" + b"X-A: " + b"a" * 100
    got = b""
    t0 = time.monotonic()
    s.settimeout(0.25)
    try:
        for i in range(len(head)):
            try:
                s.sendall(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                b = s.recv(4096)
                got += b
                if not b:
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                break
            if b"\r\n\r\n" in got or time.monotonic() - t0 > 4:
                break
        elapsed = time.monotonic() - t0
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert elapsed < 3.5
    finally:
        s.close()


def test_silent_connection_closed_without_response(corsac):
    server = corsac("recorder:app", "--header-read-timeout", "1", "--timeout-keep-alive", "1")
    s = server.connect()
    try:
        t0 = time.monotonic()
        assert Reader(s).closed_within(4), "an idle fresh connection was not closed"
        assert time.monotonic() - t0 > 0.5
    finally:
        s.close()


@pytest.mark.parametrize("flag", ["--timeout-keep-alive", "--keep-alive"])
def test_idle_keepalive_closed(corsac, flag):
    server = corsac("recorder:app", flag, "1")
    s = server.connect()
    try:
        r = Reader(s)
        s.sendall(get("/a"))
        assert r.read_response()[0] == 200
        time.sleep(0.4)
        s.sendall(get("/b"))  # reused before the timeout: still served
        assert r.read_response()[0] == 200
        t0 = time.monotonic()
        assert r.closed_within(3), "idle keep-alive connection not closed"
        assert time.monotonic() - t0 > 0.6, "closed too early"
    finally:
        s.close()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_keepalive_timeout_not_applied_while_app_runs(corsac, threads):
    server = corsac("recorder:app", "--timeout-keep-alive", "1", "--threads", threads)
    s = server.connect()
    try:
        s.sendall(get("/slow?s=1.8"))
        status, _, body, _ = Reader(s).read_response()
        assert status == 200 and body == b"slow done\n"
    finally:
        s.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_read_timeout(corsac, rec_env, framing):
    """Client stalls mid-body while the app reads: the app's read raises, the client gets 408."""
    rec, env = rec_env
    server = corsac("recorder:app", "--body-read-timeout", "1", env=env)
    s = server.connect()
    try:
        if framing == "chunked":
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        else:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"b" * 10)
        t0 = time.monotonic()
        r = Reader(s, timeout=5)
        status, _, _, _ = r.read_response()
        assert status == 408
        assert r.closed_within(2)
        assert time.monotonic() - t0 < 4
    finally:
        s.close()
    assert rec.read_text() == ""
    status, body, _ = _timed_get(server, "/still-serving")
    assert status == 200


# --------------------------------------------------------------------------- body limits

def test_body_over_limit_content_length(corsac, rec_env):
    rec, env = rec_env
    server = corsac("recorder:app", "--limit-request-body", "100", env=env)
    s = server.connect()
    try:
        s.sendall(b"POST /over HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n")
        r = Reader(s, timeout=3)
        status, _, _, _ = r.read_response()
        assert status == 413
        assert r.closed_within(2)
    finally:
        s.close()
    s = server.connect()
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"z" * 100)
        status, _, body, _ = Reader(s).read_response()
        assert status == 200 and body == b"z" * 100
    finally:
        s.close()
    assert rec.read_text().splitlines() == ["POST /echo"]


def test_body_over_limit_chunked(corsac):
    server = corsac("recorder:app", "--limit-request-body", "100")
    s = server.connect()
    try:
        body = b"".join(b"32\r\n" + b"c" * 50 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        r = Reader(s, timeout=3)
        status, _, _, _ = r.read_response()
        assert status == 413
        assert r.closed_within(2)
    finally:
        s.close()
    s = server.connect()
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"32\r\n" + b"c" * 50 + b"\r\n0\r\n\r\n")
        status, _, body, _ = Reader(s).read_response()
        assert status == 200 and body == b"c" * 50
    finally:
        s.close()


# --------------------------------------------------------------------------- big bodies

def test_large_body_echo(srv):
    payload = os.urandom(5 * 1024 * 1024)
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=20)
    try:
        conn.request("POST", "/echo", body=payload)
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == payload
        # and chunked, on the same connection
        conn.request("POST", "/echo", body=iter([payload[i:i + 100000] for i in range(0, len(payload), 100000)]),
                     encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == payload
    finally:
        conn.close()


def test_large_response(srv):
    n = 8 * 1024 * 1024
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=20)
    try:
        conn.request("GET", f"/big?n={n}")
        r = conn.getresponse()
        assert r.getheader("Content-Length") == str(n)
        body = r.read()
        assert len(body) == n and body.count(b"x") == n
    finally:
        conn.close()


# --------------------------------------------------------------------------- concurrency

def _timed_get(server, path, timeout=3):
    t0 = time.monotonic()
    s = server.connect(timeout)
    try:
        s.sendall(get(path, b"Connection: close\r\n"))
        status, _, body, _ = Reader(s, timeout).read_response()
        return status, body, time.monotonic() - t0
    finally:
        s.close()


@pytest.mark.parametrize("body", ["list", "generator"])
@pytest.mark.parametrize("threads", ["1", "4"])
def test_slow_reading_client_does_not_block_others(corsac, threads, body):
    """A client that does not read its (large) response must not freeze the worker for the
    others, whichever thread runs the app."""
    srv = corsac("recorder:app", "--threads", threads)
    n = 32 * 1024 * 1024
    # a bounded receive window, set before connecting (the kernel may autotune it to tens of MB)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    hog.settimeout(5)
    hog.connect((srv.host, srv.port))
    try:
        hog.sendall(get(f"/big?n={n}" + ("&gen=1" if body == "generator" else "")))
        time.sleep(0.3)
        for i in range(5):
            status, body, elapsed = _timed_get(srv, f"/other{i}")
            assert status == 200 and body == f"GET /other{i} len=0\n".encode()
            assert elapsed < 2, "another client waited %.1fs behind a slow reader" % elapsed
        # the slow reader still gets its whole response
        r = Reader(hog, timeout=20)
        status, headers, body, _ = r.read_response()
        assert status == 200 and len(body) == n
    finally:
        hog.close()


def test_threads_slow_request_does_not_block_fast(corsac):
    server = corsac("recorder:app", "--threads", "4")
    result = {}

    def slow():
        result["slow"] = _timed_get(server, "/slow?s=2", timeout=6)

    t = threading.Thread(target=slow)
    t.start()
    try:
        time.sleep(0.3)
        for i in range(3):
            status, body, elapsed = _timed_get(server, f"/fast{i}")
            assert status == 200
            assert elapsed < 1, "fast request waited %.1fs behind /slow" % elapsed
        assert "slow" not in result, "the slow request finished too early to prove anything"
    finally:
        t.join(8)
    assert result["slow"][:2] == (200, b"slow done\n")


def test_threads_stalled_upload_does_not_block_others(corsac):
    """With --threads 4, a client that stalls in the middle of its body (the app is blocked reading it)
    does not stop other clients."""
    server = corsac("recorder:app", "--threads", "4")
    stall = server.connect()
    try:
        stall.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"s" * 10)
        time.sleep(0.3)
        for i in range(3):
            status, body, elapsed = _timed_get(server, f"/fast{i}")
            assert status == 200 and elapsed < 1
        stall.sendall(b"s" * 990)
        status, _, body, _ = Reader(stall).read_response()
        assert status == 200 and body == b"s" * 1000
    finally:
        stall.close()


def test_threads_many_concurrent_connections(corsac):
    server = corsac("recorder:app", "--threads", "4")
    socks = [server.connect() for _ in range(40)]
    try:
        for i, s in enumerate(socks):
            s.sendall(get(f"/c{i}"))
        for i, s in enumerate(socks):
            status, _, body, _ = Reader(s).read_response()
            assert status == 200 and body == f"GET /c{i} len=0\n".encode()
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- other clients

def test_httpx_client(srv):
    import httpx

    with httpx.Client(base_url=srv.url, timeout=5) as c:
        r = c.get("/hx")
        assert r.status_code == 200 and r.text == "GET /hx len=0\n"
        assert r.headers["server"] == "corsac"
        r = c.post("/echo", content=b"from httpx")
        assert r.content == b"from httpx"
        r = c.post("/echo", content=iter([b"part1-", b"part2"]))  # chunked upload
        assert r.content == b"part1-part2"
        r = c.get("/stream?n=4")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text == "chunk-0\nchunk-1\nchunk-2\nchunk-3\n"
        r = c.get("/headers", headers={"X-Custom": "v1", "X-Multi": "a"})
        env = r.json()
        assert env["HTTP_X_CUSTOM"] == "v1"
        ports = {c.get("/environ").json()["REMOTE_PORT"] for _ in range(4)}
        assert len(ports) == 1, "httpx connection was not kept alive"
        r = c.head("/fixed")
        assert r.headers["content-length"] == "10" and r.content == b""


CURL = shutil.which("curl")


def curl(*args, input=None):
    p = subprocess.run([CURL, "-sS", "--max-time", "10", *args], input=input,
                       capture_output=True, timeout=15)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_get_and_keepalive(srv):
    out = curl("-i", srv.url + "/curl")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nServer: corsac" in head or b"\r\nserver: corsac" in head
    assert body == b"GET /curl len=0\n"
    out = curl(srv.url + "/environ", srv.url + "/environ")
    first, second = out.split(b"}{")
    assert json.loads(first + b"}")["REMOTE_PORT"] == json.loads(b"{" + second)["REMOTE_PORT"]


@pytest.mark.skipif(CURL is None, reason="curl not installed")
def test_curl_upload_expect_and_chunked(srv, tmp_path):
    payload = os.urandom(300_000)
    f = tmp_path / "payload"
    f.write_bytes(payload)
    out = curl("-H", "Expect: 100-continue", "--expect100-timeout", "5",
               "--data-binary", f"@{f}", "-H", "Content-Type: application/octet-stream", srv.url + "/echo")
    assert out == payload
    out = curl("-T", "-", "-X", "POST", srv.url + "/echo", input=payload)  # stdin: chunked upload
    assert out == payload
    out = curl("--http1.0", srv.url + "/stream?n=3")
    assert out == b"chunk-0\nchunk-1\nchunk-2\n"


@pytest.mark.parametrize("threads", ["1", "4"])
def test_many_large_keepalive_responses_on_one_connection(corsac, threads):
    """Responses bigger than the output low-water mark, back to back on one connection: the
    connection must always go back to reading (a drained queue must not park it)."""
    srv = corsac("recorder:app", "--threads", threads)
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        for i in range(40):
            n = 100_000 + i * 7919
            conn.request("GET", f"/big?n={n}")
            r = conn.getresponse()
            assert r.status == 200 and len(r.read()) == n
            conn.request("POST", "/echo", body=b"y" * 70_000)
            r = conn.getresponse()
            assert r.status == 200 and r.read() == b"y" * 70_000
    finally:
        conn.close()
