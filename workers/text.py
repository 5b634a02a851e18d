"""Typography for slides: which font draws each character, bidi-aware line
drawing, and wrapping that never lets text run off the slide.

Every character that shows is drawn with a font that has a real glyph for it
(see :mod:`workers.fonts`); text with a character that no font has cannot be
drawn and raises :class:`MissingGlyphs`, never a silent box. Pillow's raqm
layout shapes each run of one font (Arabic joins, Hebrew runs right to left,
Devanagari clusters, emoji sequences).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import accumulate

from PIL import Image, ImageDraw

from workers.fonts import FontChain, FontFace, default_chain

ELLIPSIS = "\u2026"
MAX_COMBINING = 3  # combining marks kept per base character
RTL_CLASSES = frozenset({"R", "AL"})
STRONG_LTR = "L"
ZWJ = "\u200d"
ZWNJ = "\u200c"
EMOJI_STYLE = "\ufe0f"
KEYCAP = "\u20e3"
#: Unicode's Default_Ignorable_Code_Point ranges: invisible by definition
#: (joiners, variation selectors, bidi controls, tags), so no glyph is needed.
DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
OGHAM_SPACE_MARK = "\u1680"  # the one space separator that is a visible mark


class MissingGlyphs(ValueError):
    """Text has characters that no font of the chain can draw."""

    def __init__(self, characters: Iterable[str], where: str = "") -> None:
        self.characters = sorted(set(characters))
        listed = ", ".join(describe(c) for c in self.characters)
        super().__init__(f"no font covers {listed}" + (f" on {where}" if where else ""))


def describe(ch: str) -> str:
    """``U+13000 '𓀀' (EGYPTIAN HIEROGLYPH A001)``: a character, readably."""
    name = unicodedata.name(ch, "")
    shown = ch if ch.isprintable() else ""
    return f"U+{ord(ch):04X} '{shown}'" + (f" ({name})" if name else "")


@lru_cache(maxsize=65536)
def is_ignorable(ch: str) -> bool:
    """Whether ``ch`` is a default-ignorable code point (never drawn)."""
    code = ord(ch)
    return any(low <= code <= high for low, high in DEFAULT_IGNORABLE)


@lru_cache(maxsize=65536)
def needs_glyph(ch: str) -> bool:
    """Whether ``ch`` shows as a glyph: not a control, line break, space
    (shaping substitutes a missing space) or default-ignorable character."""
    category = unicodedata.category(ch)
    if category in ("Cc", "Zl", "Zp") or is_ignorable(ch):
        return False
    return category != "Zs" or ch == OGHAM_SPACE_MARK


def clean(text: str) -> str:
    """Drop control characters, turn line and paragraph separators into line
    breaks, and cap stacks of combining marks."""
    out = []
    marks = 0
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Mn", "Me"):
            marks += 1
            if marks > MAX_COMBINING:
                continue  # stacked marks would climb out of the slide
        else:
            marks = 0
        if ch == "\n" or category in ("Zl", "Zp"):
            out.append("\n")
        elif category == "Cc":
            out.append(" " if ch == "\t" else "")
        else:
            out.append(ch)
    return "".join(out)


def uncovered(text: str, fonts: FontChain | None = None) -> list[str]:
    """The characters of ``text`` that show but that no font has, each once."""
    chain = fonts or default_chain()
    seen: dict[str, None] = {}
    for ch in text:
        if ch not in seen and needs_glyph(ch) and not chain.covers(ch):
            seen[ch] = None
    return list(seen)


def cjk_language(text: str) -> str:
    """Which glyph forms Han characters take: Japanese beside kana, Korean
    beside Hangul, else Simplified Chinese."""
    if any("\u3040" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff" for ch in text):
        return "ja"
    if any(
        "\uac00" <= ch <= "\ud7af" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f"
        for ch in text
    ):
        return "ko"
    return "zh"


def clusters(text: str) -> list[str]:
    """Text cut where a font may change: a base character with its combining
    marks, joiners and variation selectors, and whole emoji sequences (ZWJ,
    skin tones, flags, keycaps, tags)."""
    result: list[str] = []
    join_next = False
    for ch in text:
        code = ord(ch)
        attach = bool(result) and (
            join_next
            or unicodedata.category(ch) in ("Mn", "Me", "Mc")
            or ch in (ZWJ, ZWNJ)
            or code in EMOJI_MODIFIERS
            or 0xE0020 <= code <= 0xE007F  # tag sequences (subdivision flags)
            or (
                code in REGIONAL_INDICATORS
                and len(result[-1]) == 1
                and ord(result[-1]) in REGIONAL_INDICATORS
            )
        )
        if join_next and not needs_glyph(ch) and ch not in (ZWJ, ZWNJ):
            attach = False  # a joiner before a space joins nothing
        if attach:
            result[-1] += ch
        else:
            result.append(ch)
        join_next = ch == ZWJ
    return result


def _prefers_emoji(cluster: str) -> bool:
    return (
        EMOJI_STYLE in cluster
        or KEYCAP in cluster
        or ZWJ in cluster
        or any(ord(c) in EMOJI_MODIFIERS or ord(c) in REGIONAL_INDICATORS for c in cluster)
    )


def runs(text: str, fonts: FontChain | None = None, lang: str = "zh") -> list[tuple[FontFace, str]]:
    """Split ``text`` into runs drawn with one font each; spaces and other
    invisible characters join the run around them and a cluster stays whole
    when one font has all of it. Raises :class:`MissingGlyphs`."""
    return list(_runs(text, fonts or default_chain(), lang))


# Wrapping measures the same prefixes again at each size it tries.
@lru_cache(maxsize=8192)
def _runs(text: str, chain: FontChain, lang: str) -> tuple[tuple[FontFace, str], ...]:
    pieces: list[tuple[FontFace | None, str]] = []
    missing: list[str] = []
    for cluster in clusters(text):
        required = "".join(c for c in cluster if needs_glyph(c))
        if not required:
            pieces.append((None, cluster))  # decided by its neighbours below
            continue
        face = chain.face_for(required, lang, _prefers_emoji(cluster))
        if face is not None:
            pieces.append((face, cluster))
            continue
        # No one font has the whole cluster: each character on its own.
        for ch in cluster:
            single = chain.face_for(ch, lang) if needs_glyph(ch) else None
            if needs_glyph(ch) and single is None:
                missing.append(ch)
            pieces.append((single, ch))
    if missing:
        raise MissingGlyphs(missing)
    # Spaces take the text font before them: an emoji font's space is an em wide.
    text_face = next(
        (face for face, _ in pieces if face is not None and not face.emoji), chain.core[0]
    )
    result: list[tuple[FontFace, str]] = []
    current = text_face
    for face, part in pieces:
        if face is None:
            current = text_face if current.emoji else current
        else:
            current = face
            text_face = current if not current.emoji else text_face
        if result and result[-1][0] == current:
            result[-1] = (current, result[-1][1] + part)
        else:
            result.append((current, part))
    return tuple(result)


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
        after = next((k for k in kinds[i + 1 :] if k is not None), None)
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


@lru_cache(maxsize=256)
def _bitmap_run(
    face: FontFace, text: str, direction: str, size: int
) -> tuple[Image.Image, float, float]:
    """A run of a bitmap-only (colour emoji) font, drawn at its strike size
    and scaled to ``size``: the RGBA image and its offset from the pen
    position on the baseline."""
    strike = face.strike or size
    font = face.at(strike)
    box = font.getbbox(text, anchor="ls", direction=direction)
    left, top = math.floor(box[0]), math.floor(box[1])
    right, bottom = math.ceil(box[2]), math.ceil(box[3])
    canvas = Image.new("RGBA", (max(right - left, 1), max(bottom - top, 1)), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (-left, -top), text, font=font, anchor="ls", direction=direction, embedded_color=True
    )
    scale = size / strike
    scaled = canvas.resize(
        (max(round(canvas.width * scale), 1), max(round(canvas.height * scale), 1)),
        Image.Resampling.LANCZOS,
    )
    return scaled, left * scale, top * scale


class Typesetter:
    """Measures, wraps and draws text at one size with the font chain.

    ``lang`` picks the glyph forms of Han characters (see :func:`cjk_language`).
    """

    def __init__(self, size: int, fonts: FontChain | None = None, lang: str = "zh") -> None:
        self.size = max(int(size), 6)
        self.fonts = fonts or default_chain()
        self.lang = lang

    def runs(self, text: str) -> list[tuple[FontFace, str]]:
        """``text`` in runs of one font each (see :func:`runs`)."""
        return runs(text, self.fonts, self.lang)

    @property
    def line_height(self) -> int:
        return round(self.size * 1.3)

    def length(self, face: FontFace, text: str, direction: str | None = None) -> float:
        """The advance of ``text`` drawn with ``face`` at this size."""
        advance = face.at(self.size).getlength(text, direction=direction)
        if face.strike:
            advance *= self.size / face.strike
        return advance

    def width(self, text: str) -> float:
        return sum(self.length(face, part) for face, part in self.runs(text))

    def draw_line(
        self,
        image: Image.Image,
        left: int,
        right: int,
        top: int,
        text: str,
        fill: tuple[int, int, int],
    ) -> None:
        """Draw one line between ``left`` and ``right`` in visual (bidi) order;
        lines whose paragraph direction is right-to-left align right."""
        draw = ImageDraw.Draw(image)
        baseline = top + round(self.size * 1.0)
        pieces: list[tuple[FontFace, str, str]] = []  # font, text, direction; visual order
        for direction, segment in visual_runs(text):
            parts = self.runs(segment)
            if direction == "rtl":
                parts.reverse()
            pieces += [(face, part, direction) for face, part in parts]
        widths = [self.length(face, part, d) for face, part, d in pieces]
        x = right - sum(widths) if base_direction(text) == "rtl" else left
        for (face, part, direction), w in zip(pieces, widths, strict=True):
            if face.strike:
                bitmap, dx, dy = _bitmap_run(face, part, direction, self.size)
                image.paste(bitmap, (round(x + dx), round(baseline + dy)), bitmap)
            else:
                draw.text(
                    (x, baseline),
                    part,
                    font=face.at(self.size),
                    fill=fill,
                    anchor="ls",
                    direction=direction,
                )
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
                line = line[len(head) :].lstrip()
        if line.strip() or not lines:
            lines.append(line.rstrip())
        return lines

    def _longest_prefix(self, text: str, max_width: float) -> str:
        # Cut between clusters only: a mark or an emoji sequence stays whole.
        ends = list(accumulate(len(cluster) for cluster in clusters(text)))
        lo, hi = 1, len(ends)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.width(text[: ends[mid - 1]]) <= max_width:
                lo = mid
            else:
                hi = mid - 1
        return text[: ends[lo - 1]] if ends else text

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


def fit_lines(
    typesetter: Typesetter, lines: Sequence[str], max_lines: int, max_width: float
) -> list[str]:
    """At most ``max_lines`` lines, the last one ellipsized if text was cut."""
    if len(lines) <= max_lines:
        return list(lines)
    kept = list(lines[:max_lines])
    if kept:
        kept[-1] = typesetter.ellipsize(kept[-1], max_width)
    return kept
