"""A Starlette app for tests/test_asgi_frameworks.py: ``starlette_app:app``.

CORSAC_TEST_DIR names a directory for marker files (background tasks and
disconnect detection write there, the tests poll for them)."""
import asyncio
import contextlib
import hashlib
import os
import threading
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def marker(name):
    return Path(os.environ.get("CORSAC_TEST_DIR", "/tmp")) / name


def write_marker(path, text):
    """Atomically: the tests poll for the file and must not see it half written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def loop_info():
    loop = asyncio.get_running_loop()
    return {"loop": type(loop).__module__ + "." + type(loop).__qualname__,
            "thread": threading.get_ident()}


async def json_endpoint(request):
    return JSONResponse({"hello": "world", "n": 42, "items": [1, 2, 3],
                         "text": "žluťoučký kůň", **loop_info()})


async def item(request):
    return JSONResponse({"item_id": request.path_params["item_id"],
                         "name": request.path_params["name"],
                         "path": request.url.path})


async def query(request):
    return JSONResponse({"multi": [list(kv) for kv in request.query_params.multi_items()],
                         "raw": request.scope["query_string"].decode("latin-1")})


async def upload(request):
    async with request.form() as form:
        f = form["file"]
        data = await f.read()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if request.query_params.get("echo"):
            return Response(data, media_type="application/octet-stream",
                            headers={"x-filename": f.filename, "x-size": str(len(data))})
        return JSONResponse({"filename": f.filename, "content_type": f.content_type,
                             "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                             "fields": fields})


async def stream(request):
    n = int(request.query_params.get("n", 5))
    delay = float(request.query_params.get("delay", 0.2))

    async def gen():
        for i in range(n):
            yield f"chunk {i} of {n}\n".encode()
            if i < n - 1:
                await asyncio.sleep(delay)
    return StreamingResponse(gen(), media_type="text/plain")


async def write_marker_later(path, delay):
    await asyncio.sleep(delay)
    write_marker(path, "done")


async def background(request):
    token = request.query_params["token"]
    delay = float(request.query_params.get("delay", 0.5))
    path = marker(f"bg-{token}")
    return JSONResponse({"queued": token},
                        background=BackgroundTask(write_marker_later, path, delay))


async def state(request):
    # request.state is a shallow copy of the lifespan state: "hits" is the one
    # list shared by all requests, "mine" set here must not leak to the next one
    seen_mine = getattr(request.state, "mine", None)
    request.state.hits.append(request.query_params.get("hit", ""))
    request.state.mine = "set by a previous request"
    return JSONResponse({"boot_id": request.state.boot_id, "hits": list(request.state.hits),
                         "seen_mine": seen_mine})


async def disconnect(request):
    """Streams until the client goes away (checked with request.is_disconnected())."""
    path = marker(f"disc-{request.query_params['token']}")

    # ASGI spec_version < 2.4: StreamingResponse cancels the stream itself on
    # http.disconnect; from 2.4 on it does not, and only is_disconnected() notices
    spec = request.scope["asgi"].get("spec_version", "2.0")

    async def gen():
        sent, reason = 0, "finished"
        try:
            for _ in range(500):
                if await request.is_disconnected():
                    reason = "disconnected"
                    return
                yield b"x" * 1023 + b"\n"
                sent += 1
                await asyncio.sleep(0.02)
        except BaseException as e:
            reason = f"error {type(e).__name__}"
            raise
        finally:
            write_marker(path, f"{reason} {sent} {spec}")
    return StreamingResponse(gen(), media_type="text/plain")


class TagMiddleware(BaseHTTPMiddleware):
    async def __call__(self, scope, receive, send):
        # BaseHTTPMiddleware wraps receive in a task group, so the immediately
        # cancelled receive() of request.is_disconnected() never reports the
        # disconnect: /disconnect goes around it
        if scope["type"] == "http" and scope["path"] == "/disconnect":
            return await self.app(scope, receive, send)
        return await super().__call__(scope, receive, send)

    async def dispatch(self, request, call_next):
        response = await call_next(request)
        response.headers["x-test-middleware"] = "starlette"
        response.headers["x-test-raw-path"] = request.scope["raw_path"].decode("latin-1")
        return response


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"boot_id": uuid.uuid4().hex, "hits": []}


app = Starlette(
    routes=[
        Route("/json", json_endpoint),
        Route("/items/{item_id:int}/{name}", item),
        Route("/query", query),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", background),
        Route("/state", state),
        Route("/disconnect", disconnect),
    ],
    middleware=[Middleware(TagMiddleware)],
    lifespan=lifespan,
)
