"""Attempts of decks with images, in-process against the real store on both
backends: uploaded assets and fetched URLs drawn, a URL fetched once per job
even across retries, and every refusal a clear, final failure."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.config import Settings
from storage import JobStore, Status
from storage.assets import AssetLimits, AssetStore
from tests.support.assets import pdf_bytes
from tests.support.images import FETCH_ALLOW, ImageServer, encoded
from workers.pipeline import Outcome, run_attempt

GREEN, BLUE = (0, 200, 0), (0, 0, 220)
OWNER = "acme"


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"heartbeat_interval": 0.05, "fetch_allow": FETCH_ALLOW})


def png(color: tuple[int, int, int]) -> bytes:
    return encoded(Image.new("RGB", (160, 90), color), "PNG")


def attempt(store: JobStore, job_id: str, settings: Settings) -> Outcome:
    claimed = store.claim(job_id, "w@h")
    assert claimed is not None
    return run_attempt(store, claimed, settings).outcome


def image_deck(*slides: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": "images",
        "slides": [{"duration": 0.5, **s} for s in slides],
        "options": {"resolution": "480p", "fps": 24},
    }


def test_an_asset_and_a_url_are_drawn_and_a_retry_does_not_fetch_again(
    store: JobStore, worker_settings: Settings, image_server: ImageServer
) -> None:
    assets = AssetStore(store, worker_settings.output_dir)
    uploaded, _ = assets.ingest(OWNER, [png(GREEN)], AssetLimits.from_settings(worker_settings))
    image_server.files["/logo.png"] = png(BLUE)
    url = image_server.url("/logo.png")
    deck = image_deck(
        {"title": "Uploaded", "body": "beside it", "image": uploaded.id, "layout": "left"},
        {"image": url},  # full, no text: no scrim
        {"title": "Again", "image": url, "layout": "background"},
    )
    job, _ = store.create(deck, title="images", owner=OWNER)

    # The first attempt fetches the URL, then fails: the asset's file is gone.
    stored = assets.path(uploaded)
    kept = stored.read_bytes()
    stored.unlink()
    assert attempt(store, job.id, worker_settings) is Outcome.FAILED
    failed = store.get(job.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert f"slide 1's image: the file of asset {uploaded.id} is missing" in failed.error
    assert image_server.hits == {"/logo.png": 1}
    fetched_id = assets.fetched(job.id, url)
    assert fetched_id is not None
    fetched = assets.get(fetched_id, owner=OWNER)  # the job's owner's asset
    assert fetched.kind == "png"

    stored.write_bytes(kept)
    store.retry(job.id)
    assert attempt(store, job.id, worker_settings) is Outcome.COMPLETED
    assert image_server.hits == {"/logo.png": 1}  # remembered, not fetched again

    folder = worker_settings.output_dir / job.id
    first = Image.open(folder / "slides/001.png").convert("RGB")
    second = Image.open(folder / "slides/002.png").convert("RGB")
    third = Image.open(folder / "slides/003.png").convert("RGB")
    assert first.getpixel((first.width // 4, first.height // 2)) == GREEN
    assert first.getpixel((first.width * 3 // 4, first.height // 2)) == (255, 255, 255)
    assert second.getpixel((second.width // 2, second.height // 2)) == BLUE
    veiled = third.getpixel((third.width - 2, third.height // 2))
    assert isinstance(veiled, tuple) and veiled[2] < 120 and veiled[2] > 80  # veiled blue
    # Deleting the job lets both assets go (the links and the URL record cascade).
    store.delete(job.id)
    assert assets.fetched(job.id, url) is None


def test_a_url_the_guard_refuses_fails_the_job_naming_slide_and_url(
    store: JobStore, settings: Settings, image_server: ImageServer
) -> None:
    image_server.files["/logo.png"] = png(BLUE)
    url = image_server.url("/logo.png")
    job, _ = store.create(image_deck({"title": "one"}, {"image": url}), title="t", owner=OWNER)
    # No SLIDEFARM_FETCH_ALLOW: 127.0.0.1 is loopback.
    assert attempt(store, job.id, settings) is Outcome.FAILED
    failed = store.get(job.id)
    assert failed.error == f"slide 2's image {url}: refused: 127.0.0.1 is loopback"
    assert failed.attempts == 1 and image_server.hits == {}
    assert not (settings.output_dir / job.id).exists()


def test_a_url_that_is_not_an_image_fails_and_a_5xx_is_retried(
    store: JobStore, worker_settings: Settings, image_server: ImageServer
) -> None:
    image_server.files["/doc.png"] = pdf_bytes(1)
    job, _ = store.create(image_deck({"image": image_server.url("/doc.png")}), title="t")
    assert attempt(store, job.id, worker_settings) is Outcome.FAILED
    error = store.get(job.id).error
    assert error is not None and "slide 1's image" in error and "not an image" in error

    job, _ = store.create(image_deck({"image": image_server.url("/broken")}), title="t")
    assert attempt(store, job.id, worker_settings) is Outcome.RETRYING
    assert store.get(job.id).status is Status.QUEUED


def test_another_tenants_asset_fails_the_job(store: JobStore, worker_settings: Settings) -> None:
    assets = AssetStore(store, worker_settings.output_dir)
    theirs, _ = assets.ingest("other", [png(GREEN)], AssetLimits.from_settings(worker_settings))
    job, _ = store.create(image_deck({"image": theirs.id}), title="t", owner=OWNER)
    assert attempt(store, job.id, worker_settings) is Outcome.FAILED
    assert store.get(job.id).error == f"slide 1's image: asset {theirs.id} does not exist"


def test_a_damaged_image_file_fails_the_job(store: JobStore, worker_settings: Settings) -> None:
    assets = AssetStore(store, worker_settings.output_dir)
    asset, _ = assets.ingest(OWNER, [png(GREEN)], AssetLimits.from_settings(worker_settings))
    Path(assets.path(asset)).write_bytes(io.BytesIO(b"\x89PNG\r\n\x1a\nbroken").getvalue())
    job, _ = store.create(image_deck({"image": asset.id}), title="t", owner=OWNER)
    assert attempt(store, job.id, worker_settings) is Outcome.FAILED
    error = store.get(job.id).error
    assert error is not None and error.startswith("slide 1's image is damaged")
