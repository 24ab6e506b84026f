"""WebSockets of real ASGI frameworks (Starlette, FastAPI, Quart) behind the real `corsac`.

Apps: tests/apps/starlette_ws_app.py, fastapi_ws_app.py, quart_ws_app.py.  Clients are
the `websockets` library's sync client (with and without permessage-deflate) and raw
sockets where the HTTP answer to a refused handshake matters.  Every test runs under
both event loops (`--loop asyncio` and `--loop uvloop`); one server per (app, loop)
is shared by the module.  The apps write marker files (disconnect codes, dependency
clean-up) into CORSAC_TEST_DIR, which the tests poll.

CORSAC_WS_TEST_SERVER=uvicorn runs the same tests against uvicorn (`--ws websockets`),
the reference these tests were checked against."""
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from conftest import APPS as APP_DIR, Server, read_until_close, status_of  # noqa: E402

APPS = {
    "starlette": "starlette_ws_app:app",
    "fastapi": "fastapi_ws_app:app",
    "quart": "quart_ws_app:app",
}
LOOPS = ["asyncio", "uvloop"]
REFERENCE = os.environ.get("CORSAC_WS_TEST_SERVER", "corsac")
# generous: the first test of each (app, loop) also starts its server
pytestmark = pytest.mark.timeout(30)
ERRORS = ("Exception in ASGI application", "Traceback", "Error handling request")
T = 5.0     # every single wait on the network


def allow_app_errors(fn):
    """The test provokes errors inside the app."""
    fn.allow_app_errors = True
    return fn


class Uvicorn:
    """The reference server, with the interface of conftest.Server that these tests use."""

    def __init__(self, app, loop, env, tmp_path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host, self.app, self.args = "127.0.0.1", app, ["--loop", loop]
        self.logpath = Path(tmp_path) / f"uvicorn-{app.replace(':', '_')}-{loop}.log"
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "uvicorn"), app, "--app-dir", str(APP_DIR),
             "--port", str(self.port), "--ws", "websockets", "--loop", loop],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if "Uvicorn running on" in self.log():
                return
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise RuntimeError(self.log())

    url = property(lambda self: f"http://{self.host}:{self.port}")
    log = Server.log
    connect = Server.connect

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    d = tmp_path_factory.mktemp("ws_frameworks")
    (d / "markers").mkdir()
    return d


@pytest.fixture(scope="module")
def servers(markers):
    """get(app_key, loop) -> a running server, started on first use."""
    made, dead = {}, []

    def get(key, loop):
        s = made.get((key, loop))
        if s is not None and s.proc.poll() is not None:
            dead.append(s)          # reported at teardown; start a fresh one meanwhile
            s = None
        if s is None:
            env = {"CORSAC_TEST_DIR": str(markers / "markers")}
            if REFERENCE == "uvicorn":
                s = Uvicorn(APPS[key], loop, env, markers)
            else:
                s = Server(APPS[key], ["--loop", loop], env=env, tmp_path=markers)
            made[(key, loop)] = s
        s.framework, s.loop = key, loop
        return s
    yield get
    for s in made.values():
        if s.proc.poll() is not None:
            dead.append(s)
        s.stop()
    assert not dead, "a server died during the tests:\n" + "\n".join(
        f"{d.app} {d.args} rc={d.proc.returncode}\n{d.log()[-3000:]}" for d in dead)


@pytest.fixture(params=LOOPS)
def loop(request):
    return request.param


def _serve(request, servers, key, loop):
    s = servers(key, loop)
    start = len(s.log())
    yield s
    if not getattr(request.function, "allow_app_errors", False):
        new = s.log()[start:]
        for e in ERRORS:
            assert e not in new, f"{key} ({loop}) logged an error:\n{new[-3000:]}"


@pytest.fixture
def sws(request, servers, loop):
    yield from _serve(request, servers, "starlette", loop)


@pytest.fixture
def fws(request, servers, loop):
    yield from _serve(request, servers, "fastapi", loop)


@pytest.fixture
def qws(request, servers, loop):
    yield from _serve(request, servers, "quart", loop)


@pytest.fixture
def marker_dir(markers):
    return markers / "markers"


def ws_connect(server, path, **kw):
    kw.setdefault("open_timeout", T)
    kw.setdefault("close_timeout", T)
    kw.setdefault("max_size", 16 * 1024 * 1024)
    # legacy=True: a connection right away (the handshake is done on return), no
    # reconnecting iterator; the tests close what they open
    return connect(f"ws://{server.host}:{server.port}{path}", proxy=None, legacy=True, **kw)


