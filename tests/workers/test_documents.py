"""Document decks in-process against the real store, pdfium and LibreOffice:
pages land where the document puts them (letterboxed on the theme), titles
and notes come from the PPTX, overrides win, and every hostile document
fails clearly and quickly while the next job still renders."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.config import Settings
from core.sniff import Sniffed
from storage import Job, JobStore, Status
from storage.assets import AssetLimits, AssetStore, incoming_dir
from storage.db import dispose_engines
from storage.models import DEFAULT_TENANT
from tests.support.assets import (
    MARK,
    active_pdf,
    encrypted_pdf,
    huge_page_pdf,
    image_bytes,
    pdf_of_pages,
    pdf_with_rectangle,
    pptx_with_content,
    raw_pdf,
    zip_bomb_content_types,
    zip_bomb_pptx,
)
from tests.support.media import probe
from tests.support.services import missing
from workers.documents import (
    LIBREOFFICE_MISSING,
    MANIFEST_FILE,
    convert_pptx,
    no_network_prefix,
)
from workers.pipeline import Outcome, run_attempt
from workers.slides import THEMES

FFPROBE = os.environ.get("SLIDEFARM_TEST_FFPROBE", "/usr/bin/ffprobe")


@pytest.fixture
def db_url(tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    # Documents touch no SQL of their own: one backend is enough here.
    path = tmp_path / "slidefarm.db"
    shutil.copy(sqlite_template, path)
    yield f"sqlite:///{path}"
    dispose_engines()


@pytest.fixture
def soffice() -> str:
    found = shutil.which("soffice")
    if found is None:
        missing("LibreOffice is not installed (make libreoffice)")
    return found


def upload(store: JobStore, settings: Settings, data: bytes) -> str:
    limits = AssetLimits.from_settings(settings)
    asset, _ = AssetStore(store, settings.output_dir).ingest(DEFAULT_TENANT, [data], limits)
    return asset.id


def render(store: JobStore, settings: Settings, deck: dict[str, Any]) -> tuple[Job, float]:
    job, _ = store.create(deck, title=deck.get("title", "t"))
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    started = time.monotonic()
    result = run_attempt(store, claimed, settings)
    elapsed = time.monotonic() - started
    final = store.get(job.id)
    assert final.status.value == result.outcome.value
    return final, elapsed


def document_deck(asset: str, **options: Any) -> dict[str, Any]:
    return {
        "source": {"asset": asset},
        "options": {"resolution": "720p", "fps": 24, **options},
    }


def mark_box(path: Path) -> tuple[int, int, int, int] | None:
    """Where :data:`MARK` is in the image at ``path`` (its bounding box)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    bands = [
        band.point(lambda v, c=c: 255 if abs(v - c) <= 40 else 0)
        for band, c in zip(rgb.split(), MARK, strict=True)
    ]
    mask = bands[0]
    for band in bands[1:]:
        mask = Image.composite(band, Image.new("L", mask.size, 0), mask)
    return mask.getbbox()


def assert_near(seen: tuple[int, ...] | None, expected: tuple[int, ...], slack: int) -> None:
    assert seen is not None, "the mark is not on the slide"
    assert all(abs(a - b) <= slack for a, b in zip(seen, expected, strict=True)), (seen, expected)


def video_seconds(path: Path) -> float:
    if not os.access(FFPROBE, os.X_OK):
        missing(f"ffprobe not installed at {FFPROBE} (make ffprobe)")
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", "-show_format", "-show_chapters", str(path)],
        capture_output=True,
        check=True,
    )
    info = json.loads(out.stdout)
    return float(info["format"]["duration"])


def chapters(path: Path) -> list[str]:
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-of", "json", "-show_chapters", str(path)],
        capture_output=True,
        check=True,
    )
    return [c["tags"]["title"] for c in json.loads(out.stdout)["chapters"]]


# -- what a document deck renders ---------------------------------------------


