"""Flask application used by the `flask-json` benchmark scenario.

GET /json returns {"message": "Hello, World!"} via flask.jsonify, which
exercises Flask's routing, request context and JSON response machinery.
"""

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/json")
def json_hello():
    return jsonify(message="Hello, World!")


application = app
