"""Document decks measured: ``python -m bench.documents`` (no servers needed).

Prints, at 1080p, the render time per page of a 10-page PDF and of a
10-page PPTX (its LibreOffice conversion timed apart), and the peak memory
(maximum resident set) of the document reader child on the hostile cases.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw
from pptx import Presentation
from pptx.util import Inches

from core.config import Settings
from workers import documents
from workers.documents import DocumentError, convert_pptx, open_document, render_pages


def ten_page_pdf() -> bytes:
    pages = []
    for n in range(10):
        image = Image.new("RGB", (1280, 720), "white")
        draw = ImageDraw.Draw(image)
        draw.rectangle((100, 100, 600, 500), fill=(30 * n % 255, 120, 200))
        draw.text((700, 300), f"Page {n + 1}", fill="black")
        pages.append(image)
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=96.0)
    return out.getvalue()


def ten_slide_pptx() -> bytes:
    deck = Presentation()
    deck.slide_width, deck.slide_height = Inches(13.333), Inches(7.5)
    picture = io.BytesIO()
    Image.new("RGB", (400, 300), (220, 20, 60)).save(picture, "PNG")
    for n in range(10):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Slide {n + 1}"
        slide.placeholders[1].text = "A bullet\nAnother bullet\nA third"
        picture.seek(0)
        slide.shapes.add_picture(picture, Inches(8), Inches(2), Inches(4), Inches(3))
        slide.notes_slide.notes_text_frame.text = f"Notes {n + 1}"
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def timed_render(document: documents.Document, work: Path, settings: Settings) -> float:
    started = time.monotonic()
    pattern = str(work / "out" / "{:03d}.png")
    count = sum(
        1 for _ in render_pages(document, (1920, 1080), (255, 255, 255), pattern, settings, work)
    )
    return (time.monotonic() - started) / count


def peak_kib(kind: str, data: bytes, size: tuple[int, int], settings: Settings) -> str:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        path = work / f"input.{kind}"
        path.write_bytes(data)
        try:
            document = open_document(kind, path, work, settings, lambda pages: None)
            child = documents._Child(
                [
                    "render",
                    str(document.pdf),
                    str(work / "{:03d}.png"),
                    str(size[0]),
                    str(size[1]),
                    "255",
                    "255",
                    "255",
                ],
                settings,
                work / "err",
            )
            try:
                for _ in child.answers():
                    pass
            finally:
                child.close()
            return f"{(child.peak_kib or 0) / 1024:.0f} MiB (rendered)"
        except DocumentError as error:
            return f"refused: {error}"


def main() -> None:
    from tests.support.assets import huge_page_pdf, pdf_of_pages

    settings = Settings(DATABASE_URL="sqlite:///:memory:")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pdf = work / "ten.pdf"
        pdf.write_bytes(ten_page_pdf())
        document = open_document("pdf", pdf, work, settings, lambda pages: None)
        print(
            f"PDF, 10 pages, 1080p: {timed_render(document, work, settings) * 1000:.0f} ms a page"
        )
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pptx = work / "ten.pptx"
        pptx.write_bytes(ten_slide_pptx())
        started = time.monotonic()
        convert_pptx(pptx, work, settings)
        print(f"PPTX, 10 slides: LibreOffice conversion {time.monotonic() - started:.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pptx = work / "ten.pptx"
        pptx.write_bytes(ten_slide_pptx())
        document = open_document("pptx", pptx, work, settings, lambda pages: None)
        per_page = timed_render(document, work, settings) * 1000
        print(f"PPTX, 10 slides, 1080p: {per_page:.0f} ms a page (after conversion)")
    for name, kind, data, size in [
        ("14400 pt page at 2160p", "pdf", huge_page_pdf(), (3840, 2160)),
        ("14400 pt page at 1080p", "pdf", huge_page_pdf(), (1920, 1080)),
        ("10,000 pages (render all, no limit check)", "pdf", pdf_of_pages(10_000), (1280, 720)),
    ]:
        print(f"peak memory of the reader, {name}: {peak_kib(kind, data, size, settings)}")


if __name__ == "__main__":
    sys.exit(main())
