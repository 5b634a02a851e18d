"""Helpers the tests share: services, processes, decks, clients and media.

Test files import from here, never from each other; ``tests/conftest.py``
offers the fixtures defined here to every folder."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE_DECK = ROOT / "examples" / "sample-deck.json"
