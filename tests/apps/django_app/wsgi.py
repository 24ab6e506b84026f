"""A minimal Django project for tests/test_frameworks.py: ``django_app.wsgi:application``.

Views and URLs live here; settings in django_app/settings.py.
CORSAC_TEST_FILE names the file served by /download."""
import hashlib
import json
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import (FileResponse, HttpResponseBadRequest, JsonResponse,  # noqa: E402
                         StreamingHttpResponse)
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


@csrf_exempt
def json_view(request):
    if request.method == "POST":
        return JsonResponse({"received": json.loads(request.body),
                             "content_type": request.content_type})
    return JsonResponse({"hello": "world", "n": 42, "items": [1, 2, 3],
                         "text": "žluťoučký kůň", "args": dict(request.GET.lists())})


@csrf_exempt
def form_view(request):
    return JsonResponse({"form": dict(request.POST.lists())})


@csrf_exempt
def upload_view(request):
    if "file" not in request.FILES:
        return HttpResponseBadRequest("no file")
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse({"filename": f.name, "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest(),
                         "form": dict(request.POST.lists())})


def stream_view(request):
    n = int(request.GET.get("n", 5))
    delay = float(request.GET.get("delay", 0.2))

    def generate():
        for i in range(n):
            yield f"chunk {i} of {n}\n".encode()
            if i < n - 1:
                time.sleep(delay)
    return StreamingHttpResponse(generate(), content_type="text/plain")


def download_view(request):
    return FileResponse(open(os.environ["CORSAC_TEST_FILE"], "rb"), as_attachment=True,
                        filename="data.bin", content_type="application/octet-stream")


@csrf_exempt
def headers_view(request):
    return JsonResponse({"headers": dict(request.headers), "method": request.method,
                         "path": request.path, "full_path": request.get_full_path(),
                         "remote_addr": request.META.get("REMOTE_ADDR")})


urlpatterns = [
    path("json", json_view),
    path("form", form_view),
    path("upload", upload_view),
    path("stream", stream_view),
    path("download", download_view),
    path("headers", headers_view),
]

application = get_wsgi_application()
