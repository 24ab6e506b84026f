"""Malformed and request-smuggling inputs against the real server, over real sockets.

Each case checks three things: the status the server answers with, that the server
then closes the connection, and that the application never saw the request (the
recorder app appends one line per request it handled to a record file).  Two
servers are shared by the module: one with the default limits and one with small
limits; either is restarted if a case kills it (and that case fails)."""
import json
import socket
import time

import pytest

from conftest import Server, exchange, status_of

H = b"Host: x\r\n"


# --------------------------------------------------------------------------- helpers

def split_responses(data, head_requests=()):
    """Split raw bytes into [(status, headers{lower: [values]}, body)], plus leftover bytes.

    Understands Content-Length and chunked framing; stops at anything it cannot frame."""
    out = []
    i = 0
    while i < len(data):
        end = data.find(b"\r\n\r\n", i)
        if end < 0:
            break
        head = data[i:end].decode("latin-1").split("\r\n")
        status = status_of(data[i:end + 4])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        j = end + 4
        if len(out) in head_requests or status in (100, 204, 304):
            body = b""
        elif "content-length" in headers:
            n = int(headers["content-length"][0])
            body = data[j:j + n]
            j += n
        elif "chunked" in ",".join(headers.get("transfer-encoding", [])):
            body = b""
            while True:
                le = data.find(b"\r\n", j)
                if le < 0:
                    break
                size = int(data[j:le].split(b";")[0], 16)
                body += data[le + 2:le + 2 + size]
                j = le + 2 + size + 2
                if size == 0:
                    break
        else:
            body = data[j:]
            j = len(data)
        out.append((status, headers, body))
        i = j
    return out, data[i:]


def _start(tmp, name, args):
    rec = tmp / f"{name}.record"
    rec.write_text("")
    srv = Server("recorder:app", args, env={"CORSAC_TEST_RECORD": str(rec)}, tmp_path=tmp)
    srv.record = rec
    return srv


class _Pool:
    """Module-wide servers, restarted when a case has killed one."""

    CONFIGS = {
        "default": [],
        "limited": ["--limit-request-line", "200", "--limit-request-fields", "20",
                    "--limit-request-field-size", "200", "--limit-request-body", "1000"],
    }

    def __init__(self, tmp):
        self.tmp = tmp
        self.servers = {}

    def get(self, name):
        srv = self.servers.get(name)
        if srv is None or srv.proc.poll() is not None:
            if srv is not None:
                srv.stop()
            srv = self.servers[name] = _start(self.tmp, name, self.CONFIGS[name])
        return srv

    def close(self):
        for srv in self.servers.values():
            srv.stop()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = _Pool(tmp_path_factory.mktemp("malformed"))
    yield p
    p.close()


def records(srv):
    return srv.record.read_text(encoding="latin-1").splitlines()


def check_rejected(srv, data, expected, timeout=3.0):
    before = records(srv)
    resp, closed = exchange(srv, data, timeout)
    assert status_of(resp) == expected, f"expected {expected}, got {resp[:300]!r}"
    responses, rest = split_responses(resp)
    assert len(responses) == 1 and rest == b"", f"expected exactly one response, got {resp[:600]!r}"
    assert closed, "server did not close the connection after the error response"
    time.sleep(0.02)
    new = records(srv)[len(before):]
    assert new == [], f"the application was called: {new}"
    assert srv.proc.poll() is None, "server process died"
    return responses[0]


# --------------------------------------------------------------------------- the table

def req(head_lines, body=b"", first=b"GET / HTTP/1.1"):
    return first + b"\r\n" + b"".join(line + b"\r\n" for line in head_lines) + b"\r\n" + body


def chunked(body):
    return req([b"Host: x", b"Transfer-Encoding: chunked"], body, first=b"POST /c HTTP/1.1")


