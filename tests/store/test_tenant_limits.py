"""Each tenant's weight, max_running and max_priority (storage/access.py), on
SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest

from storage import JobStore, PriorityNotAllowed
from storage.access import AccessStore, InvalidLimit, TenantLimits, UnknownTenant


def test_a_new_tenant_has_the_defaults(store: JobStore) -> None:
    access = AccessStore(store)
    access.create_key("acme")
    assert access.limits("acme") == TenantLimits("acme", 1.0, None, None)
    # A tenant with no row yet (the open mode's) reads the defaults too.
    assert access.limits("nobody") == TenantLimits("nobody")


def test_limits_are_set_kept_and_put_back_to_the_setting(store: JobStore) -> None:
    access = AccessStore(store)
    access.create_key("acme")
    access.create_key("globex")
    set_now = access.set_limits("acme", weight=2.5, max_running=3, max_priority=-20)
    assert set_now == TenantLimits("acme", 2.5, 3, -20)
    assert access.limits("acme") == set_now
    # What is not given stays as it was.
    assert access.set_limits("acme", max_running=0) == TenantLimits("acme", 2.5, 0, -20)
    assert access.set_limits("acme") == TenantLimits("acme", 2.5, 0, -20)
    # None: back to SLIDEFARM_MAX_RUNNING / SLIDEFARM_MAX_PRIORITY.
    assert access.set_limits("acme", max_running=None, max_priority=None) == TenantLimits(
        "acme", 2.5, None, None
    )
    assert access.set_limits("acme", max_priority=100).max_priority == 100
    assert access.set_limits("acme", max_priority=-100).max_priority == -100
    assert access.all_limits() == [
        TenantLimits("acme", 2.5, None, -100),
        TenantLimits("globex", 1.0, None, None),
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"weight": 0},
        {"weight": -1.0},
        {"weight": math.nan},
        {"weight": math.inf},
        {"max_running": -1},
        {"max_priority": 101},
        {"max_priority": -101},
        {"max_priority": True},
    ],
)
def test_limits_out_of_range_are_refused(store: JobStore, change: dict[str, object]) -> None:
    access = AccessStore(store)
    access.create_key("acme")
    with pytest.raises(InvalidLimit):
        access.set_limits("acme", **change)  # type: ignore[arg-type]
    assert access.limits("acme") == TenantLimits("acme")


def test_an_unknown_tenants_limits_cannot_be_set(store: JobStore) -> None:
    with pytest.raises(UnknownTenant):
        AccessStore(store).set_limits("nobody", weight=2)
    with pytest.raises(UnknownTenant):
        AccessStore(store).set_limits("nobody")


def test_the_insert_checks_the_priority_against_the_tenant_as_it_is_then(
    store: JobStore,
) -> None:
    """A submission's ceiling is checked by its insert, with no read before it:
    the tenant's own max_priority, else the ceiling passed (the setting)."""
    access = AccessStore(store)
    access.create_key("acme")
    deck = {"title": "t", "slides": [{"title": "s"}]}

    def submit(priority: int | None, ceiling: int | None = 10) -> int:
        job, _ = store.create(
            deck, title="t", owner="acme", priority=priority, priority_ceiling=ceiling
        )
        return job.priority

    assert submit(10) == 10
    assert submit(None) == 0  # unset: 0, the ceiling being above it
    with pytest.raises(PriorityNotAllowed) as refused:
        submit(11)
    assert (refused.value.priority, refused.value.ceiling) == (11, 10)
    assert "(10)" in str(refused.value)
    # The tenant's own ceiling replaces the setting at once: no cache between.
    access.set_limits("acme", max_priority=-5)
    with pytest.raises(PriorityNotAllowed) as refused:
        submit(0)
    assert refused.value.ceiling == -5
    assert submit(None) == -5  # unset: the ceiling, being below 0
    assert submit(-20) == -20
    access.set_limits("acme", max_priority=60)
    assert submit(60) == 60
    # No ceiling (an admin's submission): anything in range, unset is 0.
    assert submit(100, ceiling=None) == 100
    assert submit(None, ceiling=None) == 0
    # A refused submission left nothing behind: no job, no history row.
    page = store.list_jobs(owner="acme", limit=100)
    assert sorted(j.priority for j in page.jobs) == [-20, -5, 0, 0, 10, 60, 100]
    for job in page.jobs:
        assert [e.reason for e in store.history(job.id)] == ["submitted"]
