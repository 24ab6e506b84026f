"""ASGI entry for the Django test project: ``django_app.asgi:application``.

The same project as django_app.wsgi (same settings, same URLconf: every WSGI
route works here too); importing this module adds a few async-only routes to
that URLconf, in this process only, so the WSGI entry is left as it is."""
import asyncio
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from django_app import wsgi as project  # noqa: E402  (the ROOT_URLCONF module)


@csrf_exempt
async def async_view(request):
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    body = request.body  # the ASGI handler has read the whole body already
    return JsonResponse({"async": True, "method": request.method,
                         "args": dict(request.GET.lists()), "body_size": len(body),
                         "loop": type(loop).__module__ + "." + type(loop).__qualname__})


async def async_stream_view(request):
    n = int(request.GET.get("n", 5))
    delay = float(request.GET.get("delay", 0.2))

    async def generate():
        for i in range(n):
            yield f"chunk {i} of {n}\n".encode()
            if i < n - 1:
                await asyncio.sleep(delay)
    return StreamingHttpResponse(generate(), content_type="text/plain")


project.urlpatterns += [
    path("async", async_view),
    path("astream", async_stream_view),
]

application = get_asgi_application()
