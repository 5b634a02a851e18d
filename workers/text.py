"""Typography for slides: a per-character font fallback chain, bidi-aware line
drawing and wrapping that never lets text run off the slide.

Pillow's raqm layout shapes each run (Arabic joins, Hebrew runs right to left,
Devanagari clusters). The chain starts with Pillow's bundled scalable Latin
font, which needs no system package, and adds wide-coverage fonts where they
are installed (Noto, DejaVu). A character that no font has is drawn as a box.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))

#: Wide-coverage fonts tried first, in order; the rest of the Noto family is
#: only scanned when a character is missing from all of these.
PREFERRED_FONTS = (
    "NotoSans-Regular.ttf",
    "DejaVuSans.ttf",
    "NotoSansArabic-Regular.ttf",
    "NotoSansHebrew-Regular.ttf",
    "NotoSansDevanagari-Regular.ttf",
    "NotoSansBengali-Regular.ttf",
    "NotoSansThai-Regular.ttf",
    "NotoSansTamil-Regular.ttf",
    "NotoSansArmenian-Regular.ttf",
    "NotoSansGeorgian-Regular.ttf",
    "NotoSansEthiopic-Regular.ttf",
    "NotoSansCJK-Regular.ttc",
    "NotoSansSymbols-Regular.ttf",
    "NotoSansSymbols2-Regular.ttf",
    "NotoSansMath-Regular.ttf",
)

MISSING_GLYPH = "\u25a1"  # WHITE SQUARE: what a character no font has becomes
ELLIPSIS = "\u2026"
MAX_COMBINING = 3  # combining marks kept per base character
RTL_CLASSES = frozenset({"R", "AL"})
STRONG_LTR = "L"


@dataclass(frozen=True)
class FontSource:
    """Where one font of the chain comes from and which code points it has."""

    name: str
    data: bytes | None
    path: Path | None
    coverage: frozenset[int]

    def at(self, size: int) -> ImageFont.FreeTypeFont:
        source: str | BytesIO = str(self.path) if self.path else BytesIO(self.data or b"")
        return ImageFont.truetype(source, size=size, layout_engine=ImageFont.Layout.RAQM)


def _coverage(source: str | BytesIO) -> frozenset[int]:
    font = TTFont(source, lazy=True, fontNumber=0)
    try:
        cmap = font.getBestCmap() or {}
        return frozenset(cmap)
    finally:
        font.close()


def _find_font(name: str) -> Path | None:
    for folder in FONT_DIRS:
        if folder.is_dir():
            for match in folder.rglob(name):
                return match
    return None


def _load(name: str, path: Path) -> FontSource | None:
    try:
        return FontSource(name, None, path, _coverage(str(path)))
    except Exception:  # a broken font file must never stop a render
        log.warning("ignoring unreadable font %s", path, exc_info=True)
        return None


@lru_cache(maxsize=1)
def base_chain() -> tuple[FontSource, ...]:
    """The floor font and the preferred installed fonts, loaded once per process."""
    floor = ImageFont.load_default(size=16)
    floor_bytes: bytes = getattr(floor, "font_bytes")  # noqa: B009 (not in the stubs)
    chain = [FontSource("pillow-default", floor_bytes, None, _coverage(BytesIO(floor_bytes)))]
    for name in PREFERRED_FONTS:
        path = _find_font(name)
        if path is not None and (source := _load(name, path)) is not None:
            chain.append(source)
    return tuple(chain)


@lru_cache(maxsize=1)
def extended_chain() -> tuple[FontSource, ...]:
    """Every other installed Noto Sans face, for rare scripts; loaded on first need."""
    known = {s.name for s in base_chain()}
    extra: list[FontSource] = []
    for folder in FONT_DIRS:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("NotoSans*-Regular.tt[fc]")):
            if path.name not in known and (source := _load(path.name, path)) is not None:
                known.add(path.name)
                extra.append(source)
    return tuple(extra)


def _needs_font(ch: str) -> bool:
    return unicodedata.category(ch) not in ("Zs", "Cc", "Cf", "Zl", "Zp")


@lru_cache(maxsize=4096)
def font_index_for(ch: str) -> int:
    """Index into the chain (base, then extended) of the first font that has ``ch``, or -1."""
    code = ord(ch)
    for i, source in enumerate(base_chain()):
        if code in source.coverage:
            return i
    offset = len(base_chain())
    for i, source in enumerate(extended_chain()):
        if code in source.coverage:
            return offset + i
    return -1


@lru_cache(maxsize=256)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    chain = base_chain() + (extended_chain() if index >= len(base_chain()) else ())
    return chain[index].at(size)


def clean(text: str) -> str:
    """Drop control characters and replace characters no font has with a box."""
    out = []
    marks = 0
    for ch in text:
        if unicodedata.category(ch) in ("Mn", "Me"):
            marks += 1
            if marks > MAX_COMBINING:
                continue  # stacked marks would climb out of the slide
        else:
            marks = 0
        if ch == "\n" or ch == " ":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc":
            out.append(" " if ch == "\t" else "")
        elif _needs_font(ch) and font_index_for(ch) < 0:
            out.append(MISSING_GLYPH)
        else:
            out.append(ch)
    return "".join(out)


def _clusters(text: str) -> list[str]:
    """Base characters with the combining marks that follow them."""
    clusters: list[str] = []
    for ch in text:
        if clusters and unicodedata.category(ch) in ("Mn", "Me", "Mc"):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


def _font_for_cluster(cluster: str) -> int:
    """The first font that has every character of ``cluster`` (else its base's)."""
    if len(cluster) == 1:
        return font_index_for(cluster)
    codes = [ord(c) for c in cluster]
    for i in range(len(base_chain()) + len(extended_chain())):
        coverage = _coverage_of(i)
        if all(code in coverage for code in codes):
            return i
    return font_index_for(cluster[0])


def runs(text: str) -> list[tuple[int, str]]:
    """Split ``text`` into runs drawn with one font each; spaces join the run
    around them and a combining mark stays with its base."""
    result: list[tuple[int, str]] = []
    current = -1
    buf: list[str] = []
    for cluster in _clusters(text):
        first = cluster[0]
        if current >= 0 and not _needs_font(first) and ord(first) in _coverage_of(current):
            index = current  # spaces stay with the run around them
        else:
            index = max(_font_for_cluster(cluster), 0)
        if index != current and buf:
            result.append((max(current, 0), "".join(buf)))
            buf = []
        current = index
        buf.append(cluster)
    if buf:
        result.append((max(current, 0), "".join(buf)))
    return result


def _coverage_of(index: int) -> frozenset[int]:
    chain = base_chain()
    if index < len(chain):
        return chain[index].coverage
    return extended_chain()[index - len(chain)].coverage


def _strong(klass: str) -> str | None:
    if klass == STRONG_LTR:
        return "L"
    if klass in RTL_CLASSES:
        return "R"
    if klass in ("EN", "AN"):
        return "N"  # a number
    return None


def visual_runs(text: str) -> list[tuple[str, str]]:
    """``text`` cut into directional runs, in visual order: a compact form of
    the Unicode bidi algorithm (strong types, numbers, neutrals resolved by
    their neighbours, levels 0-2, then reversal from the highest level)."""
    if not text:
        return []
    base_rtl = base_direction(text) == "rtl"
    kinds: list[str | None] = []
    last_strong = "R" if base_rtl else "L"
    for ch in text:
        klass = unicodedata.bidirectional(ch)
        kind = _strong(klass)
        if klass == "NSM" and kinds:
            kind = kinds[-1]  # a combining mark follows its base
        elif klass == "EN" and last_strong == "L":
            kind = "L"  # European digits after left-to-right text read as part of it
        if kind in ("L", "R"):
            last_strong = kind
        kinds.append(kind)
    # Neutrals take the direction shared by their neighbours, else the base.
    resolved: list[str] = []
    for i, kind in enumerate(kinds):
        if kind is not None:
            resolved.append(kind)
            continue
        before = next((k for k in reversed(kinds[:i]) if k is not None), None)
        after = next((k for k in kinds[i + 1:] if k is not None), None)
        as_dir = [None if k is None else ("R" if k == "N" else k) for k in (before, after)]
        if as_dir[0] is not None and as_dir[0] == as_dir[1]:
            resolved.append(as_dir[0])
        else:
            resolved.append("R" if base_rtl else "L")
    levels = []
    for kind in resolved:
        if base_rtl:
            levels.append(1 if kind == "R" else 2)
        else:
            levels.append({"L": 0, "R": 1, "N": 2}[kind])
    spans: list[tuple[int, str]] = []
    for ch, level in zip(text, levels, strict=True):
        if spans and spans[-1][0] == level:
            spans[-1] = (level, spans[-1][1] + ch)
        else:
            spans.append((level, ch))
    for level in range(max(levels), 0, -1):
        i = 0
        while i < len(spans):
            if spans[i][0] >= level:
                j = i
                while j < len(spans) and spans[j][0] >= level:
                    j += 1
                spans[i:j] = reversed(spans[i:j])
                i = j
            else:
                i += 1
    return [("rtl" if level % 2 else "ltr", chunk) for level, chunk in spans]


def base_direction(text: str) -> str:
    """``rtl`` when the first strong character is right-to-left, else ``ltr``."""
    for ch in text:
        klass = unicodedata.bidirectional(ch)
        if klass in RTL_CLASSES:
            return "rtl"
        if klass == STRONG_LTR:
            return "ltr"
    return "ltr"


class Typesetter:
    """Measures, wraps and draws text at one size with the fallback chain."""

    def __init__(self, size: int) -> None:
        self.size = max(int(size), 6)

    def font(self, index: int) -> ImageFont.FreeTypeFont:
        return _font(index, self.size)

    @property
    def line_height(self) -> int:
        return int(round(self.size * 1.3))

    def width(self, text: str) -> float:
        return sum(self.font(i).getlength(part) for i, part in runs(text))

    def draw_line(self, draw: ImageDraw.ImageDraw, left: int, right: int, top: int,
                  text: str, fill: tuple[int, int, int]) -> None:
        """Draw one line between ``left`` and ``right`` in visual (bidi) order;
        lines whose paragraph direction is right-to-left align right."""
        baseline = top + int(round(self.size * 1.0))
        pieces: list[tuple[int, str, str]] = []  # font, text, direction; visual order
        for direction, segment in visual_runs(text):
            parts = runs(segment)
            if direction == "rtl":
                parts.reverse()
            pieces += [(index, part, direction) for index, part in parts]
        widths = [self.font(i).getlength(p, direction=d) for i, p, d in pieces]
        x = right - sum(widths) if base_direction(text) == "rtl" else left
        for (index, part, direction), w in zip(pieces, widths, strict=True):
            draw.text((x, baseline), part, font=self.font(index), fill=fill, anchor="ls",
                      direction=direction)
            x += w

    def wrap(self, text: str, max_width: float) -> list[str]:
        """Greedy wrapping at spaces, and between CJK characters or inside
        words too long for a line."""
        lines: list[str] = []
        for paragraph in text.split("\n"):
            lines.extend(self._wrap_paragraph(paragraph, max_width))
        return lines

    def _wrap_paragraph(self, paragraph: str, max_width: float) -> list[str]:
        units = list(_break_units(paragraph))
        lines: list[str] = []
        line = ""
        for unit in units:
            candidate = line + unit
            if line and self.width(candidate.rstrip()) > max_width:
                lines.append(line.rstrip())
                line = unit.lstrip()
            else:
                line = candidate
            while self.width(line.rstrip()) > max_width and len(line) > 1:
                head = self._longest_prefix(line, max_width)
                lines.append(head)
                line = line[len(head):].lstrip()
        if line.strip() or not lines:
            lines.append(line.rstrip())
        return lines

    def _longest_prefix(self, text: str, max_width: float) -> str:
        lo, hi = 1, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.width(text[:mid]) <= max_width:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo]

    def ellipsize(self, text: str, max_width: float) -> str:
        """``text`` cut so that it and an ellipsis fit in ``max_width``."""
        text = text.rstrip()
        if self.width(text + ELLIPSIS) <= max_width:
            return text + ELLIPSIS
        return self._longest_prefix(text, max_width - self.width(ELLIPSIS)).rstrip() + ELLIPSIS


def _is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _break_units(text: str) -> Iterable[str]:
    """Pieces between which a line may break: words with their trailing space,
    and single wide (CJK) characters."""
    word = ""
    for ch in text:
        if ch == " ":
            word += ch
            yield word
            word = ""
        elif _is_wide(ch):
            if word:
                yield word
            yield ch
            word = ""
        else:
            if word.endswith(" "):
                yield word
                word = ""
            word += ch
    if word:
        yield word


def fit_lines(typesetter: Typesetter, lines: Sequence[str], max_lines: int,
              max_width: float) -> list[str]:
    """At most ``max_lines`` lines, the last one ellipsized if text was cut."""
    if len(lines) <= max_lines:
        return list(lines)
    kept = list(lines[:max_lines])
    if kept:
        kept[-1] = typesetter.ellipsize(kept[-1], max_width)
    return kept
