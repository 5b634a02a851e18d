"""Keyset cursors for newest-first pages (jobs, assets).

A cursor is ``<created_at in microseconds since 1970 UTC>_<row id>``: every
string of this shape is one the store can resume from, so the API documents
exactly which cursors it accepts and refuses the rest with 400.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from storage.errors import InvalidCursor

CURSOR_PATTERN = (
    r"^[0-9]{1,17}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}"
    r"-[0-9a-f]{12}$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """The cursor of the page that follows the row ``(created_at, row_id)``."""
    return f"{(created_at - _EPOCH) // timedelta(microseconds=1)}_{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of the row a cursor follows; :class:`InvalidCursor`
    if it is not one :func:`encode_cursor` could have made."""
    # fullmatch: a trailing newline does not slip past ``$``.
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise InvalidCursor()
    micros, row_id = cursor.split("_")
    return _EPOCH + timedelta(microseconds=int(micros)), row_id
