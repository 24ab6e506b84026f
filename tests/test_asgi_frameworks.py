"""Real ASGI frameworks (Starlette, FastAPI, Django, Quart) behind the real `corsac` process.

Apps: tests/apps/starlette_app.py, fastapi_app.py, quart_app.py and the Django test
project's ASGI entry (django_app.asgi:application; its WSGI entry is the one
tests/test_frameworks.py uses).  Every test runs under both event loops
(`--loop asyncio` and `--loop uvloop`); one server per (app, loop) is shared by the
module.  The apps write marker files (background tasks, dependency clean-up,
disconnect detection) into CORSAC_TEST_DIR, which the tests poll."""
import hashlib
import random
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server, read_until_close  # noqa: E402

APPS = {
    "starlette": "starlette_app:app",
    "fastapi": "fastapi_app:app",
    "quart": "quart_app:app",
    "django": "django_app.asgi:application",
}
LOOPS = ["asyncio", "uvloop"]
TIMEOUT = httpx.Timeout(3.0)
# generous: the first test of each (app, loop) also starts its server
pytestmark = pytest.mark.timeout(30)

EXPECTED_JSON = {"hello": "world", "n": 42, "items": [1, 2, 3], "text": "žluťoučký kůň"}
ERRORS = ("Exception in ASGI application", "Traceback", "Error handling request")


def allow_app_errors(fn):
    """The test provokes errors inside the app (e.g. a send after the client left)."""
    fn.allow_app_errors = True
    return fn


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("asgi_frameworks")
    markers = d / "markers"
    markers.mkdir()
    rnd = random.Random(4242)
    blob = bytearray(rnd.randbytes(1024 * 1024 + 123))
    # things a multipart parser could trip over, in the middle of the file
    blob[5000:5000] = b"\r\n--notTheBoundary\r\nContent-Disposition: form-data\r\n\r\n"
    blob[700000:700000] = b"\r\n\r\n--\r\n"
    return {"dir": d, "markers": markers, "blob": bytes(blob)}


@pytest.fixture(scope="module")
def servers(data):
    """get(app_key, loop) -> a running Server, started on first use."""
    made, dead = {}, []

    def get(key, loop):
        s = made.get((key, loop))
        if s is not None and s.proc.poll() is not None:
            dead.append(s)          # reported at teardown; start a fresh one meanwhile
            s = None
        if s is None:
            if key == "django-wsgi":
                args = []
            else:
                args = ["--loop", loop]
            s = Server(APPS.get(key, "django_app.wsgi:application"), args,
                       env={"CORSAC_TEST_DIR": str(data["markers"])}, tmp_path=data["dir"])
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


@pytest.fixture(params=["starlette", "fastapi"])
def star(request, servers, loop):
    """Starlette and FastAPI: the same routes."""
    yield from _serve(request, servers, request.param, loop)


@pytest.fixture
def fast(request, servers, loop):
    yield from _serve(request, servers, "fastapi", loop)


@pytest.fixture
def dj(request, servers, loop):
    yield from _serve(request, servers, "django", loop)


@pytest.fixture
def quart(request, servers, loop):
    yield from _serve(request, servers, "quart", loop)


@pytest.fixture(params=list(APPS))
def any_app(request, servers, loop):
    yield from _serve(request, servers, request.param, loop)


def client_for(server):
    return httpx.Client(base_url=server.url, timeout=TIMEOUT)


def wait_file(path, timeout=2.0, until=None):
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


def raw_chunked_get(server, target, timeout=3.0):
    """GET with Connection: close over a raw socket; returns (head, [chunk payloads],
    terminated) where terminated says the last-chunk (0) and final CRLF arrived."""
    s = server.connect(timeout)
    try:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        raw = read_until_close(s, timeout)
    finally:
        s.close()
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:500]
    chunks, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return head, chunks, False
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return head, chunks, body[eol + 2:] == b"\r\n"
        chunk = body[eol + 2:eol + 2 + size]
        if len(chunk) < size or body[eol + 2 + size:eol + 4 + size] != b"\r\n":
            return head, chunks + [chunk], False
        chunks.append(chunk)
        pos = eol + 4 + size


