"""Slide images with Pillow: title, wrapped body, bullets, inside the margins.

Text that does not fit shrinks (down to a floor) and is then cut with an
ellipsis, so nothing ever runs off the slide. A slide with a character that
no font has is not drawn at all (:class:`~workers.text.MissingGlyphs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from core.deck import Deck, Slide
from workers.fonts import FontChain, default_chain
from workers.images import SlideImages
from workers.text import (
    MissingGlyphs,
    Typesetter,
    cjk_language,
    clean,
    describe,
    fit_lines,
    uncovered,
)

THUMBNAIL_SIDE = 320  # pixels on the thumbnail's longer side
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


def _layout_title(
    text: str, box: Box, layout: Layout, setter: Setter
) -> tuple[Typesetter, list[str]]:
    """The title at the largest size (down to 70%) that fits the layout's
    number of lines, else cut with an ellipsis."""
    most = layout.title_lines
    for scale in (1.0, 0.9, 0.8, 0.7):
        ts = setter(int(layout.title_size * scale))
        lines = ts.wrap(text, box.width)
        if len(lines) <= most:
            return ts, lines
    return ts, fit_lines(ts, lines, most, box.width)


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


def _drawn_text(slide: Slide, subtitles: bool = False, narrate: bool = False) -> str:
    """Every character the slide shows: its image's caption too, and with
    ``subtitles`` (burned in) what it says aloud; notes are not drawn."""
    parts = [clean(slide.title), clean(slide.body), *map(clean, slide.bullets)]
    if slide.caption:
        parts.append(clean(slide.caption))
    if subtitles and slide.spoken(narrate):
        parts.append(clean(slide.spoken(narrate)))
    return "\n".join(parts)


def missing_glyphs(deck: Deck, fonts: FontChain | None = None) -> str | None:
    """Why ``deck`` cannot be drawn, naming each character no font has and
    the slides it is on; None when every character has a font."""
    chain = fonts or default_chain()
    slides_of: dict[str, list[int]] = {}
    burn, narrate = deck.options.burn_subtitles, deck.options.narrate
    for number, slide in enumerate(deck.slides, start=1):
        for ch in uncovered(_drawn_text(slide, burn, narrate), chain):
            slides_of.setdefault(ch, []).append(number)
    if not slides_of:
        return None
    parts = []
    for ch, numbers in list(slides_of.items())[:MAX_LISTED]:
        where = "slide" if len(numbers) == 1 else "slides"
        parts.append(f"{describe(ch)} on {where} {', '.join(map(str, numbers))}")
    more = len(slides_of) - MAX_LISTED
    return "no font covers " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Layout:
    """Where a frame's elements go and how large they are, in pixels.

    Every measure is a fraction of the frame, so a slide looks the same at
    every resolution of one aspect ratio. A landscape frame measures from its
    height; an upright or square frame from its width, with a narrower column
    and type that is larger relative to the width, so text stays readable on a
    phone.
    """

    width: int
    height: int
    content: Box  # title and body; nothing else is drawn in it
    footer_top: int  # the page number's line
    title_size: int
    title_lines: int
    body_size: int
    footer_size: int
    bar: tuple[int, int, int, int]  # the accent bar on the leading edge
    rule: tuple[int, int]  # the rule under the title: length, thickness
    title_gap: int  # title to rule
    rule_gap: int  # rule to body
    centered: bool  # content sits in the frame's optical centre


def frame_layout(width: int, height: int) -> Layout:
    """The layout of a ``width`` x ``height`` frame (see :class:`Layout`)."""
    if width > height:
        margin_x, margin_y = int(width * 0.07), int(height * 0.08)
        footer_h = int(height * 0.06)
        unit = height
        title, title_lines, body, footer = 0.085, 2, 0.045, 0.028
        bar = (0, 0, max(width // 160, 4), height)
        centered = False
    elif width < height:
        # Upright: the accent runs along the top and the block is centred,
        # since a top-aligned short slide leaves the lower half of a phone empty.
        margin_x, margin_y = int(width * 0.08), int(height * 0.07)
        footer_h = int(height * 0.045)
        unit = width
        title, title_lines, body, footer = 0.095, 4, 0.056, 0.034
        bar = (0, 0, width, max(height // 160, 4))
        centered = True
    else:
        margin_x = margin_y = int(width * 0.08)
        footer_h = int(height * 0.05)
        unit = width
        title, title_lines, body, footer = 0.075, 3, 0.047, 0.03
        bar = (0, 0, max(width // 120, 4), height)
        centered = False
    return Layout(
        width=width,
        height=height,
        content=Box(margin_x, margin_y, width - margin_x, height - margin_y - footer_h),
        footer_top=height - margin_y // 2 - footer_h,
        title_size=int(unit * title),
        title_lines=title_lines,
        body_size=int(unit * body),
        footer_size=int(unit * footer),
        bar=bar,
        rule=(int(unit * 0.142), max(unit // 240, 2)),
        title_gap=int(unit * 0.015),
        rule_gap=int(unit * 0.05),
        centered=centered,
    )


#: Share of the content width an image beside the text takes (left/right).
IMAGE_SHARE = 0.45
#: Share of the content height an image above the text takes (left/right, upright).
STACKED_SHARE = 0.42
#: The veil over a full or background image under text, unless the slide sets one.
DEFAULT_SCRIM = 0.55
#: Text over a veiled image: light colours whatever the theme.
OVER_IMAGE = Theme((0, 0, 0), (255, 255, 255), (229, 231, 235), (96, 165, 250), (209, 213, 219))


@dataclass(frozen=True)
class _Plan:
    """Where one slide's image, caption and text go."""

    text: Box  # the title and body's box
    image: Box | None  # the image's box (``None``: no image; the whole frame: full/background)
    caption: Box | None  # the caption's line
    scrim: float
    colors: Theme  # the text's colours