@pytest.mark.parametrize(
    ("aspect", "theme", "expected", "page_box"),
    [
        # 800x600 pt in 1280x720: scale 1.2, 960x720 centred at x=160.
        ("16:9", "light", (280, 180, 520, 420), (160, 0, 1120, 720)),
        # 800x600 pt in 720x1280: scale 0.9, 720x540 centred at y=370.
        ("9:16", "dark", (90, 505, 270, 685), (0, 370, 720, 910)),
    ],
)
def test_pdf_pages_keep_their_picture_in_place_letterboxed_on_the_theme(
    store: JobStore,
    settings: Settings,
    aspect: str,
    theme: str,
    expected: tuple[int, int, int, int],
    page_box: tuple[int, int, int, int],
) -> None:
    asset = upload(store, settings, pdf_with_rectangle())
    deck = document_deck(asset, aspect=aspect, theme=theme)
    job, _ = render(store, settings, deck)
    assert job.status is Status.COMPLETED, job.error
    folder = settings.output_dir / job.id
    assert sorted(job.created_files) == sorted(
        ["slides/001.png", MANIFEST_FILE, "thumbnail.jpg", "video.mp4"]
    )
    slide = folder / "slides" / "001.png"
    assert_near(mark_box(slide), expected, 2)
    with Image.open(slide) as image:
        rgb = image.convert("RGB")
        assert rgb.size == ((1280, 720) if aspect == "16:9" else (720, 1280))
        background = THEMES[theme].background
        # Outside the page: the theme's background; the page itself: paper white.
        assert rgb.getpixel((2, 2)) == background
        assert rgb.getpixel((rgb.width - 3, rgb.height - 3)) == background
        left, top, right, bottom = page_box
        assert rgb.getpixel((right - 5, bottom - 5)) == (255, 255, 255)
        assert rgb.getpixel((left + 5, top + 5)) == (255, 255, 255)
        if left > 0:
            assert rgb.getpixel((left - 3, 360)) == background
        else:
            assert rgb.getpixel((360, top - 3)) == background
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "pdf" and manifest["pages"] == 1
    assert manifest["slides"] == [
        {"page": 1, "title": "", "notes": "", "duration": 3.0, "transition": None}
    ]


def test_pptx_keeps_titles_notes_and_the_picture_and_overrides_win(
    store: JobStore, settings: Settings, soffice: str
) -> None:
    asset = upload(store, settings, pptx_with_content(3))
    deck = document_deck(asset)
    deck["slides"] = [
        {"duration": 1.0},
        {"title": "Overridden", "notes": "Said instead", "duration": 2.0, "transition": "fade"},
    ]
    job, _ = render(store, settings, deck)
    assert job.status is Status.COMPLETED, job.error
    folder = settings.output_dir / job.id
    # A 10 x 7.5 in (720 x 540 pt) slide in 1280x720: scale 4/3, 960x720 at x=160;
    # the picture at (72, 72) pt, 216 x 144 pt.
    for n in (1, 2, 3):
        assert_near(mark_box(folder / "slides" / f"{n:03d}.png"), (256, 96, 544, 288), 3)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "pptx" and manifest["pages"] == 3
    assert [(s["page"], s["title"], s["notes"], s["duration"]) for s in manifest["slides"]] == [
        (1, "Title 1", "Notes of slide 1", 1.0),
        (2, "Overridden", "Said instead", 2.0),
        (3, "Title 3", "Notes of slide 3", 3.0),
    ]
    assert manifest["slides"][1]["transition"] == "fade"
    video = folder / "video.mp4"
    assert abs(video_seconds(video) - 6.0) <= 3 / 24
    assert chapters(video) == ["Title 1", "Overridden", "Title 3"]
    meta, frames = probe(video)
    assert meta["size"] == (1280, 720) and abs(frames - 6 * 24) <= 3


