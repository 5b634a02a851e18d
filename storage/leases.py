"""Named leases in the database: one holder at a time across the cluster.

Works the same on PostgreSQL and SQLite (a row, not an advisory lock), and a
holder that dies simply lets its lease expire.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import delete, exc, insert, or_, update

from storage.db import Database, HasDatabase, database_of
from storage.errors import StorageError
from storage.jobs.values import utcnow
from storage.models import leases_table

log = logging.getLogger("slidefarm.leases")


class LeaseManager:
    """Acquire, renew and release named leases."""

    def __init__(self, db: Database | HasDatabase) -> None:
        """On ``db`` (or the database of a store such as the job store)."""
        self.db = database_of(db)

    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew ``name`` for ``ttl`` seconds; ``False`` if another holder has it."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        with self.db.transaction() as conn:
            taken = conn.execute(
                update(leases_table)
                .where(
                    leases_table.c.name == name,
                    or_(leases_table.c.holder == holder, leases_table.c.expires_at < now),
                )
                .values(holder=holder, expires_at=expires)
            ).rowcount
        if taken:
            return True
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    insert(leases_table).values(name=name, holder=holder, expires_at=expires)
                )
            return True
        except exc.IntegrityError:
            return False  # someone else holds it (or just took it)

    def release(self, name: str, holder: str) -> None:
        """Give ``name`` up if ``holder`` has it."""
        with self.db.transaction() as conn:
            conn.execute(
                delete(leases_table).where(
                    leases_table.c.name == name, leases_table.c.holder == holder
                )
            )


class LeaseLost(Exception):
    """The holder could not renew its lease in time: another may hold it now."""


class KeptLease:
    """A lease just acquired, renewed by a background thread every third of
    its ``ttl`` for as long as the holder works (``with``), so work longer
    than the lease never lets a second holder in. :meth:`check` between units
    of work stops the holder once a renewal was refused or none succeeded
    within the ``ttl`` (the database unreachable): past that moment another
    holder may have taken it."""

    def __init__(self, manager: LeaseManager, name: str, holder: str, ttl: float) -> None:
        self.manager, self.name, self.holder, self.ttl = manager, name, holder, ttl
        # Counted from before the acquire that the caller has just made.
        self._valid_until = time.monotonic() + ttl
        self._refused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> KeptLease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.ttl, 5.0))

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            started = time.monotonic()
            try:
                renewed = self.manager.acquire(self.name, self.holder, self.ttl)
            except StorageError as error:
                log.warning("lease %s: renewal failed (%s); retrying", self.name, error)
                continue
            if not renewed:
                self._refused = True
                return
            self._valid_until = started + self.ttl

    @property
    def held(self) -> bool:
        """Whether the lease is still this holder's for sure."""
        return not self._refused and time.monotonic() < self._valid_until

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless :attr:`held`."""
        if not self.held:
            raise LeaseLost(f"lease {self.name} lost by {self.holder}")
