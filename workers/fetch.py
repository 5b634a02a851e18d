"""Slide images named by URL, fetched by the render host: an HTTPS GET
through the same SSRF guard as webhooks (:mod:`core.urls`).

- Only ``https``. Every address the host resolves to must be public, or
  inside ``SLIDEFARM_FETCH_ALLOW``; the connection goes to a checked address
  (pinned, the certificate checked against the URL's host), never to a
  second resolution.
- At most :data:`MAX_REDIRECTS` redirects are followed, each hop checked
  again by the guard (and https again).
- At most ``max_bytes`` are read (``SLIDEFARM_MAX_IMAGE_ASSET_BYTES``):
  reading stops past it. The whole fetch, redirects included, has
  ``SLIDEFARM_FETCH_TIMEOUT`` seconds.
- The answer's bytes decide what it is (the caller sniffs them); its
  ``Content-Type`` is never believed, and no content encoding is accepted.

Two outcomes besides the bytes: :class:`ImageRefused` when retrying cannot
help (the guard refuses, a 4xx, too large, too many redirects, a TLS
verification failure) and :class:`ImageFetchFailed` when it may (the host
does not resolve now, the connection fails or is reset, a 5xx, 408 or 429,
the time limit): the job's normal retry path handles the latter.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Sequence

import urllib3
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import (
    TimeoutError as UrllibTimeout,
)

from core.urls import (
    Address,
    Network,
    Target,
    Unresolvable,
    UnsafeCallback,
    parse_callback_url,
    pinned_pool,
)
from workers.assets import AssetUnavailable

USER_AGENT = "slidefarm-images"
MAX_REDIRECTS = 3
CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUS = frozenset({408, 425, 429})


class ImageRefused(AssetUnavailable):
    """An image URL that will not be fetched or whose answer cannot be used
    (refused by the guard, an HTTP error, too large, not an image): the job
    fails, retrying would not help."""


class ImageFetchFailed(Exception):
    """Fetching an image URL failed in a way that may pass (the network, the
    server's 5xx, the time limit): the attempt may be retried."""


def fetch_image(
    url: str,
    *,
    allow: Sequence[Network],
    timeout: float,
    max_bytes: int,
    what: str = "the image",
) -> bytes:
    """The body of a ``200`` answer to ``GET url`` (see the module for the rules).

    ``what`` starts every error (``"slide 3's image https://..."``).
    """
    deadline = time.monotonic() + timeout
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        if urllib.parse.urlsplit(current).scheme.lower() != "https":
            raise ImageRefused(f"{what}: only https URLs are fetched, not {current[:200]}")
        try:
            target = parse_callback_url(current, allow)
        except Unresolvable as failed:
            raise ImageFetchFailed(f"{what}: {failed}") from failed
        except UnsafeCallback as refused:
            raise ImageRefused(f"{what}: refused: {refused}") from refused
        status, location, body = _get(target, deadline, timeout, max_bytes, what)
        if status in _REDIRECTS:
            if not location:
                raise ImageRefused(f"{what}: HTTP {status} without a Location")
            current = urllib.parse.urljoin(current, location)
            continue
        if status == 200:
            return body
        if status >= 500 or status in _TRANSIENT_STATUS:
            raise ImageFetchFailed(f"{what}: HTTP {status}")
        raise ImageRefused(f"{what}: HTTP {status}")
    raise ImageRefused(f"{what}: more than {MAX_REDIRECTS} redirects")


def _get(
    target: Target, deadline: float, timeout: float, max_bytes: int, what: str
) -> tuple[int, str | None, bytes]:
    """GET ``target`` from the first of its addresses that accepts a
    connection: the status, the ``Location`` of a redirect, the body of a 200."""
    error: Exception | None = None
    for address in target.addresses:
        try:
            return _get_from(target, address, deadline, max_bytes, what)
        except NewConnectionError as failed:
            error = failed  # another address of the host may answer
        except SSLError as failed:
            raise ImageRefused(f"{what}: TLS error: {str(failed)[:160]}") from failed
        except (UrllibTimeout, TimeoutError) as failed:
            raise ImageFetchFailed(f"{what}: timed out after {timeout:g} s") from failed
        except (ProtocolError, HTTPError, OSError) as failed:
            raise ImageFetchFailed(
                f"{what}: connection failed ({type(failed).__name__})"
            ) from failed
    raise ImageFetchFailed(f"{what}: could not connect ({type(error).__name__})") from error


def _get_from(
    target: Target, address: Address, deadline: float, max_bytes: int, what: str
) -> tuple[int, str | None, bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError()
    limit = urllib3.Timeout(connect=remaining, read=remaining)
    pool = pinned_pool(target, address, limit)
    try:
        response = pool.urlopen(
            "GET",
            target.path,
            headers={
                "Host": target.host_header,
                "User-Agent": USER_AGENT,
                "Accept": "image/png, image/jpeg, image/webp, image/gif",
                "Accept-Encoding": "identity",
            },
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
            release_conn=False,
        )
        try:
            status = int(response.status)
            if status != 200:
                return status, response.headers.get("Location"), b""
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageRefused(
                    f"{what}: the answer is {declared} bytes, more than the {max_bytes} "
                    "allowed for images (SLIDEFARM_MAX_IMAGE_ASSET_BYTES)"
                )
            body = bytearray()
            while chunk := response.read(CHUNK, decode_content=False):
                body += chunk
                if len(body) > max_bytes:
                    raise ImageRefused(
                        f"{what}: the answer is more than the {max_bytes} bytes allowed "
                        "for images (SLIDEFARM_MAX_IMAGE_ASSET_BYTES); reading stopped"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError()
            return status, None, bytes(body)
        finally:
            response.close()
    finally:
        pool.close()
