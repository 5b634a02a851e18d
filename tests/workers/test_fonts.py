"""Fonts on a fresh machine: every script the deck accepts is drawn with real
glyphs from the fonts that ship with the package, no system font needed;
Debian's colour emoji is used where installed; a character that no font has
fails the job with its name, never a silent box."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from core.deck import Deck
from tests.support import ROOT
from tests.support.decks import small_deck
from tests.support.fresh_fonts_probe import SAMPLES
from tests.support.services import missing
from tests.support.stack import Stack, stack_env
from workers.fonts import SYSTEM_FONT_DIRS, font_chain
from workers.slides import missing_glyphs
from workers.text import Typesetter

#: The font file that must draw each sample (a shipped Noto font).
EXPECTED_FONT = {
    "latin": "NotoSans[",
    "greek": "NotoSans[",
    "cyrillic": "NotoSans[",
    "arabic": "NotoSansArabic",
    "hebrew": "NotoSansHebrew",
    "devanagari": "NotoSansDevanagari",
    "bengali": "NotoSansBengali",
    "thai": "NotoSansThai",
    "chinese": "NotoSansCJK",
    "japanese": "NotoSansCJK",
    "korean": "NotoSansCJK",
    "emoji": "NotoEmoji",
}
#: Han characters take the glyph forms of the slide's language.
EXPECTED_FAMILY = {
    "chinese": "Noto Sans CJK SC",
    "japanese": "Noto Sans CJK JP",
    "korean": "Noto Sans CJK KR",
}
COLOR_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMPTY_FONTCONFIG = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig></fontconfig>
"""


