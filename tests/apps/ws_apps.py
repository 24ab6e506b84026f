"""Raw ASGI WebSocket applications (no framework) used by tests/test_websocket.py.

Each app is a module attribute, so a test starts e.g. ``corsac("ws_apps:echo")``.  Apps
take their options from the query string (``?tag=...`` names the connection in the
record).  They talk to the tests through the file named by the environment variable
``CORSAC_TEST_RECORD``: one line per event, ``<tag> <event> <detail>``, flushed at once.

Every app answers the lifespan protocol politely (startup and shutdown complete, no
state), so ``--lifespan on`` works too; an HTTP request gets a small plain-text answer
``http <METHOD> <PATH>`` (see ``recorder``).
"""
import asyncio
import functools
import json
import os
import sys
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


def _tag(scope):
    return _qs(scope).get("tag", "untagged")


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


def _client_disconnected():
    """corsac.ClientDisconnected when running in corsac (the module is loaded there), else
    None; not imported here, so other servers can run these apps too."""
    corsac = sys.modules.get("corsac")
    return getattr(corsac, "ClientDisconnected", None)


def _describe(msg):
    """One record line's detail for a received message."""
    t = msg.get("type")
    if t == "websocket.receive":
        if msg.get("text") is not None:
            return f"text {len(msg['text'])}"
        return f"bytes {len(msg.get('bytes') or b'')}"
    if t == "websocket.disconnect":
        return f"disconnect {msg.get('code')} {msg.get('reason', '')!r}"
    return f"other {t}"


async def _http_answer(scope, receive, send, body=None):
    if body is None:
        body = f"http {scope.get('method')} {scope.get('path')}\n"
    body = body.encode("utf-8")
    while True:                     # drain the request body
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _polite_lifespan(receive, send):
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _ws(fn):
    """Lifespan answered politely; HTTP requests get ``http METHOD PATH``."""
    @functools.wraps(fn)
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await _polite_lifespan(receive, send)
        elif scope["type"] == "http":
            await _http_answer(scope, receive, send)
        else:
            await fn(scope, receive, send)
    return app


async def _accept(receive, send, **kw):
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg
    await send({"type": "websocket.accept", **kw})


# --------------------------------------------------------------------------- echo

@_ws
async def echo(scope, receive, send):
    """Echoes every message (text as text, bytes as bytes).  Records ``<tag> accepted``,
    ``<tag> got text N`` / ``<tag> got bytes N`` per message and ``<tag> disconnect CODE
    'REASON'`` at the end; with ?after_disconnect=1 it then tries a send and a close and
    records what they did."""
    tag = _tag(scope)
    await _accept(receive, send)
    _record(f"{tag} accepted")
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            _record(f"{tag} {_describe(msg)}")
            break
        _record(f"{tag} got {_describe(msg)}")
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})


@_ws
async def inspect(scope, receive, send):
    """Answers each message with a JSON text describing it: its keys and value types."""
    await _accept(receive, send)
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": json.dumps({
            "type": msg["type"],
            "keys": sorted(msg.keys()),
            "types": {k: type(v).__name__ for k, v in msg.items()},
        })})


# --------------------------------------------------------------------------- scope

@_ws
async def scope_app(scope, receive, send):
    """Accepts, then sends the scope as one JSON text message (bytes as latin-1 str, with a
    ``types`` dict of the value types) plus the first message received before accept."""
    first = await receive()
    await send({"type": "websocket.accept"})
    types = {k: type(v).__name__ for k, v in scope.items()}
    report = {
        "scope": _jsonable({k: v for k, v in scope.items() if k != "state"}),
        "types": types,
        "header_types": sorted({(type(h).__name__, len(h), type(h[0]).__name__,
                                 type(h[1]).__name__) for h in scope.get("headers", [])}),
        "subprotocol_types": sorted({type(p).__name__ for p in scope.get("subprotocols", [])}),
        "state": _jsonable(dict(scope["state"])) if scope.get("state") is not None else None,
        "first": _jsonable(first),
    }
    await send({"type": "websocket.send", "text": json.dumps(report)})
    while (await receive())["type"] != "websocket.disconnect":
        pass


# --------------------------------------------------------------------------- accept options

@_ws
async def subproto(scope, receive, send):
    """Accepts with subprotocol ?pick= (default: the last one offered; ?pick=none: None)
    and extra headers x-extra: yes and set-cookie: a=b, then echoes."""
    q = _qs(scope)
    offered = scope.get("subprotocols") or []
    pick = q.get("pick", offered[-1] if offered else "none")
    if pick == "none":
        pick = None
    await _accept(receive, send, subprotocol=pick,
                  headers=[(b"x-extra", b"yes"), (b"set-cookie", b"a=b")])
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": msg.get("text") or "?"})


# --------------------------------------------------------------------------- refusals

@_ws
async def close_before_accept(scope, receive, send):
    tag = _tag(scope)
    await receive()
    await send({"type": "websocket.close", "code": 1000})
    _record(f"{tag} closed")


