"""What runs next, at scale: the cost of one claim as a worker's loop makes it
(``claim_work``: the next job, with whether a long deck's segment waits read
in the same statement), and of a wake-up that finds nothing to run, on
PostgreSQL with 1,000 jobs and with ``--scale-rows`` jobs (mostly finished),
the same queued jobs across the same tenants on both sides, measured in
alternation in one run. A note gives what a separate segment read costs
(the loop made one before every claim until the check was folded in)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text

from bench.harness import Environment, Result, Series

TENANTS = 5
QUEUED_PER_TENANT = 100
#: Queued jobs per tenant in the large table for the EXPLAIN ANALYZE note.
EXPLAIN_QUEUED_PER_TENANT = 2_000
CLAIMS = 100
EMPTY_WAKES = 200
DECK = json.dumps({"title": "b", "slides": [{"title": "s", "duration": 1.0}]})

_INSERT = """
INSERT INTO jobs (id, status, stage, progress, attempts, title, deck, created_at,
                  queued_at, dispatched_at, started_at, completed_at, attempt_limit, owner,
                  priority)
SELECT gen_random_uuid()::text, :status, :stage, :progress, :attempts, :title,
       CAST(:deck AS jsonb), now() - g * interval '1 millisecond',
       now() - g * interval '1 millisecond', now() - g * interval '1 millisecond',
       CASE WHEN :status = 'completed' THEN now() - g * interval '1 millisecond' END,
       CASE WHEN :status = 'completed' THEN now() - g * interval '1 millisecond' END,
       3, 'tenant-' || (g % :tenants), 0
FROM generate_series(1, :n) AS g
"""

#: Claimed jobs back in the queue, so that every repeat claims the same ones.
_REQUEUE = """
UPDATE jobs SET status = 'queued', stage = 'queued', attempts = 0, worker = NULL,
       started_at = NULL, last_heartbeat = NULL, progress = 0
WHERE title = 'bench queued' AND status <> 'queued'
"""


def _engine(url: str) -> Any:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))


def _fill(url: str, rows: int, queued: int) -> None:
    engine = _engine(url)
    with engine.begin() as conn:
        for status, stage, progress, attempts, title, n in (
            ("completed", "done", 1, 1, "bench done", rows - queued),
            ("queued", "queued", 0, 0, "bench queued", queued),
        ):
            conn.execute(
                text(_INSERT),
                {
                    "status": status,
                    "stage": stage,
                    "progress": progress,
                    "attempts": attempts,
                    "title": title,
                    "deck": DECK,
                    "n": n,
                    "tenants": TENANTS,
                },
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) jobs"))
        conn.execute(text("CHECKPOINT"))
    engine.dispose()


def _explain(url: str) -> dict[str, str]:
    """EXPLAIN ANALYZE of the heads query (with its segment check) with more
    queued jobs added."""
    from storage.jobs.statements import queued_heads

    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(_INSERT),
            {
                "status": "queued",
                "stage": "queued",
                "progress": 0,
                "attempts": 0,
                "title": "bench explain",
                "deck": DECK,
                "n": TENANTS * EXPLAIN_QUEUED_PER_TENANT,
                "tenants": TENANTS,
            },
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) jobs"))
        total = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        queued = conn.execute(text("SELECT count(*) FROM jobs WHERE status='queued'")).scalar_one()
        heads = queued_heads("postgresql").compile(dialect=conn.dialect)
        plan = [
            row[0]
            for row in conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + str(heads),
                heads.construct_params({"n_now": datetime.now(UTC)}),
            )
        ]
    engine.dispose()
    return {
        "explain rows": f"{total:,} jobs, {queued:,} queued across {TENANTS} tenants",
        "explain top": plan[0].strip(),
        "explain time": " | ".join(p.strip() for p in plan if "Time:" in p),
        "explain buffers": next((p.strip() for p in plan if "Buffers" in p), "-"),
        "explain plan": "\n    " + "\n    ".join(plan),
    }


def _time_claims(url: str, count: int) -> float:
    """ms per claim_work over ``count`` claims, then put them back."""
    from storage import JobStore

    store = JobStore.from_url(url)
    started = time.perf_counter()
    for _ in range(count):
        if store.claim_work("bench@host", max_running=0) is None:
            raise SystemExit("claim: the queue ran dry")
    elapsed = time.perf_counter() - started
    with store.engine.begin() as conn:
        conn.execute(text(_REQUEUE))
    return elapsed * 1000 / count


def _time_empty(url: str, count: int) -> float:
    """ms per wake-up that finds nothing queued."""
    from storage import JobStore

    store = JobStore.from_url(url)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE title = 'bench queued'"))
    try:
        started = time.perf_counter()
        for _ in range(count):
            if store.claim_work("bench@host", max_running=0) is not None:
                raise SystemExit("claim: an empty wake-up claimed a job")
        return (time.perf_counter() - started) * 1000 / count
    finally:
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE jobs SET status = 'queued' "
                    "WHERE title = 'bench queued' AND status = 'cancelled'"
                )
            )


def _time_segment_read(url: str, count: int) -> float:
    """ms per separate read for a waiting segment that finds none (what the
    loop paid before every claim until the heads' read answered it)."""
    from storage import JobStore
    from storage.segments import SegmentStore

    segments = SegmentStore(JobStore.from_url(url).db)
    started = time.perf_counter()
    for _ in range(count):
        if segments.claim("bench@host") is not None:
            raise SystemExit("claim: a segment was claimed")
    return (time.perf_counter() - started) * 1000 / count


def claim(env: Environment, args: argparse.Namespace) -> Result:
    """ms per claim_work, 1,000 jobs vs ``--scale-rows`` jobs; the empty
    wake-up's figures and a separate segment read's go in the notes."""
    env.reset()
    from storage.migrate import upgrade

    notes: dict[str, Any] = {}
    with env.scratch_database("claim") as small_url:
        upgrade(small_url)
        queued = TENANTS * QUEUED_PER_TENANT
        sides = {"small": (small_url, 1_000), "large": (env.db_url, args.scale_rows)}
        for label, (url, rows) in sides.items():
            started = time.perf_counter()
            _fill(url, rows, queued)
            notes[f"fill {label} ({rows:,} jobs, {queued} queued)"] = (
                f"{time.perf_counter() - started:.1f} s"
            )
        claims = {"small": Series(), "large": Series()}
        empty = {"small": Series(), "large": Series()}
        segment_read = Series()
        for url, _ in sides.values():  # warm up both
            _time_claims(url, 10)
            _time_empty(url, 10)
        _time_segment_read(env.db_url, 10)
        for _ in range(args.repeat):
            for label, (url, _) in sides.items():
                claims[label].values.append(_time_claims(url, CLAIMS))
                empty[label].values.append(_time_empty(url, EMPTY_WAKES))
            segment_read.values.append(_time_segment_read(env.db_url, EMPTY_WAKES))
        empty_ratio = empty["large"].median / empty["small"].median
        notes["empty wake-up, small"] = empty["small"].text("ms")
        notes["empty wake-up, large"] = empty["large"].text("ms")
        notes["empty wake-up ratio"] = f"{empty_ratio:.3f}"
        notes["a separate segment read, none waiting (large)"] = segment_read.text("ms")
        notes.update(_explain(env.db_url))
    return Result(
        "claim",
        "ms/claim",
        claims["small"],
        claims["large"],
        goal="<= 1.5",
        better="lower",
        threshold=1.5,
        notes=notes,
        extra_pass=empty_ratio <= 1.5,
    )