def test_pdf_overrides_set_the_length_and_titles_come_from_bookmarks_or_none(
    store: JobStore, settings: Settings
) -> None:
    asset = upload(store, settings, pdf_of_pages(3))
    deck = document_deck(asset, resolution="480p")
    deck["slides"] = [{"duration": 0.5, "title": "Start"}, {"duration": 1.5}]
    job, _ = render(store, settings, deck)
    assert job.status is Status.COMPLETED, job.error
    video = settings.output_dir / job.id / "video.mp4"
    assert abs(video_seconds(video) - 5.0) <= 3 / 24
    assert chapters(video) == ["Start", "Slide 2", "Slide 3"]


# -- hostile documents ----------------------------------------------------------


def _truncated() -> bytes:
    data = pdf_with_rectangle()
    return data[: len(data) // 40]


HOSTILE_PDFS = {
    "encrypted": (encrypted_pdf, "the PDF is encrypted"),
    "truncated": (_truncated, "the PDF is damaged or truncated"),
    "garbage": (lambda: b"%PDF-1.4\n" + os.urandom(4096), "the PDF is damaged or truncated"),
    "no pages": (lambda: raw_pdf([]), "the PDF has no pages"),
    "10,000 pages": (
        lambda: pdf_of_pages(10_000),
        "the document has 10000 pages, more than the 200 a deck may have",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PDFS))
def test_a_hostile_pdf_fails_clearly_and_quickly_and_the_next_job_renders(
    store: JobStore, settings: Settings, case: str
) -> None:
    make, message = HOSTILE_PDFS[case]
    asset = upload(store, settings, make())
    job, elapsed = render(store, settings, document_deck(asset))
    assert job.status is Status.FAILED and job.error is not None
    assert message in job.error
    assert job.attempts == 1 and elapsed < 20
    assert not (settings.output_dir / job.id).exists()
    assert not list((settings.output_dir / ".partial").iterdir())
    good = upload(store, settings, pdf_with_rectangle())
    after, _ = render(store, settings, document_deck(good, resolution="480p"))
    assert after.status is Status.COMPLETED, after.error


def test_too_long_a_video_fails_before_any_page_renders(
    store: JobStore, settings: Settings
) -> None:
    asset = upload(store, settings, pdf_of_pages(30))
    capped = settings.model_copy(update={"max_video_seconds": 60.0})
    job, _ = render(store, capped, document_deck(asset))
    assert job.status is Status.FAILED
    assert job.error == (
        "the video would last 90 s (30 pages), more than the 60 s allowed "
        "(SLIDEFARM_MAX_VIDEO_SECONDS)"
    )
    assert job.created_files == []
    # The count is kept with the asset (a PDF is not counted at upload), so
    # the next deck naming it is checked at submission (tests/api/test_assets.py).
    assert AssetStore(store, settings.output_dir).get(asset).pages == 30


def test_more_overrides_than_pages_fail(store: JobStore, settings: Settings) -> None:
    asset = upload(store, settings, pdf_of_pages(2))
    deck = document_deck(asset)
    deck["slides"] = [{"title": "a"}, {"title": "b"}, {"title": "c"}]
    job, _ = render(store, settings, deck)
    assert job.status is Status.FAILED
    assert job.error == "the deck sets 3 slides but the document has only 2 pages"


def test_a_huge_page_renders_at_the_frame_size_not_its_own(
    store: JobStore, settings: Settings
) -> None:
    asset = upload(store, settings, huge_page_pdf())
    job, _ = render(store, settings, document_deck(asset, resolution="2160p"))
    assert job.status is Status.COMPLETED, job.error
    with Image.open(settings.output_dir / job.id / "slides" / "001.png") as image:
        rgb = image.convert("RGB")
    assert rgb.size == (3840, 2160)
    # 14400 pt square in 3840x2160: a red 2160 square in the middle.
    assert rgb.getpixel((1920, 1080)) == (255, 0, 0)
    assert rgb.getpixel((840 + 3, 5)) == (255, 0, 0)
    assert rgb.getpixel((840 - 3, 5)) == THEMES["light"].background


def test_a_pdf_with_javascript_and_links_renders_as_a_picture_only(
    store: JobStore, settings: Settings
) -> None:
    asset = upload(store, settings, active_pdf())
    job, _ = render(store, settings, document_deck(asset))
    assert job.status is Status.COMPLETED, job.error
    with Image.open(settings.output_dir / job.id / "slides" / "001.png") as image:
        rgb = image.convert("RGB")
    # 300x200 pt at scale 3.6 centred at x=100: the green box drawn, nothing else.
    assert rgb.getpixel((100 + 150 * 36 // 10, 720 - 100 * 36 // 10)) == (0, 128, 0)


def test_a_reader_that_runs_out_of_memory_fails_the_job_not_the_worker(
    store: JobStore, settings: Settings
) -> None:
    asset = upload(store, settings, pdf_with_rectangle())
    # Below what a 2160p page needs (the setting itself allows no less than 256).
    starved = settings.model_copy(update={"document_memory_mb": 120})
    job, _ = render(store, starved, document_deck(asset, resolution="2160p"))
    assert job.status is Status.FAILED and job.error is not None
    assert "SLIDEFARM_DOCUMENT_MEMORY_MB" in job.error, job.error


def test_a_page_that_takes_too_long_is_killed(store: JobStore, settings: Settings) -> None:
    asset = upload(store, settings, pdf_with_rectangle())
    hurried = settings.model_copy(update={"page_timeout": 0.001})
    job, _ = render(store, hurried, document_deck(asset))
    assert job.status is Status.FAILED and job.error is not None
    assert "SLIDEFARM_PAGE_TIMEOUT" in job.error


def test_a_zip_bomb_pptx_stored_anyway_is_refused_before_parsing(
    store: JobStore, settings: Settings, soffice: str
) -> None:
    # Uploads refuse it (core/sniff.py); one that got stored is refused again.
    staged = incoming_dir(settings.output_dir) / "bomb"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(zip_bomb_pptx())
    asset, _ = AssetStore(store, settings.output_dir).add(
        DEFAULT_TENANT,
        staged,
        sha256="b" * 64,
        size_bytes=staged.stat().st_size,
        sniffed=Sniffed("pptx", pages=1),
        quota=None,
    )
    job, elapsed = render(store, settings, document_deck(asset.id))
    assert job.status is Status.FAILED and job.error is not None
    assert job.error.startswith("the PPTX is refused: the archive would inflate to")
    assert elapsed < 10


def test_without_libreoffice_pptx_fails_at_once_and_pdf_still_renders(
    store: JobStore, settings: Settings
) -> None:
    no_office = settings.model_copy(update={"soffice": "/nonexistent/soffice"})
    pptx = upload(store, settings, pptx_with_content(1))
    job, elapsed = render(store, no_office, document_deck(pptx))
    assert job.status is Status.FAILED and job.error == LIBREOFFICE_MISSING
    assert job.attempts == 1 and elapsed < 5
    pdf = upload(store, settings, pdf_with_rectangle())
    after, _ = render(store, no_office, document_deck(pdf, resolution="480p"))
    assert after.status is Status.COMPLETED, after.error


@pytest.mark.serial  # it looks for leftover readers or LibreOffices machine-wide
def test_a_conversion_over_its_time_limit_is_killed(
    store: JobStore, settings: Settings, soffice: str
) -> None:
    asset = upload(store, settings, pptx_with_content(1))
    hurried = settings.model_copy(update={"convert_timeout": 0.2})
    job, elapsed = render(store, hurried, document_deck(asset))
    assert job.status is Status.FAILED
    assert job.error == "converting the PPTX took longer than 0.2 s (SLIDEFARM_CONVERT_TIMEOUT)"
    assert elapsed < 15
    left = subprocess.run(["pgrep", "-f", "slidefarm-doc-"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a LibreOffice process outlived its conversion"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "the source document: asset 00000000-0000-4000-8000-000000000000 does not exist"),
        (image_bytes("PNG"), "is a PNG, not one of PDF, PPTX"),
    ],
)
def test_a_source_that_is_not_a_document_fails(
    store: JobStore, settings: Settings, data: bytes | None, message: str
) -> None:
    asset = upload(store, settings, data) if data else "00000000-0000-4000-8000-000000000000"
    job, _ = render(store, settings, document_deck(asset))
    assert job.status is Status.FAILED and job.error is not None and message in job.error
    assert Outcome.FAILED.value == job.status.value


def _damaged_pptx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", zip_bomb_content_types())
        archive.writestr("ppt/presentation.xml", b"<p:presentation><not xml")
    return out.getvalue()


def test_a_damaged_pptx_fails_clearly(store: JobStore, settings: Settings, soffice: str) -> None:
    asset = upload(store, settings, _damaged_pptx())
    job, elapsed = render(store, settings, document_deck(asset))
    assert job.status is Status.FAILED and job.error is not None
    assert job.error.startswith("the PPTX is damaged"), job.error
    assert elapsed < 15


def test_concurrent_conversions_each_have_their_own_profile(
    tmp_path: Path, settings: Settings, soffice: str
) -> None:
    source = tmp_path / "deck.pptx"
    source.write_bytes(pptx_with_content(2))
    folders = [tmp_path / f"w{n}" for n in range(3)]
    for folder in folders:
        folder.mkdir()
    with ThreadPoolExecutor(3) as pool:
        pdfs = list(pool.map(lambda f: convert_pptx(source, f, settings), folders))
    for pdf, folder in zip(pdfs, folders, strict=True):
        assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")
        assert (folder / "profile" / "user").is_dir()  # its own, fresh


@pytest.mark.serial  # it looks for leftover readers or LibreOffices machine-wide
def test_a_cancel_mid_render_stops_the_reader(store: JobStore, settings: Settings) -> None:
    asset = upload(store, settings, pdf_of_pages(200))
    quick = settings.model_copy(update={"heartbeat_interval": 0.05})
    job, _ = store.create(document_deck(asset, resolution="1080p"), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None

    def cancel_once_rendering() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not store.get(job.id).created_files:
            time.sleep(0.05)
        store.request_cancel(job.id)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(cancel_once_rendering)
        assert run_attempt(store, claimed, quick).outcome is Outcome.CANCELLED
    assert store.get(job.id).created_files == []
    left = subprocess.run(["pgrep", "-f", "workers.docchild"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "the reader outlived its cancelled job"


def test_conversions_run_without_a_network_where_the_host_allows_it() -> None:
    prefix = no_network_prefix()
    if not prefix:  # the documented fallback: a warning, and the host's network
        missing("this host allows no network namespace (unshare -n / -rn)")
    # /proc/self/net is the namespace's own (/sys still shows the host's).
    seen = subprocess.run(
        [*prefix, "cat", "/proc/self/net/dev"], capture_output=True, text=True, check=True
    )
    interfaces = [line.split(":")[0].strip() for line in seen.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


@pytest.mark.serial  # it looks for leftover readers or LibreOffices machine-wide
def test_a_cancel_during_the_conversion_kills_libreoffice_within_a_heartbeat(
    store: JobStore, settings: Settings, soffice: str
) -> None:
    asset = upload(store, settings, pptx_with_content(3))
    quick = settings.model_copy(update={"heartbeat_interval": 0.05})
    job, _ = store.create(document_deck(asset), title="t")
    claimed = store.claim(job.id, "w@h")
    assert claimed is not None
    cancelled_at: list[float] = []

    def converting() -> bool:
        found = subprocess.run(["pgrep", "-f", "slidefarm-doc-.*deck.pptx"], capture_output=True)
        return found.returncode == 0

    def cancel_once_converting() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not converting():
            time.sleep(0.02)
        if converting():  # cancelled while LibreOffice runs
            cancelled_at.append(time.monotonic())
        store.request_cancel(job.id)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(cancel_once_converting)
        assert run_attempt(store, claimed, quick).outcome is Outcome.CANCELLED
        returned = time.monotonic()
    assert cancelled_at and returned - cancelled_at[0] < 1.5
    assert not converting(), "LibreOffice outlived its cancelled conversion"
