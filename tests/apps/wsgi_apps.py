"""Small WSGI applications used by tests/test_wsgi.py.

Each app is a module attribute, so a test starts e.g. ``corsac("wsgi_apps:environ_app")``.
Apps that take options read them from the query string.  Two environment variables
are used to talk to the tests:

* ``CORSAC_TEST_CLOSED``: a file; every close() of a response iterable (or of a
  file given to wsgi.file_wrapper) appends one line ``<tag> <detail>`` to it.
* ``CORSAC_TEST_FILE``: the file served by ``file_app`` and the validated app.
"""
import hashlib
import io
import json
import os
import sys
import threading
import time
import warnings
import wsgiref.validate
from urllib.parse import parse_qs


def _qs(environ):
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _json(start_response, obj, status="200 OK", headers=()):
    body = json.dumps(obj).encode("ascii")
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))] + list(headers))
    return [body]


def _record_closed(tag, detail=""):
    path = os.environ.get("CORSAC_TEST_CLOSED")
    if path:
        with open(path, "a") as f:
            f.write(f"{tag} {detail}\n")
            f.flush()


# --------------------------------------------------------------------------- environ

def environ_app(environ, start_response):
    """Returns the environ as JSON: str values as-is, other values as repr(), plus types."""
    values, types = {}, {}
    for key, value in environ.items():
        types[key] = type(value).__name__
        values[key] = value if type(value) is str else repr(value)

    errors = environ["wsgi.errors"]
    marker = _qs(environ).get("errors_marker")
    if marker:
        errors.write(f"wsgi.errors says {marker}\n")
        errors.writelines([f"wsgi.errors writelines {marker}\n"])
        errors.flush()

    inp = environ["wsgi.input"]
    body = inp.read()
    extras = {
        "version": list(environ["wsgi.version"]),
        "version_is_tuple": type(environ["wsgi.version"]) is tuple,
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "run_once": environ["wsgi.run_once"],
        "input_terminated": environ.get("wsgi.input_terminated"),
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
        "input_methods": {m: callable(getattr(inp, m, None))
                          for m in ("read", "readline", "readlines", "__iter__")},
        "errors_methods": {m: callable(getattr(errors, m, None))
                           for m in ("write", "writelines", "flush")},
        "body": body.decode("latin-1"),
        "body_type": type(body).__name__,
        "thread": threading.current_thread().name,
    }
    if _qs(environ).get("pollute"):
        # must not leak into the environ of a later request on the same connection
        environ["HTTP_X_POLLUTED"] = "yes"
        environ["corsac_test.polluted"] = True
        environ["wsgi.input"] = None
    return _json(start_response, {"environ": values, "types": types, "extras": extras})


# --------------------------------------------------------------------------- wsgi.input

def input_app(environ, start_response):
    """Reads wsgi.input the way ?mode= says and reports what each call returned.

    Response JSON: lens (length of every piece returned, in order), sha256 of the
    concatenation, types of the pieces, after (what one more read returned),
    content_length (the environ value).  ?echo=1 also returns the data (latin-1).
    """
    q = _qs(environ)
    mode = q.get("mode", "read")
    n = int(q.get("n") or 0)
    inp = environ["wsgi.input"]
    pieces = []
    groups = None
    if mode == "late":
        # the body is read only after the response has started
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen():
            yield b"start;"
            yield hashlib.sha256(inp.read()).hexdigest().encode()
        return gen()
    if mode == "stall":
        # the client stalls mid-body: read must raise OSError (recorded under ?tag=)
        try:
            inp.read()
        except BaseException as e:
            _record_closed(q.get("tag", "stall"), f"{type(e).__name__}:{isinstance(e, OSError)}")
            raise
        _record_closed(q.get("tag", "stall"), "no-exception")
        return _json(start_response, {"mode": mode})
    if mode == "read":
        pieces = [inp.read()]
    elif mode == "read_minus1":
        pieces = [inp.read(-1)]
    elif mode == "readn":
        while True:
            d = inp.read(n)
            if not d:
                break
            pieces.append(d)
    elif mode == "readline":
        while True:
            d = inp.readline()
            if not d:
                break
            pieces.append(d)
    elif mode == "readline_limit":
        while True:
            d = inp.readline(n)
            if not d:
                break
            pieces.append(d)
    elif mode == "readlines":
        pieces = inp.readlines()
    elif mode == "readlines_hint":
        groups = []
        while True:
            lines = inp.readlines(n)
            if not lines:
                break
            groups.append(len(lines))
            pieces.extend(lines)
    elif mode == "iter":
        pieces = list(inp)
    elif mode == "mixed":
        # read(n), then a line, then read() the rest
        pieces.append(inp.read(n))
        pieces.append(inp.readline())
        pieces.append(inp.read())
    elif mode == "partial":
        pieces = [inp.read(n)]
    elif mode == "none":
        pieces = []
    else:
        raise ValueError(f"unknown mode {mode!r}")

    after = None
    if mode not in ("partial", "none"):
        after = inp.read(10)
        after = [type(after).__name__, after.decode("latin-1")]
    data = b"".join(pieces)
    result = {
        "mode": mode,
        "lens": [len(p) for p in pieces],
        "types": sorted({type(p).__name__ for p in pieces}),
        "sha256": hashlib.sha256(data).hexdigest(),
        "total": len(data),
        "after": after,
        "groups": groups,
        "content_length": environ.get("CONTENT_LENGTH"),
    }
    if q.get("echo"):
        result["data"] = data.decode("latin-1")
    return _json(start_response, result)


