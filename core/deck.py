"""The deck document a job stores: its schema and limits (docs/design.md, "The deck").

The API validates submissions with it and the workers read stored decks with
it, so both sides agree on every field and default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

#: Landscape (16:9) width and height of each resolution; the resolution names
#: the frame's short side whatever its aspect ratio.
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "480p": (854, 480),
    "720p": (1280, 720),
    "1080p": (1920, 1080),
    "2160p": (3840, 2160),
}

#: Aspect ratios a deck may ask for, landscape first (the default).
ASPECTS = ("16:9", "9:16", "1:1")
#: The themes a deck may ask for, the default first.
THEME_NAMES = ("light", "dark")


def frame_size(resolution: str, aspect: str) -> tuple[int, int]:
    """Width and height in pixels of ``resolution`` at ``aspect``: 9:16 turns
    the landscape frame upright, 1:1 is the short side squared. Every size is
    even, as H.264's 4:2:0 needs."""
    width, height = RESOLUTIONS[resolution]
    if aspect == "9:16":
        return height, width
    if aspect == "1:1":
        return height, height
    return width, height


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text or JSONB; no slide needs one.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


#: The same rules as JSON Schema patterns (ECMA 262), for the API's document:
#: no NUL anywhere; a title has a character that ``str.strip`` keeps.
NO_NUL_PATTERN = r"^[^\x00]*$"
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK_PATTERN = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"

Text = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]


#: An asset id: a UUID, lower case and hyphenated, exactly as the API hands it out.
ASSET_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: An image a worker fetches: https only, printable ASCII without spaces or
#: backslashes (the worker's SSRF guard judges the host when it fetches).
IMAGE_URL_PATTERN = r"^https://[!-\[\]-~]+$"
MAX_IMAGE_URL = 2048
#: Slides a deck may have, written or pages of a document.
MAX_SLIDES = 200
#: How long a slide shows unless it says otherwise, in seconds.
DEFAULT_DURATION = 3.0

AssetId = Annotated[str, Field(pattern=ASSET_ID_PATTERN, description="An asset's id.")]
MIN_SECONDS, MAX_SECONDS = 0.5, 60.0


def _duration(value: object) -> float | str | None:
    # One rule, one error at ``slides.N.duration`` (a union would report
    # each of its members): seconds in range, "auto", or unset.
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError('must be a number of seconds or "auto"')
    seconds = float(value)
    if not math.isfinite(seconds) or not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f'must be from {MIN_SECONDS:g} to {MAX_SECONDS:g} seconds, or "auto"')
    return seconds


#: A slide's time on screen: seconds, ``"auto"`` (its audio's length) or unset.
Duration = Annotated[
    float | Literal["auto"] | None,
    PlainValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": MIN_SECONDS, "maximum": MAX_SECONDS},
                {"const": "auto"},
                {"type": "null"},
            ]
        }
    ),
]
#: A voice: ``<engine>:<name>``, e.g. ``espeak-ng:fr`` or ``piper:en_US-joe-medium``.
VOICE_PATTERN = r"^[a-z][a-z0-9-]{0,15}:[A-Za-z0-9_.+-]{1,64}$"
ImageRef = Annotated[
    str,
    Field(
        max_length=MAX_IMAGE_URL,
        pattern=f"(?:{ASSET_ID_PATTERN})|(?:{IMAGE_URL_PATTERN})",
        description=(
            "An image asset's id (POST /v1/assets), or an https URL the render "
            "host fetches once (through the same guard as webhooks) and keeps as an asset."
        ),
    ),
]


def is_asset_id(value: str) -> bool:
    """Whether ``value`` names an asset (else it is an image URL)."""
    return re.fullmatch(ASSET_ID_PATTERN, value) is not None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


#: What only a slide with an image may set.
IMAGE_FIELDS = ("layout", "scrim", "caption", "fit")

#: What a slide of a document deck (``source``) may set: the rest comes from the page.
OVERRIDE_FIELDS = frozenset({"title", "duration", "transition", "notes", "narration", "audio"})


def _slide_schema(schema: dict[str, Any]) -> None:
    # The rule the validator below enforces, said in the document too.
    schema["anyOf"] = [
        {"required": ["image"], "properties": {"image": {"type": "string"}}},
        {
            "properties": {
                "layout": {"type": "null"},
                "scrim": {"type": "null"},
                "fit": {"const": "cover"},
                "caption": {"maxLength": 0},
            }
        },
    ]