def fresh_machine_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment that sees no system font: the renderer's own lookup is
    off and fontconfig (for anything that asks it) has no font folder."""
    (tmp_path / "fonts.conf").write_text(EMPTY_FONTCONFIG)
    (tmp_path / "no-data").mkdir(exist_ok=True)
    return stack_env(
        SLIDEFARM_SYSTEM_FONTS="0",
        FONTCONFIG_FILE=str(tmp_path / "fonts.conf"),
        XDG_DATA_DIRS=str(tmp_path / "no-data"),
        XDG_DATA_HOME=str(tmp_path / "no-data"),
        **extra,
    )


def _differ(a: Path, b: Path) -> bool:
    with Image.open(a) as first, Image.open(b) as second:
        return (
            ImageChops.difference(first.convert("RGB"), second.convert("RGB")).getbbox() is not None
        )


def test_every_script_draws_real_glyphs_with_system_fonts_hidden(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.fresh_fonts_probe", str(out)],
        cwd=ROOT,
        env=fresh_machine_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["system"] is False
    system_dirs = tuple(str(d) for d in SYSTEM_FONT_DIRS)
    assert not [f for f in report["open_files"] if f.startswith(system_dirs)]
    assert set(report["scripts"]) == set(SAMPLES) == set(EXPECTED_FONT)
    for script, found in report["scripts"].items():
        glyphs = found["glyphs"]
        shown = [c for c in SAMPLES[script] if c in {g["char"] for g in glyphs}]
        assert len(glyphs) >= len(shown) > 0, script
        for glyph in glyphs:
            where = f"{script} {glyph['char']!r} in {glyph['font']}"
            assert not glyph["font"].startswith(system_dirs), where
            assert Path(glyph["font"]).name.startswith(EXPECTED_FONT[script]), where
            assert not glyph["notdef"] and glyph["has_outline"], where
            assert not glyph["pixels_like_notdef"], where
            if script in EXPECTED_FAMILY:
                assert glyph["family"] == EXPECTED_FAMILY[script], where
        # Far from a row of boxes: a large share of the line's pixels differ.
        assert found["differs_from_notdef"] > 0.02, script
        assert _differ(out / f"{script}.png", out / f"{script}-notdef.png"), script
    for a, b in combinations(SAMPLES, 2):
        assert _differ(out / f"{a}.png", out / f"{b}.png"), (a, b)
        assert _differ(out / f"slide-{a}.png", out / f"slide-{b}.png"), (a, b)


def test_colour_emoji_font_is_drawn_at_its_strike_and_scaled() -> None:
    if not COLOR_EMOJI.is_file():
        missing(f"{COLOR_EMOJI} missing (make fonts installs fonts-noto-color-emoji)")
    size = 40
    with_system, shipped_only = font_chain(system=True), font_chain(system=False)
    colour = Typesetter(size, with_system)
    [(face, _)] = colour.runs("🙂")
    assert face.path == COLOR_EMOJI and face.strike == 109
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    colour.draw_line(image, 10, 190, 10, "🙂", (0, 0, 0))
    ink = ImageChops.difference(image, Image.new("RGB", image.size, (255, 255, 255))).getbbox()
    assert ink is not None
    # Scaled to the text size, not drawn 109 px tall.
    assert size * 0.8 <= ink[3] - ink[1] <= size * 1.4
    assert size * 0.8 <= colour.width("🙂") <= size * 1.4
    pixels = image.crop(ink).getcolors(1_000_000) or []
    yellow = sum(n for n, (r, g, b) in pixels if r > 200 and g > 150 and b < 100)
    assert yellow > 100  # the smiley is yellow, not the text colour

    mono = Typesetter(size, shipped_only)
    [(face, _)] = mono.runs("🙂")
    assert face.name.startswith("NotoEmoji") and face.strike is None
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    mono.draw_line(image, 10, 190, 10, "🙂", (0, 0, 0))
    colours = image.getcolors(10_000) or []
    assert colours and all(r == g == b for _, (r, g, b) in colours)  # drawn in the text colour


def test_missing_glyph_message_names_each_character_and_its_slides() -> None:
    deck = Deck.model_validate(
        {
            "title": "t",
            "slides": [
                {"title": "fine 🙂 日本"},
                {"title": "Hieroglyph \U00013000", "notes": "\U00013001 notes are not drawn"},
                {"body": "private \ue000", "bullets": ["again \U00013000"]},
            ],
        }
    )
    fonts = font_chain(system=False)
    assert missing_glyphs(deck, fonts) == (
        "no font covers U+13000 '\U00013000' (EGYPTIAN HIEROGLYPH A001) on slides 2, 3; "
        "U+E000 '' on slide 3"
    )
    assert missing_glyphs(Deck.model_validate(small_deck()), fonts) is None


@pytest.mark.e2e
def test_a_job_with_a_character_no_font_has_fails_naming_it(
    tmp_path: Path, sqlite_template: Path
) -> None:
    shutil.copy(sqlite_template, tmp_path / "slidefarm.db")
    env = fresh_machine_env(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'slidefarm.db'}",
        SLIDEFARM_OUTPUT_DIR=str(tmp_path / "output"),
        SLIDEFARM_BROKER_DIR=str(tmp_path / "broker"),
    )
    stack = Stack(env, tmp_path)
    try:
        stack.start_api()
        stack.start_worker("fonts")
        every_script = {
            "title": "scripts",
            "options": {"resolution": "480p"},
            "slides": [{"title": t, "duration": 0.5} for t in SAMPLES.values()],
        }
        unrenderable = {
            "title": "hieroglyphs",
            "options": {"resolution": "480p"},
            "slides": [
                {"title": "fine", "duration": 0.5},
                {"title": "The sign \U00013000", "duration": 0.5},
            ],
        }
        ids = []
        for deck in (every_script, unrenderable):
            status, job = stack.request("POST", "/v1/jobs", deck)
            assert status == 202, job
            ids.append(job["job_id"])
        done, failed = (stack.wait_final(i) for i in ids)
        assert done["status"] == "completed", done
        assert failed["status"] == "failed" and failed["attempts"] == 1
        assert failed["error"] == (
            "no font covers U+13000 '\U00013000' (EGYPTIAN HIEROGLYPH A001) on slide 2"
        )
        assert failed["created_files"] == []
        assert not (tmp_path / "output" / failed["job_id"]).exists()
    finally:
        stack.stop_all()
