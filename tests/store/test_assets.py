"""The asset store on SQLite and PostgreSQL: content-addressed per tenant,
the stored-bytes quota under racing uploads, links that keep an asset alive,
and retention that deletes only what no job links to."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from core.config import Settings
from core.sniff import AssetRefused
from storage import JobStore
from storage.assets import (
    AssetInUse,
    AssetLimits,
    AssetNotFound,
    AssetQuotaExceeded,
    AssetStore,
    AssetTooLarge,
)
from storage.jobs.values import utcnow
from storage.models import assets_table
from tests.support.assets import image_bytes, pdf_bytes, pptx_bytes, svg_bytes
from tests.support.decks import small_deck
from workers.sweeper import Sweeper

LIMITS = AssetLimits(max_bytes=1 << 20, max_image_bytes=1 << 20, max_pixels=10**6, quota=None)


@pytest.fixture
def assets(store: JobStore, tmp_path: Path) -> AssetStore:
    return AssetStore(store, tmp_path / "output")


def _chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _age(store: JobStore, asset_id: str, days: float) -> None:
    with store.db.transaction() as conn:
        conn.execute(
            update(assets_table)
            .where(assets_table.c.id == asset_id)
            .values(last_used_at=utcnow() - timedelta(days=days))
        )


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (image_bytes("PNG"), "png"),
        (image_bytes("JPEG"), "jpeg"),
        (image_bytes("WEBP"), "webp"),
        (image_bytes("GIF"), "gif"),
        (pdf_bytes(), "pdf"),
        (pptx_bytes(), "pptx"),
    ],
)
def test_each_kind_is_stored_under_its_digest(assets: AssetStore, data: bytes, kind: str) -> None:
    asset, created = assets.ingest("acme", _chunks(data), LIMITS)
    assert created and asset.kind == kind and asset.size_bytes == len(data)
    path = assets.path(asset)
    assert path.read_bytes() == data
    assert path.parent.name == asset.sha256[:2] and path.parent.parent.name == "acme"
    assert assets.get(asset.id, owner="acme") == asset
    assert not list((assets.output_dir / "assets" / ".incoming").iterdir())


def test_same_bytes_are_one_asset_per_tenant_never_shared(assets: AssetStore) -> None:
    data = image_bytes("PNG")
    first, created = assets.ingest("acme", [data], LIMITS)
    again, created_again = assets.ingest("acme", _chunks(data), LIMITS)
    other, created_other = assets.ingest("globex", [data], LIMITS)
    assert created and not created_again and created_other
    assert again.id == first.id and other.id != first.id
    assert assets.path(other) != assets.path(first) and assets.path(other).exists()
    with pytest.raises(AssetNotFound):
        assets.get(first.id, owner="globex")


def test_refused_uploads_leave_no_file(assets: AssetStore) -> None:
    with pytest.raises(AssetRefused, match="SVG"):
        assets.ingest("acme", [svg_bytes()], LIMITS)
    with pytest.raises(AssetTooLarge):
        assets.ingest("acme", [b"\x00" * (LIMITS.max_bytes + 1)], LIMITS)
    assert not list((assets.output_dir / "assets" / ".incoming").iterdir())
    assert assets.list_assets(owner="acme").assets == []


def test_images_have_a_smaller_size_limit_than_documents(assets: AssetStore) -> None:
    image, document = image_bytes("PNG"), pdf_bytes()
    limits = AssetLimits(
        max_bytes=len(document), max_image_bytes=len(image) - 1, max_pixels=10**6, quota=None
    )
    with pytest.raises(AssetTooLarge, match="SLIDEFARM_MAX_IMAGE_ASSET_BYTES"):
        assets.ingest("acme", [image], limits)
    assert assets.ingest("acme", [document], limits)[1]


def test_the_quota_holds_under_racing_uploads(assets: AssetStore) -> None:
    images = [image_bytes("PNG", (64, 48), f"#{n:02x}40{n:02x}") for n in range(12)]
    biggest = max(len(i) for i in images)
    quota = biggest * 4
    limits = AssetLimits(max_bytes=1 << 20, max_image_bytes=1 << 20, max_pixels=10**6, quota=quota)
    barrier = threading.Barrier(len(images))
    stored: list[int] = []
    refused: list[str] = []

    def upload(data: bytes) -> None:
        barrier.wait()
        try:
            asset, _ = assets.ingest("acme", [data], limits)
            stored.append(asset.size_bytes)
        except AssetQuotaExceeded as error:
            refused.append(str(error))

    threads = [threading.Thread(target=upload, args=(data,)) for data in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored) + len(refused) == len(images)
    assert refused and len(stored) >= 4
    assert sum(stored) == assets.stored_bytes("acme") <= quota
    assert "SLIDEFARM_MAX_ASSET_STORAGE_BYTES" in refused[0]


def test_list_pages_newest_first_per_tenant(assets: AssetStore) -> None:
    made = [assets.ingest("acme", [image_bytes("PNG", (8 + n, 8))], LIMITS)[0] for n in range(5)]
    assets.ingest("globex", [image_bytes("PNG", (99, 9))], LIMITS)
    seen, cursor = [], None
    while True:
        page = assets.list_assets(owner="acme", limit=2, cursor=cursor)
        seen += [a.id for a in page.assets]
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = [a.id for a in sorted(made, key=lambda a: (a.created_at, a.id), reverse=True)]
    assert seen == expected


def test_delete_refuses_while_a_queued_job_uses_the_asset(
    assets: AssetStore, store: JobStore
) -> None:
    asset, _ = assets.ingest("acme", [pdf_bytes()], LIMITS)
    job, _ = store.create(small_deck(), title="deck", owner="acme")
    assets.link(job.id, [asset.id])
    with pytest.raises(AssetInUse):
        assets.delete(asset.id, owner="acme")
    with pytest.raises(AssetNotFound):
        assets.delete(asset.id, owner="globex")
    store.request_cancel(job.id)  # a queued job is cancelled at once
    assets.delete(asset.id, owner="acme")
    assert not assets.path(asset).exists()
    with pytest.raises(AssetNotFound):
        assets.get(asset.id)


def test_a_job_cannot_link_another_tenants_asset(assets: AssetStore, store: JobStore) -> None:
    theirs, _ = assets.ingest("globex", [pdf_bytes()], LIMITS)
    job, _ = store.create(small_deck(), title="deck", owner="acme")
    with pytest.raises(AssetNotFound):
        assets.link(job.id, [theirs.id])


def test_a_submission_links_its_assets_in_its_own_transaction(
    assets: AssetStore, store: JobStore
) -> None:
    mine, _ = assets.ingest("acme", [pdf_bytes()], LIMITS)
    theirs, _ = assets.ingest("globex", [image_bytes("PNG")], LIMITS)
    job, _ = store.create(small_deck(), title="t", owner="acme", asset_ids=[mine.id, mine.id])
    with pytest.raises(AssetInUse):
        assets.delete(mine.id)
    # One asset deleted (or another tenant's) between the check and the
    # insert: no job, no half-linked row.
    before = store.list_jobs(limit=100).jobs
    for wrong in ([theirs.id], [mine.id, "00000000-0000-4000-8000-000000000000"]):
        with pytest.raises(AssetNotFound):
            store.create(small_deck(), title="t", owner="acme", asset_ids=wrong)
    assert [j.id for j in store.list_jobs(limit=100).jobs] == [j.id for j in before]
    assert job.id in {j.id for j in before}


def test_retention_deletes_old_unlinked_assets_only(assets: AssetStore, store: JobStore) -> None:
    old_unlinked, _ = assets.ingest("acme", [image_bytes("PNG", (10, 10))], LIMITS)
    old_linked, _ = assets.ingest("acme", [image_bytes("PNG", (11, 10))], LIMITS)
    recent, _ = assets.ingest("acme", [image_bytes("PNG", (12, 10))], LIMITS)
    job, _ = store.create(small_deck(), title="deck", owner="acme")
    assets.link(job.id, [old_linked.id])
    _age(store, old_unlinked.id, 31)
    _age(store, old_linked.id, 31)
    assert assets.delete_unused_older_than(30) == [old_unlinked.id]
    assert not assets.path(old_unlinked).exists()
    for kept in (old_linked, recent):
        assert assets.get(kept.id).id == kept.id and assets.path(kept).exists()
    # Once the job is gone (its links cascade), the old asset goes too.
    assert store.delete(job.id)
    assert assets.delete_unused_older_than(30) == [old_linked.id]


def test_the_sweepers_retention_pass_deletes_unused_assets_only(
    db_url: str, tmp_path: Path, store: JobStore, assets: AssetStore
) -> None:
    settings = Settings(
        DATABASE_URL=db_url,
        SLIDEFARM_OUTPUT_DIR=str(assets.output_dir),
        SLIDEFARM_ASSET_RETENTION_DAYS="30",
    )
    used, _ = assets.ingest("acme", [pptx_bytes()], LIMITS)
    unused, _ = assets.ingest("acme", [pdf_bytes()], LIMITS)
    job, _ = store.create(small_deck(), title="deck", owner="acme")  # queued
    assets.link(job.id, [used.id])
    _age(store, used.id, 45)
    _age(store, unused.id, 45)
    assert Sweeper(store, settings, "a@host1", lambda _n: None).sweep_once(force_orphan_scan=True)
    assert assets.get(used.id).id == used.id and assets.path(used).exists()
    with pytest.raises(AssetNotFound):
        assets.get(unused.id)
    assert not assets.path(unused).exists()


def test_the_orphan_scan_removes_uploads_left_by_a_crash_only(
    db_url: str, store: JobStore, assets: AssetStore
) -> None:
    settings = Settings(DATABASE_URL=db_url, SLIDEFARM_OUTPUT_DIR=str(assets.output_dir))
    folder = assets.output_dir / "assets" / ".incoming"
    folder.mkdir(parents=True)
    left, live = folder / "upload-left", folder / "upload-live"
    left.write_bytes(b"half an upload")
    live.write_bytes(b"arriving")
    hours_ago = time.time() - 2 * 3600
    os.utime(left, (hours_ago, hours_ago))
    Sweeper(store, settings, "a@host1", lambda _n: None).remove_orphans()
    assert not left.exists() and live.exists()


def _race(*actions: Callable[[], object]) -> None:
    """Run ``actions`` at the same moment, each in its own thread."""
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], object]) -> None:
        barrier.wait()
        action()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_retention_racing_links_never_deletes_a_linked_asset(
    assets: AssetStore, store: JobStore
) -> None:
    job, _ = store.create(small_deck(), title="deck", owner="acme")
    for n in range(25):
        asset, _ = assets.ingest("acme", [image_bytes("PNG", (8 + n, 8))], LIMITS)
        _age(store, asset.id, 31)
        linked: list[bool] = []

        def link(asset_id: str = asset.id, linked: list[bool] = linked) -> None:
            try:
                assets.link(job.id, [asset_id])
                linked.append(True)
            except AssetNotFound:
                linked.append(False)

        _race(link, lambda: assets.delete_unused_older_than(30))
        if linked == [True]:
            assert assets.get(asset.id).id == asset.id and assets.path(asset).exists()
        else:
            with pytest.raises(AssetNotFound):
                assets.get(asset.id)


def test_an_upload_racing_retention_of_the_same_bytes_keeps_its_file(
    assets: AssetStore, store: JobStore
) -> None:
    data = image_bytes("PNG", (30, 30))
    for _ in range(10):
        asset, _ = assets.ingest("acme", [data], LIMITS)
        _age(store, asset.id, 31)
        result: list[str] = []
        _race(
            lambda result=result: result.append(assets.ingest("acme", [data], LIMITS)[0].id),
            lambda: assets.delete_unused_older_than(30),
        )
        survivor = assets.get(result[0])
        assert assets.path(survivor).read_bytes() == data
