"""What every request and response goes through: a request id and one log line per request, and
the security headers on every response."""

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

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
        # Each `g.` and `request.` is a context-variable lookup: the objects are fetched once.
        state = g._get_current_object()
        state.started = time.perf_counter()
        state.request_id = new_request_id(request.headers.get("X-Request-Id"))
        state.request_id_token = request_id_var.set(state.request_id)

    def finish(response: Response) -> Response:
        state = g._get_current_object()
        current = request._get_current_object()  # type: ignore[attr-defined]
        response.headers["X-Request-Id"] = state.request_id
        # The route template, not the path: it names no tenant, and keeps metric series few.
        rule = current.url_rule
        route = rule.rule if rule is not None else "-"
        seconds = time.perf_counter() - state.started
        log.info(
            "http method=%s route=%s status=%d duration_ms=%.1f",
            current.method,
            route,
            response.status_code,
            seconds * 1000,
            # Explicit, so that the line keeps its id wherever the record is formatted.
            extra={"request_id": state.request_id},
        )
        if observe is not None:
            observe(current.method, route, response.status_code, seconds)
        return response

    def end(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id_var.reset(token)

    app.before_request(begin)
    app.after_request(finish)
    app.teardown_request(end)


# Set on every response unless the view set its own. Cache-Control: answers name tenants and their
# secrets' state, so no cache keeps a copy.
SECURITY_HEADERS = (
    ("Content-Security-Policy", API_CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
)
_SECURITY_HEADER_KEYS = tuple((key.lower(), key, value) for key, value in SECURITY_HEADERS)


def install_security_headers(app: Flask) -> None:
    """Headers on every response; a view that sets its own (a page's CSP) keeps them.

    Added where the response leaves the app (its WSGI `start_response`), to the plain list of
    header pairs: after every hook, on every response the app sends (an error's included), and
    without werkzeug's validation of each value on every request (these are constants).
    """
    inner = app.wsgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {key.lower() for key, _ in headers}
            for lowered, key, value in _SECURITY_HEADER_KEYS:
                if lowered not in present:
                    headers.append((key, value))
            return start_response(status, headers, exc_info)

        return inner(environ, start)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
