"""Segments of a split job on both backends: planned by the job's attempt,
claimed, fenced, heartbeated, retried, recovered and dropped like jobs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event

from storage import Job, JobStore, LeaseState, Status, utcnow
from storage.models import SegmentStatus
from storage.segments import Part, Segment, SegmentStore
from tests.support.decks import small_deck

PARTS = [Part(0, (1.0, 1.0)), Part(2, (1.0, 1.0)), Part(4, (1.5,))]


def _running(store: JobStore, worker: str = "coord@h", priority: int = 0) -> str:
    job, _ = store.create(small_deck(slides=5), title="long", priority=priority)
    claimed = store.claim(job.id, worker)
    assert claimed is not None
    return job.id


def _planned(store: JobStore, job_id: str, limit: int = 2) -> list[Segment]:
    planned = SegmentStore(store.db).plan(job_id, store.get(job_id).attempts, PARTS, limit)
    assert planned is not None
    return planned


def test_the_jobs_attempt_plans_once_and_a_later_attempt_keeps_the_plan(store: JobStore) -> None:
    segments = SegmentStore(store.db)
    job_id = _running(store)
    assert segments.plan(job_id, 2, PARTS, 3) is None  # not the attempt holding the job
    planned = _planned(store, job_id)
    assert [(s.idx, s.first_slide, s.slides, s.status) for s in planned] == [
        (0, 0, 2, SegmentStatus.QUEUED),
        (1, 2, 2, SegmentStatus.QUEUED),
        (2, 4, 1, SegmentStatus.QUEUED),
    ]
    done = segments.claim("w1@h", job_id=job_id)
    assert done is not None and done.idx == 0
    assert segments.complete(done, done.attempts, frames=60, output="x", worker="w1@h")
    # The job's worker died; its next attempt plans the same parts: kept,
    # with the finished segment's work.
    store.requeue(job_id, 1, "test")
    again = store.claim(job_id, "coord2@h")
    assert again is not None and again.attempts == 2
    kept = segments.plan(job_id, 2, PARTS, 3)
    assert kept is not None and kept[0].status is SegmentStatus.COMPLETED and kept[0].frames == 60
    # Other lengths (the sound came out otherwise): a new plan.
    other = segments.plan(job_id, 2, [Part(0, (2.0,) * 5)], 3)
    assert other is not None and len(other) == 1 and other[0].status is SegmentStatus.QUEUED
    reasons = [e.reason or "" for e in store.history(job_id)]
    assert reasons.count("split: 5 slides in 3 segments") == 1
    assert "split: 5 slides in 1 segments (an earlier plan replaced)" in reasons
    assert "split: the plan of an earlier attempt kept, 1 of 3 segments done" in reasons


def test_claims_go_by_job_priority_then_start_then_order(store: JobStore) -> None:
    segments = SegmentStore(store.db)
    first = _running(store)
    urgent = _running(store, priority=5)
    _planned(store, first)
    _planned(store, urgent)
    order = []
    while (claimed := segments.claim("w@h")) is not None:
        order.append((claimed.job_id, claimed.idx))
    assert order == [(urgent, 0), (urgent, 1), (urgent, 2), (first, 0), (first, 1), (first, 2)]
    history = [e.reason for e in store.history(urgent)]
    assert "segment 1 (slides 1-2): claimed by w@h" in history


def test_a_late_write_of_a_recovered_segment_is_refused(store: JobStore) -> None:
    segments = SegmentStore(store.db)
    job_id = _running(store)
    _planned(store, job_id)
    stale = segments.claim("dead@h", job_id=job_id)
    assert stale is not None and stale.attempts == 1
    assert segments.heartbeat(job_id, 0, 1, 0.5) is LeaseState.HELD
    assert segments.of_job(job_id)[0].progress == 0.5
    assert segments.heartbeat(job_id, 0, 1, 0.2) is LeaseState.HELD
    assert segments.of_job(job_id)[0].progress == 0.5  # never backwards
    # Not stale yet: kept.
    assert segments.recover_stale(30.0) == []
    recovered = segments.recover_stale(30.0, now=utcnow() + timedelta(seconds=31))
    assert [(r.segment.idx, r.action) for r in recovered] == [(0, SegmentStatus.QUEUED)]
    redo = segments.claim("alive@h", job_id=job_id)
    assert redo is not None and redo.idx == 0 and redo.attempts == 2
    # The presumed-dead worker comes back: every write of its attempt is refused.
    assert segments.heartbeat(job_id, 0, 1) is LeaseState.LOST
    assert not segments.complete(stale, 1, frames=60, output="late", worker="dead@h")
    assert segments.retry(stale, 1, "late", delay=0, worker="dead@h") is None
    assert segments.complete(redo, 2, frames=60, output="good", worker="alive@h")
    row = segments.of_job(job_id)[0]
    assert (row.status, row.output, row.worker) == (SegmentStatus.COMPLETED, "good", "alive@h")
    reasons = [e.reason or "" for e in store.history(job_id)]
    assert any("dead@h stopped heartbeating" in r for r in reasons), reasons


def test_retries_spend_the_budget_and_a_hand_back_does_not(store: JobStore) -> None:
    segments = SegmentStore(store.db)
    job_id = _running(store)
    _planned(store, job_id, limit=2)
    one = segments.claim("w@h", job_id=job_id)
    assert one is not None
    assert segments.retry(one, 1, "ffmpeg crashed", delay=60, worker="w@h") is SegmentStatus.QUEUED
    # Not due for a minute: the next claim takes the next segment.
    nxt = segments.claim("w@h", job_id=job_id)
    assert nxt is not None and nxt.idx == 1
    later = utcnow() + timedelta(seconds=61)
    again = segments.claim("w@h", job_id=job_id, now=later)
    assert again is not None and again.idx == 0 and again.attempts == 2
    # The worker stops: handed back, not counted.
    assert segments.retry(again, 2, "draining", delay=0, worker="w@h", counted=False) is (
        SegmentStatus.QUEUED
    )
    third = segments.claim("w@h", job_id=job_id, now=later)
    assert third is not None and third.idx == 0 and third.attempts == 3
    assert third.attempt_limit == 3
    assert segments.retry(third, 3, "crashed again", delay=1, worker="w@h") is (
        SegmentStatus.FAILED
    )
    failed = segments.of_job(job_id)[0]
    assert failed.status is SegmentStatus.FAILED and failed.error == "crashed again"


def test_a_cancel_reaches_every_segment_and_an_ended_job_loses_them(store: JobStore) -> None:
    segments = SegmentStore(store.db)
    job_id = _running(store)
    _planned(store, job_id)
    held = segments.claim("w@h", job_id=job_id)
    assert held is not None
    store.request_cancel(job_id)
    assert segments.heartbeat(job_id, 0, 1) is LeaseState.CANCEL_REQUESTED
    assert segments.claim("w2@h") is None  # nothing more starts
    assert store.finish_cancelled(job_id, 1)
    assert segments.heartbeat(job_id, 0, 1) is LeaseState.LOST
    assert segments.drop_ended() == [job_id]
    assert segments.of_job(job_id) == []


def test_deleting_the_job_deletes_its_segments(store: JobStore) -> None:
    segments = SegmentStore(store.db)
    job_id = _running(store)
    _planned(store, job_id)
    held = segments.claim("w@h", job_id=job_id)
    assert held is not None
    assert store.finish_cancelled(job_id, 1) or True
    store.delete(job_id)
    assert segments.of_job(job_id) == []
    assert segments.heartbeat(job_id, 0, 1) is LeaseState.LOST
    assert segments.jobs_with_segments([job_id]) == set()


def test_segments_wait_while_their_job_is_queued_again_only_if_not_cancelled(
    store: JobStore,
) -> None:
    segments = SegmentStore(store.db)
    job_id = _running(store)
    _planned(store, job_id)
    store.requeue(job_id, 1, "its worker died")
    assert store.get(job_id).status is Status.QUEUED
    # The job's next attempt joins what they make: they go on meanwhile.
    assert segments.claim("w@h") is not None
    assert segments.runnable() == 2


@contextmanager
def _statements(store: JobStore) -> Iterator[list[str]]:
    """The SQL statements ``store`` runs meanwhile."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def _claimed(claimed: Job | Segment | None) -> tuple[str, str, int] | None:
    if claimed is None:
        return None
    if isinstance(claimed, Segment):
        return ("segment", claimed.job_id, claimed.idx)
    return ("job", claimed.id, claimed.attempts)


