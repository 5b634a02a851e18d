"""Authentication: who a request speaks for, checked before any view runs.

With ``SLIDEFARM_AUTH=required`` every route needs an API key in
``Authorization: Bearer sf_<id>_<secret>`` (never in a URL), except the
probes, the OpenAPI document and the dashboard's sign-in page. The
dashboard's browser signs in once with a key and then carries a session
cookie (HttpOnly, SameSite=Strict) that stands for that key, because an
``EventSource`` cannot send headers; a write made with the cookie must also
carry ``X-Slidefarm-Request`` (a header no other site can make a browser
send), so the cookie cannot be used for cross-site request forgery. A
request for an output that carries a signed link's token is judged by that
token alone (api/signing.py) and then speaks for the key that made the link.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, render_template, request, url_for

from api.errors import Forbidden, error_response
from api.services import services
from api.signing import OPEN_KEY_ID, TOKEN_PARAM, UrlSigner, signed_output
from storage.access import AccessStore, Principal
from storage.models import DEFAULT_TENANT

log = logging.getLogger(__name__)

SESSION_COOKIE = "slidefarm_session"
CSRF_HEADER = "X-Slidefarm-Request"
#: Endpoints anyone may reach: the probes, the API's description, the
#: dashboard's sign-in, its icon and its static files (none of which holds data).
PUBLIC_ENDPOINTS = frozenset(
    {
        "health.healthz",
        "health.readyz",
        "openapi.document",
        "dashboard.login",
        "dashboard.login_submit",
        "dashboard.logout",
        "dashboard.static",
        "dashboard.favicon",
        "dashboard.favicon_ico",
    }
)
OPEN_PRINCIPAL = Principal(DEFAULT_TENANT, admin=True, key_id=None)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class KeyCache:
    """Keys this process checked lately, trusted for ``ttl`` seconds from
    their last check, so a status read does not pay a database round trip
    for its key each time. A revoked key stops working everywhere within
    ``ttl``: every check after the revocation fails and drops the entry.

    Entries are found by the exact credential the client sent, so a hit
    costs one dict lookup: no SHA-256 of the secret (the check itself, on a
    miss, hashes and compares in constant time). A credential that differs
    in any character is another entry, checked afresh; the dict's string
    hashes are keyed per process, so lookups leak nothing useful in time.
    At most :data:`MAX_ENTRIES` (all dropped past it); a failed check is
    never kept, so unknown credentials cannot fill it.

    Past half its ``ttl``, an entry is checked again by the one request that
    notices first, while the others go on trusting it until it expires: a
    busy key is never checked by every thread at once."""

    MAX_ENTRIES = 4096

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        # token -> (expires, refresh after, principal)
        self._entries: dict[str, tuple[float, float, Principal]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def get(self, token: str, load: Any) -> Principal | None:
        if self.ttl <= 0:
            principal: Principal | None = load(token)
            return principal
        now = time.monotonic()
        hit = self._entries.get(token)
        if hit is not None and hit[0] > now:
            if hit[1] > now:
                return hit[2]
            with self._lock:
                if token in self._refreshing:
                    return hit[2]  # another request is checking it again
                self._refreshing.add(token)
            try:
                return self._load(token, load, now)
            finally:
                with self._lock:
                    self._refreshing.discard(token)
        return self._load(token, load, now)

    def _load(self, token: str, load: Any, now: float) -> Principal | None:
        principal: Principal | None = load(token)
        with self._lock:
            if principal is None:
                self._entries.pop(token, None)
                return None
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[token] = (now + self.ttl, now + self.ttl / 2, principal)
        return principal


def principal() -> Principal:
    """The principal of the current request (set before every view)."""
    found: Principal = g.principal
    return found


def owner_scope() -> str | None:
    """The owner a request's job lookups are limited to: ``None`` (all jobs)
    for admins, else the key's tenant."""
    who = principal()
    return None if who.admin else who.tenant


def require_admin() -> None:
    if not principal().admin:
        raise Forbidden("this needs an admin key")


