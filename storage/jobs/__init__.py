"""The job store (:class:`JobStore`) and the values it hands out.

Modules by concern: :mod:`~storage.jobs.values` (snapshots),
:mod:`~storage.jobs.statements` (named, cached statements),
:mod:`~storage.jobs.queries`, :mod:`~storage.jobs.submissions`,
:mod:`~storage.jobs.requests`, :mod:`~storage.jobs.transitions`,
:mod:`~storage.jobs.maintenance`.
"""

from storage.cursors import CURSOR_PATTERN
from storage.jobs.queries import MAX_LIST_LIMIT
from storage.jobs.statements import OUTCOME_COUNTERS, worker_finished, worker_started
from storage.jobs.store import JobStore
from storage.jobs.submissions import CREATE_TRIES, IDEMPOTENCY_TTL
from storage.jobs.values import (
    DEFAULT_ATTEMPT_LIMIT,
    Job,
    JobEvent,
    JobFile,
    LeaseState,
    Page,
    Recovery,
    is_job_id,
    utcnow,
)

__all__ = [
    "CREATE_TRIES",
    "CURSOR_PATTERN",
    "DEFAULT_ATTEMPT_LIMIT",
    "IDEMPOTENCY_TTL",
    "MAX_LIST_LIMIT",
    "OUTCOME_COUNTERS",
    "Job",
    "JobEvent",
    "JobFile",
    "JobStore",
    "LeaseState",
    "Page",
    "Recovery",
    "is_job_id",
    "utcnow",
    "worker_finished",
    "worker_started",
]
