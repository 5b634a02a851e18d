"""Jobs put in a state directly through the store, with files in place
where a worker would leave them (no worker runs), and what a webhook
delivery of one answered."""

from __future__ import annotations

from sqlalchemy import update

from core.config import Settings
from storage import JobStore, Status
from storage.deliveries import DeliveryResult
from storage.models import jobs_table
from tests.support.decks import small_deck


def finish_with_files(settings: Settings, job_id: str, video: bytes) -> None:
    """Complete ``job_id`` with a video of ``video``, a thumbnail and one slide."""
    store = JobStore.from_url(settings.database_url)
    store.claim(job_id, "w@h")
    folder = settings.output_dir / job_id
    (folder / "slides").mkdir(parents=True)
    (folder / "video.mp4").write_bytes(video)
    (folder / "thumbnail.jpg").write_bytes(b"\xff\xd8jpeg")
    (folder / "slides" / "001.png").write_bytes(b"\x89PNGone")
    store.complete(
        job_id,
        1,
        video_url=f"/v1/jobs/{job_id}/video",
        thumbnail_url=f"/v1/jobs/{job_id}/thumbnail",
        slide_image_path="slides",
    )


def failed_job(store: JobStore) -> str:
    """A job that failed on its first attempt, with one file recorded."""
    job, _ = store.create(small_deck(), title="deck")
    assert store.claim(job.id, "a@host1") is not None
    assert store.add_files(job.id, 1, [("slides/001.png", 10)])
    assert store.fail(job.id, 1, "the deck cannot be rendered")
    return job.id


def final_job(
    store: JobStore,
    callback_url: str | None = "http://93.184.215.14/hook",
    status: Status = Status.COMPLETED,
) -> str:
    """A job with ``callback_url`` taken through a real final transition."""
    job, _ = store.create(small_deck(), title="hooked")
    if callback_url is not None:
        with store.transaction() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job.id)
                .values(callback_url=callback_url)
            )
    if status is Status.CANCELLED:
        store.request_cancel(job.id)
        return job.id
    claimed = store.claim(job.id, "w@host")
    assert claimed is not None
    if status is Status.COMPLETED:
        assert store.complete(
            job.id, 1, video_url="v", thumbnail_url="t", slide_image_path="slides"
        )
    else:
        assert store.fail(job.id, 1, "broken")
    return job.id


def delivery_result(code: int | None, error: str | None = None) -> DeliveryResult:
    """What a delivery that took 12.5 ms answered (``code``) or failed with."""
    return DeliveryResult(code, error, 12.5)