def recv(ws):
    return ws.recv(timeout=T)


def recv_json(ws):
    msg = recv(ws)
    assert isinstance(msg, str), msg
    return json.loads(msg)


def expect_closed(ws):
    """Wait until the server closes; returns the close frame it sent (None if none)."""
    with pytest.raises(ConnectionClosed) as ei:
        while True:
            got = ws.recv(timeout=T)
            raise AssertionError(f"expected the close, got a message: {got!r}")
    return ei.value.rcvd


def refused(server, path, **kw):
    """The handshake is answered with an HTTP status: returns the response."""
    with pytest.raises(InvalidStatus) as ei:
        ws_connect(server, path, **kw).close()
    return ei.value.response


def raw_handshake(server, path, extra=b""):
    """A handshake over a raw socket; returns everything until the server closes."""
    key = base64.b64encode(os.urandom(16))
    req = (f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n".encode()
           + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           + b"Sec-WebSocket-Key: " + key + b"\r\n" + extra + b"\r\n")
    s = server.connect(T)
    try:
        s.sendall(req)
        return read_until_close(s, T)
    finally:
        s.close()


def split_response(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:500]
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    return status_of(raw), headers, body


def drop(ws):
    """Leave without a close frame: the TCP connection just goes away."""
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()


def wait_file(path, timeout=3.0, until=None):
    """Content of `path` once it exists (and `until(content)` holds), else None."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            text = path.read_text()
            if until is None or until(text):
                return text
        if time.monotonic() > deadline:
            return path.read_text() if path.exists() else None
        time.sleep(0.02)


def loop_matches(loop, name):
    return name.startswith("uvloop.") if loop == "uvloop" else name.startswith("asyncio.")


# --- Starlette ------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["deflate", None])
def test_starlette_echo_text_and_bytes(sws, compression):
    rnd = random.Random(77)
    texts = ["hello", "", "žluťoučký kůň ☃ 🐎", "x" * 125, "y" * 126, "z" * 65536,
             "".join(rnd.choice("abcdefžš☃") for _ in range(300_000))]
    blobs = [b"\x00\xff", b"", rnd.randbytes(70_000), rnd.randbytes(2 * 1024 * 1024)]
    with ws_connect(sws, "/ws/echo", compression=compression) as ws:
        for t in texts:
            ws.send(t)
            got = recv(ws)
            assert isinstance(got, str) and got == t, (len(got), len(t))
        for b in blobs:
            ws.send(b)
            got = recv(ws)
            assert isinstance(got, bytes) and got == b, (len(got), len(b))
        # many small messages in flight at once keep their order and kind
        for i in range(200):
            ws.send(f"m{i}" if i % 2 else f"b{i}".encode())
        for i in range(200):
            assert recv(ws) == (f"m{i}" if i % 2 else f"b{i}".encode())
        # a fragmented message from the client arrives whole
        ws.send(iter(["frag", "ment", "ed ☃"]))
        assert recv(ws) == "fragmented ☃"
        ws.send(iter([b"ab", b"", b"cd"]))
        assert recv(ws) == b"abcd"
        # pings from the client are answered by the server itself
        assert ws.ping(b"are you there").wait(T)
        if compression:
            ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ext.startswith("permessage-deflate"), ws.response.headers
        else:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.close()
    assert ws.close_code == 1000


@pytest.mark.parametrize("mode", ["text", "binary"])
def test_starlette_json(sws, loop, mode):
    payload = {"a": [1, 2, {"b": None}], "s": "ünïcødé ☃", "big": "q" * 10_000}
    with ws_connect(sws, f"/ws/json?mode={mode}") as ws:
        for i in range(3):
            msg = json.dumps({**payload, "i": i})
            ws.send(msg if mode == "text" else msg.encode())
            got = recv(ws)
            assert isinstance(got, str if mode == "text" else bytes)
            got = json.loads(got)
            assert got["got"] == {**payload, "i": i} and got["mode"] == mode
            assert loop_matches(loop, got["loop"]), got


@pytest.mark.parametrize("how,code", [("normal", 1000), ("custom", 4003), ("no-code", 1005),
                                      ("going-away", 1001), ("drop", 1006)])
def test_starlette_endpoint_lifecycle(sws, marker_dir, how, code):
    token = uuid.uuid4().hex
    ws = ws_connect(sws, f"/ws/endpoint?token={token}")
    try:
        assert recv(ws) == "welcome"            # on_connect
        for i, word in enumerate(["one", "dva", "tři"], 1):
            ws.send(word)
            assert recv(ws) == f"{i}:{word.upper()}"   # on_receive
        assert not (marker_dir / f"endpoint-{token}").exists()
        if how == "drop":
            drop(ws)
        elif how == "no-code":
            ws.close(code=None)
        else:
            ws.close(code=code, reason=how)
    finally:
        ws.close()
    if how not in ("drop",):
        # the server answered the close with the same code (RFC 6455 5.5.1)
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == code
    got = wait_file(marker_dir / f"endpoint-{token}")
    assert got == f"{code} 3", f"on_disconnect saw {got!r}, expected code {code}"


@pytest.mark.parametrize("code,reason", [(4001, "x"), (1000, ""), (1008, "policy"),
                                         (3333, "žluťoučký kůň " * 6), (4999, "r" * 123)],
                         ids=["4001", "1000", "1008", "3333-utf8", "4999-max-reason"])
def test_starlette_close_from_app(sws, marker_dir, code, reason):
    assert len(reason.encode()) <= 123
    token = uuid.uuid4().hex
    q = httpx.QueryParams({"code": code, "reason": reason, "token": token})
    with ws_connect(sws, f"/ws/close?{q}") as ws:
        ws.send("hi")
        assert recv(ws) == "closing after hi"
        rcvd = expect_closed(ws)
    assert rcvd is not None, "no close frame from the server"
    assert (rcvd.code, rcvd.reason) == (code, reason)
    assert ws.close_code == code and ws.close_reason == reason
    # the client's answer completes the handshake: the app's next receive() ends it
    got = wait_file(marker_dir / f"close-{token}")
    assert got is not None, "the app never heard the disconnect after its close"
    assert json.loads(got)["type"] == "websocket.disconnect", got


def test_starlette_subprotocol(sws):
    with ws_connect(sws, "/ws/subprotocol", subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert recv_json(ws) == {"offered": ["chat.v1", "chat.v2"], "chosen": "chat.v2"}
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat.v2"
        assert expect_closed(ws).code == 1000
    with ws_connect(sws, "/ws/subprotocol", subprotocols=["chat.v1"]) as ws:
        assert recv_json(ws)["chosen"] == "chat.v1" and ws.subprotocol == "chat.v1"
    with ws_connect(sws, "/ws/subprotocol") as ws:
        assert recv_json(ws) == {"offered": [], "chosen": None}
        assert ws.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
    # the header is a comma-separated list, possibly repeated: the scope has them all
    raw = raw_handshake(sws, "/ws/subprotocol",
                        b"Sec-WebSocket-Protocol: x-one ,  chat.v1\r\n"
                        b"Sec-WebSocket-Protocol: chat.v2\r\n")
    status, headers, _ = split_response(raw)
    assert status == 101, raw[:300]
    assert headers["sec-websocket-protocol"] == "chat.v2"
    assert b'"offered":["x-one","chat.v1","chat.v2"]' in raw.replace(b" ", b""), raw
    # offered, but none supported: accepted without a subprotocol
    raw = raw_handshake(sws, "/ws/subprotocol", b"Sec-WebSocket-Protocol: other\r\n")
    status, headers, _ = split_response(raw)
    assert status == 101 and "sec-websocket-protocol" not in headers, raw[:300]


def test_starlette_close_before_accept_is_403(sws):
    r = refused(sws, "/ws/deny")
    assert r.status_code == 403
    status, headers, _ = split_response(raw_handshake(sws, "/ws/deny"))
    assert status == 403
    assert "sec-websocket-accept" not in headers
    # a route that does not exist: Starlette's router closes before accept too
    assert refused(sws, "/ws/no-such-route").status_code == 403


def test_starlette_denial_response(sws):
    r = refused(sws, "/ws/deny-response")
    assert r.status_code == 401
    assert r.body == b"no entry for you"
    assert r.headers["x-denied"] == "yes"
    raw = raw_handshake(sws, "/ws/deny-response")
    status, headers, body = split_response(raw)
    assert status == 401, raw[:300]
    assert headers["x-denied"] == "yes"
    assert headers["content-type"].startswith("text/plain")
    assert "sec-websocket-accept" not in headers and "upgrade" not in headers
    assert body == b"no entry for you"       # and the server closed after it
    assert int(headers["content-length"]) == len(body)


def test_starlette_scope_path_query_headers_cookies(sws, loop):
    path = "/ws/info/%C5%BEluva%20x/42?a=1&a=2&b=%C5%BE&c=x+y&empty="
    headers = {"X-Custom": "hello world", "Cookie": "session=abc123; theme=dark",
               "User-Agent": "ws-test/1.0"}
    with ws_connect(sws, path, additional_headers=headers, user_agent_header=None) as ws:
        got = recv_json(ws)
        assert ws.response.headers["x-accept-header"] == "from the app"
        assert expect_closed(ws).code == 1000
    assert got["path_params"] == {"room": "žluva x", "n": 42}
    assert got["path"] == "/ws/info/žluva x/42"
    assert got["raw_path"] == "/ws/info/%C5%BEluva%20x/42"
    assert got["query"] == [["a", "1"], ["a", "2"], ["b", "ž"], ["c", "x y"], ["empty", ""]]
    assert got["custom"] == "hello world"
    assert got["user_agent"] == "ws-test/1.0"
    assert got["host"] == f"{sws.host}:{sws.port}"
    assert got["cookies"] == {"session": "abc123", "theme": "dark"}
    assert got["scheme"] == "ws" and got["url_scheme"] == "ws"
    assert got["http_version"] == "1.1"
    assert got["client_host"] == "127.0.0.1"
    assert len(got["boot_id"]) == 32            # the lifespan state reaches websockets
    assert got["asgi"]["version"] == "3.0"
    assert loop_matches(loop, got["loop"]), got


@allow_app_errors
def test_starlette_raise_after_accept_is_1011(sws):
    start = len(sws.log())
    with ws_connect(sws, "/ws/raise") as ws:
        ws.send("go")
        rcvd = expect_closed(ws)
    if REFERENCE != "uvicorn":      # uvicorn just drops the connection
        assert rcvd is not None and rcvd.code == 1011, rcvd
    deadline = time.monotonic() + T
    while "boom from the websocket endpoint" not in sws.log()[start:]:
        assert time.monotonic() < deadline, sws.log()[start:]
        time.sleep(0.02)
    # the server survives and serves the next one
    with ws_connect(sws, "/ws/echo") as ws:
        ws.send("still here")
        assert recv(ws) == "still here"


def test_starlette_http_next_to_websockets(sws):
    with ws_connect(sws, "/ws/echo") as ws1, ws_connect(sws, "/ws/echo") as ws2, \
            httpx.Client(base_url=sws.url, timeout=T) as c:
        for i in range(5):
            ws1.send(f"one {i}")
            r = c.get("/json")
            assert r.status_code == 200 and r.json()["hello"] == "world"
            ws2.send(f"two {i}".encode())
            assert recv(ws2) == f"two {i}".encode()
            assert recv(ws1) == f"one {i}"
        # a plain GET to a websocket route is no websocket: Starlette answers 404
        assert c.get("/ws/echo").status_code == 404


# --- FastAPI --------------------------------------------------------------------------

def test_fastapi_depends_params_header_cookie(fws, loop, marker_dir):
    token = uuid.uuid4().hex
    dep = marker_dir / f"wsdep-{token}"
    with ws_connect(fws, f"/ws/items/5?q=3&token={token}",
                    additional_headers={"X-Custom": "abc", "Cookie": "session=s1"}) as ws:
        got = recv_json(ws)
        assert got["item_id"] == 5 and got["q"] == 3
        assert got["res"] == {"token": token}
        assert got["x_custom"] == "abc" and got["session"] == "s1"
        assert loop_matches(loop, got["loop"]), got
        assert dep.read_text() == "open\n"        # the endpoint runs inside the dependency
        ws.send("ping")
        assert recv(ws) == "item 5: ping"
    # after the endpoint returned, the dependency's clean-up ran
    assert wait_file(dep, until=lambda t: "closed" in t) == "open\nclosed\n"


@pytest.mark.parametrize("path", ["/ws/items/5", "/ws/items/5?q=notanint", "/ws/items/abc?q=1"])
def test_fastapi_validation_error_is_policy_violation(fws, path):
    # FastAPI closes with 1008 before accepting: a close before accept is an HTTP 403
    r = refused(fws, path)
    assert r.status_code == 403
    status, headers, _ = split_response(raw_handshake(fws, path))
    assert status == 403 and "sec-websocket-accept" not in headers


def test_fastapi_websocket_exception_from_dependency(fws):
    assert refused(fws, "/ws/auth?token=wrong").status_code == 403
    assert refused(fws, "/ws/auth").status_code == 403
    with ws_connect(fws, "/ws/auth?token=secret") as ws:
        assert recv(ws) == "hello secret"
        assert expect_closed(ws).code == 1000


@pytest.mark.parametrize("how,code,reason", [("close", 4005, "bye"), ("close", 1000, ""),
                                             ("close", 1001, "tab closed"), ("drop", 1006, "")])
def test_fastapi_websocket_disconnect_raised(fws, marker_dir, how, code, reason):
    token = uuid.uuid4().hex
    ws = ws_connect(fws, f"/ws/leave?token={token}")
    try:
        for i in range(3):
            ws.send(f"m{i}")
            assert recv(ws) == f"m{i}"
        if how == "drop":
            drop(ws)
        else:
            ws.close(code, reason)
    finally:
        ws.close()
    got = wait_file(marker_dir / f"leave-{token}")
    assert got == f"{code} 3 {reason}", f"WebSocketDisconnect was {got!r}"


def test_fastapi_broadcast_between_clients(fws):
    room = uuid.uuid4().hex[:8]
    with ws_connect(fws, f"/ws/chat/{room}?name=alice") as alice, \
            httpx.Client(base_url=fws.url, timeout=T) as http:
        assert recv(alice) == "welcome alice, 1 here"
        with ws_connect(fws, f"/ws/chat/{room}?name=bob") as bob:
            assert recv(alice) == "bob joined"
            assert recv(bob) == "welcome bob, 2 here"
            assert http.get(f"/chat/{room}").json() == {"members": ["alice", "bob"]}
            alice.send("hi bob")
            assert recv(alice) == "alice: hi bob"
            assert recv(bob) == "alice: hi bob"
            for i in range(20):                  # both talk at once
                alice.send(f"a{i}")
                bob.send(f"b{i}")
            seen_a = [recv(alice) for _ in range(40)]
            seen_b = [recv(bob) for _ in range(40)]
            for seen in (seen_a, seen_b):
                assert [m for m in seen if m.startswith("alice")] == [f"alice: a{i}" for i in range(20)]
                assert [m for m in seen if m.startswith("bob")] == [f"bob: b{i}" for i in range(20)]
            # an HTTP request reaches the open sockets
            assert http.post(f"/chat/{room}", params={"text": "from http"}).json() == {"sent_to": 2}
            assert recv(alice) == "http: from http" and recv(bob) == "http: from http"
        assert recv(alice) == "bob left"
        assert http.get(f"/chat/{room}").json() == {"members": ["alice"]}


def test_fastapi_mixed_http_and_websocket(fws, loop):
    n = 6
    sockets = [ws_connect(fws, f"/ws/items/{i}?q={i * 10}") for i in range(n)]
    try:
        for i, ws in enumerate(sockets):
            assert recv_json(ws)["q"] == i * 10
        with httpx.Client(base_url=fws.url, timeout=T) as c:
            for round_ in range(4):
                for i, ws in enumerate(sockets):
                    ws.send(f"r{round_}")
                r = c.get("/json")             # keep-alive HTTP between the messages
                assert r.status_code == 200 and loop_matches(loop, r.json()["loop"])
                for i, ws in enumerate(sockets):
                    assert recv(ws) == f"item {i}: r{round_}"
            # a plain GET to a websocket route: no such HTTP route
            assert c.get("/ws/items/1", params={"q": 1}).status_code == 404
        # an upgrade to an HTTP-only route: no such websocket route -> 403
        assert refused(fws, "/json").status_code == 403
    finally:
        for ws in sockets:
            ws.close()


# --- Quart ----------------------------------------------------------------------------

def test_quart_echo(qws):
    with ws_connect(qws, "/ws/echo") as ws:
        # no empty binary message: Quart reads it as `event.get("bytes") or event["text"]`
        # and fails with KeyError when the (ASGI-conforming) event has no "text" key
        for msg in ["hello", "ž☃", "", b"\x00\x01", "t" * 200_000, os.urandom(300_000)]:
            ws.send(msg)
            got = recv(ws)
            assert type(got) is type(msg) and got == msg
        with httpx.Client(base_url=qws.url, timeout=T) as c:
            assert c.get("/json").json()["hello"] == "world"
        ws.send("after http")
        assert recv(ws) == "after http"


def test_quart_request_info_and_close_code(qws, loop):
    with ws_connect(qws, "/ws/info/kůň?a=1&a=2&b=x",
                    additional_headers={"X-Custom": "quart!"}) as ws:
        got = recv_json(ws)
        rcvd = expect_closed(ws)
    assert got["name"] == "kůň" and got["args"] == {"a": ["1", "2"], "b": ["x"]}
    assert got["custom"] == "quart!" and got["scheme"] == "ws"
    assert loop_matches(loop, got["loop"]), got
    assert (rcvd.code, rcvd.reason) == (4000, "done")


def test_quart_denial_response(qws):
    r = refused(qws, "/ws/deny")
    assert r.status_code == 401
    assert r.body == b"quart says no"
    assert r.headers["x-denied"] == "quart"
