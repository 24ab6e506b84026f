"""An app module that fails at import (tests/test_arbiter.py: no fork loop, one error line)."""
raise RuntimeError("arbiter_broken: deliberate failure at import")


def app(environ, start_response):  # never reached
    start_response("200 OK", [])
    return [b""]
