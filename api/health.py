"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.drain import current_drain
from api.errors import error_response
from api.services import services
from core.redact import redact_secrets
from storage import StorageError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """200 when the database and the broker answer; 503 naming what does not,
    and 503 ``draining`` from the moment this process is asked to stop (it
    still serves: a load balancer takes it out before it closes)."""
    if current_drain().stopping:
        return error_response(
            503, "draining", "not ready: this API process is stopping; use another one"
        )
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.store.ping()
        checks["database"] = "ok"
    except StorageError as exc:
        checks["database"] = redact_secrets(str(exc))
    try:
        svc.dispatcher.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = redact_secrets(f"the broker is not reachable: {exc}")
    down = [name for name, state in checks.items() if state != "ok"]
    if not down:
        return jsonify({"status": "ready", "checks": checks})
    return error_response(
        503,
        "not_ready",
        f"not ready: {', '.join(down)} unavailable",
        [{"field": name, "message": checks[name]} for name in down],
    )
