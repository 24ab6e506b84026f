"""A Starlette WebSocket app for tests/test_websocket_frameworks.py: ``starlette_ws_app:app``.

CORSAC_TEST_DIR names a directory for marker files (disconnect codes and the
like are written there; the tests poll for them).  Routes:

    /ws/echo                   text back as text, bytes back as bytes
    /ws/json                   receive_json/send_json (?mode=binary: JSON in binary frames)
    /ws/endpoint?token=T       a WebSocketEndpoint; on_disconnect writes the close code
    /ws/close?code=C&reason=R  after the first message the app closes with C/R
    /ws/subprotocol            accepts the first offered of chat.v2, chat.v1
    /ws/deny                   ws.close() before accept (-> HTTP 403)
    /ws/deny-response          send_denial_response(401 with a body and a header)
    /ws/info/{room}/{n:int}    one JSON message about the scope, then closes
    /ws/raise                  raises after the first message (-> close 1011)
    /json                      plain HTTP next to the WebSockets
"""
import asyncio
import contextlib
import json
import os
import threading
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SUPPORTED_SUBPROTOCOLS = ["chat.v2", "chat.v1"]   # server preference order


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


async def echo(ws: WebSocket):
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])


async def json_echo(ws: WebSocket):
    mode = ws.query_params.get("mode", "text")
    await ws.accept()
    try:
        while True:
            data = await ws.receive_json(mode=mode)
            await ws.send_json({"got": data, "mode": mode, **loop_info()}, mode=mode)
    except WebSocketDisconnect:
        pass


class Endpoint(WebSocketEndpoint):
    encoding = "text"

    async def on_connect(self, ws):
        self.token = ws.query_params["token"]
        self.count = 0
        await ws.accept()
        await ws.send_text("welcome")

    async def on_receive(self, ws, data):
        self.count += 1
        await ws.send_text(f"{self.count}:{data.upper()}")

    async def on_disconnect(self, ws, close_code):
        write_marker(marker(f"endpoint-{self.token}"), f"{close_code} {self.count}")


async def close_from_app(ws: WebSocket):
    code = int(ws.query_params.get("code", 1000))
    reason = ws.query_params.get("reason", "")
    token = ws.query_params.get("token")
    await ws.accept()
    first = await ws.receive_text()
    await ws.send_text(f"closing after {first}")
    await ws.close(code=code, reason=reason)
    # the client answers the close frame: the app then hears the disconnect
    message = await ws.receive()
    if token:
        write_marker(marker(f"close-{token}"), json.dumps(message))


async def subprotocol(ws: WebSocket):
    offered = ws.scope["subprotocols"]
    chosen = next((p for p in SUPPORTED_SUBPROTOCOLS if p in offered), None)
    await ws.accept(subprotocol=chosen)
    await ws.send_json({"offered": offered, "chosen": chosen})
    await ws.close()


async def deny(ws: WebSocket):
    await ws.close()


async def deny_response(ws: WebSocket):
    await ws.send_denial_response(
        PlainTextResponse("no entry for you", status_code=401, headers={"x-denied": "yes"}))


async def info(ws: WebSocket):
    await ws.accept(headers=[(b"x-accept-header", b"from the app")])
    await ws.send_json({
        "path_params": ws.path_params,
        "query": [list(kv) for kv in ws.query_params.multi_items()],
        "path": ws.url.path,
        "raw_path": ws.scope["raw_path"].decode("latin-1"),
        "url_scheme": ws.url.scheme,
        "scheme": ws.scope["scheme"],
        "http_version": ws.scope.get("http_version"),
        "client_host": ws.client.host if ws.client else None,
        "custom": ws.headers.get("x-custom"),
        "user_agent": ws.headers.get("user-agent"),
        "host": ws.headers.get("host"),
        "cookies": ws.cookies,
        "boot_id": ws.state.boot_id,
        "asgi": ws.scope["asgi"],
        **loop_info(),
    })
    await ws.close()


async def raise_after_first(ws: WebSocket):
    await ws.accept()
    await ws.receive_text()
    raise RuntimeError("boom from the websocket endpoint")


async def json_endpoint(request):
    return JSONResponse({"hello": "world", **loop_info()})


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"boot_id": uuid.uuid4().hex}


app = Starlette(
    routes=[
        WebSocketRoute("/ws/echo", echo),
        WebSocketRoute("/ws/json", json_echo),
        WebSocketRoute("/ws/endpoint", Endpoint),
        WebSocketRoute("/ws/close", close_from_app),
        WebSocketRoute("/ws/subprotocol", subprotocol),
        WebSocketRoute("/ws/deny", deny),
        WebSocketRoute("/ws/deny-response", deny_response),
        WebSocketRoute("/ws/info/{room}/{n:int}", info),
        WebSocketRoute("/ws/raise", raise_after_first),
        Route("/json", json_endpoint),
    ],
    lifespan=lifespan,
)
