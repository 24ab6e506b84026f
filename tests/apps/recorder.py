"""A WSGI app for the HTTP/1.1 and command-line tests.

Every request whose body was read completely is recorded: a line
``METHOD PATH_INFO`` is appended to the file named by the environment variable
CORSAC_TEST_RECORD (if set), flushed at once.  The line is written after the
body was read, so a request whose body turned out to be malformed (the read
raised) is not recorded either; routes that do not read the body record the
line before answering.

Routes (anything else: read the body, answer ``METHOD PATH len=N``):

  /echo            the request body, as read with read()
  /echo-lines      the request body, as read by iterating wsgi.input
  /headers         JSON object of the HTTP_* environ keys
  /environ         JSON object of the str/int/bool environ values
  /stream?n=K      K chunks (default 5) from a generator, no Content-Length,
                   with an empty chunk in the middle
  /nolength        a one-item generator body, no Content-Length
  /fixed           body "fixed-body" with an app-given Content-Length
  /big?n=N         N bytes of b"x" in a single-item list (&gen=1: a generator of 64 KiB pieces)
  /slow?s=F        sleep F seconds (default 0.5), then answer
  /read-nothing    answer without touching wsgi.input
  /expect          read the body (triggers 100-continue), answer its length
  /own-date        sets its own Date header
  /status?code=N   answer with status N and no body
  /write           body produced through start_response's write()
"""
import json
import os
import threading
import time
from urllib.parse import parse_qs

_lock = threading.Lock()


def _record(environ):
    path = os.environ.get("CORSAC_TEST_RECORD")
    if not path:
        return
    line = "%s %s\n" % (environ.get("REQUEST_METHOD", "?"), environ.get("PATH_INFO", "?"))
    with _lock:
        with open(path, "a", encoding="latin-1") as f:
            f.write(line)
            f.flush()


def _read_all(environ):
    inp = environ["wsgi.input"]
    chunks = []
    while True:
        b = inp.read(65536)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response, body, status="200 OK", ctype="text/plain", extra=()):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype)] + list(extra))
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "")
    q = _query(environ)

    if path == "/read-nothing":
        _record(environ)
        return _text(start_response, "did not read\n")

    if path == "/echo-lines":
        body = b"".join(line for line in environ["wsgi.input"])
        _record(environ)
        return _text(start_response, body, ctype="application/octet-stream")

    body = _read_all(environ)
    _record(environ)

    if path == "/echo":
        return _text(start_response, body, ctype="application/octet-stream")

    if path == "/expect":
        return _text(start_response, "len=%d\n" % len(body))

    if path == "/headers":
        d = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        return _text(start_response, json.dumps(d, sort_keys=True), ctype="application/json")

    if path == "/environ":
        d = {k: v for k, v in environ.items() if isinstance(v, (str, int, bool))}
        d["wsgi.version"] = list(environ.get("wsgi.version", ()))
        return _text(start_response, json.dumps(d, sort_keys=True), ctype="application/json")

    if path == "/stream":
        n = int(q.get("n", 5))

        def gen():
            for i in range(n):
                if i == n // 2:
                    yield b""  # an empty item must not end the chunked stream
                yield b"chunk-%d\n" % i

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/nolength":
        def one():
            yield b"generated body\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return one()

    if path == "/fixed":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"fixed-body"]

    if path == "/big":
        n = int(q.get("n", 1 << 20))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if q.get("gen"):  # a generator of 64 KiB pieces (chunked)
            return (b"x" * min(65536, n - i) for i in range(0, n, 65536))
        return [b"x" * n]

    if path == "/slow":
        time.sleep(float(q.get("s", 0.5)))
        return _text(start_response, "slow done\n")

    if path == "/own-date":
        return _text(start_response, "own date\n",
                     extra=[("Date", "Thu, 01 Jan 2004 00:00:00 GMT")])

    if path == "/status":
        code = int(q.get("code", 204))
        reasons = {204: "No Content", 304: "Not Modified", 404: "Not Found"}
        start_response("%d %s" % (code, reasons.get(code, "Whatever")), [])
        return []

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written-1\n")
        write(b"written-2\n")
        return [b"returned\n"]

    return _text(start_response, "%s %s len=%d\n" % (method, path, len(body)))


# For `recorder:holder.inner.app` (dotted attribute path).
class _Holder:
    pass


holder = _Holder()
holder.inner = _Holder()
holder.inner.app = app


def create_app():
    """For `recorder:create_app --factory`: the app, marked with X-Factory: yes."""

    def factory_app(environ, start_response):
        def sr(status, headers, exc_info=None):
            return start_response(status, list(headers) + [("X-Factory", "yes")], exc_info)

        return app(environ, sr)

    return factory_app
