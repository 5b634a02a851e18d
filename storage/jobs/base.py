"""What every part of the job store shares: the database it works on."""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import Connection, Engine

from storage.db import Database
from storage.feed import ChangeFeed


class StoreBase:
    """The job store's hold on its :class:`~storage.db.Database`."""

    def __init__(self, db: Database | Engine, feed: ChangeFeed | None = None) -> None:
        """On ``db``; or on an engine, with ``feed`` as its change feed."""
        if isinstance(db, Database):
            if feed is not None:
                raise TypeError("a Database brings its own change feed; pass an Engine with one")
            self.db = db
        else:
            self.db = Database(db, feed)

    @property
    def engine(self) -> Engine:
        """The database's engine."""
        return self.db.engine

    @property
    def feed(self) -> ChangeFeed | None:
        """The change feed (Redis), if there is one."""
        return self.db.feed

    def transaction(self, *, single: bool = False) -> AbstractContextManager[Connection]:
        """One unit of work (see :meth:`storage.db.Database.transaction`)."""
        return self.db.transaction(single=single)

    def _changed(self, job_id: str) -> None:
        self.db.changed(job_id)
