"""Completion-webhook signatures, as the workers send them and receivers check them.

Signatures follow Stripe's scheme: ``Slidefarm-Signature: t=<unix>,v1=<hex>``
where the hex is HMAC-SHA256 of ``"<t>." + raw body`` under the tenant's
webhook secret; during a secret rotation there is one ``v1=`` per secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

SIGNATURE_HEADER = "Slidefarm-Signature"
#: Receivers should refuse signatures older than this (seconds).
DEFAULT_TOLERANCE = 300.0


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: Sequence[str], timestamp: int | None = None) -> str:
    """The ``Slidefarm-Signature`` value of ``body``: ``t=<unix>`` and one
    ``v1=<hex>`` per secret (two while a rotation's grace period runs)."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    t = int(time.time()) if timestamp is None else int(timestamp)
    return ",".join([f"t={t}", *(f"v1={_digest(s, t, body)}" for s in secrets)])


def verify(
    header: str,
    body: bytes,
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """The receiver's check: the header parses, its timestamp is within
    ``tolerance`` seconds of ``now``, and one of its ``v1`` signatures is
    HMAC-SHA256 of ``"<t>." + body`` under ``secret`` (compared in constant time)."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if not value.isdigit() or timestamp is not None:
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, body)
    # Every candidate is compared, so timing says nothing about which matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    return matched
