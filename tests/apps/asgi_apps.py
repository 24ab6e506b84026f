"""Raw ASGI 3 applications (no framework) used by tests/test_asgi.py.

Each app is a module attribute, so a test starts e.g. ``corsac("asgi_apps:hello")``.
Apps take their options from the query string.  Two environment variables connect
them to the tests:

* ``CORSAC_TEST_RECORD``: a file; apps append one line per event they want the test
  to see (``<tag> <event> <detail>``), flushed at once.
* ``CORSAC_TEST_FILE``: the file served by ``pathsend`` and ``zerocopysend``.

Apps built with ``@_http`` answer the lifespan protocol politely (startup and
shutdown complete, no state), so they work with ``--lifespan on`` as well.
"""
import asyncio
import contextvars
import functools
import hashlib
import json
import os
import time
from urllib.parse import parse_qs


# --------------------------------------------------------------------------- helpers

def _record(line):
    path = os.environ.get("CORSAC_TEST_RECORD")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()


def _qs(scope):
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _jsonable(obj):
    """bytes -> latin-1 str, tuples -> lists, everything else unknown -> repr()."""
    if isinstance(obj, bytes):
        return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


async def _read_body(receive):
    """Reads http.request events until more_body is false.

    Returns (body, events, last_type): events is a list of [body length, more_body, body
    type name]; last_type is the type of the last message (not http.request when the
    body was cut short by a disconnect)."""
    chunks, events = [], []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return b"".join(chunks), events, msg["type"]
        body = msg.get("body", b"")
        more = msg.get("more_body", False)
        events.append([len(body), more, type(body).__name__])
        chunks.append(body)
        if not more:
            return b"".join(chunks), events, msg["type"]


async def _respond(send, body, status=200, ctype=b"text/plain", headers=(), length=True):
    if isinstance(body, str):
        body = body.encode("utf-8")
    hdrs = [(b"content-type", ctype)]
    if length:
        hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status,
                "headers": hdrs + list(headers)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send, obj, status=200, headers=()):
    await _respond(send, json.dumps(obj), status, b"application/json", headers)


async def _polite_lifespan(receive, send):
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _http(fn):
    """Turns an http-only handler into a full ASGI app that also answers lifespan."""
    @functools.wraps(fn)
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await _polite_lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError("unsupported scope type %r" % scope["type"])
        await fn(scope, receive, send)
    return app


# --------------------------------------------------------------------------- basics

@_http
async def hello(scope, receive, send):
    await _read_body(receive)
    await _respond(send, b"Hello, world!", headers=[(b"x-pid", str(os.getpid()).encode())])


@_http
async def noread(scope, receive, send):
    """Answers ``<METHOD> <path>`` without ever calling receive()."""
    await _respond(send, f"{scope['method']} {scope['path']}")


