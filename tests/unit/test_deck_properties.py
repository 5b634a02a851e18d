"""Property tests of deck validation (docs/design.md, "The deck").

(a) any JSON value either validates or raises pydantic's ValidationError;
(b) decks within the limits always validate and round-trip through JSON, and
    a valid slide either draws inside its margins or fails naming exactly the
    characters no shipped font has;
(c) values just outside each limit are rejected, naming the field;
(d) through the API (SQLite, in-process): any JSON body gets 202, 400, 413,
    415, 422 (or 429 from a quota), never a 5xx, and every error has the one
    error shape.
"""

from __future__ import annotations

import copy
import json
import math
from importlib import resources
from typing import Any

import pytest
from flask.testing import FlaskClient
from fontTools.ttLib import TTFont
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.deck import ASPECTS, RESOLUTIONS, Deck, frame_size
from tests.support.media import margins_are_background
from workers.fonts import font_chain
from workers.slides import render_slide
from workers.text import MissingGlyphs, needs_glyph

FAST = settings(max_examples=150, deadline=None)
RENDER = settings(max_examples=60, deadline=None)
API = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DECK_KEYS = [
    "title",
    "slides",
    "options",
    "body",
    "bullets",
    "duration",
    "notes",
    "resolution",
    "theme",
    "fps",
    "transition",
]

# -- strategies -------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["480p", "1080p", "dark", "fade", "3"])
)
keys = st.sampled_from(DECK_KEYS) | st.text(max_size=10)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=6),
    max_leaves=40,
)

# Any character but NUL (which the deck refuses) and lone surrogates (which
# UTF-8 cannot encode; the API's fuzzing below sends them anyway).
chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(chars, min_size=min_size, max_size=max_size)


slides = st.fixed_dictionaries(
    {},
    optional={
        "title": text(200),
        "body": text(2000),
        "bullets": st.lists(text(300), max_size=12),
        "duration": st.floats(0.5, 60.0, allow_nan=False) | st.integers(1, 60),
        "notes": text(300),
    },
)
options = st.fixed_dictionaries(
    {},
    optional={
        "resolution": st.sampled_from(["480p", "720p", "1080p", "2160p"]),
        "aspect": st.sampled_from(["16:9", "9:16", "1:1"]),
        "theme": st.sampled_from(["light", "dark"]),
        "fps": st.sampled_from([24, 25, 30]),
        "transition": st.sampled_from(["none", "fade"]),
    },
)
valid_decks = st.fixed_dictionaries(
    {
        "title": text(200, min_size=1).filter(lambda t: bool(t.strip())),
        "slides": st.lists(slides, min_size=1, max_size=20),
    },
    optional={"options": options},
)


# -- (a) any JSON value -----------------------------------------------------------


@FAST
@given(json_values)
def test_any_json_value_validates_or_raises_validation_error(value: Any) -> None:
    try:
        Deck.model_validate(value)
    except ValidationError:
        pass


@FAST
@given(st.dictionaries(st.sampled_from(["title", "slides", "options"]), json_values, min_size=1))
def test_any_deck_shaped_object_validates_or_raises_validation_error(value: Any) -> None:
    try:
        Deck.model_validate(value)
    except ValidationError:
        pass


# -- (b) within the limits --------------------------------------------------------


@FAST
@given(valid_decks)
def test_decks_within_the_limits_validate_and_round_trip(raw: dict[str, Any]) -> None:
    deck = Deck.model_validate(raw)
    dumped = deck.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    again = Deck.model_validate(dumped)
    assert again == deck and again.model_dump(mode="json") == dumped
    assert deck.title == raw["title"] and len(deck.slides) == len(raw["slides"])
    assert math.isclose(
        deck.total_seconds, sum(float(s.get("duration", 3.0)) for s in raw["slides"])
    )


def _shipped_coverage() -> frozenset[int]:
    """Every code point some shipped font maps to a real glyph, read straight
    from the files' cmaps (not through the renderer's chain)."""
    codes: set[int] = set()
    for package in ("manimgx_fonts", "manimgx_fonts_cjk"):
        for entry in resources.files(package).iterdir():
            if entry.name.endswith((".ttf", ".ttc")) and "Italic" not in entry.name:
                with resources.as_file(entry) as path:
                    font = TTFont(str(path), lazy=True, fontNumber=0)
                    notdef = font.getGlyphOrder()[0]
                    codes |= {c for c, g in font.getBestCmap().items() if g != notdef}
                    font.close()
    return frozenset(codes)


SHIPPED = _shipped_coverage()
#: Text a slide can draw: scripts, emoji sequences, marks, joiners, bidi.
DRAWABLE = st.text(
    st.sampled_from(
        list("Aa Zz éß ΩЖ مرحبا שלום नमस्ते বাং ไทย 中文 かな 한국 🙂👍🏽❤️🇫🇷 \u200d\u0301\n\t.,!…")
    ),
    max_size=300,
)