class Slide(_Strict):
    """One slide: a title, a body, bullets, an image and how long it shows."""

    model_config = ConfigDict(json_schema_extra=_slide_schema)

    title: Text = Field(default="", max_length=200)
    body: Text = Field(default="", max_length=2000)
    bullets: list[Annotated[Text, Field(max_length=300)]] = Field(
        default_factory=list, max_length=12
    )
    duration: Duration = Field(
        default=None,
        description=(
            "Seconds on screen (0.5-60), or auto: as long as the slide's audio plus "
            "options.narration_padding. Unset: auto for a slide with narration or "
            "audio, else 3 s."
        ),
    )
    notes: Text = Field(default="", max_length=10_000)
    narration: Text = Field(
        default="",
        max_length=5_000,
        description=(
            "Text the render host speaks over the slide (offline text to speech); "
            "with options.narrate, unset narration speaks the notes."
        ),
    )
    audio: AssetId | None = Field(
        default=None,
        description=(
            "An uploaded audio asset (WAV, MP3, M4A/AAC, OGG/Opus, FLAC) played over the slide."
        ),
    )
    transition: Literal["none", "fade"] | None = Field(
        default=None,
        description="How this slide comes in; unset: the deck's options.transition.",
    )
    image: ImageRef | None = None
    layout: Literal["full", "left", "right", "background"] | None = Field(
        default=None,
        description=(
            "Where the image goes: full (the whole frame, text over it), left or "
            "right (beside the text; stacked above it on an upright frame), "
            "background (behind the text). Unset: right when the slide has a body "
            "or bullets, else full."
        ),
    )
    fit: Literal["cover", "contain"] = Field(
        default="cover",
        description="full and left/right: fill the area (cropping) or fit inside it.",
    )
    scrim: float | None = Field(
        default=None,
        ge=0.0,
        le=0.9,
        allow_inf_nan=False,
        description=(
            "Opacity of the dark veil over a full or background image so text "
            "stays readable; unset: 0.55 when text is drawn over the image, else 0."
        ),
    )
    caption: Text = Field(default="", max_length=300)

    @model_validator(mode="after")
    def _image_fields_need_an_image(self) -> Slide:
        # A field not in model_fields_set holds its default: only those set
        # need the comparison (a stored deck sets them all).
        if self.image is None and not self.model_fields_set.isdisjoint(IMAGE_FIELDS):
            given = sorted(self.customised(IMAGE_FIELDS))
            if given:
                raise ValueError(f"{', '.join(given)} need an image")
        return self

    def customised(self, among: Collection[str] | None = None) -> set[str]:
        """The fields (of ``among``, else all) set to something other than
        their default (a stored deck spells every field out, so which were
        given is not enough)."""
        fields = type(self).model_fields
        return {
            name
            for name in (fields if among is None else among)
            if getattr(self, name) != fields[name].get_default(call_default_factory=True)
        }

    def spoken(self, narrate: bool) -> str:
        """What the slide says aloud: its narration, else (with
        ``options.narrate``) its notes; ``""`` for none."""
        if self.narration.strip():
            return self.narration
        return self.notes if narrate and self.notes.strip() else ""

    def has_sound(self, narrate: bool) -> bool:
        """Whether the slide has audio of its own (spoken text or an asset)."""
        return self.audio is not None or bool(self.spoken(narrate))

    @property
    def seconds(self) -> float:
        """Its explicit duration, else the default (an ``auto`` slide's real
        length is its audio's, known when it is rendered)."""
        return self.duration if isinstance(self.duration, float) else DEFAULT_DURATION

    @property
    def image_layout(self) -> str | None:
        """Where the image goes, the default applied; ``None`` without one."""
        if self.image is None:
            return None
        if self.layout is not None:
            return self.layout
        return "right" if self.body.strip() or self.bullets else "full"


class Music(_Strict):
    """Background music: an audio asset looped or cut to the video's length."""

    asset: AssetId
    volume: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Its gain under the narration (1: as loud as the speech).",
    )


