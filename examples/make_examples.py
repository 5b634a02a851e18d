"""Make the example documents of ``examples/`` with slidefarm's own code.

- ``sample-slides.pdf``: three slides drawn by slidefarm's renderer
  (``workers.slides.render_slide``, shipped fonts only) saved as PDF pages
  by Pillow, one 960 x 540 pt page each;
- ``sample-slides.pptx``: three 16:9 slides written with python-pptx, each
  with a title, bullets, speaker notes and a picture (a bar chart drawn by
  Pillow), for the PPTX path (LibreOffice).

Both come out byte for byte the same on every run (fixed dates, fixed zip
timestamps), so a test can check that the committed files are what this
script makes. Run: ``python examples/make_examples.py [FOLDER]``.
"""

from __future__ import annotations

import io
import sys
import zipfile
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw
from pptx import Presentation
from pptx.util import Inches, Pt

from core.deck import Deck
from workers.fonts import font_chain
from workers.slides import render_slide

HERE = Path(__file__).resolve().parent
WHEN = datetime(2026, 1, 1)

SLIDES = [
    (
        "Document decks",
        ["Upload a PDF or a PPTX", "One slide per page", "Titles and notes kept"],
        "This deck was written with python-pptx by examples/make_examples.py.",
        (30, 70, 45),
    ),
    (
        "How a page is framed",
        ["Scaled to fit the frame", "Centred, letterboxed on the theme", "Paper stays white"],
        "A 4:3 page in a 16:9 frame gets bars left and right.",
        (55, 40, 85),
    ),
    (
        "Hostile documents",
        ["Encrypted: refused", "10,000 pages: refused before rendering", "Scripts never run"],
        "Each fails its job with a clear error; the worker lives on.",
        (80, 20, 60),
    ),
]


def chart(values: tuple[int, ...]) -> bytes:
    """A small bar chart, as PNG."""
    image = Image.new("RGB", (480, 320), (248, 250, 252))
    draw = ImageDraw.Draw(image)
    colours = [(37, 99, 235), (16, 185, 129), (220, 38, 38)]
    for i, value in enumerate(values):
        left = 60 + i * 140
        draw.rectangle((left, 300 - value * 3, left + 90, 300), fill=colours[i])
    draw.line((40, 300, 460, 300), fill=(55, 65, 81), width=3)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _fixed_zip(data: bytes) -> bytes:
    """``data`` (a zip) again with every entry dated 1980-01-01, in the same order."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(entry, source.read(info.filename))
    return out.getvalue()


def make_pptx() -> bytes:
    deck = Presentation()
    deck.slide_width, deck.slide_height = Inches(13.333), Inches(7.5)
    props = deck.core_properties
    props.title, props.author, props.last_modified_by = "slidefarm example", "slidefarm", ""
    props.created = props.modified = WHEN
    props.revision = 1
    for title, bullets, notes, values in SLIDES:
        slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
        slide.shapes.title.text = title
        box = slide.shapes.add_textbox(Inches(0.8), Inches(2), Inches(6), Inches(4)).text_frame
        box.word_wrap = True
        for n, bullet in enumerate(bullets):
            paragraph = box.paragraphs[0] if n == 0 else box.add_paragraph()
            paragraph.text = f"• {bullet}"
            paragraph.font.size = Pt(28)
        slide.shapes.add_picture(
            io.BytesIO(chart(values)), Inches(7.4), Inches(2), Inches(5.1), Inches(3.4)
        )
        slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    return _fixed_zip(out.getvalue())


def make_pdf() -> bytes:
    deck = Deck.model_validate(
        {
            "title": "slidefarm example",
            "slides": [
                {"title": title, "bullets": bullets, "notes": notes}
                for title, bullets, notes, _ in SLIDES
            ],
            "options": {"resolution": "720p"},
        }
    )
    fonts = font_chain(False)
    pages = [render_slide(deck, i, fonts) for i in range(len(deck.slides))]
    out = io.BytesIO()
    pages[0].save(
        out,
        "PDF",
        save_all=True,
        append_images=pages[1:],
        resolution=96.0,  # 1280 x 720 px: 960 x 540 pt
        title="slidefarm example",
        author="slidefarm",
        creationDate=WHEN.timetuple(),
        modDate=WHEN.timetuple(),
        quality=90,
    )
    return out.getvalue()


def main(folder: Path = HERE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sample-slides.pdf").write_bytes(make_pdf())
    (folder / "sample-slides.pptx").write_bytes(make_pptx())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