def check_timed_stream(server, path, n=5, delay=0.15):
    """A stream of n lines, `delay` apart: chunked, complete, and arriving as produced."""
    arrivals, body = [], b""
    with client_for(server) as c:
        t0 = time.monotonic()
        with c.stream("GET", path, params={"n": n, "delay": delay}) as r:
            assert r.status_code == 200
            assert r.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.headers
            for piece in r.iter_raw():
                arrivals.append((round(time.monotonic() - t0, 3), len(piece)))
                body += piece
    assert body == b"".join(f"chunk {i} of {n}\n".encode() for i in range(n))
    assert len(arrivals) >= 3, arrivals
    assert arrivals[-1][0] - arrivals[0][0] >= delay * (n - 1) * 0.6, arrivals
    # and on the wire: proper chunked framing with the terminating 0-chunk
    head, chunks, terminated = raw_chunked_get(server, f"{path}?n=3&delay=0.02")
    assert re.search(rb"(?im)^transfer-encoding: *chunked\r?$", head), head
    assert terminated, (head, chunks)
    assert b"".join(chunks) == b"chunk 0 of 3\nchunk 1 of 3\nchunk 2 of 3\n"


def loop_matches(loop, name):
    return name.startswith("uvloop.") if loop == "uvloop" else name.startswith("asyncio.")


# --- every app --------------------------------------------------------------------

def test_event_loop_matches_option(any_app, loop):
    path = "/async" if any_app.framework == "django" else "/json"
    with client_for(any_app) as c:
        r = c.get(path)
    assert r.status_code == 200, r.text
    assert loop_matches(loop, r.json()["loop"]), r.json()


# --- Starlette and FastAPI ----------------------------------------------------------

def test_json_endpoint(star):
    with client_for(star) as c:
        for _ in range(3):          # keep-alive: one connection, several responses
            r = c.get("/json")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            assert int(r.headers["content-length"]) == len(r.content)
            body = r.json()
            assert {k: body[k] for k in EXPECTED_JSON} == EXPECTED_JSON


def test_path_params(star):
    with client_for(star) as c:
        r = c.get("/items/42/%C5%BEluva%20x")
        assert r.status_code == 200, r.text
        assert r.json() == {"item_id": 42, "name": "žluva x", "path": "/items/42/žluva x"}
        assert r.headers["x-test-raw-path"] == "/items/42/%C5%BEluva%20x"
        r = c.get("/items/7/plain")
        assert r.json()["item_id"] == 7 and r.json()["name"] == "plain"