class _ClassApp:
    """An object whose __call__ is a coroutine function (auto-detected as ASGI)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await _polite_lifespan(receive, send)
            return
        await _read_body(receive)
        await _respond(send, b"class app")


class_app = _ClassApp()


@_http
async def scope_app(scope, receive, send):
    """The scope as JSON (bytes as latin-1 text), the Python type of each part, and the body."""
    body, events, _ = await _read_body(receive)
    types = {k: type(v).__name__ for k, v in scope.items()}
    header_types = sorted({(type(pair).__name__, len(pair), type(pair[0]).__name__,
                            type(pair[1]).__name__) for pair in scope.get("headers", [])})

    def pair_types(v):
        if v is None:
            return None
        return [type(v).__name__, len(v), type(v[0]).__name__, type(v[1]).__name__]

    data = {
        "scope": _jsonable({k: v for k, v in scope.items() if k not in ("state",)}),
        "state": _jsonable(dict(scope["state"])) if "state" in scope else None,
        "types": types,
        "header_types": header_types,
        "client_types": pair_types(scope.get("client")),
        "server_types": pair_types(scope.get("server")),
        "asgi_types": {k: type(v).__name__ for k, v in scope.get("asgi", {}).items()},
        "extensions": sorted((scope.get("extensions") or {}).keys()),
        "extension_values": _jsonable(scope.get("extensions") or {}),
        "body": body.decode("latin-1"),
    }
    await _json(send, data)


@_http
async def body_app(scope, receive, send):
    """Reads every receive() event; reports how many there were and what they carried."""
    body, events, last = await _read_body(receive)
    out = {
        "events": len(events),
        "event_list": events[:50] + (events[-5:] if len(events) > 50 else []),
        "all_bytes": all(t == "bytes" for _, _, t in events),
        "more_flags_ok": all(e[1] for e in events[:-1]) and bool(events) and not events[-1][1],
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "last_type": last,
    }
    if _qs(scope).get("echo"):
        out["body"] = body.decode("latin-1")
    await _json(send, out)


@_http
async def stream(scope, receive, send):
    """n chunks ``<i>:xxx..;`` of size+3ish bytes, each its own send; ?cl=1 gives a length;
    ?single=1 sends them all in one final body message instead."""
    await _read_body(receive)
    q = _qs(scope)
    n, size = int(q.get("n", 5)), int(q.get("size", 10))
    chunks = [b"%d:" % i + b"x" * size + b";" for i in range(n)]
    headers = [(b"content-type", b"text/plain")]
    if q.get("cl"):
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if q.get("single"):
        await send({"type": "http.response.body", "body": b"".join(chunks)})
        return
    for c in chunks:
        await send({"type": "http.response.body", "body": c, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@_http
async def slow_stream(scope, receive, send):
    """n chunks ``tick<i>\\n`` with asyncio.sleep(delay) before each one after the first."""
    await _read_body(receive)
    q = _qs(scope)
    n, delay = int(q.get("n", 4)), float(q.get("delay", 0.3))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    for i in range(n):
        if i:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"tick%d\n" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@_http
async def flood(scope, receive, send):
    """?mb=N MiB of b"x" in 64 KiB sends (one reused buffer); records ``<tag> done`` or the
    exception the last send raised."""
    await _read_body(receive)
    q = _qs(scope)
    tag = q.get("tag", "flood")
    total = int(q.get("mb", 50)) * 1024 * 1024
    piece = b"x" * 65536
    _record(f"{tag} started")
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(total).encode())]})
        for _ in range(total // len(piece)):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except BaseException as e:
        _record(f"{tag} raised {type(e).__name__}")
        raise
    _record(f"{tag} done")


# --------------------------------------------------------------------------- disconnects

@_http
async def wait_disconnect(scope, receive, send):
    """Reads the body, then (mode=wait, the default) awaits receive() once more; with
    mode=after-response it sends a complete response first and then awaits receive(); with
    mode=sleep it sleeps ?sleep seconds (not touching receive) and then sends.
    Records ``<tag> entered``, then ``<tag> body-complete <n>``, ``<tag> during-body <type>``,
    ``<tag> after-body <type>`` / ``<tag> after-response <type>``, and after a
    disconnect ``<tag> send ok`` or ``<tag> send <Exception> oserror=<bool> corsac=<bool>``
    (corsac: whether it is a corsac.ClientDisconnected)."""
    q = _qs(scope)
    tag = q.get("tag", "wd")
    mode = q.get("mode", "wait")
    _record(f"{tag} entered")
    body, _, last = await _read_body(receive)
    if last != "http.request":
        _record(f"{tag} during-body {last}")
    else:
        _record(f"{tag} body-complete {len(body)}")
        if mode == "sleep":
            await asyncio.sleep(float(q.get("sleep", 0.5)))
            _record(f"{tag} slept")
        elif mode == "after-response":
            await _respond(send, b"complete")
            for _ in range(2):      # the second one must come at once
                try:
                    msg = await asyncio.wait_for(receive(), 10)
                    _record(f"{tag} after-response {msg['type']}")
                except asyncio.TimeoutError:
                    _record(f"{tag} after-response timeout")
            return
        else:
            try:
                msg = await asyncio.wait_for(receive(), 10)
                _record(f"{tag} after-body {msg['type']}")
            except asyncio.TimeoutError:
                _record(f"{tag} after-body timeout")
    # the client is gone: sending must fail with an OSError
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"late " * 1000,
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        _record(f"{tag} send ok")
    except Exception as e:
        import corsac     # only to check the class; the app runs under corsac
        _record(f"{tag} send {type(e).__name__} oserror={isinstance(e, OSError)} "
                f"corsac={isinstance(e, getattr(corsac, 'ClientDisconnected', ()))}")


# --------------------------------------------------------------------------- errors

@_http
async def raise_before(scope, receive, send):
    await _read_body(receive)
    raise RuntimeError("corsac-asgi-secret-before")


@_http
async def raise_after(scope, receive, send):
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"first chunk;", "more_body": True})
    await asyncio.sleep(0.05)
    raise RuntimeError("corsac-asgi-secret-after")


@_http
async def no_response(scope, receive, send):
    await _read_body(receive)
    return None


@_http
async def unfinished(scope, receive, send):
    """Returns with the response unfinished: ?stage=start (only the start, nothing has left)
    or ?stage=body (the start and one body message with more_body=True)."""
    await _read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    if _qs(scope).get("stage") == "body":
        await send({"type": "http.response.body", "body": b"partial;", "more_body": True})


def _start(status=200, headers=None):
    return {"type": "http.response.start", "status": status,
            "headers": headers if headers is not None else [(b"content-type", b"text/plain")]}


_OK_BODY = {"type": "http.response.body", "body": b"ACCEPTED-INVALID", "more_body": False}

# case name -> list of messages; the last one is the invalid one, those before are valid
INVALID = {
    "unknown-type": [{"type": "http.response.nonsense"}],
    "websocket-type": [{"type": "websocket.send", "text": "x"}],
    "type-not-str": [{"type": 7}],
    "body-before-start": [{"type": "http.response.body", "body": b"early", "more_body": False}],
    "start-twice": [_start(200, [(b"content-type", b"text/plain"), (b"x-first", b"1")]),
                    _start(201, [(b"x-second", b"1")])],
    "status-str": [_start("200")],
    "status-float": [_start(200.0)],
    "status-none": [_start(None)],
    "status-99": [_start(99)],
    "status-600": [_start(600)],
    "header-name-str": [_start(200, [("x-a", b"1")])],
    "header-value-str": [_start(200, [(b"x-a", "1")])],
    "header-name-space": [_start(200, [(b"x a", b"1")])],
    "header-value-crlf": [_start(200, [(b"x-a", b"1\r\nInjected: yes")])],
    "header-value-lf": [_start(200, [(b"x-a", b"1\nInjected: yes")])],
    "header-value-cr": [_start(200, [(b"x-a", b"1\rInjected: yes")])],
    "content-length-invalid": [_start(200, [(b"content-length", b"abc")])],
    "body-str": [_start(), {"type": "http.response.body", "body": "text", "more_body": False}],
}


@_http
async def invalid(scope, receive, send):
    """?case=<INVALID key>: sends the messages; the last must raise RuntimeError, which the
    app catches and reports as a 200 text body ``RuntimeError: ...`` (?propagate=1: re-raise)."""
    await _read_body(receive)
    q = _qs(scope)
    msgs = INVALID.get(q.get("case", ""))
    if msgs is None:
        await _respond(send, b"no such case", status=404)
        return
    started = False
    for m in msgs[:-1]:
        await send(m)
        started = started or m["type"] == "http.response.start"
    try:
        await send(msgs[-1])
    except Exception as e:
        if q.get("propagate"):
            raise
        text = f"{type(e).__name__}: {e}".encode("utf-8", "replace")
        if not started:
            await send(_start())
        await send({"type": "http.response.body", "body": text, "more_body": False})
        return
    # the server took the invalid message: finish somehow, the test will notice
    try:
        if not started and msgs[-1]["type"] != "http.response.start":
            await send(_start())
        await send(_OK_BODY)
    except Exception:
        pass


# --------------------------------------------------------------------------- files

@_http
async def pathsend(scope, receive, send):
    """Sends CORSAC_TEST_FILE with http.response.pathsend (?cl=1: with a content-length)."""
    await _read_body(receive)
    if "http.response.pathsend" not in (scope.get("extensions") or {}):
        await _respond(send, b"no pathsend extension", status=501)
        return
    path = os.path.abspath(os.environ["CORSAC_TEST_FILE"])
    headers = [(b"content-type", b"application/octet-stream")]
    if _qs(scope).get("cl"):
        headers.append((b"content-length", str(os.path.getsize(path)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.pathsend", "path": path})


@_http
async def zerocopysend(scope, receive, send):
    """Sends CORSAC_TEST_FILE with http.response.zerocopysend.

    ?offset=&count= are passed as given; ?seek=N positions the file first (no offset);
    ?split=1 sends the file in two zerocopysend messages (more_body True, then False);
    ?cl=1 gives a content-length computed from what will be sent."""
    await _read_body(receive)
    if "http.response.zerocopysend" not in (scope.get("extensions") or {}):
        await _respond(send, b"no zerocopysend extension", status=501)
        return
    q = _qs(scope)
    path = os.environ["CORSAC_TEST_FILE"]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = 0
        if q.get("seek"):
            start = int(q["seek"])
            f.seek(start)
        if "offset" in q:
            start = int(q["offset"])
        length = int(q["count"]) if "count" in q else size - start
        headers = [(b"content-type", b"application/octet-stream")]
        if q.get("cl"):
            headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if q.get("split"):
            half = length // 2
            await send({"type": "http.response.zerocopysend", "file": f, "offset": start,
                        "count": half, "more_body": True})
            await send({"type": "http.response.zerocopysend", "file": f, "offset": start + half,
                        "count": length - half, "more_body": False})
            return
        msg = {"type": "http.response.zerocopysend", "file": f, "more_body": False}
        if "offset" in q:
            msg["offset"] = int(q["offset"])
        if "count" in q:
            msg["count"] = int(q["count"])
        await send(msg)


@_http
async def trailers(scope, receive, send):
    """A chunked response declared with trailers; sends them whether or not the extension is
    offered (the server must drop them when the request had no ``TE: trailers``)."""
    await _read_body(receive)
    has_ext = "http.response.trailers" in (scope.get("extensions") or {})
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"content-type", b"text/plain"),
                            (b"x-trailers-ext", b"yes" if has_ext else b"no")]})
    await send({"type": "http.response.body", "body": b"part one;", "more_body": True})
    await send({"type": "http.response.body", "body": b"part two;", "more_body": False})
    await send({"type": "http.response.trailers", "more_trailers": False,
                "headers": [(b"x-checksum", b"abc123"), (b"x-count", b"2")]})


# --------------------------------------------------------------------------- lifespan

async def _state_http(scope, receive, send):
    q = _qs(scope)
    tag = q.get("tag", "req")
    await _read_body(receive)
    _record(f"{tag} request-start")
    state = scope.get("state")
    seen = _jsonable(dict(state)) if state is not None else None
    if state is not None:
        state["leaked-by-request"] = tag          # must not reach the next request
    if q.get("slow"):
        await asyncio.sleep(float(q["slow"]))
    _record(f"{tag} request-end")
    await _json(send, {"state": seen, "has_state": state is not None})


async def lifespan_state(scope, receive, send):
    """Startup records ``lifespan startup`` and fills the state; shutdown records
    ``lifespan shutdown``.  Requests answer the state they saw (and then scribble on it)."""
    if scope["type"] != "lifespan":
        await _state_http(scope, receive, send)
        return
    _record(f"lifespan scope-types {sorted(scope.keys())}")
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await asyncio.sleep(0.2)        # requests must not be served before this is done
            state = scope.get("state")
            if state is not None:
                state["started"] = "yes"
                state["answer"] = 42
                state["pid"] = os.getpid()
            _record(f"lifespan startup state={state is not None} pid={os.getpid()}")
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            _record(f"lifespan shutdown pid={os.getpid()}")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def lifespan_failed(scope, receive, send):
    if scope["type"] == "lifespan":
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        _record("lifespan startup-failing")
        await send({"type": "lifespan.startup.failed",
                    "message": "corsac-startup-failed-7391 (database unreachable)"})
        return
    await _read_body(receive)
    _record("http request served")
    await _respond(send, b"should not be served")


async def lifespan_raise(scope, receive, send):
    """Does not speak lifespan: raises on that scope, serves http."""
    if scope["type"] == "lifespan":
        _record("lifespan scope-seen")
        raise RuntimeError("corsac-test: no lifespan support here")
    await _read_body(receive)
    await _respond(send, b"served without lifespan")


# --------------------------------------------------------------------------- concurrency

@_http
async def concurrency(scope, receive, send):
    """Records ``<tag> start`` on entry; waits (asyncio.sleep, so the request stays running)
    until the file ?release=<path> exists (at most 10 s); records ``<tag> end``."""
    q = _qs(scope)
    tag = q.get("tag", "c")
    _record(f"{tag} start")
    await _read_body(receive)
    release = q.get("release")
    deadline = time.monotonic() + 10
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    _record(f"{tag} end")
    await _respond(send, f"done {tag}")


# --------------------------------------------------------------------------- malformed requests

@_http
async def recorder(scope, receive, send):
    """Records ``called METHOD PATH`` on entry and ``complete METHOD PATH`` once the whole body
    was received; answers ``METHOD PATH len=N``."""
    line = f"{scope['method']} {scope['path']}"
    _record(f"called {line}")
    body, _, last = await _read_body(receive)
    if last != "http.request":
        return
    _record(f"complete {line}")
    await _respond(send, f"{line} len={len(body)}\n")


# --------------------------------------------------------------------------- context and task

_VAR = contextvars.ContextVar("corsac_test_var", default="unset")


@_http
async def ctxvar(scope, receive, send):
    """Answers the ContextVar value seen on entry, then sets it to ?set= (if given)."""
    await _read_body(receive)
    seen = _VAR.get()
    q = _qs(scope)
    if "set" in q:
        _VAR.set(q["set"])
    if q.get("sleep"):
        await asyncio.sleep(float(q["sleep"]))
    await _json(send, {"seen": seen, "after": _VAR.get()})


@_http
async def task_info(scope, receive, send):
    """Proves the app runs in an asyncio Task on a running loop: current_task(), asyncio.timeout
    (which needs a task) both completing and firing, and the loop's type."""
    await _read_body(receive)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    out = {
        "task_is_task": isinstance(task, asyncio.Task),
        "task_type": type(task).__name__ if task is not None else None,
        "task_done": task.done() if task is not None else None,
        "loop_type": f"{type(loop).__module__}.{type(loop).__name__}",
    }
    try:
        async with asyncio.timeout(2):
            await asyncio.sleep(0.01)
        out["timeout_ok"] = True
    except BaseException as e:                    # noqa: BLE001 - reported to the test
        out["timeout_ok"] = f"{type(e).__name__}: {e}"
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
        out["timeout_fired"] = False
    except TimeoutError:
        out["timeout_fired"] = True
    except BaseException as e:                    # noqa: BLE001
        out["timeout_fired"] = f"{type(e).__name__}: {e}"
    out["timeout_elapsed"] = time.monotonic() - t0
    # a child task created from the app runs on the same loop
    child = asyncio.ensure_future(asyncio.sleep(0, result="child-ok"))
    out["child"] = await child
    await _json(send, out)
