"""The baseline for bench/gateway.py: a bare Flask app that answers `GET /instances` with the JSON
bytes the gateway served, read once from the file BENCH_BARE_BODY names. It does nothing else: no
auth, no database, no logging, no metrics. Run under the gateway's own gunicorn settings.
"""

import os
from pathlib import Path

from flask import Flask, Response

app = Flask(__name__)
_BODY = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()


@app.get("/instances")
def instances() -> Response:
    return Response(_BODY, content_type="application/json")


@app.get("/health")
def health() -> Response:
    return Response(b'{"status":"ok"}', content_type="application/json")
