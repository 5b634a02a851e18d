"""slidefarm's storage layer: settings, models, engines and the job store.

It imports nothing else of slidefarm; the API and the workers import it.
"""

from storage.config import Settings, get_settings
from storage.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    QuotaExceeded,
    StorageError,
)
from storage.jobs import Job, JobEvent, JobFile, JobStore, LeaseState, Page, Recovery, utcnow
from storage.models import FINAL_STATUSES, Stage, Status

__all__ = [
    "FINAL_STATUSES",
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
    "QuotaExceeded",
    "Recovery",
    "Settings",
    "Stage",
    "Status",
    "StorageError",
    "get_settings",
    "utcnow",
]
