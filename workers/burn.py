"""Subtitles drawn into the picture (``options.burn_subtitles``).

Each cue becomes one transparent PNG the size of the frame holding its text
in a translucent band at the bottom, drawn with the slides' own font chain
(``workers/text.py``: any script, right-to-left, CJK). The text wraps to at
most two lines, shrinks to 70 % of its size if it must, and otherwise ends
in an ellipsis, so it never leaves the frame. ffmpeg then overlays each PNG
while its cue is spoken (see :func:`overlay_graph`); white on a dark veil
reads the same whatever YUV matrix the overlay converts with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from workers.fonts import FontChain
from workers.speech import Cue
from workers.text import Typesetter, cjk_language, clean, fit_lines

#: At most this many lines per cue.
MAX_LINES = 2
TEXT_COLOUR = (255, 255, 255)
BAND_COLOUR = (0, 0, 0, 150)
TAGS = "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv"


def _lines(text: str, width: int, height: int, fonts: FontChain) -> tuple[Typesetter, list[str]]:
    base = max(12, round(min(width, height) * 0.05))
    lang = cjk_language(text)
    max_width = width * 0.9
    for scale in (1.0, 0.85, 0.7):
        setter = Typesetter(round(base * scale), fonts, lang)
        lines = setter.wrap(text, max_width)
        if len(lines) <= MAX_LINES:
            return setter, lines
    return setter, fit_lines(setter, lines, MAX_LINES, max_width)


def cue_image(text: str, size: tuple[int, int], fonts: FontChain) -> Image.Image:
    """A transparent frame with ``text`` in a band at its bottom."""
    width, height = size
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    setter, lines = _lines(clean(text), width, height, fonts)
    lines = [setter.ellipsize(line, width * 0.9) if setter.width(line) > width * 0.9 else line
             for line in lines]  # fmt: skip
    pad = setter.size // 2
    block = setter.line_height * len(lines)
    bottom = height - round(height * 0.05)
    top = bottom - block - 2 * pad
    ImageDraw.Draw(image).rectangle((0, top, width, bottom), fill=BAND_COLOUR)
    for n, line in enumerate(lines):
        line_width = setter.width(line)
        left = round((width - line_width) / 2)
        setter.draw_line(
            image,
            left,
            round(left + line_width),
            top + pad + n * setter.line_height,
            line,
            TEXT_COLOUR,
        )
    return image


def cue_images(
    cues: Sequence[Cue], size: tuple[int, int], fonts: FontChain, folder: Path
) -> list[Path]:
    """One PNG per cue in ``folder``."""
    paths = []
    for n, cue in enumerate(cues, start=1):
        path = folder / f"cue-{n:04d}.png"
        cue_image(cue.text, size, fonts).save(path, compress_level=1)
        paths.append(path)
    return paths


def overlay_graph(cues: Sequence[Cue], first_input: int) -> str:
    """A filter graph from ``[0:v]`` to ``[v]``: input ``first_input + i``
    overlaid while cue ``i`` lasts (from its start, up to but not at its end),
    the frames then tagged BT.709 as the encode tagged them."""
    tags = f"format=yuv420p,{TAGS}[v]"
    if not cues:
        return f"[0:v]{tags}"
    steps = []
    source = "[0:v]"
    for i, cue in enumerate(cues):
        target = "[burnt]" if i == len(cues) - 1 else f"[o{i}]"
        steps.append(
            f"{source}[{first_input + i}:v]overlay=0:0:eof_action=repeat:"
            f"enable='gte(t,{cue.start:.6f})*lt(t,{cue.end:.6f})'{target}"
        )
        source = target
    return ";".join(steps) + f";[burnt]{tags}"