CASES = [
    # bare LF / bare CR anywhere in the head
    ("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("bare-lf-after-field", b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    ("bare-lf-final-line", b"GET / HTTP/1.1\r\nHost: x\r\n\n", 400),
    ("bare-cr-after-request-line", b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
    ("bare-cr-in-value", req([b"Host: x", b"X-A: a\rb"]), 400),
    ("bare-cr-before-crlf", req([b"Host: x", b"X-A: 1\r"]), 400),
    # whitespace between field name and colon
    ("space-before-colon", req([b"Host: x", b"X-A : 1"]), 400),
    ("tab-before-colon", req([b"Host: x", b"X-A\t: 1"]), 400),
    ("space-before-colon-host", req([b"Host : x"]), 400),
    ("space-before-colon-te", req([b"Host: x", b"Content-Length: 5", b"Transfer-Encoding : chunked"],
                                  b"0\r\n\r\n", first=b"POST / HTTP/1.1"), 400),
    # obs-fold (line folding) and a first field line starting with whitespace
    ("obs-fold-space", req([b"Host: x", b"X-A: 1", b" 2"]), 400),
    ("obs-fold-tab", req([b"Host: x", b"X-A: 1", b"\t2"]), 400),
    ("obs-fold-transfer-encoding", req([b"Host: x", b"Transfer-Encoding:", b" chunked"],
                                       b"0\r\n\r\n", first=b"POST / HTTP/1.1"), 400),
    ("whitespace-before-first-field", req([b" Host: x"]), 400),
    # Content-Length and Transfer-Encoding together
    ("cl-then-te", req([b"Host: x", b"Content-Length: 5", b"Transfer-Encoding: chunked"],
                       b"0\r\n\r\n", first=b"POST / HTTP/1.1"), 400),
    ("te-then-cl", req([b"Host: x", b"Transfer-Encoding: chunked", b"Content-Length: 5"],
                       b"0\r\n\r\n", first=b"POST / HTTP/1.1"), 400),
    # bad Content-Length
    ("cl-duplicate-same", req([b"Host: x", b"Content-Length: 5", b"Content-Length: 5"], b"hello",
                              first=b"POST / HTTP/1.1"), 400),
    ("cl-duplicate-different", req([b"Host: x", b"Content-Length: 5", b"Content-Length: 6"], b"hello!",
                                   first=b"POST / HTTP/1.1"), 400),
    ("cl-list-in-one-field", req([b"Host: x", b"Content-Length: 5, 5"], b"hello",
                                 first=b"POST / HTTP/1.1"), 400),
    ("cl-letters", req([b"Host: x", b"Content-Length: abc"], first=b"POST / HTTP/1.1"), 400),
    ("cl-negative", req([b"Host: x", b"Content-Length: -1"], first=b"POST / HTTP/1.1"), 400),
    ("cl-plus-sign", req([b"Host: x", b"Content-Length: +5"], b"hello", first=b"POST / HTTP/1.1"), 400),
    ("cl-hex", req([b"Host: x", b"Content-Length: 0x5"], b"hello", first=b"POST / HTTP/1.1"), 400),
    ("cl-decimal-point", req([b"Host: x", b"Content-Length: 5.0"], b"hello", first=b"POST / HTTP/1.1"), 400),
    ("cl-empty", req([b"Host: x", b"Content-Length:"], first=b"POST / HTTP/1.1"), 400),
    ("cl-inner-space", req([b"Host: x", b"Content-Length: 1 2"], b"x" * 12, first=b"POST / HTTP/1.1"), 400),
    ("cl-overflow", req([b"Host: x", b"Content-Length: 99999999999999999999999999"],
                        first=b"POST / HTTP/1.1"), 400),
    # Transfer-Encoding other than exactly "chunked"
    ("te-gzip-chunked", req([b"Host: x", b"Transfer-Encoding: gzip, chunked"], b"0\r\n\r\n",
                            first=b"POST / HTTP/1.1"), 400),
    ("te-chunked-gzip", req([b"Host: x", b"Transfer-Encoding: chunked, gzip"], b"0\r\n\r\n",
                            first=b"POST / HTTP/1.1"), 400),
    ("te-identity", req([b"Host: x", b"Transfer-Encoding: identity"], first=b"POST / HTTP/1.1"), 400),
    ("te-chunked-twice-in-list", req([b"Host: x", b"Transfer-Encoding: chunked, chunked"], b"0\r\n\r\n",
                                     first=b"POST / HTTP/1.1"), 400),
    ("te-two-fields", req([b"Host: x", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                          b"0\r\n\r\n", first=b"POST / HTTP/1.1"), 400),
    ("te-xchunked", req([b"Host: x", b"Transfer-Encoding: xchunked"], b"0\r\n\r\n",
                        first=b"POST / HTTP/1.1"), 400),
    ("te-empty", req([b"Host: x", b"Transfer-Encoding:"], first=b"POST / HTTP/1.1"), 400),
    ("te-in-http10", req([b"Transfer-Encoding: chunked"], b"0\r\n\r\n", first=b"POST / HTTP/1.0"), 400),
    # Host
    ("host-missing", req([]), 400),
    ("host-missing-absolute-form", req([], first=b"GET http://x/ HTTP/1.1"), 400),
    ("host-repeated-same", req([b"Host: x", b"Host: x"]), 400),
    ("host-repeated-different", req([b"Host: x", b"Host: y"]), 400),
    # request-target
    ("target-relative", req([H.strip()], first=b"GET foo HTTP/1.1"), 400),
    ("target-asterisk-with-get", req([H.strip()], first=b"GET * HTTP/1.1"), 400),
    ("target-authority-with-get", req([H.strip()], first=b"GET example.com:80 HTTP/1.1"), 400),
    ("target-empty", req([H.strip()], first=b"GET  HTTP/1.1"), 400),
    ("target-ctl-byte", req([H.strip()], first=b"GET /a\x01b HTTP/1.1"), 400),
    ("target-nul-byte", req([H.strip()], first=b"GET /a\x00b HTTP/1.1"), 400),
    ("target-del-byte", req([H.strip()], first=b"GET /a\x7fb HTTP/1.1"), 400),
    ("target-tab", req([H.strip()], first=b"GET /a\tb HTTP/1.1"), 400),
    ("target-non-ascii", req([H.strip()], first=b"GET /caf\xc3\xa9 HTTP/1.1"), 400),
    # NUL / CTL bytes in field values
    ("value-nul", req([b"Host: x", b"X-A: a\x00b"]), 400),
    ("value-ctl-01", req([b"Host: x", b"X-A: a\x01b"]), 400),
    ("value-esc", req([b"Host: x", b"X-A: a\x1bb"]), 400),
    ("value-del", req([b"Host: x", b"X-A: a\x7fb"]), 400),
    ("host-value-nul", req([b"Host: x\x00y"]), 400),
    # chunked framing
    ("chunk-size-not-hex", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x-prefix", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-empty-name", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-space-in-name", chunked(b"5;a b\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-unterminated-quote", chunked(b"5;a=\"b\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-ext-ctl", chunked(b"5;a=\x01\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-no-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), 400),
    ("chunk-data-longer-than-size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-bare-lf-after-size", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-bare-lf-after-data", chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
    # trailers
    ("trailer-content-length", chunked(b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"), 400),
    ("trailer-transfer-encoding", chunked(b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
    ("trailer-host", chunked(b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"), 400),
    ("trailer-bad-name", chunked(b"5\r\nhello\r\n0\r\nX Y: 1\r\n\r\n"), 400),
    # method and field-name tokens
    ("method-paren", req([H.strip()], first=b"G(ET / HTTP/1.1"), 400),
    ("method-at-sign", req([H.strip()], first=b"GE@T / HTTP/1.1"), 400),
    ("method-empty", req([H.strip()], first=b" / HTTP/1.1"), 400),
    ("method-ctl", req([H.strip()], first=b"GE\x01T / HTTP/1.1"), 400),
    ("method-non-ascii", req([H.strip()], first=b"G\xc3\x89T / HTTP/1.1"), 400),
    ("name-space-inside", req([b"Host: x", b"X A: 1"]), 400),
    ("name-paren", req([b"Host: x", b"X(A): 1"]), 400),
    ("name-slash", req([b"Host: x", b"X/A: 1"]), 400),
    ("name-empty", req([b"Host: x", b": 1"]), 400),
    ("name-non-ascii", req([b"Host: x", b"X\xc3\xa9: 1"]), 400),
    ("field-without-colon", req([b"Host: x", b"NoColonHere"]), 400),
    # HTTP-version
    ("version-lowercase", req([H.strip()], first=b"GET / http/1.1"), 400),
    ("version-garbage", req([H.strip()], first=b"GET / HTX/1.1"), 400),
    ("version-missing", req([H.strip()], first=b"GET /"), 400),
    ("version-2.0", req([H.strip()], first=b"GET / HTTP/2.0"), 505),
    ("version-1.2", req([H.strip()], first=b"GET / HTTP/1.2"), 505),
    ("version-3.0", req([H.strip()], first=b"GET / HTTP/3.0"), 505),
]

LIMIT_CASES = [
    # default limits: request line 8190, 100 fields, 8190 bytes per field
    ("default-line-too-long", "default",
     req([H.strip()], first=b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 414),
    ("default-line-too-long-unfinished", "default", b"GET /" + b"a" * 10000, 414),
    ("default-too-many-fields", "default",
     req([H.strip()] + [b"X-F%d: %d" % (i, i) for i in range(100)]), 431),
    ("default-field-too-long", "default", req([H.strip(), b"X-A: " + b"v" * 9000]), 431),
    ("default-field-too-long-unfinished", "default", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"v" * 10000, 431),
    # small limits: --limit-request-line 200 --limit-request-fields 20
    #               --limit-request-field-size 200 --limit-request-body 1000
    ("limited-line-201", "limited",
     req([H.strip()], first=b"GET /" + b"a" * (201 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"), 414),
    ("limited-21-fields", "limited", req([H.strip()] + [b"X-F%d: 1" % i for i in range(20)]), 431),
    ("limited-field-201", "limited", req([H.strip(), b"X-A: " + b"v" * (201 - 5)]), 431),
    ("limited-body-1001", "limited", req([H.strip(), b"Content-Length: 1001"], first=b"POST / HTTP/1.1"), 413),
    ("limited-body-huge", "limited",
     req([H.strip(), b"Content-Length: 1000000000000"], first=b"POST / HTTP/1.1"), 413),
]


@pytest.mark.parametrize("data,expected", [pytest.param(d, e, id=i) for i, d, e in CASES])
def test_rejected(pool, data, expected):
    check_rejected(pool.get("default"), data, expected)


@pytest.mark.parametrize("which,data,expected",
                         [pytest.param(w, d, e, id=i) for i, w, d, e in LIMIT_CASES])
def test_limit_rejected(pool, which, data, expected):
    check_rejected(pool.get(which), data, expected)


# --------------------------------------------------------------------------- the other side of each limit

def test_sanity_valid_request_is_recorded(pool):
    """Without this the "app was not called" checks above would prove nothing."""
    srv = pool.get("default")
    before = records(srv)
    resp, _ = exchange(srv, req([H.strip(), b"Connection: close"], first=b"GET /sanity HTTP/1.1"))
    assert status_of(resp) == 200, resp
    assert records(srv)[len(before):] == ["GET /sanity"]


def test_limits_are_inclusive(pool):
    """Exactly at each limit is accepted: line of 200 bytes, 20 fields, a 200-byte field, 1000-byte body."""
    srv = pool.get("limited")
    line = b"GET /" + b"a" * (200 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 200
    cases = {
        "line-200": req([H.strip(), b"Connection: close"], first=line),
        "20-fields": req([H.strip(), b"Connection: close"] + [b"X-F%d: 1" % i for i in range(18)]),
        "field-200": req([H.strip(), b"Connection: close", b"X-A: " + b"v" * (200 - 5)]),
        "body-1000": req([H.strip(), b"Connection: close", b"Content-Length: 1000"], b"b" * 1000,
                         first=b"POST /body HTTP/1.1"),
    }
    got = {}
    for name, data in cases.items():
        resp, _ = exchange(srv, data)
        got[name] = status_of(resp)
    assert got == {name: 200 for name in cases}


ACCEPTED = [
    ("tab-in-value", req([H.strip(), b"X-A: a\tb"])),
    ("obs-text-in-value", req([H.strip(), b"X-A: caf\xe9"])),
    ("empty-value", req([H.strip(), b"X-A:"])),
    ("no-space-after-colon", req([b"Host:x", b"X-A:1"])),
    ("empty-line-before-request", b"\r\n" + req([H.strip()])),
    ("options-asterisk", req([H.strip()], first=b"OPTIONS * HTTP/1.1")),
    ("absolute-form", req([H.strip()], first=b"GET http://x/abs?q=1 HTTP/1.1")),
    ("http10-without-host", req([], first=b"GET / HTTP/1.0")),
    ("extension-method", req([H.strip()], first=b"FOO-BAR /m HTTP/1.1")),
    ("odd-but-legal-target", req([H.strip()], first=b"GET /a;b=c/%20d/~e!$&'()*+,=:@?x=/?&y= HTTP/1.1")),
    ("chunk-extension", chunked(b"5;name=value;q=\"quoted\"\r\nhello\r\n0\r\n\r\n")),
    ("chunk-size-leading-zeros", chunked(b"0005\r\nhello\r\n0\r\n\r\n")),
    ("chunk-size-uppercase-hex", chunked(b"A\r\n0123456789\r\n0\r\n\r\n")),
    ("chunked-with-trailer", chunked(b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")),
    ("content-length-zero", req([H.strip(), b"Content-Length: 0"], first=b"POST / HTTP/1.1")),
    ("content-length-leading-zeros", req([H.strip(), b"Content-Length: 005"], b"hello",
                                         first=b"POST / HTTP/1.1")),
]


@pytest.mark.parametrize("data", [pytest.param(d, id=i) for i, d in ACCEPTED])
def test_accepted(pool, data):
    """Unusual but valid requests: answered 200 and seen by the app (the parser is not over-strict)."""
    srv = pool.get("default")
    before = records(srv)
    s = srv.connect(3)
    try:
        s.sendall(data)
        s.settimeout(3)
        buf = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            responses, _ = split_responses(buf)
            if responses:
                break
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                break
            buf += b
    finally:
        s.close()
    assert status_of(buf) == 200, buf[:300]
    time.sleep(0.02)
    assert len(records(srv)[len(before):]) == 1


# --------------------------------------------------------------------------- error response format

@pytest.mark.parametrize("which,data,expected", [
    pytest.param("default", req([]), 400, id="400"),
    pytest.param("default", req([H.strip()], first=b"GET / HTTP/2.0"), 505, id="505"),
    pytest.param("limited", req([H.strip()], first=b"GET /" + b"a" * 300 + b" HTTP/1.1"), 414, id="414"),
    pytest.param("limited", req([H.strip(), b"X-A: " + b"v" * 300]), 431, id="431"),
    pytest.param("limited", req([H.strip(), b"Content-Length: 5000"], first=b"POST / HTTP/1.1"), 413, id="413"),
])
def test_error_response_format(pool, which, data, expected):
    """status line, Content-Type text/plain utf-8, correct Content-Length, Connection: close,
    Server: corsac, a Date, and a short text body."""
    status, headers, body = check_rejected(pool.get(which), data, expected)
    assert headers.get("content-type") == ["text/plain; charset=utf-8"]
    assert headers.get("content-length") == [str(len(body))]
    assert [v.lower() for v in headers.get("connection", [])] == ["close"]
    assert headers.get("server") == ["corsac"]
    assert len(headers.get("date", [])) == 1
    assert 0 < len(body) < 512
    body.decode("utf-8")
    assert b"Traceback" not in body


# --------------------------------------------------------------------------- smuggling with a pipelined request

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING = [
    ("cl-te", req([H.strip(), b"Content-Length: %d" % (5 + len(SMUGGLED)), b"Transfer-Encoding: chunked"],
                  b"0\r\n\r\n" + SMUGGLED, first=b"POST /a HTTP/1.1")),
    ("te-cl", req([H.strip(), b"Transfer-Encoding: chunked", b"Content-Length: 4"],
                  b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n", first=b"POST /a HTTP/1.1")),
    ("te-space-before-colon", req([H.strip(), b"Transfer-Encoding : chunked", b"Content-Length: 5"],
                                  b"0\r\n\r\n" + SMUGGLED, first=b"POST /a HTTP/1.1")),
    ("te-obs-fold", req([H.strip(), b"Transfer-Encoding: identity", b" chunked"],
                        b"0\r\n\r\n" + SMUGGLED, first=b"POST /a HTTP/1.1")),
    ("te-list", req([H.strip(), b"Transfer-Encoding: chunked, identity"],
                    b"0\r\n\r\n" + SMUGGLED, first=b"POST /a HTTP/1.1")),
    ("te-http10", req([b"Transfer-Encoding: chunked", b"Connection: keep-alive"],
                      b"0\r\n\r\n" + SMUGGLED, first=b"POST /a HTTP/1.0")),
    ("cl-duplicate", req([H.strip(), b"Content-Length: 0", b"Content-Length: %d" % len(SMUGGLED)],
                         SMUGGLED, first=b"POST /a HTTP/1.1")),
    ("cl-list", req([H.strip(), b"Content-Length: 0, %d" % len(SMUGGLED)],
                    SMUGGLED, first=b"POST /a HTTP/1.1")),
    ("bare-lf-hides-request", b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bad-chunk-size", req([H.strip(), b"Transfer-Encoding: chunked"],
                           b"1;\r\nx\r\n0\r\n\r\n" + SMUGGLED, first=b"POST /echo HTTP/1.1")),
    ("chunk-too-long", req([H.strip(), b"Transfer-Encoding: chunked"],
                           b"1\r\nxy\r\n0\r\n\r\n" + SMUGGLED, first=b"POST /echo HTTP/1.1")),
    ("bad-trailer", req([H.strip(), b"Transfer-Encoding: chunked"],
                        b"0\r\nContent-Length: 10\r\n\r\n" + SMUGGLED, first=b"POST /echo HTTP/1.1")),
]


@pytest.mark.parametrize("data", [pytest.param(d, id=i) for i, d in SMUGGLING])
def test_smuggled_request_never_answered(pool, data):
    srv = pool.get("default")
    before = records(srv)
    resp, closed = exchange(srv, data)
    responses, _ = split_responses(resp)
    assert [r[0] for r in responses] == [400], resp[:600]
    assert b"/smuggled" not in resp
    assert closed
    time.sleep(0.02)
    new = records(srv)[len(before):]
    assert not any("smuggled" in line for line in new), new
    assert new == [], new


def test_valid_then_smuggling_then_valid(pool):
    """A valid request before the bad one is answered; nothing after the bad one is."""
    srv = pool.get("default")
    before = records(srv)
    data = (b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            + req([H.strip(), b"Content-Length: 3", b"Transfer-Encoding: chunked"], b"0\r\n\r\n",
                  first=b"POST /bad HTTP/1.1")
            + SMUGGLED)
    resp, closed = exchange(srv, data)
    responses, rest = split_responses(resp)
    assert [r[0] for r in responses] == [200, 400], resp[:600]
    assert responses[0][2] == b"GET /first len=0\n"
    assert b"/smuggled" not in resp
    assert closed
    time.sleep(0.02)
    assert records(srv)[len(before):] == ["GET /first"]


# --------------------------------------------------------------------------- underscores in field names

def _headers_of(srv, fields):
    resp, _ = exchange(srv, req([H.strip(), b"Connection: close"] + fields, first=b"GET /headers HTTP/1.1"))
    responses, _ = split_responses(resp)
    assert responses and responses[0][0] == 200, resp[:300]
    return json.loads(responses[0][2])


def test_underscore_field_dropped(pool):
    srv = pool.get("default")
    before = records(srv)
    env = _headers_of(srv, [b"X_Foo: 1", b"X-Bar: 2"])
    assert "HTTP_X_FOO" not in env
    assert env.get("HTTP_X_BAR") == "2"
    assert records(srv)[len(before):] == ["GET /headers"]


@pytest.mark.parametrize("order", ["dash-first", "underscore-first"])
def test_underscore_cannot_pose_as_dash(pool, order):
    srv = pool.get("default")
    fields = [b"X-Foo: dash", b"X_Foo: underscore"]
    if order == "underscore-first":
        fields.reverse()
    env = _headers_of(srv, fields)
    assert env.get("HTTP_X_FOO") == "dash"


def test_underscore_content_length_ignored(pool):
    """Content_Length must not frame a body: the next bytes are a second request."""
    srv = pool.get("default")
    data = (b"POST /u HTTP/1.1\r\nHost: x\r\nContent_Length: 33\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    resp, _ = exchange(srv, data)
    responses, _ = split_responses(resp)
    assert [(r[0], r[2]) for r in responses] == [(200, b"POST /u len=0\n"), (200, b"GET /after len=0\n")]
