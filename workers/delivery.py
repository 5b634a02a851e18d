"""Completion webhooks on the wire: one delivery attempt, an HTTP POST.

The URL is checked again by the SSRF guard (:mod:`core.urls`) and the
connection goes to an address that was checked (pinned), never to a second
resolution. Redirects are not followed and the receiver's answer is never
echoed back: only its status code is kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from core.urls import Address, Network, Target, UnsafeCallback, parse_callback_url, pinned_pool
from storage.deliveries import DeliveryResult

USER_AGENT = "slidefarm-webhooks"
#: At most this much of a receiver's answer is read, then thrown away.
READ_LIMIT = 1024


def _describe(error: Exception, timeout: float) -> str:
    # NewConnectionError is a ConnectTimeoutError in urllib3: look at it first.
    if isinstance(error, NewConnectionError):
        cause = error.__cause__ or error.__context__
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(error).lower():
            return "connection refused"
        if isinstance(cause, TimeoutError) or "timed out" in str(error).lower():
            return f"timed out after {timeout:g} s"
        return "connection failed"
    if isinstance(error, ConnectTimeoutError | ReadTimeoutError | TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, SSLError):
        return f"TLS error: {str(error)[:120]}"
    if isinstance(error, ProtocolError):
        return "connection closed before an answer"
    return f"delivery failed: {type(error).__name__}"


def _post(
    target: Target, address: Address, body: bytes, headers: Mapping[str, str], timeout: float
) -> int:
    """POST to ``address`` itself, naming ``target.host``; the status code."""
    pool = pinned_pool(target, address, urllib3.Timeout(total=timeout))
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header, "Content-Length": str(len(body))},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
            release_conn=False,
        )
        try:
            # A little is read so a receiver that answers before reading
            # everything sees a clean close; the rest is never looked at.
            response.read(READ_LIMIT, decode_content=False)
        except HTTPError:
            pass
        finally:
            response.close()
        return int(response.status)
    finally:
        pool.close()


def deliver(
    url: str, body: bytes, headers: Mapping[str, str], *, timeout: float, allow: Sequence[Network]
) -> DeliveryResult:
    """POST ``body`` to ``url`` once: the URL is checked again, the connection
    pinned to a checked address, redirects never followed; the result holds
    the status code or a short readable error, never the answer's body."""
    started = time.monotonic()

    def result(code: int | None, error: str | None) -> DeliveryResult:
        return DeliveryResult(code, error, round((time.monotonic() - started) * 1000, 1))

    try:
        target = parse_callback_url(url, allow)
    except UnsafeCallback as refused:
        return result(None, f"refused: {refused}")
    error = "no address to connect to"
    for address in target.addresses:
        try:
            code = _post(target, address, body, headers, timeout)
        except NewConnectionError as failed:
            error = _describe(failed, timeout)
            continue  # another address of the host may answer
        except (HTTPError, OSError) as failed:
            return result(None, _describe(failed, timeout))
        if 200 <= code < 300:
            return result(code, None)
        if 300 <= code < 400:
            return result(code, f"redirect not followed (HTTP {code})")
        return result(code, f"HTTP {code}")
    return result(None, error)
