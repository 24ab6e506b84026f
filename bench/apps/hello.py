"""Minimal WSGI application used by the Corsac benchmarks.

Every request gets the same 13-byte plain-text body, with an explicit
Content-Length so servers can keep the connection alive without chunking.
"""

BODY = b"Hello, World!"
HEADERS = [
    ("Content-Type", "text/plain"),
    ("Content-Length", str(len(BODY))),
]


def app(environ, start_response):
    start_response("200 OK", list(HEADERS))
    return [BODY]


application = app