# --------------------------------------------------------------------------- write()

def write_app(environ, start_response):
    """Uses write() and then returns more chunks.

    default: write one,  two,  then return three, four  -> "one,two,three,four"
    ?cl=1:   same, with a correct Content-Length
    ?only=1: everything through write(), returns []
    ?big=1:  three 1 MiB writes ("a"*, "b"*, "c"*), then returns b"end"
    """
    q = _qs(environ)
    headers = [("Content-Type", "text/plain")]
    if q.get("big"):
        write = start_response("200 OK", headers)
        for ch in (b"a", b"b", b"c"):
            write(ch * (1 << 20))
        return [b"end"]
    if q.get("cl"):
        headers.append(("Content-Length", str(len(b"one,two,three,four"))))
    write = start_response("200 OK", headers)
    write(b"one,")
    write(b"")
    write(b"two,")
    if q.get("only"):
        write(b"three,")
        write(b"four")
        return []
    return [b"three,", b"", b"four"]


# --------------------------------------------------------------------------- exc_info

def exc_info_app(environ, start_response):
    """start_response(200), then an error: start_response(500, ..., exc_info) before
    anything was sent, with an error page of its own."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
    try:
        raise ValueError("handled inside the app")
    except ValueError:
        start_response("500 Internal Server Error",
                       [("Content-Type", "text/plain"), ("X-Handled", "yes")],
                       sys.exc_info())
    return [b"app's own error page"]


def exc_info_late_app(environ, start_response):
    """exc_info given after body bytes were written: start_response must re-raise."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"partial body;")
    try:
        raise ValueError("late failure corsac-late-marker")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"SHOULD-NOT-BE-SENT"]


