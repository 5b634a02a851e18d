"""The API's one error shape and the handlers that enforce it.

Every error, whatever its status, is
``{"error": {"code": ..., "message": ..., "details": [...]}}`` and never HTML.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from core.sniff import AssetRefused
from core.urls import UnsafeCallback
from storage import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    QuotaExceeded,
)
from storage.assets import AssetInUse, AssetNotFound, AssetQuotaExceeded, AssetTooLarge

log = logging.getLogger(__name__)


class ApiError(Exception):
    """The request could not be served."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str | None = None,
        details: list[dict[str, Any]] | None = None,
        *,
        code: str | None = None,
    ) -> None:
        super().__init__(message or self.__doc__)
        self.message = message or (self.__doc__ or "").strip()
        self.details = details or []
        if code:
            self.code = code


class BadRequest(ApiError):
    """The request is malformed."""


class UnsupportedMediaType(ApiError):
    """The body must be JSON (Content-Type: application/json)."""

    status = 415
    code = "unsupported_media_type"


class ValidationFailed(ApiError):
    """The deck does not match the schema."""

    status = 422
    code = "validation_failed"


class Forbidden(ApiError):
    """This key may not do that."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    """Not found."""

    status = 404
    code = "not_found"


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class TooManyRequests(ApiError):
    """Too many requests; slow down."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    """A dependency is down; try again shortly."""

    status = 503
    code = "service_unavailable"


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> Response:
    """The JSON error body every failure answers with."""
    response = jsonify({"error": {"code": code, "message": message, "details": details or []}})
    response.status_code = status
    return response


def _code_of(exc: HTTPException) -> str:
    name = exc.name or "error"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    """One handler per kind of failure, each answering with :func:`error_response`."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = exc.retry_after
        return response

    @app.errorhandler(QuotaExceeded)
    def _quota(exc: QuotaExceeded) -> Response:
        response = error_response(429, "too_many_active_jobs", str(exc))
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(JobNotFound)
    def _not_found(exc: JobNotFound) -> Response:
        return error_response(404, "job_not_found", str(exc))

    @app.errorhandler(AssetNotFound)
    def _asset_not_found(exc: AssetNotFound) -> Response:
        return error_response(404, "asset_not_found", "no such asset")

    @app.errorhandler(AssetInUse)
    def _asset_in_use(exc: AssetInUse) -> Response:
        return error_response(409, "asset_in_use", str(exc))

    # 413, not 429: waiting does not help, only deleting assets does; and
    # not 422: the upload itself is valid, there is just no room for it.
    @app.errorhandler(AssetQuotaExceeded)
    def _asset_quota(exc: AssetQuotaExceeded) -> Response:
        return error_response(413, "asset_quota_exceeded", str(exc))

    @app.errorhandler(AssetTooLarge)
    def _asset_too_large(exc: AssetTooLarge) -> Response:
        return error_response(413, "asset_too_large", str(exc))

    @app.errorhandler(AssetRefused)
    def _asset_refused(exc: AssetRefused) -> Response:
        return error_response(422, exc.code, str(exc), [{"field": "file", "message": str(exc)}])

    @app.errorhandler(IdempotencyConflict)
    def _idempotency(exc: IdempotencyConflict) -> Response:
        return error_response(409, "idempotency_conflict", str(exc))

    @app.errorhandler(InvalidTransition)
    def _conflict(exc: InvalidTransition) -> Response:
        return error_response(409, "invalid_state", str(exc))

    @app.errorhandler(InvalidCursor)
    def _cursor(exc: InvalidCursor) -> Response:
        return error_response(
            400, "invalid_cursor", str(exc), [{"field": "cursor", "message": str(exc)}]
        )

    @app.errorhandler(UnsafeCallback)
    def _unsafe_callback(exc: UnsafeCallback) -> Response:
        return error_response(
            422,
            "unsafe_callback_url",
            f"callback_url refused: {exc}",
            [{"field": "callback_url", "message": str(exc)}],
        )

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable) -> Response:
        log.warning("database unavailable: %s", exc)
        response = error_response(
            503, "database_unavailable", "the job store is unavailable; try again shortly"
        )
        response.headers["Retry-After"] = "2"
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "no such endpoint",
            405: "method not allowed for this endpoint",
            413: "the request body is larger than the limit",
        }
        response = error_response(
            status, _code_of(exc), messages.get(status, exc.description or exc.name)
        )
        for header, value in exc.get_headers():
            if header.lower() != "content-type":
                response.headers[header] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
