"""slidefarm's storage layer: settings, models, engines and the job store.

It imports nothing else of slidefarm; the API and the workers import it.
"""

from storage.config import Settings, get_settings
from storage.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidCursor,
    JobNotFound,
    StorageError,
)
from storage.jobs import Job, JobFile, JobStore, Page, utcnow
from storage.models import FINAL_STATUSES, Stage, Status

__all__ = [
    "FINAL_STATUSES",
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "InvalidCursor",
    "Job",
    "JobFile",
    "JobNotFound",
    "JobStore",
    "Page",
    "Settings",
    "Stage",
    "Status",
    "StorageError",
    "get_settings",
    "utcnow",
]
