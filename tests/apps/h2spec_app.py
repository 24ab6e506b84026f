"""Tiny apps for tests/test_h2_conformance.py (the h2spec-style HTTP/2 suite).

Both behave the same:

* the request body is read to the end; the response is ``200`` with ``n`` bytes of
  ``x`` (query ``?n=``, default 32), a ``content-length``, ``x-body-len`` (bytes of
  request body the app got) and ``x-echo-test`` (the request's ``x-test`` field, if any);
* ``/hold`` (ASGI only) does not read the body and answers after 3 s, so the request
  body window is never given back while the test runs.

``app`` is ASGI, ``wsgi`` is WSGI.
"""
import asyncio
from urllib.parse import parse_qs


def _n(query):
    try:
        return int(parse_qs(query).get("n", ["32"])[-1])
    except ValueError:
        return 32


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    n = _n(scope.get("query_string", b"").decode("latin-1"))
    size = 0
    if scope["path"] == "/hold":
        await asyncio.sleep(3)
    else:
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            size += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(n).encode()),
               (b"x-body-len", str(size).encode()),
               (b"x-http-version", scope.get("http_version", "").encode())]
    for k, v in scope["headers"]:
        if k == b"x-test":
            headers.append((b"x-echo-test", v))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"x" * n})


def wsgi(environ, start_response):
    n = _n(environ.get("QUERY_STRING", ""))
    size = 0
    inp = environ["wsgi.input"]
    while True:
        chunk = inp.read(65536)
        if not chunk:
            break
        size += len(chunk)
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(n)),
               ("X-Body-Len", str(size)),
               ("X-Http-Version", environ.get("SERVER_PROTOCOL", ""))]
    if "HTTP_X_TEST" in environ:
        headers.append(("X-Echo-Test", environ["HTTP_X_TEST"]))
    start_response("200 OK", headers)
    return [b"x" * n]