def twice_app(environ, start_response):
    """start_response twice without exc_info: the second call must raise."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"second start_response was accepted"]


# --------------------------------------------------------------------------- exceptions

def raise_app(environ, start_response):
    raise RuntimeError("corsac-secret-marker: this must not reach the client")


def raise_after_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"first chunk;"
        raise RuntimeError("corsac-after-marker")
    return gen()


# --------------------------------------------------------------------------- bad responses

BAD_RESPONSES = {
    "/value-crlf": ("200 OK", [("X-Test", "a\r\nInjected: yes")]),
    "/value-lf": ("200 OK", [("X-Test", "a\nInjected: yes")]),
    "/value-cr": ("200 OK", [("X-Test", "a\rInjected: yes")]),
    "/value-nul": ("200 OK", [("X-Test", "a\x00b")]),
    "/value-nonlatin1": ("200 OK", [("X-Test", "snowman \u2603")]),
    "/value-bytes": ("200 OK", [("X-Test", b"bytes")]),
    "/value-int": ("200 OK", [("X-Test", 5)]),
    "/name-space": ("200 OK", [("X Bad", "v")]),
    "/name-colon": ("200 OK", [("X-Bad:", "v")]),
    "/name-empty": ("200 OK", [("", "v")]),
    "/name-crlf": ("200 OK", [("X-A\r\nInjected", "yes")]),
    "/name-nonlatin1": ("200 OK", [("X-\u2603", "v")]),
    "/name-bytes": ("200 OK", [(b"X-Test", "v")]),
    "/status-nospace": ("200OK", []),
    "/status-4digit": ("2000 X", []),
    "/status-2digit": ("20 OK", []),
    "/status-alpha": ("abc OK", []),
    "/status-crlf": ("200 OK\r\nInjected: yes", []),
    "/status-bytes": (b"200 OK", []),
    "/status-int": (200, []),
    "/headers-not-pairs": ("200 OK", [("X-A", "b", "c")]),
}


def bad_header_app(environ, start_response):
    """/ok answers normally; every path in BAD_RESPONSES gives an invalid status/header."""
    path = environ["PATH_INFO"]
    if path == "/ok":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/multi":
        # valid: repeated Set-Cookie stays separate, latin-1 value goes out as one byte
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/"),
                                  ("X-Latin", "caf\u00e9"), ("Set-Cookie", "b=2"),
                                  ("x-lower", "v")])
        return [b"multi"]
    status, headers = BAD_RESPONSES[path]
    start_response(status, [("Content-Type", "text/plain")] + headers)
    return [b"this body must never be sent"]


def _bad_app(status, headers):
    def app(environ, start_response):
        start_response(status, [("Content-Type", "text/plain")] + headers)
        return [b"this body must never be sent"]
    return app


bad_header_crlf_app = _bad_app(*BAD_RESPONSES["/value-crlf"])
bad_header_nul_app = _bad_app(*BAD_RESPONSES["/value-nul"])
bad_header_nonlatin1_app = _bad_app(*BAD_RESPONSES["/value-nonlatin1"])
bad_header_name_app = _bad_app(*BAD_RESPONSES["/name-space"])
bad_status_app = _bad_app(*BAD_RESPONSES["/status-nospace"])
bad_status_4digit_app = _bad_app(*BAD_RESPONSES["/status-4digit"])
bad_status_type_app = _bad_app(*BAD_RESPONSES["/status-bytes"])


def bad_body_app(environ, start_response):
    """Response bodies that are not iterables of bytes."""
    path = environ["PATH_INFO"]
    headers = [("Content-Type", "text/plain")]
    if path == "/str-item-cl":
        headers.append(("Content-Length", "28"))
    start_response("200 OK", headers)
    if path in ("/str-item", "/str-item-cl"):
        return ["this body must never be sent"]
    if path == "/none":
        return None
    if path == "/bare-bytes":
        return b"this body must never be sent"
    if path == "/int":
        return 42
    return [b"ok"]


# --------------------------------------------------------------------------- close()

class _ClosingBody:
    """Iterable whose close() is recorded.  fail_at: raise when that chunk index is reached."""

    def __init__(self, tag, chunks, fail_at=None, delay=0.0, limit=None):
        self.tag = tag
        self.chunks = chunks          # list, or a bytes value repeated forever
        self.fail_at = fail_at
        self.delay = delay
        self.limit = limit            # seconds, for the endless body
        self.count = 0
        self.started = None

    def __iter__(self):
        return self

    def __next__(self):
        if self.started is None:
            self.started = time.monotonic()
        if self.fail_at is not None and self.count == self.fail_at:
            raise RuntimeError("corsac-close-app-failure")
        if isinstance(self.chunks, list):
            if self.count >= len(self.chunks):
                raise StopIteration
            chunk = self.chunks[self.count]
        else:
            if self.limit is not None and time.monotonic() - self.started > self.limit:
                raise StopIteration
            if self.delay:
                time.sleep(self.delay)
            chunk = self.chunks
        self.count += 1
        return chunk

    def close(self):
        _record_closed(self.tag, str(self.count))


def close_app(environ, start_response):
    """?tag=T&mode=normal|fail|failfirst|long|badheader|short|lazy"""
    q = _qs(environ)
    tag = q.get("tag", "untagged")
    mode = q.get("mode", "normal")
    headers = [("Content-Type", "text/plain")]
    if mode == "normal":
        start_response("200 OK", headers)
        return _ClosingBody(tag, [b"a", b"b", b"c"])
    if mode == "fail":
        start_response("200 OK", headers)
        return _ClosingBody(tag, [b"first-chunk;", b"never"], fail_at=1)
    if mode == "failfirst":
        start_response("200 OK", headers)
        return _ClosingBody(tag, [b"never"], fail_at=0)
    if mode == "long":
        start_response("200 OK", headers)
        return _ClosingBody(tag, b"L" * 65536, delay=0.002, limit=20.0)
    if mode == "badheader":
        # A server may reject the header inside start_response (then there is no
        # iterable to close: record that) or later, when it must close the iterable.
        try:
            start_response("200 OK", headers + [("X-Bad", "a\r\nInjected: yes")])
        except Exception:
            _record_closed(tag, "rejected-by-start_response")
            raise
        return _ClosingBody(tag, [b"never"])
    if mode == "short":
        # promises more than it sends
        start_response("200 OK", headers + [("Content-Length", "100")])
        return _ClosingBody(tag, [b"only ten b"])
    if mode == "lazy":
        # start_response is only called from the first iteration (allowed by PEP 3333)
        class Lazy(_ClosingBody):
            def __next__(self):
                if self.count == 0:
                    start_response("200 OK", headers)
                return super().__next__()
        return Lazy(tag, [b"lazy;", b"body"])
    raise ValueError(mode)


# --------------------------------------------------------------------------- wsgi.file_wrapper

class _RecordingFile:
    """A file-like object (not an io object, so no implicit close on garbage collection)
    with a real fileno(); close() is recorded."""

    def __init__(self, path, tag):
        self._f = open(path, "rb")
        self.tag = tag

    def read(self, n=-1):
        return self._f.read(n)

    def fileno(self):
        return self._f.fileno()

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()

    def close(self):
        _record_closed(self.tag, "file")
        self._f.close()


class _NoFileno:
    """A file-like object with read() and close() only (e.g. a socket/pipe/BytesIO wrapper)."""

    def __init__(self, data, tag):
        self._b = io.BytesIO(data)
        self.tag = tag

    def read(self, n=-1):
        return self._b.read(n)

    def close(self):
        _record_closed(self.tag, "nofileno")


def file_app(environ, start_response):
    """Serves CORSAC_TEST_FILE through wsgi.file_wrapper.

    ?cl=1        the app sets Content-Length (remaining bytes from the offset)
    ?extra=N     ... and claims N bytes more than the file has
    ?offset=N    seek the file to N before wrapping (the response is the rest of the file)
    ?kind=plain|record|nofileno   (record/nofileno record close() under ?tag=)
    """
    q = _qs(environ)
    path = os.environ["CORSAC_TEST_FILE"]
    offset = int(q.get("offset") or 0)
    kind = q.get("kind", "plain")
    tag = q.get("tag", "file")
    size = os.path.getsize(path) - offset
    if kind == "plain":
        f = open(path, "rb")
    elif kind == "record":
        f = _RecordingFile(path, tag)
    elif kind == "nofileno":
        with open(path, "rb") as g:
            f = _NoFileno(g.read(), tag)
    else:
        raise ValueError(kind)
    if offset and kind == "nofileno":
        f.read(offset)
    elif offset:
        f.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl"):
        headers.append(("Content-Length", str(size + int(q.get("extra") or 0))))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 65536)


# --------------------------------------------------------------------------- wsgiref.validate

# The validator reports some problems as warnings; make them hard errors so they
# show up as 500s instead of being lost in the log.
warnings.simplefilter("error", wsgiref.validate.WSGIWarning)


def _inner_validated(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    text = [("Content-Type", "text/plain")]
    inp = environ["wsgi.input"]

    if path == "/hello":
        start_response("200 OK", text)
        return [b"hello ", b"validated"]
    if path == "/empty":
        start_response("200 OK", text + [("Content-Length", "0")])
        return []
    if path == "/nocontent":
        start_response("204 No Content", [])
        return []
    if path == "/read" and method == "POST":
        length = environ.get("CONTENT_LENGTH")
        if length:
            body = inp.read(int(length))
        else:  # chunked: read in pieces until EOF
            parts = []
            while True:
                d = inp.read(8192)
                if not d:
                    break
                parts.append(d)
            body = b"".join(parts)
        start_response("200 OK", text)
        return [hashlib.sha256(body).hexdigest().encode()]
    if path == "/readline" and method == "POST":
        lines = []
        while True:
            line = inp.readline()
            if not line:
                break
            lines.append(line)
        start_response("200 OK", text)
        return [str(len(lines)).encode(), b" ", hashlib.sha256(b"".join(lines)).hexdigest().encode()]
    if path == "/readlines" and method == "POST":
        lines = inp.readlines()
        start_response("200 OK", text)
        return [str(len(lines)).encode(), b" ", hashlib.sha256(b"".join(lines)).hexdigest().encode()]
    if path == "/iter" and method == "POST":
        lines = [line for line in inp]
        start_response("200 OK", text)
        return [str(len(lines)).encode(), b" ", hashlib.sha256(b"".join(lines)).hexdigest().encode()]
    if path == "/write":
        write = start_response("200 OK", text)
        write(b"written;")
        return [b"returned"]
    if path == "/file":
        f = open(os.environ["CORSAC_TEST_FILE"], "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 32768)
    if path == "/generator":
        start_response("200 OK", text)

        def gen():
            for i in range(5):
                yield b"%d;" % i
        return gen()
    start_response("404 Not Found", text)
    return [b"not found"]


validated_app = wsgiref.validate.validator(_inner_validated)
