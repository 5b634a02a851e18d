"""Slide images with Pillow: title, wrapped body, bullets, inside the margins.

Text that does not fit shrinks (down to a floor) and is then cut with an
ellipsis, so nothing ever runs off the slide. A slide with a character that
no font has is not drawn at all (:class:`~workers.text.MissingGlyphs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from core.deck import Deck, Slide
from workers.fonts import FontChain, default_chain
from workers.text import (
    MissingGlyphs,
    Typesetter,
    cjk_language,
    clean,
    describe,
    fit_lines,
    uncovered,
)

THUMBNAIL_WIDTH = 320
BULLET = "\u2022"
MAX_LISTED = 10  # distinct characters an error names before "and N more"

#: A typesetter at a size, with the slide's fonts and language.
Setter = Callable[[int], Typesetter]


@dataclass(frozen=True)
class Theme:
    background: tuple[int, int, int]
    title: tuple[int, int, int]
    text: tuple[int, int, int]
    accent: tuple[int, int, int]
    muted: tuple[int, int, int]


THEMES = {
    "light": Theme((255, 255, 255), (17, 24, 39), (55, 65, 81), (37, 99, 235), (156, 163, 175)),
    "dark": Theme((17, 24, 39), (243, 244, 246), (209, 213, 219), (96, 165, 250), (107, 114, 128)),
}


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def _layout_title(text: str, box: Box, base: int, setter: Setter) -> tuple[Typesetter, list[str]]:
    """The title at the largest size (down to 70%) that fits two lines."""
    for scale in (1.0, 0.9, 0.8, 0.7):
        ts = setter(int(base * scale))
        lines = ts.wrap(text, box.width)
        if len(lines) <= 2:
            return ts, lines
    return ts, fit_lines(ts, lines, 2, box.width)


@dataclass(frozen=True)
class _Block:
    lines: list[str]
    indent: int
    bullet: bool


def _layout_body(
    slide: Slide, box: Box, base: int, setter: Setter
) -> tuple[Typesetter, list[_Block], int]:
    """Body paragraphs and bullets at the largest size that fits ``box``; at
    the floor size the overflow is cut with an ellipsis."""
    body = clean(slide.body) if slide.body else ""
    bullets = [clean(b) for b in slide.bullets]
    floor = max(int(base * 0.5), 10)
    size = base
    while True:
        ts = setter(size)
        indent = int(ts.size * 1.2)
        blocks: list[_Block] = []
        if body.strip():
            blocks.append(_Block(ts.wrap(body, box.width), 0, False))
        for bullet in bullets:
            blocks.append(_Block(ts.wrap(bullet, box.width - indent), indent, True))
        gap = int(ts.size * 0.45)
        height = sum(len(b.lines) * ts.line_height for b in blocks) + gap * max(len(blocks) - 1, 0)
        if height <= box.height or size <= floor:
            break
        size = max(int(size * 0.9), floor)
    if height > box.height:
        blocks = _cut_blocks(ts, blocks, box, gap)
    return ts, blocks, gap


def _cut_blocks(ts: Typesetter, blocks: list[_Block], box: Box, gap: int) -> list[_Block]:
    kept: list[_Block] = []
    room = box.height
    for block in blocks:
        fits = room // ts.line_height
        if fits <= 0:
            break
        if len(block.lines) > fits:
            lines = fit_lines(ts, block.lines, fits, box.width - block.indent)
            kept.append(_Block(lines, block.indent, block.bullet))
            break
        kept.append(block)
        room -= len(block.lines) * ts.line_height + gap
    return kept


def _drawn_text(slide: Slide) -> str:
    """Every character the slide shows (notes are not drawn)."""
    return "\n".join([clean(slide.title), clean(slide.body), *map(clean, slide.bullets)])


def missing_glyphs(deck: Deck, fonts: FontChain | None = None) -> str | None:
    """Why ``deck`` cannot be drawn, naming each character no font has and
    the slides it is on; None when every character has a font."""
    chain = fonts or default_chain()
    slides_of: dict[str, list[int]] = {}
    for number, slide in enumerate(deck.slides, start=1):
        for ch in uncovered(_drawn_text(slide), chain):
            slides_of.setdefault(ch, []).append(number)
    if not slides_of:
        return None
    parts = []
    for ch, numbers in list(slides_of.items())[:MAX_LISTED]:
        where = "slide" if len(numbers) == 1 else "slides"
        parts.append(f"{describe(ch)} on {where} {', '.join(map(str, numbers))}")
    more = len(slides_of) - MAX_LISTED
    return "no font covers " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def render_slide(deck: Deck, index: int, fonts: FontChain | None = None) -> Image.Image:
    """Slide ``index`` (from 0) of ``deck`` as an RGB image at the deck's
    resolution. Raises :class:`~workers.text.MissingGlyphs` for a character
    that no font has."""
    width, height = deck.options.size
    theme = THEMES[deck.options.theme]
    slide = deck.slides[index]
    chain = fonts or default_chain()
    text = _drawn_text(slide)
    missing = uncovered(text, chain)
    if missing:
        raise MissingGlyphs(missing, where=f"slide {index + 1}")
    lang = cjk_language(text)

    def setter(size: int) -> Typesetter:
        return Typesetter(size, chain, lang)

    image = Image.new("RGB", (width, height), theme.background)
    draw = ImageDraw.Draw(image)

    margin_x = int(width * 0.07)
    margin_y = int(height * 0.08)
    footer_h = int(height * 0.06)
    content = Box(margin_x, margin_y, width - margin_x, height - margin_y - footer_h)

    # An accent bar on the slide's leading edge.
    draw.rectangle((0, 0, max(width // 160, 4), height), fill=theme.accent)

    top = content.top
    title = clean(slide.title) if slide.title else ""
    if title.strip():
        ts, lines = _layout_title(title, content, int(height * 0.085), setter)
        for line in lines:
            ts.draw_line(image, content.left, content.right, top, line, theme.title)
            top += ts.line_height
        rule_y = top + int(height * 0.015)
        draw.rectangle(
            (
                content.left,
                rule_y,
                content.left + int(width * 0.08),
                rule_y + max(height // 240, 2),
            ),
            fill=theme.accent,
        )
        top = rule_y + int(height * 0.05)

    body_box = Box(content.left, top, content.right, content.bottom)
    if body_box.height > 0:
        ts, blocks, gap = _layout_body(slide, body_box, int(height * 0.045), setter)
        y = body_box.top
        for block in blocks:
            for n, line in enumerate(block.lines):
                if block.bullet and n == 0:
                    ts.draw_line(
                        image, content.left, content.left + block.indent, y, BULLET, theme.accent
                    )
                ts.draw_line(image, content.left + block.indent, content.right, y, line, theme.text)
                y += ts.line_height
            y += gap

    footer = setter(int(height * 0.028))
    number = f"{index + 1} / {len(deck.slides)}"
    footer_top = height - margin_y // 2 - footer_h
    number_left = content.right - int(footer.width(number))
    footer.draw_line(image, number_left, content.right, footer_top, number, theme.muted)
    return image


def save_png(image: Image.Image, path: Path) -> int:
    """Write ``image`` as PNG; return the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=3)
    return path.stat().st_size


def save_thumbnail(image: Image.Image, path: Path) -> int:
    """A JPEG of ``image`` scaled to 320 px wide; return its size in bytes."""
    height = max(1, round(image.height * THUMBNAIL_WIDTH / image.width))
    thumb = image.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb.save(path, format="JPEG", quality=85, optimize=True)
    return path.stat().st_size
