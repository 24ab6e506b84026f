"""A Quart app for tests/test_asgi_frameworks.py: ``quart_app:app``."""
import asyncio
import hashlib

from quart import Quart, Response, request

app = Quart(__name__)


@app.get("/json")
async def json_get():
    loop = asyncio.get_running_loop()
    return {"hello": "world", "n": 42, "items": [1, 2, 3], "text": "žluťoučký kůň",
            "args": {k: request.args.getlist(k) for k in request.args},
            "loop": type(loop).__module__ + "." + type(loop).__qualname__}


@app.post("/json")
async def json_post():
    return {"received": await request.get_json(), "content_type": request.content_type}


@app.post("/echo")
async def echo():
    data = await request.get_data()
    return Response(data, content_type="application/octet-stream",
                    headers={"x-size": str(len(data)),
                             "x-sha256": hashlib.sha256(data).hexdigest()})


@app.get("/stream")
async def stream():
    n = int(request.args.get("n", 5))
    delay = float(request.args.get("delay", 0.2))

    async def gen():
        for i in range(n):
            yield f"chunk {i} of {n}\n".encode()
            if i < n - 1:
                await asyncio.sleep(delay)
    return gen(), 200, {"Content-Type": "text/plain"}
