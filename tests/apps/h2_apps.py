"""WSGI and ASGI apps for tests/test_h2.py and tests/test_h2_flood.py.

``wsgi_app`` and ``asgi_app`` answer the same routes (query-string options):

* ``/echo``: reads the whole body; answers JSON with its length, sha256 and text, the
  method, path, query, the protocol the app saw (WSGI ``SERVER_PROTOCOL``, ASGI
  ``http_version``), the scheme, the request headers, the Host and Cookie values, and
  the worker pid.  The response carries ``X-Mixed-Case`` and, with ``conn=1``, the
  connection-specific fields a server must not forward over HTTP/2.
* ``/big?n=BYTES``: ``n`` bytes of ``payload()``, sent in 64 KiB pieces (Content-Length set).
* ``/upload``: reads the body in pieces (``delay=S`` first waits S seconds without
  reading), answers JSON ``{"length", "sha256", "pieces"}``.
* ``/slow-stream?total=&chunk=&tag=``: streams ``total`` bytes in ``chunk`` pieces and,
  after every piece, writes how many bytes it has handed to the server into the file
  ``$CORSAC_H2_DIR/progress-<tag>``; ``done`` / ``stopped: ...`` lines end the file.
* ``/wait?tag=`` (ASGI): reads the body, then (``start=1``: after starting a streamed
  response) waits on receive(); when ``http.disconnect`` arrives it writes the file
  ``$CORSAC_H2_DIR/wait-<tag>``.
* ``/sleep?s=``: sleeps, then answers ``slept``.
* ``/pid``: the worker pid as text.
* ``/status?code=``: that status with a body the server must not send for HEAD/204/304.
* ``/trailers`` (ASGI): a response with ``http.response.trailers`` when the scope offers
  the extension (the body says whether it was offered).
"""
import asyncio
import hashlib
import json
import os
import time
from urllib.parse import parse_qs

PIECE = 64 * 1024
_BLOCKS = {}