@RENDER
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "title": text(200) | DRAWABLE,
            "body": text(600) | DRAWABLE,
            "bullets": st.lists(text(100) | DRAWABLE, max_size=4),
        },
    ),
    st.sampled_from(ASPECTS),
)
def test_a_valid_slide_renders_inside_its_margins_or_names_what_no_font_has(
    slide: dict[str, Any], aspect: str
) -> None:
    options = {"resolution": "480p", "aspect": aspect, "theme": "dark"}
    deck = Deck.model_validate({"title": "t", "slides": [slide], "options": options})
    shown = "".join([slide.get("title", ""), slide.get("body", ""), *slide.get("bullets", [])])
    expected = {c for c in shown if needs_glyph(c) and ord(c) not in SHIPPED}
    try:
        image = render_slide(deck, 0, font_chain(system=False))
    except MissingGlyphs as missing:
        assert set(missing.characters) == expected and expected
    else:
        assert not expected
        assert margins_are_background(image, "dark")


def test_the_largest_deck_the_limits_allow_validates() -> None:
    slide = {
        "title": "t" * 200,
        "body": "b" * 2000,
        "bullets": ["u" * 300] * 12,
        "duration": 60.0,
        "notes": "n" * 10_000,
    }
    deck = {
        "title": "T" * 200,
        "slides": [slide] * 200,
        "options": {"resolution": "1080p", "theme": "dark", "fps": 24, "transition": "fade"},
    }
    assert len(Deck.model_validate(deck).slides) == 200
    shortest = {"title": "x", "slides": [{"duration": 0.5}]}
    assert Deck.model_validate(shortest).slides[0].duration == 0.5


SIZES = {
    ("480p", "16:9"): (854, 480),
    ("480p", "9:16"): (480, 854),
    ("480p", "1:1"): (480, 480),
    ("720p", "16:9"): (1280, 720),
    ("720p", "9:16"): (720, 1280),
    ("720p", "1:1"): (720, 720),
    ("1080p", "16:9"): (1920, 1080),
    ("1080p", "9:16"): (1080, 1920),
    ("1080p", "1:1"): (1080, 1080),
    ("2160p", "16:9"): (3840, 2160),
    ("2160p", "9:16"): (2160, 3840),
    ("2160p", "1:1"): (2160, 2160),
}


def test_every_resolution_and_aspect_has_its_even_pixel_size() -> None:
    assert set(SIZES) == {(r, a) for r in RESOLUTIONS for a in ASPECTS}
    for (resolution, aspect), size in SIZES.items():
        options = {"resolution": resolution, "aspect": aspect}
        deck = Deck.model_validate({"title": "t", "slides": [{}], "options": options})
        assert deck.options.size == frame_size(resolution, aspect) == size
        assert all(side % 2 == 0 for side in size)  # x264's 4:2:0 needs even sides
    default = Deck.model_validate({"title": "t", "slides": [{}]}).options
    assert (default.aspect, default.size) == ("16:9", (1280, 720))


# -- (c) just outside each limit ---------------------------------------------------

BASE: dict[str, Any] = {
    "title": "Deck",
    "slides": [{"title": "One", "duration": 3.0}],
    "options": {"resolution": "720p"},
}


