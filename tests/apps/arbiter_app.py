"""A WSGI app for the pre-fork arbiter tests (tests/test_arbiter.py).

Routes:
  /pid           the worker's os.getpid(), as ASCII digits
  /multiprocess  repr(environ["wsgi.multiprocess"])
  /spin          loops forever in pure Python (never answers): the worker's
                 heartbeat must go silent with --threads 1
  /slow?s=F      sleep F seconds (default 0.5), then answer "slow done"
  anything else  "ok"
"""
import os
import time
from urllib.parse import parse_qs


def _text(start_response, body):
    if isinstance(body, str):
        body = body.encode("ascii")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/multiprocess":
        return _text(start_response, repr(environ.get("wsgi.multiprocess")))
    if path == "/spin":
        while True:
            pass
    if path == "/slow":
        q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        time.sleep(float(q.get("s", 0.5)))
        return _text(start_response, "slow done")
    return _text(start_response, "ok")
