"""``/v1/assets``: upload, read, list and delete a tenant's images and documents.

An upload is a ``multipart/form-data`` body with one ``file`` part, or the
raw bytes as the body. Either way it is streamed to the output storage and
refused with 413 as soon as it passes ``SLIDEFARM_MAX_ASSET_BYTES``: a
declared length over it is refused unread, a chunked body is read only up to
it. Its kind comes from its bytes alone (:mod:`core.sniff`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Response, jsonify, request, send_file
from werkzeug.exceptions import RequestEntityTooLarge

from api.auth import owner_scope, principal
from api.errors import ApiError, BadRequest, NotFound
from api.files import check_range
from api.services import services
from core.sniff import DOCUMENT_KINDS, IMAGE_KINDS, MEDIA_TYPES
from storage.assets import Asset, AssetLimits, AssetStore
from storage.jobs import MAX_LIST_LIMIT, is_job_id
from storage.serialize import iso

bp = Blueprint("assets", __name__, url_prefix="/v1/assets")

CHUNK = 64 * 1024
#: Room for a multipart body's boundaries and part headers around the file.
MULTIPART_SLACK = 64 * 1024


class PayloadTooLarge(ApiError):
    """The upload is larger than the limit."""

    status = 413
    code = "asset_too_large"


def _store() -> AssetStore:
    svc = services()
    return AssetStore(svc.store, svc.settings.output_dir)


def asset_json(asset: Asset) -> dict[str, Any]:
    """An asset as the API shows it."""
    return {
        "id": asset.id,
        "owner": asset.owner,
        "kind": asset.kind,
        "media_type": MEDIA_TYPES[asset.kind],
        "size_bytes": asset.size_bytes,
        "sha256": asset.sha256,
        "width": asset.width,
        "height": asset.height,
        "pages": asset.pages,
        "created_at": iso(asset.created_at),
        "last_used_at": iso(asset.last_used_at),
        "content_url": f"/v1/assets/{asset.id}/content",
        "thumbnail_url": (
            f"/v1/assets/{asset.id}/thumbnail" if asset.kind in IMAGE_KINDS else None
        ),
    }


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is larger than {limit} bytes (SLIDEFARM_MAX_ASSET_BYTES)")


def _upload_stream(limit: int) -> IO[bytes]:
    """The uploaded file's bytes, never more than ``limit`` of them read
    before a 413 (the store counts them as they come)."""
    if request.content_length is not None and request.content_length > limit + MULTIPART_SLACK:
        raise _too_large(limit)
    if request.mimetype == "multipart/form-data":
        # Werkzeug stops parsing (413) past this, chunked or not.
        request.max_content_length = limit + MULTIPART_SLACK
        try:
            part = request.files.get("file")
        except RequestEntityTooLarge:
            raise _too_large(limit) from None
        if part is None:
            raise BadRequest(
                "a multipart upload needs one part named file",
                [{"field": "file", "message": "missing"}],
                code="missing_file",
            )
        return part.stream
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    # This route's own limit, instead of the app's 1 MiB for JSON bodies.
    request.max_content_length = limit
    if request.content_length is None and request.environ.get("wsgi.input_terminated"):
        # A chunked body the server de-chunks: Werkzeug's limited stream
        # would stop short at the app's 1 MiB, silently.
        stream: IO[bytes] = request.environ["wsgi.input"]
        return stream
    return request.stream


@bp.post("")
def upload() -> Response:
    settings = services().settings
    limits = AssetLimits.from_settings(settings)
    stream = _upload_stream(limits.max_bytes)
    try:
        asset, created = _store().ingest(principal().tenant, _chunks(stream), limits)
    except RequestEntityTooLarge:
        raise _too_large(limits.max_bytes) from None
    response = jsonify(asset_json(asset))
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/assets/{asset.id}"
    return response


def _scoped(asset_id: str) -> Asset:
    if not is_job_id(asset_id):  # ids are UUIDs: anything else cannot exist
        raise NotFound("no such asset", code="asset_not_found")
    return _store().get(asset_id, owner=owner_scope())


@bp.get("/<asset_id>")
def show(asset_id: str) -> Response:
    return jsonify(asset_json(_scoped(asset_id)))


@bp.get("/<asset_id>/content")
def content(asset_id: str) -> Response:
    asset = _scoped(asset_id)
    path = _store().path(asset)
    if not path.is_file():
        raise NotFound("the asset's file is missing from the output storage", code="file_missing")
    check_range(asset.size_bytes)
    download = asset.kind in DOCUMENT_KINDS
    response = send_file(
        path,
        mimetype=MEDIA_TYPES[asset.kind],
        conditional=True,
        etag=asset.sha256,
        as_attachment=download,
        download_name=f"{asset.id}.{asset.kind}",
        max_age=0,
    )
    # The bytes were sniffed: no browser may guess another type for them.
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


#: The thumbnail's longer side, in pixels.
THUMBNAIL_SIDE = 320


def _make_thumbnail(source: Path, target: Path, max_pixels: int) -> None:
    """A PNG of at most :data:`THUMBNAIL_SIDE` pixels a side of the image at
    ``source`` (its first frame, upright, transparency kept), written to
    ``target`` atomically."""
    # Imported here: an API process loads Pillow when it first needs it.
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        if image.width * image.height > max_pixels:  # the file was checked at upload
            raise NotFound("the image is too large to preview", code="no_thumbnail")
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at a fraction
        upright = ImageOps.exif_transpose(image)
        small = upright.convert("RGBA" if upright.mode in ("RGBA", "LA", "P", "PA") else "RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=".thumb-", suffix=".png")
        with os.fdopen(handle, "wb") as out:
            small.save(out, "PNG", optimize=True)
        os.replace(name, target)


@bp.get("/<asset_id>/thumbnail")
def thumbnail(asset_id: str) -> Response:
    """A small PNG of an image asset (made once, then kept with it)."""
    asset = _scoped(asset_id)
    if asset.kind not in IMAGE_KINDS:
        raise NotFound(f"a {asset.kind.upper()} has no thumbnail", code="no_thumbnail")
    store = _store()
    path, target = store.path(asset), store.thumbnail_path(asset)
    if not path.is_file():
        raise NotFound("the asset's file is missing from the output storage", code="file_missing")
    if not target.is_file():
        _make_thumbnail(path, target, services().settings.max_asset_pixels)
    response = send_file(
        target, mimetype="image/png", conditional=True, etag=f"{asset.sha256}-thumb", max_age=0
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _limit_arg() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return 50
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise BadRequest(
            f"limit must be an integer from 1 to {MAX_LIST_LIMIT}",
            [{"field": "limit", "message": f"got {raw!r}"}],
            code="invalid_parameter",
        )
    return value


@bp.get("")
def index() -> Response:
    page = _store().list_assets(
        owner=owner_scope(), limit=_limit_arg(), cursor=request.args.get("cursor")
    )
    return jsonify(
        {"assets": [asset_json(a) for a in page.assets], "next_cursor": page.next_cursor}
    )


@bp.delete("/<asset_id>")
def remove(asset_id: str) -> Response:
    if not is_job_id(asset_id):
        raise NotFound("no such asset", code="asset_not_found")
    _store().delete(asset_id, owner=owner_scope())
    return Response(status=204)