def test_the_loops_claim_takes_every_waiting_segment_before_a_new_job(store: JobStore) -> None:
    split = _running(store)
    _planned(store, split)
    waiting, _ = store.create(small_deck(), title="next")
    order = []
    while (claimed := store.claim_work("w@h")) is not None:
        order.append(_claimed(claimed))
    assert order == [
        ("segment", split, 0),
        ("segment", split, 1),
        ("segment", split, 2),
        ("job", waiting.id, 1),
    ]
    history = [e.reason for e in store.history(split)]
    assert "segment 3 (slides 5-5): claimed by w@h" in history


def test_a_segment_requeued_by_the_sweeper_or_come_due_goes_before_a_new_job(
    store: JobStore,
) -> None:
    segments = SegmentStore(store.db)
    split = _running(store)
    _planned(store, split, limit=3)
    held = [segments.claim("dead@h", job_id=split) for _ in PARTS]
    for segment in held[:2]:
        assert segment is not None
        assert segments.complete(segment, 1, frames=48, output="x", worker="dead@h")
    first, _ = store.create(small_deck(), title="first")
    second, _ = store.create(small_deck(), title="second")
    # The worker of the last segment died: the sweeper queues it again.
    later = utcnow() + timedelta(seconds=31)
    assert [r.segment.idx for r in segments.recover_stale(30.0, now=later)] == [2]
    assert _claimed(store.claim_work("alive@h", now=later)) == ("segment", split, 2)
    # It fails and waits for its retry: the queue goes on meanwhile, and the
    # segment comes first again once due.
    redo = segments.of_job(split)[2]
    assert segments.retry(redo, 2, "ffmpeg crashed", delay=60, worker="alive@h") is (
        SegmentStatus.QUEUED
    )
    assert _claimed(store.claim_work("alive@h", now=later)) == ("job", first.id, 1)
    due = utcnow() + timedelta(seconds=61)
    assert _claimed(store.claim_work("alive@h", now=due)) == ("segment", split, 2)
    assert _claimed(store.claim_work("alive@h", now=due)) == ("job", second.id, 1)
    assert store.claim_work("alive@h", now=due) is None


def test_the_loops_claim_reads_no_segment_when_none_waits_and_passes_those_of_a_cancel(
    store: JobStore,
) -> None:
    assert store.claim_work("w@h") is None  # the engine's first connection
    with _statements(store) as idle:
        assert store.claim_work("w@h") is None
    assert len(idle) == 1  # a wake-up with nothing to run: one query
    plain, _ = store.create(small_deck(), title="plain")
    with _statements(store) as busy:
        assert _claimed(store.claim_work("w@h")) == ("job", plain.id, 1)
    # The heads' read said whether a segment waits: no read of its own.
    assert [sql for sql in busy if "segments" in sql and "heads" not in sql] == []
    # Segments of a job whose cancel was asked for stay queued until it ends:
    # never claimed, and they hold no job back.
    split = _running(store)
    _planned(store, split)
    store.request_cancel(split)
    after, _ = store.create(small_deck(), title="after")
    assert _claimed(store.claim_work("w@h")) == ("job", after.id, 1)
    assert store.claim_work("w@h") is None
    assert [s.status for s in SegmentStore(store.db).of_job(split)] == [SegmentStatus.QUEUED] * 3
