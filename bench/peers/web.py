"""The HTTP surface every peer serves, around its own submit and status read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue


def create_web_app(
    name: str, submit: Callable[[dict[str, Any]], str], status: Callable[[str], str | None]
) -> Flask:
    """``POST /jobs`` -> ``submit(deck)`` (the job id), ``GET /jobs/<id>`` ->
    ``status(id)`` (``None``: unknown), ``GET /healthz``."""
    app = Flask(name)

    @app.post("/jobs")
    def submit_job() -> ResponseReturnValue:
        deck = request.get_json(silent=True)
        if not isinstance(deck, dict) or not isinstance(deck.get("slides"), list):
            return jsonify(error="a deck is a JSON object with slides"), 422
        job_id = submit(deck)
        return jsonify(job_id=job_id, status="queued"), 202, {"Location": f"/jobs/{job_id}"}

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> ResponseReturnValue:
        found = status(job_id)
        if found is None:
            return jsonify(error="no such job"), 404
        return jsonify(job_id=job_id, status=found)

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(status="ok")

    return app
