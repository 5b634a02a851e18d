"""Named leases in the database: one holder at a time across the cluster.

Works the same on PostgreSQL and SQLite (a row, not an advisory lock), and a
holder that dies simply lets its lease expire.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from sqlalchemy import Table, delete, exc, insert, or_, update

from storage.jobs import JobStore, utcnow
from storage.models import LeaseRow

leases_table = cast(Table, LeaseRow.__table__)


class LeaseManager:
    """Acquire, renew and release named leases."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew ``name`` for ``ttl`` seconds; ``False`` if another holder has it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        with self.store.transaction() as conn:
            taken = conn.execute(
                update(leases_table)
                .where(leases_table.c.name == name,
                       or_(leases_table.c.holder == holder, leases_table.c.expires_at < now))
                .values(holder=holder, expires_at=expires)
            ).rowcount
        if taken:
            return True
        try:
            with self.store.transaction() as conn:
                conn.execute(insert(leases_table).values(name=name, holder=holder,
                                                         expires_at=expires))
            return True
        except exc.IntegrityError:
            return False  # someone else holds it (or just took it)

    def release(self, name: str, holder: str) -> None:
        """Give ``name`` up if ``holder`` has it."""
        with self.store.transaction() as conn:
            conn.execute(delete(leases_table).where(leases_table.c.name == name,
                                                    leases_table.c.holder == holder))