@_ws
async def deny(scope, receive, send):
    """Denial response: ?status= (default 401), headers x-denied: yes, a body in two parts."""
    q = _qs(scope)
    await receive()
    await send({"type": "websocket.http.response.start", "status": int(q.get("status", 401)),
                "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")]})
    await send({"type": "websocket.http.response.body", "body": b"denied: ",
                "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"no token"})


@_ws
async def raise_before(scope, receive, send):
    await receive()
    raise RuntimeError("corsac-ws-secret-before")


@_ws
async def return_before(scope, receive, send):
    await receive()


@_ws
async def raise_after(scope, receive, send):
    """Accepts, sends "hello", waits for one message, then raises."""
    await _accept(receive, send)
    await send({"type": "websocket.send", "text": "hello"})
    await receive()
    raise RuntimeError("corsac-ws-secret-after")


@_ws
async def return_after(scope, receive, send):
    """Accepts, sends "bye-soon", waits for one message, then returns."""
    await _accept(receive, send)
    await send({"type": "websocket.send", "text": "bye-soon"})
    await receive()


# --------------------------------------------------------------------------- closing

@_ws
async def app_close(scope, receive, send):
    """Accepts, sends "closing", closes with ?code= (default 4000) and ?reason= (default
    "done"; ?reason=- sends no code/reason keys at all); then records what receive() gives
    and what a second websocket.close and a send do."""
    q = _qs(scope)
    tag = _tag(scope)
    await _accept(receive, send)
    await send({"type": "websocket.send", "text": "closing"})
    msg = {"type": "websocket.close"}
    if q.get("reason") != "-":
        msg["code"] = int(q.get("code", 4000))
        msg["reason"] = q.get("reason", "done")
    await send(msg)
    _record(f"{tag} close-sent")
    got = await asyncio.wait_for(receive(), 5)
    _record(f"{tag} after-close {_describe(got)}")
    try:
        await send({"type": "websocket.close", "code": 1000})
        _record(f"{tag} close-again ok")
    except Exception as e:                      # noqa: BLE001
        _record(f"{tag} close-again {type(e).__name__}")
    try:
        await send({"type": "websocket.send", "text": "late"})
        _record(f"{tag} send-after ok")
    except Exception as e:                      # noqa: BLE001
        _record(f"{tag} send-after {type(e).__name__} oserror={isinstance(e, OSError)}")


@_ws
async def send_after_disconnect(scope, receive, send):
    """Waits for the disconnect, then sends (recording the exception), then closes
    (recording whether that raised)."""
    tag = _tag(scope)
    await _accept(receive, send)
    _record(f"{tag} accepted")
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            break
    _record(f"{tag} {_describe(msg)}")
    try:
        await send({"type": "websocket.send", "text": "too late"})
        _record(f"{tag} send ok")
    except Exception as e:                      # noqa: BLE001
        cd = _client_disconnected()
        _record(f"{tag} send {type(e).__name__} oserror={isinstance(e, OSError)} "
                f"corsac={cd is not None and isinstance(e, cd)}")
    try:
        await send({"type": "websocket.close", "code": 1000})
        _record(f"{tag} close ok")
    except Exception as e:                      # noqa: BLE001
        _record(f"{tag} close {type(e).__name__}")


@_ws
async def sleep_then_send(scope, receive, send):
    """Accepts, records ``accepted``, sleeps ?sleep= seconds without receiving, then sends
    and records the outcome (the client has gone meanwhile)."""
    tag = _tag(scope)
    await _accept(receive, send)
    _record(f"{tag} accepted")
    await asyncio.sleep(float(_qs(scope).get("sleep", 0.5)))
    try:
        for _ in range(3):
            await send({"type": "websocket.send", "text": "x" * 1000})
            await asyncio.sleep(0.05)
        _record(f"{tag} send ok")
    except Exception as e:                      # noqa: BLE001
        cd = _client_disconnected()
        _record(f"{tag} send {type(e).__name__} oserror={isinstance(e, OSError)} "
                f"corsac={cd is not None and isinstance(e, cd)}")
    msg = await asyncio.wait_for(receive(), 5)
    _record(f"{tag} then {_describe(msg)}")


# --------------------------------------------------------------------------- invalid sends

@_ws
async def bad_send(scope, receive, send):
    """Tries invalid websocket.send messages after accept, records the exception of each,
    then sends "still-open" and closes with 1000."""
    tag = _tag(scope)
    await _accept(receive, send)
    cases = {
        "neither": {"type": "websocket.send"},
        "both-none": {"type": "websocket.send", "text": None, "bytes": None},
        "both": {"type": "websocket.send", "text": "a", "bytes": b"b"},
        "text-bytes": {"type": "websocket.send", "text": b"not str"},
        "bytes-str": {"type": "websocket.send", "bytes": "not bytes"},
    }
    for name, msg in cases.items():
        try:
            await send(msg)
            _record(f"{tag} {name} accepted")
        except Exception as e:                  # noqa: BLE001
            _record(f"{tag} {name} {type(e).__name__}")
    await send({"type": "websocket.send", "text": "still-open"})
    await send({"type": "websocket.close", "code": 1000})


# --------------------------------------------------------------------------- flow control

@_ws
async def flood(scope, receive, send):
    """Accepts, then sends ?mb= MiB (default 50) as 64 KiB binary messages (one reused
    buffer); records ``<tag> progress K`` after each MiB, ``<tag> done`` at the end."""
    q = _qs(scope)
    tag = _tag(scope)
    mb = int(q.get("mb", 50))
    await _accept(receive, send)
    _record(f"{tag} started")
    chunk = b"x" * 65536
    try:
        for i in range(mb * 16):
            await send({"type": "websocket.send", "bytes": chunk})
            if i % 16 == 15:
                _record(f"{tag} progress {(i + 1) // 16}")
    except Exception as e:                      # noqa: BLE001
        _record(f"{tag} raised {type(e).__name__}")
        return
    _record(f"{tag} done")
    while (await receive())["type"] != "websocket.disconnect":
        pass


@_ws
async def big_text(scope, receive, send):
    """Accepts; for every message received, answers ?n= (default 100000) characters of a
    repetitive text, so compression shows."""
    n = int(_qs(scope).get("n", 100000))
    text = ("corsac websocket compression " * (n // 29 + 1))[:n]
    await _accept(receive, send)
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": text})


# --------------------------------------------------------------------------- handshake errors

async def recorder(scope, receive, send):
    """Records ``called <type> <path>`` for every call (lifespan included); HTTP requests get
    ``http METHOD PATH upgrade=<Upgrade header>``; WebSockets are accepted and echoed."""
    t = scope["type"]
    if t == "lifespan":
        await _polite_lifespan(receive, send)
        return
    _record(f"called {t} {scope.get('path')}")
    if t == "http":
        upgrade = dict(scope["headers"]).get(b"upgrade", b"-").decode("latin-1")
        await _http_answer(scope, receive, send,
                           f"http {scope['method']} {scope['path']} upgrade={upgrade}\n")
        return
    await _accept(receive, send)
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": msg.get("text") or "?"})


# --------------------------------------------------------------------------- lifespan

async def lifespan_state(scope, receive, send):
    """Startup fills the state (answer 42); a WebSocket gets the state it saw as JSON."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                state = scope.get("state")
                if state is not None:
                    state["answer"] = 42
                    state["pid"] = os.getpid()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await _http_answer(scope, receive, send)
    else:
        await _accept(receive, send)
        state = scope.get("state")
        await send({"type": "websocket.send", "text": json.dumps(
            {"state": None if state is None else _jsonable(dict(state))})})
        while (await receive())["type"] != "websocket.disconnect":
            pass


# --------------------------------------------------------------------------- concurrency

@_ws
async def ticker(scope, receive, send):
    """Accepts; a background task sends "tick 0".."tick N-1" (?n=, default 50) every few ms
    while the app keeps echoing what it receives; the task is awaited before the end."""
    n = int(_qs(scope).get("n", 50))
    await _accept(receive, send)

    async def ticks():
        for i in range(n):
            await send({"type": "websocket.send", "text": f"tick {i}"})
            await asyncio.sleep(0.002)

    task = asyncio.ensure_future(ticks())
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                break
            await send({"type": "websocket.send", "text": "echo " + (msg.get("text") or "")})
    finally:
        try:
            await task
        except Exception:                       # noqa: BLE001
            pass


@_ws
async def sleeper(scope, receive, send):
    """Accepts, records ``<tag> accepted``, then does not receive for ?sleep= seconds
    (default 3); then drains and records ``<tag> drained N bytes`` at the disconnect."""
    q = _qs(scope)
    tag = _tag(scope)
    await _accept(receive, send)
    _record(f"{tag} accepted")
    await asyncio.sleep(float(q.get("sleep", 3)))
    total = 0
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            break
        total += len(msg.get("bytes") or b"") + len(msg.get("text") or "")
    _record(f"{tag} drained {total} bytes")


# --------------------------------------------------------------------------- invalid accept / close

_BAD_ACCEPTS = {
    "header-crlf": {"headers": [(b"x-bad", b"a\r\nInjected: 1")]},
    "header-lf": {"headers": [(b"x-bad", b"a\nInjected: 1")]},
    "header-name-space": {"headers": [(b"x bad", b"1")]},
    "header-str": {"headers": [("x-str", "1")]},
    "subprotocol-crlf": {"subprotocol": "a\r\nInjected: 1"},
    "subprotocol-bytes": {"subprotocol": b"a"},
}


@_ws
async def bad_accept(scope, receive, send):
    """Tries the websocket.accept of ?case=, records ``<tag> accept ok`` or the exception;
    after an exception, accepts properly and sends "clean"."""
    q = _qs(scope)
    tag = _tag(scope)
    await receive()
    try:
        await send({"type": "websocket.accept", **_BAD_ACCEPTS[q["case"]]})
        _record(f"{tag} accept ok")
    except Exception as e:                      # noqa: BLE001
        _record(f"{tag} accept {type(e).__name__}")
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "clean"})
    while (await receive())["type"] != "websocket.disconnect":
        pass
