"""A draining worker's side of the store, on SQLite and PostgreSQL: the
hand-back (``processing -> queued``, fenced, recorded, not counted against
the attempt budget) and the registry's ``draining`` state."""

from __future__ import annotations

from datetime import timedelta

from storage import JobStore, Status, utcnow
from storage.registry import WorkerRegistry
from tests.support.decks import small_deck


def _claimed(store: JobStore, worker: str = "a@host1", attempt_limit: int = 1) -> str:
    job, _ = store.create(small_deck(), title="deck", attempt_limit=attempt_limit)
    claimed = store.claim(job.id, worker)
    assert claimed is not None and claimed.attempts == 1
    return job.id


def test_hand_back_requeues_at_once_without_spending_an_attempt(store: JobStore) -> None:
    job_id = _claimed(store, attempt_limit=1)  # no attempt left after this one
    reason = "handed back: worker a@host1 draining"
    assert store.hand_back(job_id, 1, reason) is Status.QUEUED
    job = store.get(job_id)
    assert job.status is Status.QUEUED and job.not_before is None
    # The next claim is attempt 2 of a budget that grew by the one handed back.
    assert (job.attempts, job.attempt_limit) == (1, 2)
    last = store.history(job_id)[-1]
    assert (last.from_status, last.to_status, last.attempt, last.reason) == (
        Status.PROCESSING,
        Status.QUEUED,
        1,
        reason,
    )
    again = store.claim(job_id, "b@host2")
    assert again is not None and again.attempts == 2
    # A transient failure of the new attempt is still allowed nothing more:
    # the budget is what it was before the hand-back.
    assert again.attempts == again.attempt_limit


def test_hand_back_is_fenced_on_the_attempt(store: JobStore) -> None:
    job_id = _claimed(store, attempt_limit=3)
    assert store.requeue(job_id, 1, "lost") is Status.QUEUED
    assert store.claim(job_id, "b@host2") is not None
    before = store.get(job_id)
    assert store.hand_back(job_id, 1, "handed back: worker a@host1 draining") is None
    assert store.get(job_id) == before


def test_a_cancel_wins_over_a_hand_back(store: JobStore) -> None:
    job_id = _claimed(store)
    store.request_cancel(job_id)
    assert store.hand_back(job_id, 1, "handed back: worker a@host1 draining") is Status.CANCELLED
    assert store.get(job_id).status is Status.CANCELLED


def test_registry_says_draining_then_stopped(store: JobStore) -> None:
    registry = WorkerRegistry(store)
    registry.register("a@host1", "host1", 101)
    [worker] = registry.list_workers()
    assert worker.state(30) == "alive" and worker.alive(30)
    registry.draining("a@host1", utcnow() + timedelta(seconds=75))
    registry.seen("a@host1")  # the sweeper still renews it: it stays draining
    [worker] = registry.list_workers()
    assert worker.state(30) == "draining" and not worker.alive(30)
    # A worker that dies while draining and is never seen again is stale.
    later = worker.last_seen + timedelta(seconds=31)
    assert worker.state(30, now=later) == "stale"
    registry.stopped("a@host1")
    [worker] = registry.list_workers()
    assert worker.state(30) == "stopped" and worker.current_job is None
