"""The operator dashboard (`/ui/`): the fleet, tenants and reconcile runs, and a page per VM.

The pages are shells: their scripts (static/ui/) read and act through the gateway's own JSON API,
with the session that signing in here starts (services/api/auth.py). So the dashboard can do
exactly what the API allows, and shows exactly what the API shows: never a secret or a bundle.
The pages run only their own scripts and styles, and build the DOM from text, never from HTML.
"""

import dataclasses
import hmac
import logging
import re
import uuid
from pathlib import Path
from urllib.parse import quote

from flask import (
    Blueprint,
    Flask,
    current_app,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)

from services.api.auth import CSRF_HEADER, csrf_token, sign_in, sign_out, signed_in
from shared.domain.errors import RegistryUnavailable
from shared.domain.lifecycle import Status
from shared.settings import Settings
from shared.web import PAGE_CONTENT_SECURITY_POLICY, public

log = logging.getLogger("dark.api")

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")

STATIC_DIR = Path(__file__).parent / "static" / "ui"
# Where sign-in may send the browser back to: a dashboard path, never another site.
_LOCAL_NEXT = re.compile(r"/ui/[A-Za-z0-9._~%/?&=+-]*\Z")


@dataclasses.dataclass(frozen=True)
class UiConfig:
    flower_url: str | None


def install_ui(app: Flask, settings: Settings) -> None:
    app.extensions["dark_ui"] = UiConfig(flower_url=settings.flower_url)
    app.register_blueprint(bp)


@bp.after_request
def _page_headers(response):
    # The app's security headers (shared/web/hooks.py) add nosniff, no referrer and no framing, and
    # keep what is set here. connect-src 'self' keeps the page script's calls on the gateway.
    response.headers["Content-Security-Policy"] = PAGE_CONTENT_SECURITY_POLICY
    # Pages carry the CSRF token: the app's no-store. Static files: revalidated, so updates show.
    if request.endpoint == "ui.static":
        response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
@public
def dashboard():
    if not signed_in():
        return _sign_in_page()
    return _page(
        "ui/dashboard.html",
        statuses=[status.value for status in Status],
        refused=_refused_run(),
        capacity=_capacity(),
    )


@bp.get("/instances/<tenant>/<uuid:instance_id>")
@public
def instance_page(tenant: str, instance_id: uuid.UUID):
    if not signed_in():
        # Percent-encoded, so that a tenant name in any script survives the round trip.
        return redirect(url_for("ui.dashboard", next=quote(request.path)), 303)
    return _page("ui/instance.html", tenant=tenant, instance_id=str(instance_id))


@bp.post("/sign-in")
@public
def sign_in_form():
    next_path = _local_next(request.form.get("next", ""))
    if not sign_in(request.form.get("token", "").strip()):
        log.warning("ui sign-in refused: not an operator token")
        return _sign_in_page(error="That token is not valid.", next_path=next_path, status=401)
    log.info("ui sign-in")
    return redirect(next_path or url_for("ui.dashboard"), 303)


@bp.post("/sign-out")
@public
def sign_out_form():
    # Signing someone out is harmless, but only this dashboard's own form may do it.
    supplied = request.form.get("csrf_token", "")
    if signed_in() and hmac.compare_digest(supplied.encode(), csrf_token().encode()):
        sign_out()
    return redirect(url_for("ui.dashboard"), 303)


@bp.get("/static/<path:filename>")
@public
def static(filename: str):
    # send_from_directory refuses paths that leave the directory (404).
    return send_from_directory(STATIC_DIR, filename)


def _refused_run() -> dict | None:
    """What the banner says when the newest real reconcile run was refused (its blast-radius cap
    held back deletes and lost marks); None when it was not, or the registry cannot say now."""
    try:
        run = current_app.extensions["dark"].runs.last_real_run()
    except RegistryUnavailable:
        return None
    if run is None or run.get("outcome") != "refused":
        return None
    held = [action for action in run["actions"] if action.get("held_back")]
    orphans = sum(1 for action in held if action["kind"] == "orphan")
    lost = sum(1 for action in held if action["kind"] == "lost")
    return {"id": run["id"], "orphans": orphans, "lost": lost, "confirm": orphans + lost}


def _capacity() -> dict | None:
    """The cloud operation budget in use and its queue (the /metrics figures, as fresh as they);
    None when the registry cannot say now."""
    try:
        stats = current_app.extensions["dark"].stats.snapshot()
    except RegistryUnavailable:
        return None
    return {"in_flight": stats.operations_in_flight, "waiting": stats.waiting_for_capacity}


def _page(template: str, **context):
    return render_template(
        template,
        csrf_token=csrf_token(),
        csrf_header=CSRF_HEADER,
        flower_url=current_app.extensions["dark_ui"].flower_url,
        **context,
    )


def _sign_in_page(error: str | None = None, next_path: str | None = None, status: int = 200):
    next_path = next_path if next_path is not None else _local_next(request.args.get("next", ""))
    html = render_template("ui/sign_in.html", error=error, next_path=next_path)
    return html, status


def _local_next(candidate: str) -> str | None:
    if _LOCAL_NEXT.match(candidate) and "//" not in candidate:
        return candidate
    return None
