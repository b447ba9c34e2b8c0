"""`/docs`: the service's OpenAPI document (`/openapi.json`) rendered by Swagger UI.

Self-hosted: the assets come from the pinned swagger-ui-bundle package, served under
/docs/assets/, and the page's one script of its own is static/docs.js (an external file: the
policy allows no inline script). Public like /openapi.json, which it reads; the operations still
need their token ("Authorize"). Not part of the OpenAPI document: HTML for browsers, not the API.
"""

from pathlib import Path

from flask import Blueprint, Flask, Response, abort, send_from_directory
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from shared.web.auth import public
from shared.web.hooks import PAGE_CONTENT_SECURITY_POLICY

SWAGGER_UI_DIR = Path(str(swagger_ui_path))
OWN_SCRIPT_DIR = Path(__file__).parent / "static"
# The only assets the page loads; nothing else of the package is served.
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
# The pages' policy, plus `data:` images: Swagger UI's stylesheet draws its icons as data: URIs.
DOCS_CONTENT_SECURITY_POLICY = PAGE_CONTENT_SECURITY_POLICY.replace(
    "img-src 'self'", "img-src 'self' data:"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · API</title>
  <link rel="icon" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/docs.js"></script>
</body>
</html>
"""


def install_docs(app: Flask, title: str) -> None:
    """/docs (the page), /docs/docs.js and /docs/assets/<name> on `app`, all public."""
    bp = Blueprint("docs", __name__)
    page = PAGE.format(title=title.replace("&", "&amp;").replace("<", "&lt;"))

    @bp.get("/docs")
    @public
    def docs_page() -> Response:
        return Response(page, mimetype="text/html")

    @bp.get("/docs/docs.js")
    @public
    def docs_script() -> Response:
        return send_from_directory(OWN_SCRIPT_DIR, "docs.js")

    @bp.get("/docs/assets/<name>")
    @public
    def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            abort(404)
        return send_from_directory(SWAGGER_UI_DIR, name)

    @bp.after_request
    def policy(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        # The same for everyone and changes only with the package: revalidated, not no-store.
        response.headers["Cache-Control"] = "no-cache"
        return response

    app.register_blueprint(bp)
