"""Signed output links: a job's video, thumbnail or slide for anyone holding
the link, until it expires, without an API key.

``<video src>`` on another site cannot send ``Authorization``, so
``GET /v1/jobs/{id}?signed=1`` hands out links carrying
``?token=<expires>.<key id>.<signature>``. The signature is an HMAC-SHA256,
under a key derived from ``SLIDEFARM_SECRET_KEY``, of the job id, the output
file, the expiry and the id (never the secret) of the key that asked for
it. So a token opens one file of one job until it expires, and only while
that key is live: revoking the key ends every link it made (checked on use,
cached for ``SLIDEFARM_KEY_CACHE_TTL`` like keys themselves). Every refusal
(bad signature, expired, another file or job, a revoked key) is the same
403, decided before the job is looked up, so a token reveals nothing about
which jobs exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from datetime import UTC, datetime
from typing import Any

from flask import url_for

from storage import Job, Status
from storage.files import SUBTITLES_SRT, SUBTITLES_VTT, THUMBNAIL_FILE, VIDEO_FILE, slide_file
from storage.serialize import iso

#: The query parameter that carries a token.
TOKEN_PARAM = "token"
#: The key id of tokens made while the API runs open (no keys): refused
#: once keys are required.
OPEN_KEY_ID = "open"
#: Expiries are rounded down to this many seconds (when the lifetime allows),
#: so the same job read twice within it gives the same links: browsers can
#: reuse what they fetched, and the job's ETag does not change every second.
EXPIRY_STEP = 60
_CONTEXT = b"slidefarm signed output link v1"
_SIGNATURE_CHARS = 43  # base64url of 32 bytes, unpadded


def signed_output(endpoint: str | None, view_args: dict[str, Any] | None) -> str | None:
    """The output file (relative to the job's folder) that a request to
    ``endpoint`` serves, if it is one a token may open."""
    if endpoint == "jobs.video":
        return VIDEO_FILE
    if endpoint == "jobs.thumbnail":
        return THUMBNAIL_FILE
    if endpoint == "jobs.slide" and view_args is not None:
        return slide_file(int(view_args["n"]))
    if endpoint == "jobs.subtitles_vtt":
        return SUBTITLES_VTT
    if endpoint == "jobs.subtitles_srt":
        return SUBTITLES_SRT
    return None


class UrlSigner:
    """Makes and checks output tokens under one secret."""

    def __init__(self, secret: str, ttl: float) -> None:
        # A key of its own, so the secret could sign other things without
        # one kind of signature standing for another.
        self._key = hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()
        self.ttl = ttl

    def expiry(self, now: float | None = None) -> int:
        """The expiry (Unix seconds) of a link made at ``now``: at most
        ``ttl`` away, rounded down to :data:`EXPIRY_STEP` when that leaves
        at least nine tenths of it."""
        deadline = (time.time() if now is None else now) + self.ttl
        step = EXPIRY_STEP if self.ttl >= 10 * EXPIRY_STEP else 1
        return int(math.floor(deadline / step) * step)

    def _signature(self, job_id: str, relative: str, expires: int, key_id: str) -> str:
        message = f"{job_id}\n{relative}\n{expires}\n{key_id}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def token(self, job_id: str, relative: str, key_id: str, expires: int) -> str:
        """The token that opens ``relative`` of ``job_id`` until ``expires``,
        standing for key ``key_id``."""
        return f"{expires}.{key_id}.{self._signature(job_id, relative, expires, key_id)}"

    def verify(
        self, token: str, job_id: str, relative: str, now: float | None = None
    ) -> str | None:
        """The key id ``token`` stands for, if it opens ``relative`` of
        ``job_id`` and has not expired; ``None`` otherwise."""
        parts = token.split(".")
        if len(parts) != 3 or len(parts[2]) != _SIGNATURE_CHARS:
            return None
        raw_expires, key_id, signature = parts
        if not (raw_expires.isascii() and raw_expires.isdigit() and len(raw_expires) <= 12):
            return None
        expires = int(raw_expires)
        expected = self._signature(job_id, relative, expires, key_id)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return key_id


def signed_links(signer: UrlSigner, job: Job, key_id: str) -> dict[str, Any]:
    """The fields ``?signed=1`` puts in the job: absolute, signed
    ``video_url``, ``thumbnail_url``, ``slide_urls`` and (a narrated deck)
    ``subtitle_urls`` once the job has completed (``null`` before), and when
    they stop working."""
    expires = signer.expiry()

    def link(endpoint: str, relative: str, **args: Any) -> str:
        return url_for(
            endpoint,
            job_id=job.id,
            _external=True,
            **args,
            **{TOKEN_PARAM: signer.token(job.id, relative, key_id, expires)},
        )

    ready = job.status is Status.COMPLETED
    slides = job.slide_count
    return {
        "video_url": link("jobs.video", VIDEO_FILE) if ready and job.video_url else None,
        "thumbnail_url": (
            link("jobs.thumbnail", THUMBNAIL_FILE) if ready and job.thumbnail_url else None
        ),
        "slide_urls": (
            [link("jobs.slide", slide_file(n), n=n) for n in range(1, slides + 1)]
            if ready
            else None
        ),
        "subtitle_urls": (
            {
                "vtt": link("jobs.subtitles_vtt", SUBTITLES_VTT),
                "srt": link("jobs.subtitles_srt", SUBTITLES_SRT),
            }
            if ready and SUBTITLES_VTT in job.created_files
            else None
        ),
        "urls_expire_at": iso(datetime.fromtimestamp(expires, UTC)),
    }
