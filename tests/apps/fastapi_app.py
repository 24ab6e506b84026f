"""A FastAPI app for tests/test_asgi_frameworks.py: ``fastapi_app:app``.

The routes shared with starlette_app.py behave the same; FastAPI-only ones:
/sync (a plain ``def`` endpoint, run in anyio's thread pool), /dep (a
dependency with ``yield``), /model (a validated body), /missing/{id}
(HTTPException).  CORSAC_TEST_DIR names a directory for marker files."""
import asyncio
import contextlib
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from fastapi import (BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, Query,
                     Request, UploadFile)
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.middleware.base import BaseHTTPMiddleware


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


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"boot_id": uuid.uuid4().hex, "hits": []}


app = FastAPI(lifespan=lifespan)


class TagMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        response.headers["x-test-middleware"] = "fastapi"
        response.headers["x-test-raw-path"] = request.scope["raw_path"].decode("latin-1")
        return response

    async def __call__(self, scope, receive, send):
        # BaseHTTPMiddleware wraps receive in a task group, so the immediately
        # cancelled receive() of request.is_disconnected() never reports the
        # disconnect: /disconnect goes around it
        if scope["type"] == "http" and scope["path"] == "/disconnect":
            return await self.app(scope, receive, send)
        return await super().__call__(scope, receive, send)


app.add_middleware(TagMiddleware)


@app.get("/json")
async def json_endpoint():
    return {"hello": "world", "n": 42, "items": [1, 2, 3], "text": "žluťoučký kůň",
            **loop_info()}


@app.get("/items/{item_id}/{name}")
async def item(item_id: int, name: str, request: Request):
    return {"item_id": item_id, "name": name, "path": request.url.path}


@app.get("/query")
async def query(request: Request, a: list[int] = Query([]), b: Optional[str] = None):
    return {"multi": [list(kv) for kv in request.query_params.multi_items()],
            "raw": request.scope["query_string"].decode("latin-1"),
            "a": a, "b": b}


@app.post("/upload")
async def upload(file: UploadFile = File(...), note: str = Form(...), lang: str = Form(...),
                 echo: bool = False):
    data = await file.read()
    if echo:
        return Response(data, media_type="application/octet-stream",
                        headers={"x-filename": file.filename, "x-size": str(len(data))})
    return {"filename": file.filename, "content_type": file.content_type, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "fields": {"note": note, "lang": lang}}


@app.get("/stream")
async def stream(n: int = 5, delay: float = 0.2):
    async def gen():
        for i in range(n):
            yield f"chunk {i} of {n}\n".encode()
            if i < n - 1:
                await asyncio.sleep(delay)
    return StreamingResponse(gen(), media_type="text/plain")


async def write_marker_later(path: Path, delay: float):
    await asyncio.sleep(delay)
    write_marker(path, "done")


@app.get("/background")
async def background(token: str, tasks: BackgroundTasks, delay: float = 0.5):
    tasks.add_task(write_marker_later, marker(f"bg-{token}"), delay)
    return {"queued": token}


@app.get("/state")
async def state(request: Request, hit: str = ""):
    seen_mine = getattr(request.state, "mine", None)
    request.state.hits.append(hit)
    request.state.mine = "set by a previous request"
    return {"boot_id": request.state.boot_id, "hits": list(request.state.hits),
            "seen_mine": seen_mine}


@app.get("/disconnect")
async def disconnect(request: Request, token: str):
    path = marker(f"disc-{token}")

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


# --- FastAPI only -------------------------------------------------------------

@app.get("/sync")
def sync_endpoint(sleep: float = 0.0):
    """A plain def: FastAPI runs it in anyio's worker threads, off the event loop."""
    time.sleep(sleep)
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    return {"thread": threading.get_ident(), "in_loop": in_loop,
            "main": threading.current_thread() is threading.main_thread()}


async def resource(token: str):
    path = marker(f"dep-{token}")
    path.write_text("open\n")
    try:
        yield {"token": token, "path": str(path)}
    finally:
        with path.open("a") as f:
            f.write("closed\n")


@app.get("/dep")
async def dep(res: dict = Depends(resource)):
    return {"res": res, "marker_during": Path(res["path"]).read_text()}


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.post("/model")
async def model(item: Item):
    return {"item": item.model_dump(), "total": item.price * 2}


@app.get("/missing/{item_id}")
async def missing(item_id: int):
    raise HTTPException(status_code=404, detail=f"item {item_id} not found")


@app.exception_handler(ValueError)
async def value_error(request: Request, exc: ValueError):
    return JSONResponse({"error": str(exc)}, status_code=418)


@app.get("/raise")
async def raise_value_error():
    raise ValueError("handled by the app")
