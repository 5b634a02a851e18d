"""The job store: every query about jobs and every state transition, against
one :class:`~storage.db.Database`. Callers get frozen :class:`Job` values,
never live ORM rows."""

from __future__ import annotations

from core.config import Settings
from storage.db import Database
from storage.jobs.claims import Claims
from storage.jobs.maintenance import Maintenance
from storage.jobs.requests import Requests
from storage.jobs.submissions import Submissions


class JobStore(Submissions, Requests, Claims, Maintenance):
    """Every read and write of jobs: reads (:mod:`storage.jobs.queries`),
    submissions (:mod:`storage.jobs.submissions`), users' requests
    (:mod:`storage.jobs.requests`), the choice of what runs next
    (:mod:`storage.jobs.claims`), a worker's transitions
    (:mod:`storage.jobs.transitions`) and housekeeping
    (:mod:`storage.jobs.maintenance`)."""

    @classmethod
    def from_url(cls, url: str, redis_url: str | None = None, cache_ttl: float = 5.0) -> JobStore:
        """A store on the process-wide engine for ``url``; with ``redis_url``,
        every change also invalidates the status cache and is announced on
        Redis pub/sub."""
        return cls(Database.from_url(url, redis_url, cache_ttl))

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store as ``settings`` describe it."""
        return cls(Database.from_settings(settings))
