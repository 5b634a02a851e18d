"""``GET /openapi.json``: the OpenAPI 3.1 document of the whole API.

Bodies come from the pydantic models in api/schemas.py (the submit route
validates with the same :class:`~api.schemas.Submission`); the operations, their
parameters and every status each can answer are listed here, and
tests/test_openapi.py fails when a Flask route is missing from them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.assets import MULTIPART_SLACK
from api.jobs import MAX_IDEMPOTENCY_KEY
from api.schemas import RESPONSE_MODELS, BatchSubmission, Submission
from api.services import services
from core.deck import NO_NUL_PATTERN
from core.sniff import MEDIA_TYPES
from storage.jobs import CURSOR_PATTERN, MAX_LIST_LIMIT
from storage.models import Status

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
JSON = "application/json"

#: Routes anyone may call, whatever SLIDEFARM_AUTH says.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
#: Routes a signed link's token opens as well as a key.
SIGNED_PATHS = frozenset(
    {
        "/v1/jobs/{job_id}/video",
        "/v1/jobs/{job_id}/thumbnail",
        "/v1/jobs/{job_id}/slides/{n}",
        "/v1/jobs/{job_id}/subtitles.vtt",
        "/v1/jobs/{job_id}/subtitles.srt",
    }
)

Doc = dict[str, Any]


def _ref(name: str) -> Doc:
    return {"$ref": REF.format(model=name)}


def _json(name: str) -> Doc:
    return {JSON: {"schema": _ref(name)}}


def _error(description: str, **headers: Doc) -> Doc:
    response: Doc = {"description": description, "content": _json("Error")}
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER: Doc = {
    "description": "Seconds to wait before trying again",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
WWW_AUTHENTICATE: Doc = {
    "description": "Always `Bearer`",
    "required": True,
    "schema": {"type": "string"},
}
LOCATION: Doc = {
    "description": "The job's URL, `/v1/jobs/{job_id}`",
    "required": True,
    "schema": {"type": "string"},
}
ETAG: Doc = {
    "description": "Changes whenever any field of the answer does; send it back in "
    "If-None-Match to get 304 while nothing has",
    "required": True,
    "schema": {"type": "string"},
}

ERRORS: dict[str, Doc] = {
    "400": _error("Malformed request: invalid JSON, parameter or header"),
    "401": _error(
        "No, a malformed, an unknown or a revoked API key", **{"WWW-Authenticate": WWW_AUTHENTICATE}
    ),
    "403": _error(
        "An admin route called with a tenant's key, a dashboard-session "
        "write without the X-Slidefarm-Request header, or a signed link that "
        "is not valid (expired, another file's, its key revoked)"
    ),
    "404": _error("No such job (or not yours), or the output is not available"),
    "409": _error("Conflicts with the job's state, or an Idempotency-Key reused with another body"),
    "413": _error("The body is larger than 1 MiB"),
    "415": _error("The body is not JSON (Content-Type: application/json)"),
    "422": _error(
        "The deck breaks the schema, or asks for what it may not (a priority above "
        "the tenant's maximum, a run_at too far ahead); `details` names each field"
    ),
    "429": _error("Over a quota: submission rate or active jobs", **{"Retry-After": RETRY_AFTER}),
    "503": _error(
        "A dependency (database, broker) is unavailable, or signed links were "
        "asked for and the server has no SLIDEFARM_SECRET_KEY",
        **{"Retry-After": {**RETRY_AFTER, "required": False}},
    ),
}

JOB_ID: Doc = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
SLIDE_N: Doc = {
    "name": "n",
    "in": "path",
    "required": True,
    "description": "Slides are numbered from 1",
    "schema": {"type": "integer"},
}
RANGE: Doc = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "One byte range (RFC 9110), e.g. `bytes=0-1023`; anything "
    "else (other units, several ranges, bad syntax) is ignored",
    "schema": {"type": "string"},
}
DOWNLOAD: Doc = {
    "name": "download",
    "in": "query",
    "required": False,
    "description": "`1`: `Content-Disposition: attachment` with a file name made "
    "from the deck's title",
    "schema": {"type": "string", "enum": ["0", "1"]},
}
IF_NONE_MATCH: Doc = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag of an earlier answer: 304 while it still holds",
    "schema": {"type": "string"},
}


def _sse(event: str, data: Doc) -> Doc:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": event},
            "id": {"type": "string", "description": "The job's state; send as Last-Event-ID"},
            "retry": {"type": "integer", "description": "Reconnect after this many ms"},
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
        },
    }


#: What ``reconnect`` carries: the stream's job and how soon to come back.
RECONNECT: Doc = {
    "type": "object",
    "required": ["job_id", "retry_ms"],
    "properties": {"job_id": {"type": "string"}, "retry_ms": {"type": "integer"}},
}

#: One event of ``/v1/jobs/{job_id}/events``: ``job`` on every change, then
#: ``end`` with the final job (or the id and ``deleted``), then the stream
#: closes; or ``reconnect`` when the serving process stops first.
SSE_EVENT: Doc = {
    "oneOf": [
        _sse("job", _ref("Job")),
        _sse("end", {"anyOf": [_ref("Job"), _ref("JobGone")]}),
        _sse("reconnect", RECONNECT),
    ]
}

#: A reconnecting event stream's last event id (EventSource sends it).
LAST_EVENT_ID: Doc = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "The id of the last event seen: that state is not sent again",
    "schema": {"type": "string"},
}


def _errors(*codes: int) -> dict[str, Doc]:
    return {str(code): ERRORS[str(code)] for code in codes}


def _job_answer(status: str, description: str, *, location: bool = False) -> dict[str, Doc]:
    response: Doc = {"description": description, "content": _json("Job")}
    if location:
        response["headers"] = {"Location": LOCATION}
    return {status: response}


def _file(media_type: str, what: str) -> dict[str, Doc]:
    content = {media_type: {"schema": {"type": "string", "contentMediaType": media_type}}}
    return {
        "200": {
            "description": what,
            "content": content,
            "headers": {
                "Content-Disposition": {
                    "description": "With ?download=1: `attachment; "
                    "filename=...; filename*=UTF-8''...`",
                    "schema": {"type": "string"},
                }
            },
        },
        "206": {"description": f"Part of the {what.lower()} (a Range request)", "content": content},
        "304": {"description": "Not modified (If-None-Match / If-Modified-Since)"},
        "416": _error("The range starts past the end of the file, or asks for its last 0 bytes"),
    }


#: The two parameters of every cursor-paged list.
LIMIT: Doc = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 50},
}
CURSOR: Doc = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "description": "`next_cursor` of the previous page",
    "schema": {"type": "string", "pattern": CURSOR_PATTERN},
}

#: ``?status=``: the jobs of one status.
STATUS: Doc = {
    "name": "status",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": [s.value for s in Status]},
}


def _idempotency_key_header(what: str) -> Doc:
    """The ``Idempotency-Key`` header of a submission of one ``what`` (a job, a batch)."""
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": f"The same key with the same body returns the same {what}; "
        "with another body, 409",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "pattern": "^[ -~]*$",
        },
    }


#: One name ``?include=`` accepts.
_INCLUDE = "(?:history|deliveries|assets)"

ASSET_ID: Doc = {
    "name": "asset_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
ASSET_LOCATION: Doc = {
    "description": "The asset's URL, `/v1/assets/{asset_id}`",
    "required": True,
    "schema": {"type": "string"},
}
_BINARY: Doc = {"type": "string", "format": "binary"}


def _asset_operations() -> dict[str, Doc]:
    asset_answer = {"description": "The asset", "content": _json("Asset")}
    return {
        "/v1/assets": {
            "post": {
                "operationId": "uploadAsset",
                "summary": "Upload an image or document (PNG, JPEG, WebP, GIF, PDF, PPTX), "
                "judged by its bytes; the same bytes again are the same asset",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {"schema": _BINARY},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {"file": _BINARY},
                            }
                        },
                    },
                },
                "responses": {
                    "201": {**asset_answer, "headers": {"Location": ASSET_LOCATION}},
                    "200": {
                        "description": "These bytes were already this tenant's asset",
                        "content": _json("Asset"),
                        "headers": {"Location": ASSET_LOCATION},
                    },
                    **_errors(400, 401, 403, 503),
                    "413": _error(
                        "`asset_too_large`: over SLIDEFARM_MAX_ASSET_BYTES (or "
                        "SLIDEFARM_MAX_IMAGE_ASSET_BYTES for an image; a multipart "
                        f"body may add {MULTIPART_SLACK} bytes of framing); "
                        "`asset_quota_exceeded`: the tenant's stored bytes would pass "
                        "SLIDEFARM_MAX_ASSET_STORAGE_BYTES"
                    ),
                    "422": _error(
                        "Not an accepted kind (`unsupported_asset_type`, SVG included), "
                        "damaged or a zip bomb (`invalid_asset`), or more pixels than "
                        "SLIDEFARM_MAX_ASSET_PIXELS (`asset_too_many_pixels`)"
                    ),
                },
            },
            "get": {
                "operationId": "listAssets",
                "summary": "Assets, newest first, a page at a time",
                "parameters": [
                    LIMIT,
                    CURSOR,
                ],
                "responses": {
                    "200": {"description": "One page", "content": _json("AssetList")},
                    **_errors(400, 401, 503),
                },
            },
        },
        "/v1/assets/{asset_id}": {
            "parameters": [ASSET_ID],
            "get": {
                "operationId": "getAsset",
                "summary": "The asset's metadata",
                "responses": {"200": asset_answer, **_errors(401, 404, 503)},
            },
            "delete": {
                "operationId": "deleteAsset",
                "summary": "The asset and its file are gone; 409 while a queued or "
                "processing job uses it",
                "responses": {
                    "204": {"description": "Deleted"},
                    **_errors(401, 403, 404, 503),
                    "409": _error("`asset_in_use`: a queued or processing job uses it"),
                },
            },
        },
        "/v1/assets/{asset_id}/content": {
            "parameters": [ASSET_ID],
            "get": {
                "operationId": "getAssetContent",
                "summary": "The bytes, with the sniffed Content-Type and "
                "`X-Content-Type-Options: nosniff`; PDF and PPTX as attachments",
                "parameters": [RANGE],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            media: {"schema": {"type": "string", "contentMediaType": media}}
                            for media in MEDIA_TYPES.values()
                        },
                    },
                    "206": {"description": "Part of the file (a Range request)"},
                    "304": {"description": "Not modified (If-None-Match / If-Modified-Since)"},
                    "416": _error("The range starts past the end of the file"),
                    **_errors(400, 401, 404, 503),
                },
            },
        },
        "/v1/assets/{asset_id}/thumbnail": {
            "parameters": [ASSET_ID],
            "get": {
                "operationId": "getAssetThumbnail",
                "summary": "An image asset as a PNG of at most 320 pixels a side "
                "(upright, its first frame); documents have none (404 `no_thumbnail`)",
                "responses": {
                    "200": {
                        "description": "The thumbnail",
                        "content": {
                            "image/png": {
                                "schema": {"type": "string", "contentMediaType": "image/png"}
                            }
                        },
                    },
                    "304": {"description": "Not modified (If-None-Match)"},
                    **_errors(401, 404, 503),
                },
            },
        },
    }


BATCH_ID: Doc = {
    "name": "batch_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _batch_operations() -> dict[str, Doc]:
    return {
        "/v1/batches": {
            "post": {
                "operationId": "submitBatch",
                "summary": "Submit 1 to 500 decks at once: all recorded in one "
                "transaction, or none (one 422 naming each bad item's fields as "
                "`jobs.<index>.<field>`); counts as one submission against the rate "
                "limit, and as all its jobs against the quota of active jobs",
                "parameters": [_idempotency_key_header("batch")],
                "requestBody": {"required": True, "content": _json("BatchSubmission")},
                "responses": {
                    "202": {
                        "description": "Accepted (or replayed: `Idempotent-Replayed: true`)",
                        "content": _json("BatchCreated"),
                        "headers": {
                            "Location": {
                                "description": "The batch's URL, `/v1/batches/{batch_id}`",
                                "required": True,
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    **_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
                },
            },
            "get": {
                "operationId": "listBatches",
                "summary": "The tenant's batches, newest first, a page at a time",
                "parameters": [LIMIT, CURSOR],
                "responses": {
                    "200": {"description": "One page", "content": _json("BatchList")},
                    **_errors(400, 401, 503),
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "parameters": [BATCH_ID],
            "get": {
                "operationId": "getBatch",
                "summary": "The batch: its jobs by status, progress, times and webhook",
                "responses": {
                    "200": {"description": "The batch", "content": _json("Batch")},
                    **_errors(401, 404, 503),
                },
            },
        },
        "/v1/batches/{batch_id}/jobs": {
            "parameters": [BATCH_ID],
            "get": {
                "operationId": "listBatchJobs",
                "summary": "The batch's jobs in the order submitted, a page at a time",
                "parameters": [
                    STATUS,
                    LIMIT,
                    CURSOR,
                ],
                "responses": {
                    "200": {"description": "One page", "content": _json("JobList")},
                    **_errors(400, 401, 404, 503),
                },
            },
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": [BATCH_ID],
            "post": {
                "operationId": "cancelBatch",
                "summary": "Every job not final: waiting ones cancelled at once, "
                "processing ones stop within a heartbeat",
                "responses": {
                    "202": {"description": "What happened", "content": _json("BatchCancel")},
                    **_errors(401, 403, 404, 503),
                },
            },
        },
    }


def _operations() -> dict[str, Doc]:
    """Every operation: summary, parameters, request body and every answer."""
    return {
        **_asset_operations(),
        **_batch_operations(),
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a deck: the job is recorded, then queued (or scheduled "
                "until its run_at)",
                "parameters": [_idempotency_key_header("job")],
                "requestBody": {"required": True, "content": _json("Submission")},
                "responses": {
                    **_job_answer(
                        "202", "Accepted (or replayed: `Idempotent-Replayed: true`)", location=True
                    ),
                    **_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first, a page at a time",
                "parameters": [
                    STATUS,
                    LIMIT,
                    CURSOR,
                    {
                        "name": "q",
                        "in": "query",
                        "required": False,
                        "description": "A title substring or a job id prefix",
                        "schema": {"type": "string", "pattern": NO_NUL_PATTERN},
                    },
                ],
                "responses": {
                    "200": {"description": "One page", "content": _json("JobList")},
                    **_errors(400, 401, 503),
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getJob",
                "summary": "The job; `?include=history` adds every transition, "
                "`?include=deliveries` every webhook delivery attempt, "
                "`?include=assets` the assets it uses (comma-separate to combine), "
                "`?signed=1` output links that need no key until "
                "`urls_expire_at`",
                "parameters": [
                    {
                        "name": "include",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "pattern": f"^{_INCLUDE}(?:,{_INCLUDE})*$",
                        },
                    },
                    {
                        "name": "signed",
                        "in": "query",
                        "required": False,
                        "description": "`1`: `video_url`, `thumbnail_url`, `slide_urls` and "
                        "`subtitle_urls` are "
                        "absolute links carrying a token (SLIDEFARM_SIGNED_URL_TTL)",
                        "schema": {"type": "string", "enum": ["0", "1"]},
                    },
                    IF_NONE_MATCH,
                ],
                "responses": {
                    "200": {
                        "description": "The job",
                        "content": _json("Job"),
                        "headers": {"ETag": ETAG},
                    },
                    "304": {
                        "description": "Not modified: If-None-Match holds its ETag",
                        "headers": {"ETag": ETAG},
                    },
                    **_errors(400, 401, 404, 503),
                },
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "The job, its history and its files are gone",
                "responses": {"204": {"description": "Deleted"}, **_errors(401, 403, 404, 503)},
            },
        },
        "/v1/jobs/{job_id}/cancel": {
            "parameters": [JOB_ID],
            "post": {
                "operationId": "cancelJob",
                "summary": "Scheduled or queued: cancelled at once; processing: stops "
                "within a heartbeat",
                "responses": {
                    **_job_answer("202", "Cancelled or cancelling"),
                    **_errors(401, 403, 404, 409, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/retry": {
            "parameters": [JOB_ID],
            "post": {
                "operationId": "retryJob",
                "summary": "A failed or cancelled job queued again",
                "responses": {
                    **_job_answer("202", "Queued again", location=True),
                    **_errors(401, 403, 404, 409, 429, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/video": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getVideo",
                "summary": "The MP4, with Range support; 404 until completed",
                "parameters": [RANGE, DOWNLOAD],
                "responses": {
                    **_file("video/mp4", "The video"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/thumbnail": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getThumbnail",
                "summary": "The thumbnail; 404 until completed",
                "parameters": [RANGE, DOWNLOAD],
                "responses": {
                    **_file("image/jpeg", "The thumbnail"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/subtitles.vtt": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getSubtitlesVtt",
                "summary": "A narrated deck's subtitles (WebVTT); 404 until completed, "
                "or `no_subtitles` for a deck without narration",
                "parameters": [RANGE, DOWNLOAD],
                "responses": {
                    **_file("text/vtt", "The subtitles"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/subtitles.srt": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "getSubtitlesSrt",
                "summary": "A narrated deck's subtitles (SubRip); 404 until completed, "
                "or `no_subtitles` for a deck without narration",
                "parameters": [RANGE, DOWNLOAD],
                "responses": {
                    **_file("application/x-subrip", "The subtitles"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/slides/{n}": {
            "parameters": [JOB_ID, SLIDE_N],
            "get": {
                "operationId": "getSlide",
                "summary": "One slide's image; 404 until completed",
                "parameters": [RANGE, DOWNLOAD],
                "responses": {
                    **_file("image/png", "The slide image"),
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/jobs/{job_id}/events": {
            "parameters": [JOB_ID],
            "get": {
                "operationId": "streamJobEvents",
                "summary": "Server-Sent Events: `job` on every change, then `end`",
                "parameters": [LAST_EVENT_ID],
                "responses": {
                    "200": {
                        "description": "The event stream; each event's `data` is JSON",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}},
                    },
                    **_errors(401, 404, 503),
                },
            },
        },
        "/v1/workers": {
            "get": {
                "operationId": "listWorkers",
                "summary": "Every worker that ever registered",
                "responses": {
                    "200": {"description": "The workers", "content": _json("WorkerList")},
                    **_errors(401, 403, 503),
                },
            },
        },
        "/v1/voices": {
            "get": {
                "operationId": "listVoices",
                "summary": "The voices live workers offer (any key)",
                "responses": {
                    "200": {"description": "The voices", "content": _json("VoiceList")},
                    **_errors(401, 503),
                },
            },
        },
        "/v1/stats": {
            "get": {
                "operationId": "getStats",
                "summary": "Counts by status, queue depth and throughput",
                "responses": {
                    "200": {"description": "The figures", "content": _json("Stats")},
                    **_errors(401, 403, 503),
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403, 503),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "200 while the process is up",
                "responses": {"200": {"description": "Up", "content": _json("Health")}},
            },
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "200 when the database and the broker answer; 503 while stopping",
                "responses": {
                    "200": {"description": "Ready", "content": _json("Ready")},
                    "503": ERRORS["503"],
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            },
        },
    }


#: Where a job id in a 202 answer leads: schemathesis (and readers) chain these.
_JOB_LINKS: Doc = {
    name: {"operationId": op, "parameters": {"job_id": "$response.body#/job_id"}}
    for name, op in (
        ("GetJob", "getJob"),
        ("CancelJob", "cancelJob"),
        ("RetryJob", "retryJob"),
        ("DeleteJob", "deleteJob"),
        ("StreamJobEvents", "streamJobEvents"),
        ("GetVideo", "getVideo"),
    )
}


#: Where an uploaded asset's id leads.
_ASSET_LINKS: Doc = {
    name: {"operationId": op, "parameters": {"asset_id": "$response.body#/id"}}
    for name, op in (
        ("GetAsset", "getAsset"),
        ("GetAssetContent", "getAssetContent"),
        ("GetAssetThumbnail", "getAssetThumbnail"),
        ("DeleteAsset", "deleteAsset"),
    )
}


def _components() -> Doc:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (Submission, "validation"),
        (BatchSubmission, "validation"),
    ]
    models += [(model, "serialization") for model in RESPONSE_MODELS]
    _, defs = models_json_schema(models, ref_template=REF)
    return {
        "schemas": defs["$defs"],
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key, `sf_<id>_<secret>`, in `Authorization: Bearer ...`",
            },
            "signedLink": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "The token of a link from `GET /v1/jobs/{job_id}?signed=1`: "
                "it opens that one file until it expires, while the key "
                "that asked for it is live",
            },
        },
    }


def build_document(*, auth_required: bool) -> Doc:
    """The whole document. With ``auth_required`` every operation but the
    public probes needs a bearer key, as the running app enforces."""
    paths = _operations()
    for path, item in paths.items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path in PUBLIC_PATHS or not auth_required:
                operation["security"] = []
            elif path in SIGNED_PATHS:
                operation["security"] = [{"bearerAuth": []}, {"signedLink": []}]
            else:
                operation["security"] = [{"bearerAuth": []}]
    paths["/v1/jobs"]["post"]["responses"]["202"]["links"] = _JOB_LINKS
    for status in ("200", "201"):
        paths["/v1/assets"]["post"]["responses"][status]["links"] = _ASSET_LINKS
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "slidefarm",
            "version": "1",
            "description": "Render slide decks (JSON) into slide images, a thumbnail and an "
            "MP4, as tracked jobs. Every error is "
            '`{"error": {"code", "message", "details"}}`. '
            "Text answers of 1 KiB or more are gzipped for clients that "
            "send `Accept-Encoding: gzip`; the origins of "
            "SLIDEFARM_CORS_ORIGINS may call the API from a browser.",
        },
        "paths": paths,
        "components": _components(),
    }


@bp.get("/openapi.json")
def document() -> Response:
    """Built once per app (the models do not change while it runs)."""
    cached = current_app.extensions.get("slidefarm.openapi")
    if cached is None:
        cached = build_document(auth_required=services().settings.auth_required)
        current_app.extensions["slidefarm.openapi"] = cached
    return jsonify(cached)