def _set(deck: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    target: Any = deck
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value


OUTSIDE: dict[str, tuple[str, Any]] = {
    "title_201_chars": ("title", "t" * 201),
    "title_empty": ("title", ""),
    "title_blank": ("title", "   "),
    "title_nul": ("title", "a\x00b"),
    "title_number": ("title", 3),
    "no_slides": ("slides", []),
    "201_slides": ("slides", [{"duration": 1.0}] * 201),
    "slides_object": ("slides", {"0": {}}),
    "slide_title_201": ("slides.0.title", "s" * 201),
    "slide_body_2001": ("slides.0.body", "b" * 2001),
    "13_bullets": ("slides.0.bullets", ["b"] * 13),
    "bullet_301": ("slides.0.bullets", ["b" * 301]),
    "bullet_nul": ("slides.0.bullets", ["ok", "\x00"]),
    "bullets_string": ("slides.0.bullets", "one bullet"),
    "body_nul": ("slides.0.body", "\x00"),
    "notes_nul": ("slides.0.notes", "x\x00"),
    "notes_10001": ("slides.0.notes", "n" * 10_001),
    "duration_0.49": ("slides.0.duration", 0.49),
    "duration_60.01": ("slides.0.duration", 60.01),
    "duration_zero": ("slides.0.duration", 0),
    "duration_negative": ("slides.0.duration", -1.0),
    "duration_nan": ("slides.0.duration", float("nan")),
    "duration_inf": ("slides.0.duration", float("inf")),
    "duration_string": ("slides.0.duration", "3"),
    "duration_bool": ("slides.0.duration", True),
    "duration_word": ("slides.0.duration", "automatic"),
    "slide_unknown_field": ("slides.0.colour", "red"),
    "deck_unknown_field": ("status", "completed"),
    "options_unknown_field": ("options.codec", "h265"),
    "resolution_4k": ("options.resolution", "4k"),
    "theme_blue": ("options.theme", "blue"),
    "fps_60": ("options.fps", 60),
    "fps_string": ("options.fps", "30"),
    # (30.0 is the JSON number 30 and is accepted, normalised to 30.)
    "fps_fraction": ("options.fps", 29.97),
    "fps_bool": ("options.fps", True),
    "transition_wipe": ("options.transition", "wipe"),
    "resolution_4320p": ("options.resolution", "4320p"),
    "resolution_pixels": ("options.resolution", "1080x1920"),
    "aspect_4_3": ("options.aspect", "4:3"),
    "aspect_spaced": ("options.aspect", "9 : 16"),
    "aspect_number": ("options.aspect", 1),
    "options_list": ("options", ["720p"]),
    "slide_string": ("slides.0", "a slide"),
}


@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_values_just_outside_a_limit_are_rejected(case: str) -> None:
    path, value = OUTSIDE[case]
    deck = copy.deepcopy(BASE)
    _set(deck, path, value)
    with pytest.raises(ValidationError) as caught:
        Deck.model_validate(deck)
    field = path.split(".")[0]
    located = [".".join(str(p) for p in err["loc"]) for err in caught.value.errors()]
    assert any(loc.startswith(field) for loc in located), located


@FAST
@given(
    st.sampled_from(["title", "slides.0.title", "slides.0.body", "slides.0.notes"]),
    text(50),
    text(50),
)
def test_a_nul_anywhere_in_text_is_rejected(path: str, before: str, after: str) -> None:
    deck = copy.deepcopy(BASE)
    _set(deck, path, f"x{before}\x00{after}")
    with pytest.raises(ValidationError):
        Deck.model_validate(deck)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda d: not 0.5 <= d <= 60.0))
def test_a_duration_outside_half_a_second_to_a_minute_is_rejected(duration: float) -> None:
    deck = copy.deepcopy(BASE)
    deck["slides"][0]["duration"] = duration
    with pytest.raises(ValidationError):
        Deck.model_validate(deck)


# -- (d) through the API -----------------------------------------------------------

# 429: the per-tenant active-job cap and submission rate limit may
# refuse some of the many decks accepted here.
ANSWERS = {202, 400, 413, 415, 422, 429}


def assert_answer(response: Any) -> None:
    assert response.status_code in ANSWERS, (response.status_code, response.data[:300])
    body = response.get_json()
    assert isinstance(body, dict)
    if response.status_code == 202:
        assert body["status"] == "queued"
        return
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert isinstance(error["details"], list)


# Lone surrogates and NUL too: JSON can carry them escaped.
any_text = st.text(st.characters(), max_size=30) | st.sampled_from(["\ud800", "a\x00", "\udfff"])
hostile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(keys | any_text, children, max_size=6)
    ),
    max_leaves=40,
)


def _mutated(deck: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """A valid deck with one value somewhere replaced by anything."""
    deck = copy.deepcopy(deck)
    target: Any = deck
    if data.draw(st.booleans()):
        target = deck["slides"][0]
    elif "options" in deck and data.draw(st.booleans()):
        target = deck["options"]
    key = data.draw(st.sampled_from(sorted(target) + DECK_KEYS) | any_text)
    target[key] = data.draw(hostile_values)
    return deck


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@API
@given(data=st.data())
def test_any_json_body_gets_an_answer_never_a_5xx(client: FlaskClient, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["any", "deck", "mutated"]))
    if kind == "any":
        body = data.draw(hostile_values)
    elif kind == "deck":
        body = data.draw(valid_decks)
    else:
        body = _mutated(data.draw(valid_decks), data)
    raw = json.dumps(body)  # NaN and Infinity as Python writes them: the API must cope
    response = client.post("/v1/jobs", data=raw, content_type="application/json")
    assert_answer(response)
    if kind == "deck":  # within the deck limits: accepted (or held back by a quota)
        assert response.status_code in (202, 429), response.get_json()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@API
@given(
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/vnd.x+json",
            "text/plain",
            "application/json; charset=latin-1",
            "multipart/form-data",
            "",
        ]
    ),
)
def test_any_bytes_get_an_answer_never_a_5xx(
    client: FlaskClient, raw: bytes, content_type: str
) -> None:
    assert_answer(client.post("/v1/jobs", data=raw, content_type=content_type))
