"""Raw ASGI WebSocket echo app for bench/ws_run.py and bench/ws_idle.py.

Accepts every WebSocket (no subprotocol), sends text back as text and bytes
as bytes, and returns when the client disconnects. A plain HTTP request gets
200 `ws echo` (the bench scripts poll it to know the server is up). Handles
lifespan.

Example:  uvicorn --ws websockets --app-dir bench/apps ws_echo:app
          granian --interface asgi --working-dir bench/apps ws_echo:app
"""

BODY = b"ws echo"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(BODY)).encode("ascii")),
    ],
}
END = {"type": "http.response.body", "body": BODY}
ACCEPT = {"type": "websocket.accept"}


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "websocket":
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send(ACCEPT)
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
    elif kind == "http":
        await send(START)
        await send(END)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
