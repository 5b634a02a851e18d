"""Run by tests/workers/test_fonts.py in a clean subprocess that sees no system font
(``SLIDEFARM_SYSTEM_FONTS=0``, fontconfig pointed at an empty configuration):
draws one sample per script with the renderer and reports, as JSON on stdout,
which font drew each character and what its glyph is, plus the images.

``python -m tests.support.fresh_fonts_probe OUT_DIR``
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from fontTools.pens.boundsPen import BoundsPen
from fontTools.ttLib import TTFont
from PIL import Image, ImageChops, ImageDraw

from core.deck import Deck
from workers.fonts import FontFace, default_chain
from workers.slides import render_slide
from workers.text import Typesetter, cjk_language, needs_glyph

SAMPLES = {
    "latin": "Hello Zürich",
    "greek": "Ελληνικά γράμματα",
    "cyrillic": "Привет, мир",
    "arabic": "مرحبا بالعالم",
    "hebrew": "שלום עולם",
    "devanagari": "नमस्ते दुनिया",
    "bengali": "নমস্কার পৃথিবী",
    "thai": "สวัสดีชาวโลก",
    "chinese": "你好世界，中文",
    "japanese": "日本語のテキスト",
    "korean": "한국어 텍스트",
    "emoji": "🙂🎉👍🏽❤️🇫🇷",
}
SIZE = 48
#: A code point no font has: drawn, it is the font's .notdef box.
UNMAPPED = "\U0010fffd"


def _glyphs(face: FontFace, text: str) -> list[dict[str, Any]]:
    """Each character of ``text`` that shows, looked up in ``face``'s own cmap."""
    font = TTFont(str(face.path), fontNumber=face.index, lazy=True)
    try:
        cmap = font.getBestCmap()
        notdef = font.getGlyphOrder()[0]
        glyphs = font.getGlyphSet()
        family = str(font["name"].getDebugName(1))
        pil = face.at(SIZE)
        box = pil.getmask(UNMAPPED).getbbox()
        found = []
        for ch in text:
            if not needs_glyph(ch):
                continue
            name = cmap.get(ord(ch))
            bounds = None
            if name is not None and name in glyphs:
                pen = BoundsPen(glyphs)
                glyphs[name].draw(pen)
                bounds = pen.bounds
            mask = pil.getmask(ch)
            tofu = pil.getmask(UNMAPPED)
            same_as_notdef = (
                mask.size == tofu.size and mask.getbbox() == box and bytes(mask) == bytes(tofu)
            )
            found.append(
                {
                    "char": ch,
                    "font": str(face.path),
                    "family": family,
                    "glyph": name,
                    "notdef": name in (None, notdef),
                    "has_outline": bounds is not None,
                    "pixels_like_notdef": same_as_notdef,
                }
            )
        return found
    finally:
        font.close()


def _open_files() -> list[str]:
    """Every file this process holds open or mapped (FreeType maps each font
    it draws with)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            held.add(fields[5])
    return sorted(held)


def main(out: Path) -> None:
    """Draw every sample and write the report."""
    chain = default_chain()
    report: dict[str, Any] = {"system": chain.system, "scripts": {}}
    for script, text in SAMPLES.items():
        ts = Typesetter(SIZE, chain, cjk_language(text))
        glyphs = [g for face, part in ts.runs(text) for g in _glyphs(face, part)]
        line = Image.new("RGB", (1200, 100), (255, 255, 255))
        ts.draw_line(line, 10, 1190, 10, text, (0, 0, 0))
        line.save(out / f"{script}.png")
        # The same text as the .notdef boxes a font without it would draw.
        boxes = Image.new("RGB", line.size, (255, 255, 255))
        draw = ImageDraw.Draw(boxes)
        x = 10.0
        for face, part in ts.runs(text):
            tofu = "".join(UNMAPPED if needs_glyph(c) else c for c in part)
            draw.text((x, 10 + SIZE), tofu, font=face.at(SIZE), fill=(0, 0, 0), anchor="ls")
            x += ts.length(face, tofu)
        boxes.save(out / f"{script}-notdef.png")
        changed = ImageChops.difference(line, boxes).convert("L").histogram()
        report["scripts"][script] = {
            "glyphs": glyphs,
            "differs_from_notdef": sum(changed[64:]) / (line.width * line.height),
        }
    deck = Deck.model_validate(
        {
            "title": "scripts",
            "slides": [{"title": text, "body": text} for text in SAMPLES.values()],
            "options": {"resolution": "480p"},
        }
    )
    for index, script in enumerate(SAMPLES):
        render_slide(deck, index, chain).save(out / f"slide-{script}.png")
    report["open_files"] = _open_files()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
