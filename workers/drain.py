"""A worker's drain: asked to stop, it claims nothing more and gives its
current render until ``SLIDEFARM_DRAIN_TIMEOUT`` before handing the job back.

Celery's warm shutdown (SIGTERM to the main process) stops consuming and
waits for the running tasks, but the tasks run in the pool's child
processes, which learn nothing of it. The drain's deadline lives in one
word of anonymous shared memory, mapped before the pool forks: the main
process writes it when the shutdown begins, and every child reads it
before each claim and at each check of its lease (a load, no system call,
no signal). ``CLOCK_MONOTONIC`` is one clock for every process of the host.

Only the main process is to be signalled (``docker stop``, Kubernetes,
systemd with ``KillMode=mixed``): a pool child takes SIGTERM as Celery
leaves it, and dies (its job is then recovered after
``SLIDEFARM_STALE_AFTER``, the attempt counted).
"""

from __future__ import annotations

import mmap
import struct
import time

_WORD = struct.Struct("d")


class Drain:
    """The drain deadline shared by a worker's main process and its pool children."""

    def __init__(self) -> None:
        # MAP_SHARED | MAP_ANONYMOUS: forked children see the parent's writes.
        self._shared = mmap.mmap(-1, _WORD.size)

    def begin(self, timeout: float) -> float:
        """Start draining (once): renders may run ``timeout`` more seconds.
        Returns the deadline (``time.monotonic()``), the first one if the
        drain had already begun."""
        current = self.deadline
        if current is not None:
            return current
        deadline = time.monotonic() + max(timeout, 0.0)
        _WORD.pack_into(self._shared, 0, deadline)
        return deadline

    @property
    def deadline(self) -> float | None:
        """The monotonic time renders must stop by, or ``None`` (not draining)."""
        value: float = _WORD.unpack_from(self._shared, 0)[0]
        return value if value > 0 else None

    @property
    def draining(self) -> bool:
        """True once this worker was asked to stop: claim nothing more."""
        return self.deadline is not None

    @property
    def overdue(self) -> bool:
        """True once the drain's deadline passed: hand the current job back."""
        deadline = self.deadline
        return deadline is not None and time.monotonic() >= deadline


#: This worker's drain (one per worker host process tree).
DRAIN = Drain()
