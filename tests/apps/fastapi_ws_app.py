"""A FastAPI app with WebSocket and HTTP routes for tests/test_websocket_frameworks.py:
``fastapi_ws_app:app``.

CORSAC_TEST_DIR names a directory for marker files (the tests poll for them).

    WS   /ws/items/{item_id}?q=INT[&token=T]  path/query validation, Depends (a yield
                                              dependency writes open/closed markers),
                                              a Header and a Cookie parameter
    WS   /ws/auth?token=T                     a dependency raising WebSocketException(1008)
                                              when the token is not "secret"
    WS   /ws/leave?token=T                    echoes until WebSocketDisconnect; writes its code
    WS   /ws/chat/{room}?name=N               broadcast to every socket in the room
    GET  /json, /chat/{room}                  plain HTTP next to the WebSockets
"""
import asyncio
import os
import threading
from pathlib import Path
from typing import Annotated

from fastapi import (Cookie, Depends, FastAPI, Header, Query, WebSocket, WebSocketDisconnect,
                     WebSocketException, status)


def marker(name):
    return Path(os.environ.get("CORSAC_TEST_DIR", "/tmp")) / name


def write_marker(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_marker(path, text):
    with open(path, "a") as f:
        f.write(text)


def loop_info():
    loop = asyncio.get_running_loop()
    return {"loop": type(loop).__module__ + "." + type(loop).__qualname__,
            "thread": threading.get_ident()}


app = FastAPI()


async def resource(token: str | None = None):
    """A yield dependency: opened before the endpoint, closed after it returns."""
    path = marker(f"wsdep-{token}") if token else None
    if path:
        append_marker(path, "open\n")
    try:
        yield {"token": token}
    finally:
        if path:
            append_marker(path, "closed\n")


def require_token(token: str | None = None):
    if token != "secret":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason="bad token")
    return token


@app.websocket("/ws/items/{item_id}")
async def ws_items(websocket: WebSocket, item_id: int, q: Annotated[int, Query()],
                   res: Annotated[dict, Depends(resource)],
                   x_custom: Annotated[str | None, Header()] = None,
                   session: Annotated[str | None, Cookie()] = None):
    await websocket.accept()
    await websocket.send_json({"item_id": item_id, "q": q, "res": res, "x_custom": x_custom,
                               "session": session, **loop_info()})
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"item {item_id}: {text}")
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/auth")
async def ws_auth(websocket: WebSocket, token: Annotated[str, Depends(require_token)]):
    await websocket.accept()
    await websocket.send_text(f"hello {token}")
    await websocket.close()


@app.websocket("/ws/leave")
async def ws_leave(websocket: WebSocket, token: str):
    await websocket.accept()
    n = 0
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
            n += 1
    except WebSocketDisconnect as e:
        write_marker(marker(f"leave-{token}"), f"{e.code} {n} {e.reason}")


class Room:
    def __init__(self):
        self.sockets: dict[WebSocket, str] = {}

    async def broadcast(self, text, exclude=None):
        for ws in list(self.sockets):
            if ws is not exclude:
                await ws.send_text(text)


rooms: dict[str, Room] = {}


@app.websocket("/ws/chat/{room}")
async def ws_chat(websocket: WebSocket, room: str, name: str):
    await websocket.accept()
    r = rooms.setdefault(room, Room())
    await r.broadcast(f"{name} joined")
    r.sockets[websocket] = name
    await websocket.send_text(f"welcome {name}, {len(r.sockets)} here")
    try:
        while True:
            text = await websocket.receive_text()
            await r.broadcast(f"{name}: {text}")
    except WebSocketDisconnect:
        pass
    finally:
        r.sockets.pop(websocket, None)
    await r.broadcast(f"{name} left")


@app.get("/json")
async def json_endpoint():
    return {"hello": "world", **loop_info()}


@app.get("/chat/{room}")
async def chat_members(room: str):
    r = rooms.get(room)
    return {"members": sorted(r.sockets.values()) if r else []}


@app.post("/chat/{room}")
async def chat_post(room: str, text: str):
    """HTTP into the WebSocket world: broadcast to the room."""
    r = rooms.get(room)
    if r:
        await r.broadcast(f"http: {text}")
    return {"sent_to": len(r.sockets) if r else 0}