class Options(_Strict):
    """How the deck is rendered."""

    resolution: Literal["480p", "720p", "1080p", "2160p"] = Field(
        default="720p",
        description="The frame's short side: 480, 720, 1080 or 2160 pixels.",
    )
    aspect: Literal["16:9", "9:16", "1:1"] = Field(
        default="16:9",
        description=(
            "Landscape (16:9), upright for phones (9:16) or square (1:1): "
            "1080p is 1920x1080, 1080x1920 or 1080x1080."
        ),
    )
    theme: Literal["light", "dark"] = "light"
    fps: Literal[24, 25, 30] = 30
    transition: Literal["none", "fade"] = "none"
    narrate: bool = Field(
        default=False, description="Speak every slide's notes unless it sets its own narration."
    )
    voice: str | None = Field(
        default=None,
        pattern=VOICE_PATTERN,
        description=(
            "The voice that speaks: <engine>:<name> as GET /v1/voices lists them "
            "(espeak-ng:fr, piper:en_US-joe-medium); unset: the render hosts' default."
        ),
    )
    narration_padding: float = Field(
        default=0.5,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="Seconds of silence after a slide's audio when its duration is auto.",
    )
    music: Music | None = Field(
        default=None, description="Background music under the whole video, ducked under speech."
    )
    burn_subtitles: bool = Field(
        default=False, description="Draw the narration's subtitles into the picture too."
    )

    @property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels (see :func:`frame_size`)."""
        return frame_size(self.resolution, self.aspect)


class Source(_Strict):
    """A document to render, one slide per page: an uploaded PDF or PPTX."""

    asset: AssetId


#: A document deck's title when it gives none.
UNTITLED = "Untitled presentation"


def deck_json_schema(schema: dict[str, Any]) -> None:
    """Add to a deck's JSON Schema the rules its validators enforce across fields."""
    # Written slides need a title and a slide; a document deck needs neither,
    # and its slides set only what a page lacks (the validators below).
    schema["required"] = [name for name in schema.get("required", []) if name != "title"]
    overrides: dict[str, Any] = {name: {} for name in sorted(OVERRIDE_FIELDS)}
    schema["anyOf"] = [
        {
            "required": ["source"],
            "properties": {
                "source": {"type": "object"},
                "slides": {
                    "items": {
                        "type": "object",
                        "properties": overrides,
                        "additionalProperties": False,
                    }
                },
            },
        },
        {
            "required": ["title", "slides"],
            "properties": {"source": {"type": "null"}, "slides": {"minItems": 1}},
        },
    ]


class Deck(_Strict):
    """A whole deck, as submitted: written slides, or a document (``source``)
    whose pages are the slides and whose ``slides`` only override their
    title, duration, transition and notes, page by page."""

    model_config = ConfigDict(json_schema_extra=deck_json_schema)

    title: Text = Field(
        min_length=1, max_length=200, json_schema_extra={"pattern": NOT_BLANK_PATTERN}
    )
    source: Source | None = Field(
        default=None,
        description=(
            "Render this PDF or PPTX asset, one slide per page; then slides[i] "
            "may set only title, duration, transition and notes of page i+1."
        ),
    )
    slides: list[Slide] = Field(default_factory=list, max_length=MAX_SLIDES, validate_default=True)
    options: Options = Field(default_factory=Options)

    @model_validator(mode="before")
    @classmethod
    def _document_title(cls, data: object) -> object:
        # A document deck may leave its title out; a written deck may not.
        if isinstance(data, dict) and data.get("source") is not None and "title" not in data:
            return {**data, "title": UNTITLED}
        return data

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the title must not be blank")
        return value

    @field_validator("slides")
    @classmethod
    def _slides_fit_the_kind(cls, slides: list[Slide], info: ValidationInfo) -> list[Slide]:
        # ``source`` is declared before ``slides``, so it is known here.
        if info.data.get("source") is None:
            if not slides:
                raise ValueError("a deck needs at least one slide (or a source document)")
            return slides
        for n, slide in enumerate(slides, start=1):
            extra = sorted(slide.customised() - OVERRIDE_FIELDS)
            if extra:
                raise ValueError(
                    f"slide {n}: a source document's slides may set only "
                    f"{', '.join(sorted(OVERRIDE_FIELDS))}, not {', '.join(extra)}"
                )
        return slides

    @property
    def has_sound(self) -> bool:
        """Whether the video gets a sound track (speech, audio or music)."""
        narrate = self.options.narrate
        return self.options.music is not None or any(s.has_sound(narrate) for s in self.slides)

    @property
    def total_seconds(self) -> float:
        """How long the video lasts (a document deck: its overridden pages so far)."""
        return sum(s.seconds for s in self.slides)

    def seconds_for(self, pages: int) -> float:
        """How long a document deck of ``pages`` pages lasts."""
        given = self.slides[:pages]
        return sum(s.seconds for s in given) + DEFAULT_DURATION * max(pages - len(given), 0)

    def asset_ids(self) -> list[str]:
        """The assets the deck names by id (its source, its slides' images and
        audio, its music), in order, once each."""
        named = [self.source.asset] if self.source is not None else []
        named += [s.image for s in self.slides if s.image is not None and is_asset_id(s.image)]
        named += [s.audio for s in self.slides if s.audio is not None]
        if self.options.music is not None:
            named.append(self.options.music.asset)
        return list(dict.fromkeys(named))

    def image_urls(self) -> list[str]:
        """The image URLs the deck names, in order, once each."""
        urls = [s.image for s in self.slides if s.image is not None and not is_asset_id(s.image)]
        return list(dict.fromkeys(urls))
