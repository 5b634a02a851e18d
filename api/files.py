"""Serving a completed job's outputs without ever leaving its output folder.

A request names only a job id and one of the outputs the server knows
(``video.mp4``, ``thumbnail.jpg``, ``slides/NNN.png``, chosen by the route,
never taken from the URL). The job id must be a UUID the store knows, and the
file is served only if its real path, every symlink resolved, is exactly the
path the layout of :mod:`storage.files` gives it: a symlink planted anywhere
below the output folder (the job folder, ``slides/``, the file itself), to
``/etc/passwd`` or to another job's folder, answers 404 like a missing file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from flask import Response, send_from_directory

from api.auth import owner_scope
from api.errors import NotFound
from api.services import services
from storage import Job, Status
from storage.files import job_dir

log = logging.getLogger(__name__)


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
        log.warning("refused to serve %s of job %s: its path leaves the job folder (%s)",
                    relative, job_id, real)
        return None
    if not real.is_file():
        return None
    return real


def scoped_job(job_id: str) -> Job:
    """The job, if the request may see it; a non-UUID, unknown or other
    tenant's id is 404 job_not_found."""
    return services().store.get(job_id, owner=owner_scope())


def serve_output(job: Job, relative: str, what: str, mimetype: str,
                 download_name: str | None = None,
                 check: Callable[[int], None] | None = None) -> Response:
    """Send output ``relative`` of ``job`` (from :func:`scoped_job`) if it
    completed; 404 in every other case."""
    svc = services()
    if job.status is not Status.COMPLETED:
        raise NotFound(f"the {what} is not available: the job is {job.status.value}",
                       code="not_ready")
    path = confined_path(svc.settings.output_dir, job.id, relative)
    if path is None:
        raise NotFound(f"the {what} file is missing from the output storage",
                       code="file_missing")
    if check is not None:
        check(path.stat().st_size)  # e.g. refuse a Range past the end before opening
    folder = path.parent
    # send_from_directory joins safely once more (werkzeug's safe_join).
    return send_from_directory(os.fspath(folder), path.name, mimetype=mimetype,
                               conditional=True, etag=True, download_name=download_name)
