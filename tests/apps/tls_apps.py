"""Apps for tests/test_tls.py: what the server tells the app about a TLS connection.

``tls_apps:wsgi_app`` (WSGI) and ``tls_apps:asgi_app`` (ASGI) answer every request with a
JSON object of facts about it (scheme, protocol, pid, the body's length and sha256, and
for ASGI the ``tls`` scope extension), except:

* ``/big?n=N``: N bytes of ``payload(N)`` (deterministic; the test computes the same
  bytes), with ``x-sha256`` and ``x-pid`` headers.
* ``/sleep?s=S`` (WSGI only): sleeps S seconds on the worker's I/O thread, then answers
  as usual.

The ASGI app also takes WebSockets on any path: text and bytes are echoed back, except the
text ``"scope"``, answered with the scope facts as JSON text.
"""
import hashlib
import json
import os
import random
import time
from urllib.parse import parse_qs


def payload(n):
    """The n bytes /big?n=N sends (the same on every call)."""
    return random.Random(n).randbytes(n)


def _qs(raw):
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


# --------------------------------------------------------------------------- WSGI

def wsgi_app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _qs(environ.get("QUERY_STRING", ""))
    if path == "/big":
        data = payload(int(q.get("n", "0")))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data))),
                                  ("X-Sha256", hashlib.sha256(data).hexdigest()),
                                  ("X-Pid", str(os.getpid()))])
        return [data]
    if path == "/sleep":
        time.sleep(float(q.get("s", "1")))
    h = hashlib.sha256()
    n = 0
    inp = environ["wsgi.input"]
    while True:
        chunk = inp.read(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    facts = {
        "interface": "wsgi",
        "url_scheme": environ.get("wsgi.url_scheme"),
        "HTTPS": environ.get("HTTPS"),
        "SERVER_PROTOCOL": environ.get("SERVER_PROTOCOL"),
        "REQUEST_METHOD": environ.get("REQUEST_METHOD"),
        "PATH_INFO": path,
        "HTTP_HOST": environ.get("HTTP_HOST"),
        "SERVER_PORT": environ.get("SERVER_PORT"),
        "pid": os.getpid(),
        "body_len": n,
        "body_sha256": h.hexdigest(),
    }
    body = json.dumps(facts).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


# --------------------------------------------------------------------------- ASGI

def _scope_facts(scope):
    ext = scope.get("extensions") or {}
    tls = ext.get("tls")
    return {
        "interface": "asgi",
        "type": scope["type"],
        "scheme": scope.get("scheme"),
        "http_version": scope.get("http_version"),
        "path": scope.get("path"),
        "server": list(scope["server"]) if scope.get("server") else None,
        "has_tls": "tls" in ext,
        "tls": dict(tls) if isinstance(tls, dict) else tls,
        "pid": os.getpid(),
    }


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    q = _qs(scope.get("query_string", b"").decode("latin-1"))
    h = hashlib.sha256()
    n = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        chunk = message.get("body", b"")
        h.update(chunk)
        n += len(chunk)
        if not message.get("more_body", False):
            break
    if scope["path"] == "/big":
        data = payload(int(q.get("n", "0")))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(data)).encode()),
                                (b"x-sha256", hashlib.sha256(data).hexdigest().encode()),
                                (b"x-pid", str(os.getpid()).encode())]})
        # in several pieces, so the TLS writer sees a streamed body
        step = 256 * 1024
        for i in range(0, len(data), step):
            await send({"type": "http.response.body", "body": data[i:i + step],
                        "more_body": i + step < len(data)})
        if not data:
            await send({"type": "http.response.body", "body": b""})
        return
    facts = _scope_facts(scope)
    facts.update(body_len=n, body_sha256=h.hexdigest(), method=scope.get("method"))
    body = json.dumps(facts).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _websocket(scope, receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "scope":
            await send({"type": "websocket.send", "text": json.dumps(_scope_facts(scope))})
        elif text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
