"""Cross-origin requests: which other sites' pages may call the API from a browser.

Only the exact origins of ``SLIDEFARM_CORS_ORIGINS`` get CORS headers, and
their value is the request's own origin (never ``*``), so a page elsewhere
cannot read an answer. Credentials (cookies) are never allowed across sites:
a page elsewhere sends a key in ``Authorization``, which the preflight
allows by name. A preflight cannot carry a key (browsers send it without
one), so it is answered before authentication, whatever the path.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request

ALLOWED_METHODS = "GET, HEAD, POST, DELETE"
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-None-Match, Range"
#: Headers a page elsewhere may read besides the always-readable ones: what a
#: client needs to poll (ETag), follow a submission (Location), back off
#: (Retry-After and the rate-limit headers), download and seek.
EXPOSED_HEADERS = ", ".join(
    (
        "ETag",
        "Location",
        "Retry-After",
        "Idempotent-Replayed",
        "Content-Disposition",
        "Content-Range",
        "Accept-Ranges",
        "RateLimit",
        "RateLimit-Policy",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    )
)
#: Seconds a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE = "600"


def _origins() -> frozenset[str]:
    found: frozenset[str] = current_app.extensions["slidefarm_cors"]
    return found


def _is_preflight() -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def _preflight() -> Response | None:
    """``204`` to every preflight, with the allowances only for an allowed origin."""
    if not _is_preflight():
        return None
    response = Response(status=204)
    if request.headers["Origin"] in _origins():
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return response


def _decorate(response: Response) -> Response:
    """The CORS headers of an allowed origin's request, on every answer
    (errors too, so a page can read why it was refused)."""
    origins = _origins()
    if not origins:
        return response
    response.vary.add("Origin")  # a cache must not hand one origin's answer to another
    origin = request.headers.get("Origin")
    if origin is not None and origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        if not _is_preflight():
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response


def init_cors(app: Flask, origins: frozenset[str]) -> None:
    """Answer preflights and mark allowed origins' answers; call before
    :func:`api.auth.init_auth` so a preflight never meets the key check."""
    app.extensions["slidefarm_cors"] = origins
    app.before_request(_preflight)
    app.after_request(_decorate)
