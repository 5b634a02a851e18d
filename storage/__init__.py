"""slidefarm's persistence: the database, its tables and every store on it.

It imports nothing of the API or the workers (only :mod:`core`); they import it.
"""

from storage.db import Database
from storage.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    PriorityNotAllowed,
    QuotaExceeded,
    StorageError,
)
from storage.jobs import Job, JobEvent, JobFile, JobStore, LeaseState, Page, Recovery, utcnow
from storage.models import FINAL_STATUSES, Stage, Status

__all__ = [
    "FINAL_STATUSES",
    "Database",
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "InvalidCursor",
    "InvalidTransition",
    "Job",
    "JobEvent",
    "JobFile",
    "JobNotFound",
    "JobStore",
    "LeaseState",
    "Page",
    "PriorityNotAllowed",
    "QuotaExceeded",
    "Recovery",
    "Stage",
    "Status",
    "StorageError",
    "utcnow",
]
