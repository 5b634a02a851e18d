"""A rolling deploy under load loses nothing: HAProxy in front of two
gunicorn API instances, three Celery workers, PostgreSQL and Redis; a client
submits and polls through HAProxy all along (a few hundred requests a second
on kept-alive connections) and a few clients follow jobs' event streams,
while an expand migration adds a column and its index, the workers are
replaced one by one (SIGTERM: they drain), the API hosts are reloaded (HUP)
and replaced one by one (SIGTERM: they drain), and a contract migration
drops what the expand added. Its figures are printed
(``-s`` shows them): requests, failures, p50/p99 during the deploy against
the same load before it, jobs, wall time.

The deploy is the list ``STEPS``, run in order (tests/support/farm.py), as
the README's "Deploying without downtime" orders it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from storage import JobStore
from storage.jobs.values import utcnow
from storage.models import jobs_table
from tests.support.farm import (
    DRAIN_DELAY,
    DeployStep,
    EventFollower,
    Farm,
    LoadClient,
    hup_api,
    migrate,
    percentile,
    replace_api,
    roll_workers,
    run_deploy,
    scheduled_deck,
)
from tests.support.services import flush_run_index
from tests.support.stack import make_stack

pytestmark = pytest.mark.e2e

#: The deploy, in order: the README's procedure. The expand migration adds a
#: column and its index (built CONCURRENTLY) under the running code, which
#: ignores them; the contract migration drops them once every process runs
#: the "new" version.
STEPS: list[DeployStep] = [
    migrate("e1_expand_deploy_tag", "expand"),
    roll_workers(),
    hup_api("api1"),
    replace_api("api1"),
    replace_api("api2"),
    migrate("e2_contract_deploy_tag", "contract"),
]
#: Seconds of the same load before the deploy, measured for comparison.
BASELINE = 12.0
#: When the followed jobs run, seconds after they are submitted (before the
#: baseline), or None: held until the deploy is over (their streams, one on
#: each API host, cross every step).
FOLLOWED_AT = (15.0, 25.0, None, None)


@pytest.fixture
def farm(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Farm]:
    flush_run_index(redis_url)
    stack = make_stack(
        pg_url,
        redis_url,
        tmp_path,
        REDIS_URL=redis_url,
        SLIDEFARM_NOOP_RENDER="1",
        SLIDEFARM_API_DRAIN_DELAY=str(DRAIN_DELAY),
    )
    farm = Farm(stack, tmp_path, workers=3)
    try:
        farm.start()
        yield farm
    finally:
        farm.stop()


def test_a_rolling_deploy_under_load_loses_nothing(farm: Farm) -> None:
    began = time.monotonic()
    stack, port = farm.stack, farm.balancer.port
    followers, held = [], []
    for seconds in FOLLOWED_AT:
        status, job = stack.request("POST", "/v1/jobs", scheduled_deck(seconds or 3600))
        assert status == 202 and job["status"] == "scheduled", job
        followers.append(EventFollower("127.0.0.1", port, stack.token, job["job_id"]))
        if seconds is None:
            held.append(followers[-1])
    for follower in followers:  # one after another: HAProxy alternates the hosts
        follower.start()
        time.sleep(0.2)
    load = LoadClient("127.0.0.1", port, stack.token)
    load.start()
    time.sleep(BASELINE)
    deploy_start = time.monotonic()
    done = run_deploy(farm, STEPS)
    deploy_end = time.monotonic()
    store = JobStore.from_url(stack.env["DATABASE_URL"])
    with store.engine.begin() as conn:  # the held jobs run now
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_([f.job_id for f in held]))
            .values(run_at=utcnow())
        )
    time.sleep(2.0)
    load.stop()
    for follower in followers:
        follower.join(timeout=max(1.0, deploy_end + 30 - time.monotonic()))

    # Every request answered, none 5xx, no connection error.
    failed = [o for o in load.outcomes if o.status == 0 or o.status >= 500]
    refused = [o for o in load.outcomes if o.status not in (200, 202) and o not in failed]
    assert not failed, failed[:10]
    assert not refused, refused[:10]

    # Every job submitted exists once and completes; nothing else was created
    # (a retried submission would be a second job: the Idempotency-Key holds).
    expected = set(load.submitted) | {f.job_id for f in followers}
    assert len(load.submitted) == len(set(load.submitted))

    def unfinished() -> int:
        with store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(jobs_table)
                    .where(jobs_table.c.status.not_in(("completed", "failed", "cancelled")))
                ).scalar_one()
            )

    deadline = time.monotonic() + 60
    while unfinished() and time.monotonic() < deadline:
        time.sleep(0.5)
    with store.engine.connect() as conn:
        rows = conn.execute(select(jobs_table.c.id, jobs_table.c.status)).all()
    ids = [str(row.id) for row in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected, (len(set(ids) - expected), len(expected - set(ids)))
    statuses = {
        str(row.status.value if hasattr(row.status, "value") else row.status) for row in rows
    }
    assert statuses == {"completed"}, statuses

    # Every stream follower saw its job's end, reconnecting when told, never cut.
    for follower in followers:
        assert follower.final is not None, (follower.job_id, follower.events[-5:], follower.cuts)
        assert follower.final["status"] == "completed", follower.final
        assert not follower.cuts, follower.cuts
        assert [e for e, _, _ in follower.events].count("end") == 1
    reconnects = sum(f.reconnects for f in followers)
    # A stream open through the deploy was on a host that stopped, whichever.
    assert all(f.reconnects >= 1 for f in held), [f.reconnects for f in held]

    before = [o.seconds for o in load.between(began + 2.0, deploy_start)]
    during = [o.seconds for o in load.between(deploy_start, deploy_end)]
    wall = time.monotonic() - began
    rate = len(during) / (deploy_end - deploy_start)
    rate_before = len(before) / (deploy_start - began - 2.0)
    print(
        f"\ndeploy: {', '.join(done)}\n"
        f"  requests {len(load.outcomes)}, failed {len(failed)}, "
        f"{rate_before:.0f}/s before, {rate:.0f}/s during the deploy "
        f"({deploy_end - deploy_start:.1f} s)\n"
        f"  p50/p99 before {percentile(before, 0.5) * 1000:.1f}/"
        f"{percentile(before, 0.99) * 1000:.1f} ms, during "
        f"{percentile(during, 0.5) * 1000:.1f}/{percentile(during, 0.99) * 1000:.1f} ms\n"
        f"  jobs {len(expected)} submitted, {len(ids)} in the store, all completed; "
        f"streams {len(followers)}, reconnects {reconnects}\n"
        f"  steps {', '.join(f'{k} {v:.2f} s' for k, v in farm.timings.items())}\n"
        f"  wall {wall:.1f} s"
    )
    # The load is real (it aims at 300 a second; a busy machine gets less).
    assert rate_before > 50
