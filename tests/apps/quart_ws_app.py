"""A Quart app with WebSocket routes for tests/test_websocket_frameworks.py:
``quart_ws_app:app``.

    WS  /ws/echo          text back as text, bytes back as bytes (accepted on first send)
    WS  /ws/info/<name>   one JSON message about the request, then closes with 4000
    WS  /ws/deny          returns a 401 response before accepting (a denial response)
    GET /json             plain HTTP next to the WebSockets
"""
import asyncio
import json

from quart import Quart, Response, websocket

app = Quart(__name__)


def loop_name():
    loop = asyncio.get_running_loop()
    return type(loop).__module__ + "." + type(loop).__qualname__


@app.websocket("/ws/echo")
async def echo():
    await websocket.accept()
    while True:
        data = await websocket.receive()
        await websocket.send(data)


@app.websocket("/ws/info/<name>")
async def info(name):
    await websocket.accept()
    await websocket.send(json.dumps({
        "name": name,
        "args": {k: websocket.args.getlist(k) for k in websocket.args},
        "custom": websocket.headers.get("X-Custom"),
        "path": websocket.path,
        "scheme": websocket.scheme,
        "loop": loop_name(),
    }))
    await websocket.close(4000, "done")


@app.websocket("/ws/deny")
async def deny():
    return Response("quart says no", status=401, headers={"x-denied": "quart"})


@app.get("/json")
async def json_route():
    return {"hello": "world", "loop": loop_name()}
