"""What every request and response goes through: a request id and one log line per request, and
the security headers on every response."""

import logging
import time
from collections.abc import Callable

from flask import Flask, Response, g, request

from shared.logs import new_request_id, request_id_var

# JSON answers are never rendered, framed or cached; a page sets its own policy before this.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# A page runs only its own scripts and styles and talks only to its origin: no inline code, no
# other origin, no framing, and forms post only here.
PAGE_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def install_request_hooks(
    app: Flask,
    log: logging.Logger,
    observe: Callable[[str, str, int, float], None] | None = None,
) -> None:
    """A request id for every request (the caller's X-Request-Id when well-formed), echoed in the
    response, and one log line per request: method, route template, status, duration, request id.
    Never a header, the query, or the body. `observe`, if given, is handed the same method, route,
    status and duration (in seconds) of every request: for metrics.

    Install it before any other before_request hook, so that a 401 is logged with its request id.
    """

    def begin() -> None:
        g.started = time.perf_counter()
        g.request_id = new_request_id(request.headers.get("X-Request-Id"))
        g.request_id_token = request_id_var.set(g.request_id)

    def finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.request_id
        # The route template, not the path: it names no tenant, and keeps metric series few.
        route = request.url_rule.rule if request.url_rule else "-"
        seconds = time.perf_counter() - g.started
        log.info(
            "http method=%s route=%s status=%d duration_ms=%.1f",
            request.method,
            route,
            response.status_code,
            seconds * 1000,
            # Explicit, so that the line keeps its id wherever the record is formatted.
            extra={"request_id": g.request_id},
        )
        if observe is not None:
            observe(request.method, route, response.status_code, seconds)
        return response

    def end(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)

    app.before_request(begin)
    app.after_request(finish)
    app.teardown_request(end)


def install_security_headers(app: Flask) -> None:
    """Headers on every response; a view that sets its own (a page's CSP) keeps them."""

    def secure(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", API_CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        # Answers name tenants and their secrets' state: no cache keeps a copy.
        headers.setdefault("Cache-Control", "no-store")
        return response

    app.after_request(secure)
