"""The fonts slides are drawn with, and which of them has a real glyph for a
character.

The chain is made of the Noto fonts that ship with the package (the
``manimgx-fonts`` and ``manimgx-fonts-cjk`` wheels: Latin, Greek, Cyrillic,
some twenty other scripts, Chinese, Japanese, Korean, symbols and monochrome
emoji), so a fresh ``pip install`` renders every script they cover with no
system package. Where the machine has Debian's Noto Color Emoji (a bitmap
font, drawn at its one strike size and scaled), emoji use it; other system
fonts only fill characters that the shipped fonts lack. ``SLIDEFARM_SYSTEM_FONTS=0``
leaves system fonts out entirely, as on a fresh machine.

A font covers a character when its cmap maps it to a glyph other than
``.notdef``. Everything is read once per process and per chain.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from fontTools.ttLib import TTCollection, TTFont
from PIL import ImageFont

from core.config import get_settings

log = logging.getLogger(__name__)

#: The packages whose fonts are the chain's core, in this order.
SHIPPED_PACKAGES = ("manimgx_fonts", "manimgx_fonts_cjk")
SYSTEM_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
#: The system colour emoji font, preferred for emoji wherever it is installed.
COLOR_EMOJI_FILE = "NotoColorEmoji.ttf"
#: Text is set in the regular weight of variable fonts (some default to Thin).
REGULAR_WEIGHT = 400.0
#: Face names of a CJK collection by the language whose glyph forms they draw.
CJK_FACES = {"ja": "JP", "ko": "KR", "zh": "SC"}
NOTDEF = ".notdef"
STYLE_WORDS = (
    "Bold",
    "Italic",
    "Oblique",
    "Light",
    "Thin",
    "Black",
    "Medium",
    "Semi",
    "Extra",
    "Condensed",
    "Narrow",
    "Heavy",
)

# Keeps files of a zipped install extracted for as long as the process lives.
_extracted = ExitStack()
atexit.register(_extracted.close)


@dataclass(frozen=True)
class FontFace:
    """One face of one font file: where it is and how it is drawn."""

    name: str
    path: Path
    index: int = 0
    #: Bitmap-only fonts (colour emoji) draw at this one pixel size, else None.
    strike: int | None = None
    emoji: bool = False

    def at(self, size: int) -> ImageFont.FreeTypeFont:
        """This face at ``size`` pixels (its strike size if it has one)."""
        return _load_font(self, self.strike or size)


@dataclass(frozen=True)
class _FaceInfo:
    coverage: frozenset[int]
    variation: tuple[float, ...] | None  # axis coordinates for the regular weight
    strike: int | None
    drawable: bool


def _inspect(path: Path, index: int) -> _FaceInfo:
    font = TTFont(str(path), lazy=True, fontNumber=index)
    try:
        # Glyphs named by number: fontTools then skips deriving names from
        # the cmap (seconds for the big fonts), and glyph 0 is the .notdef.
        font.setGlyphOrder([NOTDEF] + [f"g{gid}" for gid in range(1, font["maxp"].numGlyphs)])
        cmap = font.getBestCmap() or {}
        coverage = frozenset(code for code, glyph in cmap.items() if glyph != NOTDEF)
        variation = None
        if "fvar" in font:
            variation = tuple(
                min(max(REGULAR_WEIGHT, axis.minValue), axis.maxValue)
                if axis.axisTag == "wght"
                else axis.defaultValue
                for axis in font["fvar"].axes
            )
        outlines = any(tag in font for tag in ("glyf", "CFF ", "CFF2"))
        strike = None
        if not outlines and "CBLC" in font:
            # FreeType draws a bitmap-only font at the sizes of its strikes only.
            strike = max(s.bitmapSizeTable.ppemY for s in font["CBLC"].strikes)
        return _FaceInfo(coverage, variation, strike, outlines or strike is not None)
    finally:
        font.close()


@cache
def face_info(face: FontFace) -> _FaceInfo:
    """Coverage and drawing parameters of ``face``, read once per process."""
    try:
        return _inspect(face.path, face.index)
    except Exception:  # a broken font file must never stop a render
        log.warning("ignoring unreadable font %s", face.path, exc_info=True)
        return _FaceInfo(frozenset(), None, None, False)


def coverage(face: FontFace) -> frozenset[int]:
    """The code points ``face`` maps to a real glyph."""
    return face_info(face).coverage


@lru_cache(maxsize=512)
def _load_font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(
        str(face.path), size=size, index=face.index, layout_engine=ImageFont.Layout.RAQM
    )
    variation = face_info(face).variation
    if variation is not None:
        font.set_variation_by_axes(list(variation))
    return font


def _package_files(package: str) -> Iterator[Path]:
    """The font files shipped in ``package``, found through the package itself."""
    for entry in resources.files(package).iterdir():
        if entry.name.lower().endswith(FONT_SUFFIXES):
            yield _extracted.enter_context(resources.as_file(entry))


def _shipped_rank(path: Path) -> tuple[int, str]:
    # Noto Sans (Latin, Greek, Cyrillic) first, then the other scripts, CJK,
    # symbols, and emoji last: emoji fonts also map digits and '#', which
    # must stay text.
    name = path.name
    if name.startswith("NotoSans["):
        return 0, name
    if "Emoji" in name:
        return 5, name
    if "Symbols" in name:
        return 3, name
    if "CJK" in name:
        return 2, name
    return 1, name


@lru_cache(maxsize=8)
def _collection_faces(path: Path) -> dict[str, int]:
    """Face indices of a font collection by the last word of their family
    name (``Noto Sans CJK JP`` is ``JP``)."""
    if path.suffix.lower() not in (".ttc", ".otc"):
        return {}
    collection = TTCollection(str(path), lazy=True)
    try:
        faces: dict[str, int] = {}
        for index, font in enumerate(collection.fonts):
            family = str(font["name"].getDebugName(1) or "")
            faces.setdefault(family.rsplit(" ", 1)[-1], index)
        return faces
    finally:
        collection.close()


def shipped_faces() -> tuple[FontFace, ...]:
    """The fonts the package brings, in the order the chain tries them."""
    files = [path for package in SHIPPED_PACKAGES for path in _package_files(package)]
    faces: list[FontFace] = []
    for path in sorted(files, key=_shipped_rank):
        if "Italic" in path.name:
            continue
        index = 0
        if "CJK" in path.name:
            index = _collection_faces(path).get(CJK_FACES["zh"], 0)
        faces.append(FontFace(path.stem, path, index, emoji="Emoji" in path.name))
    return tuple(faces)


def _is_regular_style(path: Path) -> bool:
    # Bold, italic, light... files of a family add no character to its
    # regular one; skipping them keeps a full scan of Debian's Noto short.
    style = path.stem.rsplit("-", 1)[-1] if "-" in path.stem else ""
    return not any(word in style for word in STYLE_WORDS)


def _system_files() -> list[Path]:
    found: list[Path] = []
    for folder in SYSTEM_FONT_DIRS:
        if folder.is_dir():
            found += [p for p in folder.rglob("*") if p.suffix.lower() in FONT_SUFFIXES]
    return sorted(found)


class FontChain:
    """The fonts tried for each character, first match wins; with
    ``system=False`` nothing outside the package is ever read."""

    def __init__(self, system: bool) -> None:
        self.system = system
        self._system_files = _system_files() if system else []
        core = list(shipped_faces())
        color = [p for p in self._system_files if p.name == COLOR_EMOJI_FILE]
        if color:
            face = FontFace(color[0].stem, color[0], emoji=True)
            info = face_info(face)
            if info.drawable:
                face = FontFace(face.name, face.path, strike=info.strike, emoji=True)
                # Before the shipped monochrome emoji, after every text font.
                first_emoji = next((i for i, f in enumerate(core) if f.emoji), len(core))
                core.insert(first_emoji, face)
        self.core = tuple(core)
        self._faces: dict[tuple[str, str, bool], FontFace | None] = {}
        self._alternates: dict[tuple[FontFace, str], FontFace] = {}

    def extra(self) -> Iterator[FontFace]:
        """The other system fonts in upright regular styles, each read only
        when a character that no earlier font has reaches it."""
        known = {f.path for f in self.core}
        for path in self._system_files:
            if path in known or not _is_regular_style(path):
                continue
            face = FontFace(path.stem, path)
            info = face_info(face)
            if info.drawable:
                yield FontFace(path.stem, path, strike=info.strike)

    def _candidates(self, prefer_emoji: bool) -> Iterator[FontFace]:
        # Fonts are read lazily, in order: Latin text never opens the CJK font.
        if prefer_emoji:
            yield from (f for f in self.core if f.emoji and face_info(f).drawable)
        yield from (f for f in self.core if face_info(f).drawable)
        yield from self.extra()

    def face_for(
        self, required: str, lang: str = "zh", prefer_emoji: bool = False
    ) -> FontFace | None:
        """The first face with a real glyph for every character of
        ``required`` (emoji fonts first when ``prefer_emoji``), in the glyph
        forms of ``lang`` where the face has them; None when no face has."""
        key = (required, lang, prefer_emoji)
        if key not in self._faces:
            codes = [ord(c) for c in required]
            found = next(
                (f for f in self._candidates(prefer_emoji) if all(c in coverage(f) for c in codes)),
                None,
            )
            if found is not None:
                found = self._in_language(found, lang, codes)
            self._faces[key] = found
        return self._faces[key]

    def covers(self, ch: str) -> bool:
        """Whether some face of the chain has a real glyph for ``ch``."""
        return self.face_for(ch) is not None

    def _in_language(self, face: FontFace, lang: str, codes: Iterable[int]) -> FontFace:
        """The face of ``face``'s collection that draws ``lang``'s forms, if any."""
        if "CJK" not in face.name or lang not in CJK_FACES:
            return face
        key = (face, lang)
        if key not in self._alternates:
            index = _collection_faces(face.path).get(CJK_FACES[lang], face.index)
            self._alternates[key] = FontFace(face.name, face.path, index)
        alternate = self._alternates[key]
        return alternate if all(c in coverage(alternate) for c in codes) else face


@lru_cache(maxsize=2)
def font_chain(system: bool) -> FontChain:
    """The chain for this process, built once per value of ``system``."""
    return FontChain(system)


def default_chain() -> FontChain:
    """The chain the settings ask for (``SLIDEFARM_SYSTEM_FONTS``)."""
    return font_chain(get_settings().system_fonts)