def _plan(slide: Slide, layout: Layout, theme: Theme, caption_height: int) -> _Plan:
    """The boxes of ``slide``'s elements on ``layout`` (see docs/design.md,
    "Images on slides")."""
    content = layout.content
    where = slide.image_layout
    has_text = bool(slide.title.strip() or slide.body.strip() or slide.bullets)
    caption = bool(slide.caption.strip())
    if where in ("full", "background"):
        scrim = slide.scrim if slide.scrim is not None else (DEFAULT_SCRIM if has_text else 0.0)
        frame = Box(0, 0, layout.width, layout.height)
        line = Box(content.left, layout.footer_top, content.right, layout.footer_top)
        return _Plan(
            content, frame, line if caption else None, scrim, OVER_IMAGE if scrim > 0 else theme
        )
    scrim = slide.scrim or 0.0
    gap = max(layout.title_gap, caption_height // 3)
    below = caption_height + gap if caption else 0
    if layout.width < layout.height:
        # Upright: a column beside the text would be too narrow; stack, image first.
        gutter = layout.rule_gap
        bottom = content.top + int(content.height * STACKED_SHARE)
        image = Box(content.left, content.top, content.right, bottom - below)
        text = Box(content.left, bottom + gutter, content.right, content.bottom)
    else:
        gutter = int(content.width * 0.05)
        side = int(content.width * IMAGE_SHARE)
        if where == "left":
            image = Box(content.left, content.top, content.left + side, content.bottom - below)
            text = Box(image.right + gutter, content.top, content.right, content.bottom)
        else:
            image = Box(content.right - side, content.top, content.right, content.bottom - below)
            text = Box(content.left, content.top, image.left - gutter, content.bottom)
    line = Box(image.left, image.bottom + gap, image.right, image.bottom + gap)
    return _Plan(text, image, line if caption else None, scrim, theme)


def _draw_image(image: Image.Image, slide: Slide, plan: _Plan, pictures: SlideImages) -> Box:
    """Paste the slide's image (veiled by the plan's scrim); where it went."""
    box = plan.image
    assert box is not None and slide.image is not None
    fit = "cover" if slide.image_layout == "background" else slide.fit
    x, y = box.left, box.top
    if slide.image_layout in ("left", "right") and fit == "contain":
        # Inside a column the picture keeps its shape, centred on the slide's
        # own background (no letterbox bars in the column).
        source = pictures.image(slide.image)
        scale = min(box.width / source.width, box.height / source.height)
        size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
        picture = pictures.placed(slide.image, size, "cover")
        x += (box.width - size[0]) // 2
        y += (box.height - size[1]) // 2
    else:
        picture = pictures.placed(slide.image, (box.width, box.height), fit)
    if plan.scrim > 0:
        veil = Image.new("RGB", picture.size, (0, 0, 0))
        picture = Image.blend(picture, veil, plan.scrim)
    image.paste(picture, (x, y))
    return Box(x, y, x + picture.width, y + picture.height)


def render_slide(
    deck: Deck,
    index: int,
    fonts: FontChain | None = None,
    images: SlideImages | None = None,
) -> Image.Image:
    """Slide ``index`` (from 0) of ``deck`` as an RGB image at the deck's
    size and aspect ratio; a slide with an image takes it from ``images``
    (:func:`workers.images.resolve_images`). Raises
    :class:`~workers.text.MissingGlyphs` for a character that no font has."""
    width, height = deck.options.size
    layout = frame_layout(width, height)
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
    footer = setter(layout.footer_size)
    colors = theme
    content = layout.content
    if slide.image is not None:
        if images is None:
            raise ValueError(f"slide {index + 1} has an image but no images were loaded")
        plan = _plan(slide, layout, theme, footer.line_height)
        drawn = _draw_image(image, slide, plan, images)
        if plan.caption is not None and plan.caption.top != layout.footer_top:
            # Right under the picture (a contained one may be shorter than its box).
            top = plan.caption.top - (plan.image.bottom if plan.image else 0) + drawn.bottom
            plan = replace(plan, caption=Box(plan.caption.left, top, plan.caption.right, top))
        colors = plan.colors
        content = plan.text
    draw.rectangle(layout.bar, fill=theme.accent)
    _draw_text(image, draw, slide, content, layout, setter, colors)

    number = f"{index + 1} / {len(deck.slides)}"
    number_left = layout.content.right - int(footer.width(number))
    if slide.image is not None and plan.caption is not None:
        line = plan.caption
        right = line.right
        if line.top == layout.footer_top:  # over a full image: left of the page number
            right = min(right, number_left - footer.size)
        lines = footer.wrap(clean(slide.caption), right - line.left)
        caption = fit_lines(footer, lines, 1, right - line.left)
        if caption:
            footer.draw_line(image, line.left, right, line.top, caption[0], colors.muted)
    footer.draw_line(
        image, number_left, layout.content.right, layout.footer_top, number, colors.muted
    )
    return image


def _draw_text(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    slide: Slide,
    content: Box,
    layout: Layout,
    setter: Setter,
    colors: Theme,
) -> None:
    """The title, its rule and the body inside ``content``: shrunk to fit, then
    cut with an ellipsis; centred by a third of the free room on an upright frame."""
    # Measure everything first: a centred layout needs the block's height.
    top = content.top
    title = clean(slide.title) if slide.title else ""
    title_set: tuple[Typesetter, list[str]] | None = None
    rule_y = 0
    if title.strip():
        title_set = _layout_title(title, content, layout, setter)
        top += len(title_set[1]) * title_set[0].line_height
        rule_y = top + layout.title_gap
        top = rule_y + layout.rule[1] + layout.rule_gap

    body_box = Box(content.left, top, content.right, content.bottom)
    body_set: tuple[Typesetter, list[_Block], int] | None = None
    used = top - content.top
    if body_box.height > 0 and (slide.body.strip() or slide.bullets):
        body_set = _layout_body(slide, body_box, layout.body_size, setter)
        ts, blocks, gap = body_set
        rows = sum(len(b.lines) for b in blocks)
        used = top - content.top + rows * ts.line_height + gap * max(len(blocks) - 1, 0)
    elif title_set is not None:
        used = rule_y + layout.rule[1] - content.top
    # A third of the free room above, two thirds below: the optical centre.
    shift = max(content.height - used, 0) // 3 if layout.centered else 0

    if title_set is not None:
        ts, lines = title_set
        y = content.top + shift
        for line in lines:
            ts.draw_line(image, content.left, content.right, y, line, colors.title)
            y += ts.line_height
        ry = rule_y + shift
        draw.rectangle(
            (content.left, ry, content.left + layout.rule[0], ry + layout.rule[1]),
            fill=colors.accent,
        )

    if body_set is not None:
        ts, blocks, gap = body_set
        y = body_box.top + shift
        for block in blocks:
            for n, line in enumerate(block.lines):
                if block.bullet and n == 0:
                    ts.draw_line(
                        image, content.left, content.left + block.indent, y, BULLET, colors.accent
                    )
                ts.draw_line(
                    image, content.left + block.indent, content.right, y, line, colors.text
                )
                y += ts.line_height
            y += gap


def save_png(image: Image.Image, path: Path) -> int:
    """Write ``image`` as PNG; return the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=3)
    return path.stat().st_size


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """The thumbnail of a ``width`` x ``height`` frame: the frame's aspect
    ratio, 320 px on its longer side (320 wide for landscape, 320 high for
    upright, 320 square)."""
    scale = THUMBNAIL_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_thumbnail(image: Image.Image, path: Path) -> int:
    """A JPEG of ``image`` at :func:`thumbnail_size`; return its size in bytes."""
    thumb = image.resize(thumbnail_size(image.width, image.height), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    thumb.save(path, format="JPEG", quality=85, optimize=True)
    return path.stat().st_size
