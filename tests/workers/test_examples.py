"""The example documents of ``examples/`` are what ``examples/make_examples.py``
makes, and they render as document decks (the PPTX through LibreOffice)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.config import Settings
from core.deck import Deck
from tests.support import ROOT
from tests.support.services import missing
from workers.documents import open_document, render_pages

EXAMPLES = ROOT / "examples"
NAMES = ["sample-slides.pdf", "sample-slides.pptx"]


def test_the_committed_examples_are_what_the_script_makes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(EXAMPLES / "make_examples.py"), str(tmp_path)], check=True, cwd=ROOT
    )
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), (
            f"examples/{name} is stale: run python examples/make_examples.py"
        )


@pytest.mark.parametrize("name", NAMES)
def test_the_examples_render(name: str, tmp_path: Path) -> None:
    if name.endswith(".pptx") and shutil.which("soffice") is None:
        missing("LibreOffice is not installed (make libreoffice)")
    settings = Settings(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    deck = Deck.model_validate({"source": {"asset": "0" * 8 + "-0000-4000-8000-" + "0" * 12}})
    kind = name.rsplit(".", 1)[1]
    document = open_document(kind, EXAMPLES / name, tmp_path, settings, lambda pages: None)
    assert document.pages == 3
    if kind == "pptx":
        assert document.titles == ["Document decks", "How a page is framed", "Hostile documents"]
        assert document.notes[1] == "A 4:3 page in a 16:9 frame gets bars left and right."
    pattern = str(tmp_path / "out" / "{:03d}.png")
    pages = list(render_pages(document, (1280, 720), (255, 255, 255), pattern, settings, tmp_path))
    assert [n for n, _ in pages] == [1, 2, 3]
    for _, path in pages:
        with Image.open(path) as image:
            assert image.size == (1280, 720)
            # Something is drawn: more than a handful of colours.
            assert len(image.convert("RGB").getcolors(1 << 16) or []) > 8
    assert deck.source is not None
