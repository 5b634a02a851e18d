"""Decks to submit: the README's sample, small ones and slow ones."""

from __future__ import annotations

import json
from typing import Any

from tests.support import SAMPLE_DECK


def sample_deck() -> dict[str, Any]:
    """The sample deck of ``examples/``, as the README demo submits it."""
    deck: dict[str, Any] = json.loads(SAMPLE_DECK.read_text(encoding="utf-8"))
    return deck


def small_deck(slides: int = 3, duration: float = 1.0, **options: Any) -> dict[str, Any]:
    """A quick 480p deck of ``slides`` slides."""
    return {
        "title": "A small deck",
        "slides": [
            {
                "title": f"Slide {n}",
                "body": f"Body of slide {n}",
                "bullets": ["a", "b"],
                "duration": duration,
            }
            for n in range(1, slides + 1)
        ],
        "options": {"resolution": "480p", **options},
    }


def slow_deck(slides: int = 6, seconds: float = 5.0) -> dict[str, Any]:
    """A deck whose render takes a few seconds, to be interrupted."""
    deck = small_deck(slides=slides, duration=seconds)
    deck["options"] = {"resolution": "1080p", "fps": 30, "transition": "fade"}
    return deck
