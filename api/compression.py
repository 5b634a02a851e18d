"""gzip for text answers (JSON, HTML, JavaScript...) worth compressing.

A body of at least :data:`MIN_SIZE` bytes of a text type is gzipped when the
client accepts gzip; a job list of 500 or the OpenAPI document shrinks about
tenfold. Below that size the bytes saved do not pay for the CPU, so a
status read (a few hundred bytes) is sent as it is, and its check costs two
comparisons. Media (video, PNG, JPEG), partial answers (206) and event
streams (which must reach the client event by event) are never compressed.
"""

from __future__ import annotations

import gzip

from flask import Flask, Response, request

MIN_SIZE = 1024
#: Files read into memory to be compressed are at most this big (the
#: dashboard's script; outputs are never of a compressible type).
MAX_FILE_SIZE = 4 * 1024 * 1024
COMPRESS_LEVEL = 6
COMPRESSIBLE = frozenset(
    {
        "application/json",
        "application/problem+json",
        "text/html",
        "text/javascript",
        "application/javascript",
        "text/css",
        "text/plain",
        "image/svg+xml",
    }
)
_SKIPPED_STATUSES = frozenset({204, 206, 304})


def _compress(response: Response) -> Response:
    if response.status_code in _SKIPPED_STATUSES or response.status_code < 200:
        return response
    length = response.content_length
    if length is None:
        if response.direct_passthrough or response.is_streamed:
            return response  # a stream (events): never buffered
        length = len(response.get_data())
    if not MIN_SIZE <= length <= MAX_FILE_SIZE or response.mimetype not in COMPRESSIBLE:
        return response
    response.vary.add("Accept-Encoding")
    if (
        "Content-Encoding" in response.headers
        or "Content-Range" in response.headers
        or request.accept_encodings["gzip"] <= 0
    ):
        return response
    if response.direct_passthrough:  # a static file: read it to compress it
        response.direct_passthrough = False
    data = response.get_data()
    packed = gzip.compress(data, compresslevel=COMPRESS_LEVEL, mtime=0)
    if len(packed) >= len(data):
        return response
    response.set_data(packed)
    response.headers["Content-Encoding"] = "gzip"
    etag, weak = response.get_etag()
    if etag is not None and not weak:
        response.set_etag(etag, weak=True)  # the same content, other bytes
    return response


def init_compression(app: Flask) -> None:
    """gzip every eligible answer."""
    app.after_request(_compress)