def _challenge(message: str, error: str | None) -> Response:
    if request.blueprint == "dashboard" and request.method in _SAFE_METHODS:
        query = request.query_string.decode("latin-1")
        target = request.path + (f"?{query}" if query else "")
        if request.headers.get("Sec-Fetch-Mode") == "navigate":
            # A browser opening a page goes to the sign-in page: every browser
            # reports a page that answers 401 as an error in its console.
            return Response(
                status=303,
                headers={
                    "Location": url_for("dashboard.login", next=target),
                    "Cache-Control": "no-store",
                },
            )
        response = Response(
            render_template("login.html", error=None, next=target), status=401, mimetype="text/html"
        )
    else:
        response = error_response(401, "unauthorized", message)
    value = 'Bearer realm="slidefarm"'
    if error:
        value += f', error="{error}"'
    response.headers["WWW-Authenticate"] = value
    response.headers["Cache-Control"] = "no-store"
    return response


def _signed_link_refused() -> Response:
    response = error_response(
        403,
        "invalid_link",
        "the signed link is not valid: it has expired, was revoked, or is for another file",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _authenticate_link(token: str, relative: str) -> Response | None:
    """A request carrying a signed link's token: it speaks for the key that
    made the link while that key is live, for this one file."""
    signer: UrlSigner | None = current_app.extensions["slidefarm_signer"]
    job_id = str((request.view_args or {}).get("job_id", ""))
    key_id = signer.verify(token, job_id, relative) if signer is not None else None
    if key_id is None:
        return _signed_link_refused()
    if key_id == OPEN_KEY_ID:
        if services().settings.auth_required:
            return _signed_link_refused()
        g.principal = OPEN_PRINCIPAL
        return None
    cache: KeyCache = current_app.extensions["slidefarm_key_ids"]
    who = cache.get(key_id, AccessStore(services().store).live_key)
    if who is None:
        return _signed_link_refused()
    g.principal = who
    return None


def _authenticate() -> Response | None:
    settings = services().settings
    # No query string (the usual request): no parsing of one.
    token = request.args.get(TOKEN_PARAM) if request.query_string else None
    if token is not None:
        relative = signed_output(request.endpoint, request.view_args)
        if relative is not None:
            return _authenticate_link(token, relative)
    if not settings.auth_required:
        g.principal = OPEN_PRINCIPAL
        return None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    access = AccessStore(services().store)
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _challenge(
                "the Authorization header must read `Bearer <key>`", "invalid_request"
            )
        cache: KeyCache = current_app.extensions["slidefarm_keys"]
        who = cache.get(token.strip(), access.verify)
        if who is None:
            return _challenge(
                "the API key is not valid (unknown, malformed or revoked)", "invalid_token"
            )
        g.principal = who
        return None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        who = access.session(cookie)
        if who is not None:
            if request.method not in _SAFE_METHODS and not request.headers.get(CSRF_HEADER):
                return error_response(
                    403,
                    "forbidden",
                    f"a write with the dashboard's session needs the {CSRF_HEADER} header",
                )
            g.principal = who
            return None
    return _challenge("a valid API key is required: send `Authorization: Bearer <key>`", None)


def init_auth(app: Flask) -> None:
    """Check every request's key before its view runs."""
    settings = app.extensions["slidefarm"].settings
    app.extensions["slidefarm_keys"] = KeyCache(settings.key_cache_ttl)
    # Key ids that signed links stand for, trusted as long as keys are.
    app.extensions["slidefarm_key_ids"] = KeyCache(settings.key_cache_ttl)
    secret = settings.secret_key
    app.extensions["slidefarm_signer"] = (
        None if secret is None else UrlSigner(secret.get_secret_value(), settings.signed_url_ttl)
    )
    app.before_request(_authenticate)
    if not settings.auth_required:
        log.warning(
            "authentication is OFF (SLIDEFARM_AUTH=%s): anyone who can reach this "
            "API can submit, read and delete every job; set SLIDEFARM_AUTH=required "
            "and create keys with `slidefarm keys create` before exposing it",
            settings.auth or "off, the embedded default",
        )