def _block(i):
    b = _BLOCKS.get(i % 16)
    if b is None:
        seed = hashlib.sha256(str(i % 16).encode()).digest()
        b = _BLOCKS[i % 16] = (seed * (PIECE // len(seed)))
    return b


def payload_pieces(n):
    """The bytes of /big?n=N, as the 64 KiB pieces the apps send."""
    i = 0
    while n > 0:
        b = _block(i)[:min(PIECE, n)]
        yield b
        n -= len(b)
        i += 1


def payload(n):
    return b"".join(payload_pieces(n))


def _q(qs):
    if isinstance(qs, bytes):
        qs = qs.decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}


def _dir_file(name):
    d = os.environ.get("CORSAC_H2_DIR")
    return os.path.join(d, name) if d else None


def _write(name, text):
    path = _dir_file(name)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def _append(name, text):
    path = _dir_file(name)
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


_CONN_FIELDS = [("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"), ("Upgrade", "foo"),
                ("Proxy-Connection", "keep-alive")]


def _echo_info(body, **kw):
    info = {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("latin-1"), "pid": os.getpid()}
    info.update(kw)
    return json.dumps(info).encode()


# --------------------------------------------------------------------------- WSGI

def _wsgi_read_all(environ):
    inp = environ["wsgi.input"]
    chunks = []
    while True:
        b = inp.read(PIECE)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def wsgi_app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _q(environ.get("QUERY_STRING", ""))
    if path == "/echo":
        body = _wsgi_read_all(environ)
        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        if environ.get("CONTENT_LENGTH"):
            headers["content-length"] = environ["CONTENT_LENGTH"]
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        out = _echo_info(body, method=environ["REQUEST_METHOD"], path=path,
                         query=environ.get("QUERY_STRING", ""),
                         protocol=environ.get("SERVER_PROTOCOL"),
                         scheme=environ.get("wsgi.url_scheme"), https=environ.get("HTTPS"),
                         host=environ.get("HTTP_HOST"), cookie=environ.get("HTTP_COOKIE"),
                         headers=headers, server_name=environ.get("SERVER_NAME"),
                         server_port=environ.get("SERVER_PORT"))
        rh = [("Content-Type", "application/json"), ("X-Mixed-Case", "Yes")]
        if q.get("conn"):
            rh += _CONN_FIELDS
        start_response("200 OK", rh)
        return [out]
    if path == "/big":
        n = int(q.get("n", "0"))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(n))])
        return payload_pieces(n)
    if path == "/upload":
        if q.get("delay"):
            time.sleep(float(q["delay"]))
        inp = environ["wsgi.input"]
        h, n, pieces = hashlib.sha256(), 0, 0
        while True:
            b = inp.read(PIECE)
            if not b:
                break
            h.update(b)
            n += len(b)
            pieces += 1
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"length": n, "sha256": h.hexdigest(), "pieces": pieces}).encode()]
    if path == "/slow-stream":
        total, chunk, tag = int(q.get("total", str(128 << 20))), int(q.get("chunk", str(PIECE))), q.get("tag", "w")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            data = b"s" * chunk
            sent = 0
            try:
                while sent < total:
                    yield data
                    sent += chunk
                    _write(f"progress-{tag}", str(sent))
                _append(f"progress-{tag}-end", "done")
            except GeneratorExit:
                _append(f"progress-{tag}-end", "stopped: GeneratorExit")
                raise
        return gen()
    if path == "/sleep":
        time.sleep(float(q.get("s", "1")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    if path == "/status":
        code = int(q.get("code", "200"))
        start_response(f"{code} Whatever", [("Content-Type", "text/plain")])
        return [b"this body must not be sent"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


# --------------------------------------------------------------------------- ASGI

async def _read_all(receive):
    chunks = []
    while True:
        m = await receive()
        if m["type"] != "http.request":
            raise ConnectionError(m["type"])
        chunks.append(m.get("body", b""))
        if not m.get("more_body"):
            return b"".join(chunks)


async def _send_simple(send, status, body, headers=(), ctype=b"text/plain"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype)] + list(headers)})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send):
    while True:
        m = await receive()
        if m["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif m["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = _q(scope.get("query_string", b""))
    if path == "/echo":
        body = await _read_all(receive)
        hs = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        host = [v for k, v in hs if k == "host"]
        cookie = [v for k, v in hs if k == "cookie"]
        out = _echo_info(body, method=scope["method"], path=path,
                         query=scope.get("query_string", b"").decode("latin-1"),
                         http_version=scope.get("http_version"), scheme=scope.get("scheme"),
                         headers=hs, host=host, cookie=cookie,
                         server=list(scope["server"]) if scope.get("server") else None,
                         extensions=sorted((scope.get("extensions") or {}).keys()))
        rh = [(b"x-mixed-case", b"Yes"), (b"X-Upper-Name", b"1")]
        if q.get("conn"):
            rh += [(k.encode(), v.encode()) for k, v in _CONN_FIELDS]
        return await _send_simple(send, 200, out, rh, b"application/json")
    if path == "/big":
        n = int(q.get("n", "0"))
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(n).encode())]})
        pieces = list(payload_pieces(n)) or [b""]
        for i, p in enumerate(pieces):
            await send({"type": "http.response.body", "body": p,
                        "more_body": i < len(pieces) - 1})
        return
    if path == "/upload":
        if q.get("delay"):
            await asyncio.sleep(float(q["delay"]))
        h, n, pieces = hashlib.sha256(), 0, 0
        while True:
            m = await receive()
            if m["type"] != "http.request":
                return
            b = m.get("body", b"")
            h.update(b)
            n += len(b)
            pieces += 1
            if not m.get("more_body"):
                break
        out = json.dumps({"length": n, "sha256": h.hexdigest(), "pieces": pieces}).encode()
        return await _send_simple(send, 200, out, ctype=b"application/json")
    if path == "/slow-stream":
        total, chunk, tag = int(q.get("total", str(128 << 20))), int(q.get("chunk", str(PIECE))), q.get("tag", "a")
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        data = b"s" * chunk
        sent = 0
        try:
            while sent < total:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                sent += chunk
                _write(f"progress-{tag}", str(sent))
            await send({"type": "http.response.body", "body": b""})
            _append(f"progress-{tag}-end", "done")
        except BaseException as e:
            _append(f"progress-{tag}-end", f"stopped: {type(e).__name__}")
            raise
        return
    if path == "/wait":
        tag = q.get("tag", "w")
        await _read_all(receive)
        if q.get("start"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
        m = await receive()
        _write(f"wait-{tag}", m["type"])
        return
    if path == "/sleep":
        await _read_all(receive)
        await asyncio.sleep(float(q.get("s", "1")))
        return await _send_simple(send, 200, b"slept")
    if path == "/pid":
        await _read_all(receive)
        return await _send_simple(send, 200, str(os.getpid()).encode())
    if path == "/status":
        await _read_all(receive)
        code = int(q.get("code", "200"))
        return await _send_simple(send, code, b"this body must not be sent")
    if path == "/trailers":
        await _read_all(receive)
        has_ext = "http.response.trailers" in (scope.get("extensions") or {})
        await send({"type": "http.response.start", "status": 200, "trailers": has_ext,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"x-trailers-ext", b"yes" if has_ext else b"no")]})
        await send({"type": "http.response.body", "body": b"part one;", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two;", "more_body": False})
        if has_ext:
            await send({"type": "http.response.trailers", "more_trailers": False,
                        "headers": [(b"x-checksum", b"abc123"), (b"x-count", b"2")]})
        return
    return await _send_simple(send, 404, b"not found")
