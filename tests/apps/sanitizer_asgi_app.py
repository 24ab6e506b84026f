"""The ASGI app that tests/test_sanitizers.py runs the sanitized server on (--interface asgi).

One app, routed on the path; options come from the query string (``?tag=...`` names the
request in the record).  The app tells the tests what it saw through the file named by
``CORSAC_TEST_RECORD`` (one line per event, ``<tag> <event>``, flushed at once).

HTTP:
  /health               "ok"
  /echo                 reads the whole body, answers it (Content-Length)
  /echo-stream          answers each body chunk as it arrives (chunked response)
  /sha                  reads the body, answers "<len> <sha256>"; records how the read ended
  /stream?n=&size=      n chunks of size bytes, a sleep(0) between them
  /big?n=               n bytes of "x" in 64 KiB sends; records how the send ended
  /slow?s=              sleeps, then answers
  /raise                raises before the response
WebSocket:
  /ws/echo              echoes; records ``disconnect CODE``
  /ws/close?code=&reason=  accepts, sends "closing", closes with code/reason
  /ws/raise             accepts, sends "hello", waits for a message, raises
  /ws/flood?mb=         sends mb MiB as 64 KiB random binary messages; records ``raised X``/``done``
  /ws/hold              accepts, sends "held", echoes; records ``disconnect CODE``
"""
import asyncio
import hashlib
import os
from urllib.parse import parse_qs


def _record(line):
    path = os.environ.get("CORSAC_TEST_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _qs(scope):
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


async def _respond(send, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive):
    parts = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None, parts
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(parts), parts


async def _http(scope, receive, send):
    q, path, tag = _qs(scope), scope["path"], _qs(scope).get("tag", "-")
    if path == "/health":
        await _respond(send, b"ok")
    elif path == "/echo":
        body, _ = await _read_body(receive)
        if body is None:
            _record(f"{tag} echo disconnect")
            return
        await _respond(send, body)
    elif path == "/echo-stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        try:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    _record(f"{tag} echo-stream disconnect")
                    return
                if msg.get("body"):
                    await send({"type": "http.response.body", "body": msg["body"], "more_body": True})
                if not msg.get("more_body"):
                    break
            await send({"type": "http.response.body", "body": b""})
        except Exception as e:                  # noqa: BLE001 - recorded for the test
            _record(f"{tag} echo-stream raised {type(e).__name__}")
    elif path == "/sha":
        body, parts = await _read_body(receive)
        if body is None:
            _record(f"{tag} sha disconnect after {sum(map(len, parts))}")
            return
        _record(f"{tag} sha read {len(body)}")
        await _respond(send, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))
    elif path == "/stream":
        n, size = int(q.get("n", 10)), int(q.get("size", 10))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": bytes([97 + i % 26]) * size,
                        "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        n = int(q.get("n", 1 << 20))
        chunk = b"x" * 65536
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(n).encode())]})
            left = n
            while left:
                k = min(left, len(chunk))
                left -= k
                await send({"type": "http.response.body", "body": chunk[:k], "more_body": bool(left)})
        except Exception as e:                  # noqa: BLE001 - recorded for the test
            _record(f"{tag} big raised {type(e).__name__}")
            return
        _record(f"{tag} big done")
    elif path == "/slow":
        await asyncio.sleep(float(q.get("s", 0.5)))
        await _respond(send, b"slow done")
    elif path == "/raise":
        raise RuntimeError("corsac-sanitizer-asgi raise")
    else:
        await _respond(send, b"no such route", 404)


async def _accept(receive, send, **kw):
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg
    await send({"type": "websocket.accept", **kw})


async def _ws(scope, receive, send):
    q, path, tag = _qs(scope), scope["path"], _qs(scope).get("tag", "-")
    if path in ("/ws/echo", "/ws/hold"):
        await _accept(receive, send)
        _record(f"{tag} accepted")
        if path == "/ws/hold":
            await send({"type": "websocket.send", "text": "held"})
        n = 0
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                _record(f"{tag} disconnect {msg.get('code')} after {n}")
                return
            n += 1
            if msg.get("text") is not None:
                await send({"type": "websocket.send", "text": msg["text"]})
            else:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
    elif path == "/ws/close":
        await _accept(receive, send)
        await send({"type": "websocket.send", "text": "closing"})
        await send({"type": "websocket.close", "code": int(q.get("code", 4000)),
                    "reason": q.get("reason", "done")})
        msg = await asyncio.wait_for(receive(), 5)
        _record(f"{tag} after-close {msg['type']} {msg.get('code')}")
    elif path == "/ws/raise":
        await _accept(receive, send)
        await send({"type": "websocket.send", "text": "hello"})
        await receive()
        raise RuntimeError("corsac-sanitizer-ws raise after accept")
    elif path == "/ws/flood":
        await _accept(receive, send)
        _record(f"{tag} started")
        chunk = os.urandom(65536)           # incompressible: deflate does not shrink the flood
        try:
            for _ in range(int(q.get("mb", 100)) * 16):
                await send({"type": "websocket.send", "bytes": chunk})
        except Exception as e:                  # noqa: BLE001 - recorded for the test
            _record(f"{tag} raised {type(e).__name__}")
            return
        _record(f"{tag} done")
        while (await receive())["type"] != "websocket.disconnect":
            pass
    else:
        await receive()
        await send({"type": "websocket.close", "code": 1000})


async def _lifespan(receive, send):
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        await _http(scope, receive, send)
    else:
        await _ws(scope, receive, send)
