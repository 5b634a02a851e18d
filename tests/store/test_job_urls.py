"""The image URLs a job fetched (``job_urls``), on SQLite and PostgreSQL:
remembered per job, only with an asset of the job's owner, and keeping that
asset while the job lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import JobStore
from storage.assets import AssetInUse, AssetLimits, AssetNotFound, AssetStore
from tests.support.assets import image_bytes
from tests.support.decks import small_deck

LIMITS = AssetLimits(max_bytes=1 << 20, max_image_bytes=1 << 20, max_pixels=10**6, quota=None)


def test_a_fetched_url_is_remembered_per_job_and_keeps_its_asset(
    store: JobStore, tmp_path: Path
) -> None:
    assets = AssetStore(store, tmp_path / "output")
    url = "https://cdn.example/logo.png"
    fetched, _ = assets.ingest("acme", [image_bytes("PNG")], LIMITS)
    theirs, _ = assets.ingest("globex", [image_bytes("JPEG")], LIMITS)
    job, _ = store.create(small_deck(), title="deck", owner="acme")
    other, _ = store.create(small_deck(), title="deck", owner="acme")
    assert assets.fetched(job.id, url) is None
    with pytest.raises(AssetNotFound):
        assets.remember_fetch(job.id, url, theirs.id)
    assert assets.fetched(job.id, url) is None  # nothing half-written
    assets.remember_fetch(job.id, url, fetched.id)
    assets.remember_fetch(job.id, url, fetched.id)  # again: still one record
    assert assets.fetched(job.id, url) == fetched.id
    assert assets.fetched(other.id, url) is None  # per job
    with pytest.raises(AssetInUse):  # linked: kept while the job is queued
        assets.delete(fetched.id, owner="acme")
    store.delete(job.id)
    assert assets.fetched(job.id, url) is None
    assets.delete(fetched.id, owner="acme")
