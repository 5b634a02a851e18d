"""Serving a completed job's outputs without ever leaving its output folder.

A request names only a job id and one of the outputs the server knows
(``video.mp4``, ``thumbnail.jpg``, ``slides/NNN.png``, chosen by the route,
never taken from the URL). The job id must be a UUID the store knows, and the
file is served only if its real path, every symlink resolved, is exactly the
path the layout of :mod:`storage.files` gives it: a symlink planted anywhere
below the output folder (the job folder, ``slides/``, the file itself), to
``/etc/passwd`` or to another job's folder, answers 404 like a missing file.

Every output answers one ``bytes`` range (``206``), ``HEAD`` and conditional
requests, with or without a signed link's token.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from flask import Response, request, send_from_directory
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import parse_range_header

from api.auth import owner_scope
from api.downloads import attachment
from api.errors import NotFound
from api.services import services
from storage import Job, Status
from storage.files import job_dir

log = logging.getLogger(__name__)

#: ``bytes=-0``: well-formed (RFC 9110 14.1.1) but asks for the last zero
#: bytes, which no representation has (Werkzeug's parser rejects it as malformed).
_EMPTY_SUFFIX = re.compile(r"bytes=\s*-0+\s*", re.IGNORECASE)


def confined_path(output_dir: Path, job_id: str, relative: str) -> Path | None:
    """The real path of ``relative`` in ``job_id``'s folder, or ``None`` when it
    is missing, is not a regular file, or any part of it is a symlink (so its
    real path would differ from the layout's)."""
    try:
        base = output_dir.resolve(strict=True)
    except OSError:
        return None
    expected = job_dir(base, job_id) / relative
    if base not in expected.parents:  # a relative that climbs (never one we build)
        return None
    try:
        real = expected.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        return None
    if real != expected:
        log.warning(
            "refused to serve %s of job %s: its path leaves the job folder (%s)",
            relative,
            job_id,
            real,
        )
        return None
    if not real.is_file():
        return None
    return real


def scoped_job(job_id: str) -> Job:
    """The job, if the request may see it; a non-UUID, unknown or other
    tenant's id is 404 job_not_found."""
    return services().store.get(job_id, owner=owner_scope())


def check_range(size: int) -> None:
    """Honour one ``bytes`` range; ignore any other Range header (RFC 9110
    14.2 allows it, and requires it for unknown units) rather than answer 416
    to what is not a range at all. An unsatisfiable range (past the end, or
    the last 0 bytes) is refused here, before a file is opened for a
    response that would never be sent."""
    raw = request.environ.get("HTTP_RANGE")
    if raw is None:
        return
    # With If-Range, Werkzeug decides: 416 if the validator matches, else the whole file.
    if_range = "HTTP_IF_RANGE" in request.environ
    if _EMPTY_SUFFIX.fullmatch(raw.strip()):
        if not if_range:
            raise RequestedRangeNotSatisfiable(length=size)
        return
    parsed = parse_range_header(raw)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        del request.environ["HTTP_RANGE"]
    elif not if_range and parsed.range_for_length(size) is None:
        raise RequestedRangeNotSatisfiable(length=size)


def serve_output(
    job: Job,
    relative: str,
    what: str,
    mimetype: str,
    *,
    inline_name: str | None = None,
    download: str | None = None,
) -> Response:
    """Send output ``relative`` of ``job`` (from :func:`scoped_job`) if it
    completed; 404 in every other case. ``download``: offer it as an
    attachment named after the deck's title with this suffix (``.mp4``)."""
    svc = services()
    if job.status is not Status.COMPLETED:
        raise NotFound(
            f"the {what} is not available: the job is {job.status.value}", code="not_ready"
        )
    path = confined_path(svc.settings.output_dir, job.id, relative)
    if path is None:
        raise NotFound(f"the {what} file is missing from the output storage", code="file_missing")
    check_range(path.stat().st_size)
    folder = path.parent
    # send_from_directory joins safely once more (werkzeug's safe_join).
    response = send_from_directory(
        os.fspath(folder),
        path.name,
        mimetype=mimetype,
        conditional=True,
        etag=True,
        download_name=None if download else inline_name,
    )
    if download is not None:
        response.headers["Content-Disposition"] = attachment(job.title, download, job.id)
    return response
