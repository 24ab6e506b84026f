"""A real Flask application for tests/test_frameworks.py (``flask_app:app``).

CORSAC_TEST_FILE names the file served by /download."""
import hashlib
import os
import time

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

app = Flask(__name__)


@app.get("/json")
def json_get():
    return jsonify(hello="world", n=42, items=[1, 2, 3], text="žluťoučký kůň",
                   args=request.args.to_dict(flat=False))


@app.post("/json")
def json_post():
    data = request.get_json()
    return jsonify(received=data, content_type=request.content_type)


@app.post("/form")
def form_post():
    return jsonify(form=request.form.to_dict(flat=False))


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data),
                   sha256=hashlib.sha256(data).hexdigest(),
                   form=request.form.to_dict(flat=False))


@app.get("/stream")
def stream():
    n = request.args.get("n", 5, type=int)
    delay = request.args.get("delay", 0.2, type=float)

    def generate():
        for i in range(n):
            # request is usable here thanks to stream_with_context
            yield f"chunk {i} of {request.args.get('n', '5')}\n"
            if i < n - 1:
                time.sleep(delay)
    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/download")
def download():
    return send_file(os.environ["CORSAC_TEST_FILE"], mimetype="application/octet-stream",
                     as_attachment=True, download_name="data.bin")


@app.route("/headers", methods=["GET", "POST"])
def headers():
    return jsonify(headers=dict(request.headers), method=request.method,
                   path=request.path, full_path=request.full_path,
                   remote_addr=request.remote_addr)
