"""The deck document a job stores: its schema and limits (docs/design.md, "The deck").

The API validates submissions with it and the workers read stored decks with
it, so both sides agree on every field and default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Slide(_Strict):
    """One slide: a title, a body, bullets and how long it shows."""

    title: Text = Field(default="", max_length=200)
    body: Text = Field(default="", max_length=2000)
    bullets: list[Annotated[Text, Field(max_length=300)]] = Field(
        default_factory=list, max_length=12
    )
    duration: float = Field(default=3.0, ge=0.5, le=60.0, allow_inf_nan=False)
    notes: Text = Field(default="", max_length=10_000)


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

    @property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels (see :func:`frame_size`)."""
        return frame_size(self.resolution, self.aspect)


class Deck(_Strict):
    """A whole deck, as submitted."""

    title: Text = Field(
        min_length=1, max_length=200, json_schema_extra={"pattern": NOT_BLANK_PATTERN}
    )
    slides: list[Slide] = Field(min_length=1, max_length=200)
    options: Options = Field(default_factory=Options)

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the title must not be blank")
        return value

    @property
    def total_seconds(self) -> float:
        """How long the video lasts."""
        return sum(s.duration for s in self.slides)
