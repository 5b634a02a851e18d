"""The job store's exceptions; each docstring is the message a user sees."""

from __future__ import annotations


class StorageError(Exception):
    """The job store failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class DatabaseUnavailable(StorageError):
    """The database is not reachable."""


class JobNotFound(StorageError):
    """No such job."""


class IdempotencyConflict(StorageError):
    """This Idempotency-Key was already used with a different request body."""


class InvalidCursor(StorageError):
    """The cursor is not one this API handed out."""


class InvalidTransition(StorageError):
    """The job is not in a state that allows this."""


class QuotaExceeded(StorageError):
    """The tenant has too many jobs queued or processing."""


class PriorityNotAllowed(StorageError):
    """The priority asked for is above the tenant's ceiling (``ceiling``)."""

    def __init__(self, priority: int, ceiling: int) -> None:
        super().__init__(
            f"{priority} is above the highest priority this tenant may ask for ({ceiling})"
        )
        self.priority = priority
        self.ceiling = ceiling
