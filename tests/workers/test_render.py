"""The renderer with real Pillow and the real ffmpeg: slides stay inside their
margins in any script, and videos decode to the right size and length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.deck import ASPECTS, RESOLUTIONS, Deck
from tests.support.media import margins_are_background, probe
from workers.fonts import font_chain
from workers.slides import THEMES, frame_layout, render_slide, save_png, save_thumbnail
from workers.text import MissingGlyphs, Typesetter, base_direction, clean, runs, visual_runs
from workers.video import EncodeError, encode, frame_counts


def deck(slides: list[dict[str, Any]], **options: Any) -> Deck:
    return Deck.model_validate({"title": "t", "slides": slides, "options": options})


@pytest.mark.parametrize("resolution", sorted(RESOLUTIONS))
@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_slide_has_the_resolution_and_theme(resolution: str, aspect: str, theme: str) -> None:
    d = deck(
        [{"title": "Revenue", "body": "Up 12%", "bullets": ["EMEA +20%"]}],
        resolution=resolution,
        aspect=aspect,
        theme=theme,
    )
    image = render_slide(d, 0)
    assert image.size == d.options.size and image.mode == "RGB"
    assert margins_are_background(image, theme)
    assert image.getpixel((image.width // 2, image.height - 3)) == THEMES[theme].background
    colors = image.getcolors(1_000_000)
    assert colors is not None and len(colors) > 10  # anti-aliased text was drawn


def test_the_longest_content_never_runs_off_the_slide() -> None:
    words = ("Lorem ipsum dolor sit amet " * 80)[:2000]
    unbroken = "x" * 2000
    for body in (words, unbroken):
        d = deck(
            [
                {
                    "title": "W" * 200,
                    "body": body,
                    "bullets": ["M" * 300] * 12,
                }
            ],
            resolution="480p",
            theme="light",
        )
        image = render_slide(d, 0)
        assert margins_are_background(image, "light")


LONG = {
    "latin": {
        "title": "Quarterly review of the platform migration and what we learned " * 3,
        "body": "Revenue rose 12% on last quarter while serving costs fell by a third. " * 28,
        "bullets": ["APAC was flat: currency effects ate the unit growth " * 5] * 12,
    },
    "cjk": {
        "title": "平台迁移季度回顾以及我们在此过程中学到的经验教训" * 8,
        "body": "本季度收入比上季度增长百分之十二，而每个请求的服务成本下降了三分之一。" * 50,
        "bullets": ["欧洲、中东和非洲地区在经销商启动后增长百分之二十" * 10] * 12,
    },
}


@pytest.mark.parametrize("script", sorted(LONG))
@pytest.mark.parametrize("size", [("2160p", "16:9"), ("1080p", "9:16"), ("1080p", "1:1")])
def test_new_sizes_keep_the_longest_text_inside_their_margins(
    script: str, size: tuple[str, str]
) -> None:
    resolution, aspect = size
    d = deck([LONG[script]], resolution=resolution, aspect=aspect, theme="dark")
    image = render_slide(d, 0)
    assert image.size == d.options.size
    assert margins_are_background(image, "dark")
    layout = frame_layout(*image.size)
    top_bar = layout.bar[2] == image.width
    beside_bar, below_bar = (0, layout.bar[3] + 1) if top_bar else (layout.bar[2] + 2, 0)
    left = image.crop((beside_bar, below_bar, layout.content.left - 3, image.height))
    assert left.getcolors(1) == [(left.width * left.height, THEMES["dark"].background)]


def test_upright_and_square_frames_adapt_their_layout() -> None:
    wide, tall, square = (
        frame_layout(1920, 1080),
        frame_layout(1080, 1920),
        frame_layout(1080, 1080),
    )
    # The same resolution draws the same type size relative to its short side
    # or larger: an upright frame's body is larger relative to the width.
    assert tall.body_size / 1080 > wide.body_size / 1920
    assert tall.body_size > wide.body_size and tall.title_lines > wide.title_lines
    # Upright: a narrower column, the accent along the top, the block centred.
    assert tall.content.width < wide.content.width
    assert tall.bar == (0, 0, 1080, tall.bar[3]) and tall.centered
    # Square: equal side and top margins.
    assert square.content.left == square.content.top and not square.centered
    # A 2160p frame is a 1080p frame scaled by two, to the pixel or so.
    big = frame_layout(3840, 2160)
    assert abs(big.title_size - 2 * wide.title_size) <= 1
    assert abs(big.content.left - 2 * wide.content.left) <= 1


def test_an_upright_slide_centres_a_short_block() -> None:
    image = render_slide(deck([{"title": "Questions?"}], resolution="480p", aspect="9:16"), 0)
    layout = frame_layout(*image.size)
    background = THEMES["light"].background
    rows = [
        y
        for y in range(layout.bar[3] + 1, layout.content.bottom)
        if image.crop((0, y, image.width, y + 1)).getcolors(1) != [(image.width, background)]
    ]
    assert rows and rows[0] > layout.content.top + layout.content.height // 5


def test_long_text_is_cut_with_an_ellipsis() -> None:
    ts = Typesetter(20)
    lines = ts.wrap("word " * 400, 300)
    assert len(lines) > 20 and all(ts.width(line) <= 300 for line in lines)
    cut = ts.ellipsize("a long line of text that is much too wide", 80)
    assert cut.endswith("\u2026") and ts.width(cut) <= 80


@pytest.mark.parametrize(
    "text",
    [
        "مرحبا بالعالم",  # Arabic, right to left, joined
        "שלום עולם",  # Hebrew
        "नमस्ते दुनिया",  # Devanagari clusters
        "日本語のテキスト、中文，한국어",
        "Emoji 🙂🎉👩‍👩‍👧 and flags 🇫🇷",
        "Combining e\u0301 and zero\u200bwidth\u200d joiners",
        "Ignorable \U000e0fff \ufe0f\u2066 and controls \x07\x1b\x7f",
        "Mixed English العربية עברית 日本 Ελληνικά",
    ],
)
def test_any_unicode_renders_without_crashing(text: str) -> None:
    d = deck([{"title": text, "body": text * 3, "bullets": [text]}], theme="dark")
    image = render_slide(d, 0)
    assert margins_are_background(image, "dark")


def test_controls_are_dropped_and_separators_break_lines() -> None:
    assert clean("a\U000e0fffb\x07\tc\u2028d") == "a\U000e0fffb c\nd"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("Hieroglyph \U00013000 here", "U+13000 '\U00013000' (EGYPTIAN HIEROGLYPH A001)"),
        ("private \ue000 use", "U+E000 ''"),
        ("unassigned \u0378", "U+0378 ''"),
    ],
)
def test_a_character_no_font_has_stops_the_slide_naming_it(text: str, named: str) -> None:
    d = deck([{"title": "fine"}, {"title": "ok", "bullets": ["x", text]}])
    fonts = font_chain(system=False)
    with pytest.raises(MissingGlyphs) as raised:
        render_slide(d, 1, fonts)
    assert str(raised.value) == f"no font covers {named} on slide 2"
    render_slide(d, 0, fonts)  # the other slide draws


def test_right_to_left_lines_are_detected_and_runs_split_by_font() -> None:
    assert base_direction("مرحبا world") == "rtl"
    assert base_direction("hello مرحبا") == "ltr"
    assert base_direction("123") == "ltr"
    parts = runs("Hello 日本")
    assert "".join(p for _, p in parts) == "Hello 日本"
    assert len({face for face, _ in parts}) == 2


def test_wrapping_breaks_between_cjk_characters() -> None:
    ts = Typesetter(24)
    lines = ts.wrap("日本語のテキスト" * 20, 200)
    assert len(lines) > 1 and all(ts.width(line) <= 200 for line in lines)


@pytest.mark.parametrize(
    ("aspect", "expected"), [("16:9", (320, 180)), ("9:16", (180, 320)), ("1:1", (320, 320))]
)
def test_thumbnail_is_320_on_its_longer_side_jpeg(
    tmp_path: Path, aspect: str, expected: tuple[int, int]
) -> None:
    image = render_slide(deck([{"title": "x"}], resolution="1080p", aspect=aspect), 0)
    size = save_thumbnail(image, tmp_path / "t.jpg")
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert thumb.format == "JPEG" and thumb.size == expected
    assert size == (tmp_path / "t.jpg").stat().st_size


def _slides(tmp_path: Path, d: Deck) -> list[Path]:
    paths = []
    for i in range(len(d.slides)):
        path = tmp_path / f"{i + 1:03d}.png"
        save_png(render_slide(d, i), path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("transition", ["none", "fade"])
def test_video_has_the_size_fps_and_length_of_the_deck(tmp_path: Path, transition: str) -> None:
    durations = [0.5, 1.3, 2.04]
    d = deck(
        [{"title": f"s{n}", "duration": t} for n, t in enumerate(durations)],
        resolution="480p",
        fps=24,
        transition=transition,
    )
    out = tmp_path / "video.mp4"
    seen: list[float] = []
    encode(_slides(tmp_path, d), durations, 24, out, transition=transition, on_progress=seen.append)
    meta, frames = probe(out)
    assert meta["size"] == (854, 480)
    assert meta["fps"] == pytest.approx(24)
    assert meta["codec"].startswith("h264")
    assert meta["pix_fmt"].startswith("yuv420p")
    assert frames == sum(frame_counts(durations, 24))
    assert abs(frames / 24 - sum(durations)) <= len(durations) / 24
    assert seen and all(0 <= f <= 1 for f in seen)


def test_fades_of_many_slides_are_encoded_in_batches(tmp_path: Path) -> None:
    durations = [0.5] * 11 + [0.7]  # more slides than one fade batch
    d = deck(
        [{"title": f"s{n}", "duration": t} for n, t in enumerate(durations)],
        resolution="480p",
        fps=25,
        transition="fade",
        theme="light",
    )
    out = tmp_path / "video.mp4"
    encode(_slides(tmp_path, d), durations, 25, out, transition="fade", fade_color="0xffffff")
    meta, frames = probe(out)
    assert meta["size"] == (854, 480) and meta["fps"] == pytest.approx(25)
    assert frames == sum(frame_counts(durations, 25))


def test_encode_failure_raises_a_readable_error(tmp_path: Path) -> None:
    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"this is not a png")
    with pytest.raises(EncodeError, match="ffmpeg"):
        encode([bogus], [1.0], 24, tmp_path / "v.mp4")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Revenue مرحبا 2024", [("ltr", "Revenue "), ("ltr", "2024"), ("rtl", "مرحبا ")]),
        ("שלום world 123 — English", [("ltr", "world 123 — English"), ("rtl", "שלום ")]),
        ("مرحبا 2024 بالعالم", [("rtl", " بالعالم"), ("ltr", "2024"), ("rtl", "مرحبا ")]),
        ("ABC (עברית) def", [("ltr", "ABC ("), ("rtl", "עברית"), ("ltr", ") def")]),
        ("plain", [("ltr", "plain")]),
    ],
)
def test_mixed_direction_lines_are_drawn_in_visual_order(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert visual_runs(text) == expected


def test_combining_marks_stay_with_their_base_and_are_capped() -> None:
    assert clean("Z" + "\u0301" * 100) == "Z" + "\u0301" * 3
    parts = runs("e\u0301")
    assert len(parts) == 1 and parts[0][1] == "e\u0301"
    d = deck([{"title": "Z" + "\u0301" * 175, "body": "x"}], resolution="1080p")
    image = render_slide(d, 0)
    top_strip = image.crop((image.width // 100 + 2, 0, image.width, int(image.height * 0.01)))
    assert top_strip.getcolors(1) is not None  # nothing drawn at the very top