def test_query_params(star):
    qs = "a=1&a=2&b=%C5%BE&c=x+y&empty="
    with client_for(star) as c:
        r = c.get(f"/query?{qs}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["raw"] == qs
    assert got["multi"] == [["a", "1"], ["a", "2"], ["b", "ž"], ["c", "x y"], ["empty", ""]]
    if star.framework == "fastapi":
        assert got["a"] == [1, 2] and got["b"] == "ž"


def test_form_upload_with_file(star, data):
    blob = data["blob"]
    fields = {"note": "Žofie ☃ & co", "lang": "cs"}
    with client_for(star) as c:
        r = c.post("/upload", data=fields,
                   files={"file": ("blob.bin", blob, "application/x-test")})
        assert r.status_code == 200, r.text
        assert r.json() == {"filename": "blob.bin", "content_type": "application/x-test",
                            "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                            "fields": fields}
        # the same bytes back, exactly
        r = c.post("/upload", params={"echo": "1"}, data=fields,
                   files={"file": ("blob.bin", blob, "application/octet-stream")})
        assert r.status_code == 200, r.text
        assert r.headers["x-size"] == str(len(blob))
        assert r.headers["x-filename"] == "blob.bin"
        assert int(r.headers["content-length"]) == len(blob)
        assert r.content == blob


def test_form_upload_small_file(star):
    with client_for(star) as c:
        r = c.post("/upload", data={"note": "-", "lang": "x"},
                   files={"file": ("empty.txt", b"", "text/plain")})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 0 and r.json()["sha256"] == hashlib.sha256(b"").hexdigest()


def test_streaming_response(star):
    check_timed_stream(star, "/stream")


def test_background_task_after_response(star, data):
    token = uuid.uuid4().hex
    path = data["markers"] / f"bg-{token}"
    with client_for(star) as c:
        t0 = time.monotonic()
        r = c.get("/background", params={"token": token, "delay": "0.6"})
        elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.json() == {"queued": token}
    # the response is complete before the task (0.6 s) has finished ...
    assert elapsed < 0.5, elapsed
    assert not path.exists()
    # ... and the task still runs to the end afterwards
    assert wait_file(path, 2.0) == "done"


def test_lifespan_state(star):
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    with client_for(star) as c:
        r1 = c.get("/state", params={"hit": a}).json()
        r2 = c.get("/state", params={"hit": b}).json()
    assert len(r1["boot_id"]) == 32 and r1["boot_id"] == r2["boot_id"]
    # the list is the lifespan's object, shared by every request ...
    assert r1["hits"][-1] == a and r2["hits"][-2:] == [a, b]
    # ... but each request has its own (shallow) copy of the state dict
    assert r1["seen_mine"] is None and r2["seen_mine"] is None


@allow_app_errors
def test_is_disconnected_when_client_goes_away(star, data):
    token = uuid.uuid4().hex
    path = data["markers"] / f"disc-{token}"
    s = star.connect(timeout=3)
    got = b""
    try:
        s.sendall(f"GET /disconnect?token={token} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        deadline = time.monotonic() + 2.5
        while got.count(b"x" * 1023 + b"\n") < 3 and time.monotonic() < deadline:
            b = s.recv(65536)
            if not b:
                break
            got += b
    finally:
        s.close()
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]
    assert re.search(rb"(?im)^transfer-encoding: *chunked\r?$", got), got[:300]
    assert got.count(b"x" * 1023 + b"\n") >= 3, got[:300]
    text = wait_file(path, 2.0)
    assert text is not None, "the streaming endpoint did not stop after the client left"
    reason, sent, spec = text.rsplit(" ", 2)
    if tuple(map(int, spec.split("."))) >= (2, 4):
        assert reason == "disconnected", text
    else:   # Starlette's own disconnect listener may cancel the stream first
        assert reason in ("disconnected", "error CancelledError"), text
    assert 3 <= int(sent) < 500, text


def test_not_found(star):
    with client_for(star) as c:
        r = c.get("/no/such/route")
        assert r.status_code == 404
        if star.framework == "fastapi":
            assert r.json() == {"detail": "Not Found"}
        else:
            assert r.text == "Not Found"
        # the middleware sees these too
        assert r.headers["x-test-middleware"] == star.framework
        r = c.post("/json")
        assert r.status_code == 405


def test_middleware_adds_header(star):
    with client_for(star) as c:
        r = c.get("/json")
        assert r.headers["x-test-middleware"] == star.framework
        assert r.headers["x-test-raw-path"] == "/json"
        with c.stream("GET", "/stream", params={"n": 2, "delay": 0}) as r:
            assert r.headers["x-test-middleware"] == star.framework
            assert r.headers["x-test-raw-path"] == "/stream"
            assert r.read() == b"chunk 0 of 2\nchunk 1 of 2\n"


# --- FastAPI only -------------------------------------------------------------------

def test_fastapi_sync_endpoint_runs_in_threadpool(fast):
    with client_for(fast) as c:
        loop_thread = c.get("/json").json()["thread"]
        r = c.get("/sync")
    assert r.status_code == 200, r.text
    assert r.json()["in_loop"] is False
    assert r.json()["thread"] != loop_thread
    # four blocking calls at once overlap: they block neither the loop nor each other
    results, errors = [], []
    clients = [client_for(fast) for _ in range(5)]

    def call(c):
        try:
            results.append(c.get("/sync", params={"sleep": "0.5"}).json())
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    try:
        threads = [threading.Thread(target=call, args=(c,)) for c in clients[:4]]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.1)
        t1 = time.monotonic()
        r = clients[4].get("/json")          # the loop answers meanwhile
        assert r.status_code == 200
        assert time.monotonic() - t1 < 0.3, "the event loop was blocked by sync endpoints"
        for t in threads:
            t.join(3)
        elapsed = time.monotonic() - t0
    finally:
        for c in clients:
            c.close()
    assert not errors, errors
    assert len(results) == 4
    assert elapsed < 1.5, elapsed          # one after another would take 2 s
    assert all(x["thread"] != loop_thread and not x["in_loop"] for x in results), results


def test_fastapi_dependency_with_yield(fast, data):
    token = uuid.uuid4().hex
    path = data["markers"] / f"dep-{token}"
    with client_for(fast) as c:
        r = c.get("/dep", params={"token": token})
    assert r.status_code == 200, r.text
    assert r.json()["res"]["token"] == token
    assert r.json()["marker_during"] == "open\n"      # the endpoint ran inside the dependency
    assert wait_file(path, 2.0, until=lambda t: "closed" in t) == "open\nclosed\n"


def test_fastapi_validation_422(fast):
    with client_for(fast) as c:
        r = c.get("/items/abc/x")
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["path", "item_id"]
        assert r.headers["x-test-middleware"] == "fastapi"
        r = c.post("/model", json={"name": "x"})
        assert r.status_code == 422
        assert [e["loc"] for e in r.json()["detail"]] == [["body", "price"]]
        r = c.post("/model", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.get("/query", params={"a": "not-an-int"})
        assert r.status_code == 422
        r = c.post("/model", json={"name": "ok", "price": 2.5, "tags": ["a"]})
        assert r.status_code == 200
        assert r.json() == {"item": {"name": "ok", "price": 2.5, "tags": ["a"]}, "total": 5.0}


def test_fastapi_http_exception_and_handlers(fast):
    with client_for(fast) as c:
        r = c.get("/missing/7")
        assert r.status_code == 404 and r.json() == {"detail": "item 7 not found"}
        r = c.get("/raise")
        assert r.status_code == 418 and r.json() == {"error": "handled by the app"}


# --- Django ---------------------------------------------------------------------------

def test_django_get_view(dj):
    with client_for(dj) as c:
        r = c.get("/json", params={"a": ["1", "2"], "b": "ž"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert {k: body[k] for k in EXPECTED_JSON} == EXPECTED_JSON
    assert body["args"] == {"a": ["1", "2"], "b": ["ž"]}


def test_django_request_meta(dj):
    with client_for(dj) as c:
        r = c.get("/headers?x=1", headers={"X-Custom-Thing": "hello world"})
    got = r.json()
    assert got["headers"]["X-Custom-Thing"] == "hello world"
    assert got["headers"]["Host"] == f"127.0.0.1:{dj.port}"
    assert got["path"] == "/headers" and got["full_path"] == "/headers?x=1"
    assert got["remote_addr"] == "127.0.0.1"


def test_django_post_csrf_exempt(dj, data):
    payload = {"nested": {"list": list(range(50)), "s": "ünïcødé ☃"}, "big": "x" * 100_000}
    blob = data["blob"]
    with client_for(dj) as c:
        r = c.post("/json", json=payload)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": payload, "content_type": "application/json"}
        r = c.post("/form", data={"name": "Žofie", "tags": ["a", "b&c"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"form": {"name": ["Žofie"], "tags": ["a", "b&c"]}}
        r = c.post("/upload", data={"note": "hi"},
                   files={"file": ("blob.bin", blob, "application/octet-stream")})
        assert r.status_code == 200, r.text
        assert r.json() == {"filename": "blob.bin", "size": len(blob),
                            "sha256": hashlib.sha256(blob).hexdigest(), "form": {"note": ["hi"]}}


def test_django_async_view(dj, loop):
    with client_for(dj) as c:
        r = c.get("/async", params={"q": "1"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["async"] is True and got["method"] == "GET" and got["args"] == {"q": ["1"]}
        assert loop_matches(loop, got["loop"]), got
        r = c.post("/async", content=b"z" * 200_000)
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "POST" and r.json()["body_size"] == 200_000


def test_django_streaming_response(dj):
    check_timed_stream(dj, "/astream")
    # a sync generator works too (Django consumes it in a thread before sending)
    with client_for(dj) as c:
        r = c.get("/stream", params={"n": 3, "delay": "0.01"})
    assert r.status_code == 200
    assert r.content == b"chunk 0 of 3\nchunk 1 of 3\nchunk 2 of 3\n"


def test_django_wsgi_is_the_same_project(dj, servers):
    wsgi = servers("django-wsgi", None)
    q = {"a": ["1", "2"], "b": "ž"}
    with client_for(dj) as a, client_for(wsgi) as w:
        ra, rw = a.get("/json", params=q), w.get("/json", params=q)
        assert ra.status_code == rw.status_code == 200
        assert ra.json() == rw.json()
        ra, rw = a.post("/form", data={"x": "1"}), w.post("/form", data={"x": "1"})
        assert ra.json() == rw.json() == {"form": {"x": ["1"]}}
        # the async-only routes exist in the ASGI process only
        assert a.get("/async").status_code == 200
        assert w.get("/async").status_code == 404


# --- Quart ------------------------------------------------------------------------------

def test_quart_json_route(quart):
    with client_for(quart) as c:
        r = c.get("/json", params={"a": ["1", "2"], "b": "ž"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert {k: body[k] for k in EXPECTED_JSON} == EXPECTED_JSON
        assert body["args"] == {"a": ["1", "2"], "b": ["ž"]}
        payload = {"nested": [1, {"x": "☃"}], "big": "y" * 50_000}
        r = c.post("/json", json=payload)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": payload, "content_type": "application/json"}


def test_quart_post_body(quart, data):
    blob = data["blob"]
    with client_for(quart) as c:
        r = c.post("/echo", content=blob)
        assert r.status_code == 200, r.text
        assert r.headers["x-size"] == str(len(blob))
        assert r.headers["x-sha256"] == hashlib.sha256(blob).hexdigest()
        assert r.content == blob

        def gen():                    # no Content-Length: a chunked request body
            for i in range(0, len(blob), 64 * 1024):
                yield blob[i:i + 64 * 1024]
        r = c.post("/echo", content=gen())
        assert r.status_code == 200, r.text
        assert r.headers["x-size"] == str(len(blob))
        assert r.content == blob


def test_quart_streaming(quart):
    check_timed_stream(quart, "/stream")

