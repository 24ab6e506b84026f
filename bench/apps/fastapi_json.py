"""FastAPI application used by the `fastapi-json` benchmark scenario.

GET /json returns {"message": "Hello, World!"}. The endpoint is a coroutine,
as is usual for FastAPI (a plain `def` endpoint would run in a thread pool),
so the request goes through Starlette's routing, FastAPI's dependency and
response handling and JSONResponse, all on the event loop.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/json")
async def json_hello():
    return {"message": "Hello, World!"}


application = app
