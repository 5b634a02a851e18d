"""The voices the farm offers: the union of what its live workers reported
at registration (``workers.voices``), read from the registry, so every API
host sees the same list. Workers report; the API never runs an engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.deck import Deck
from storage.registry import WorkerInfo


@dataclass(frozen=True, slots=True)
class Offered:
    """One voice and how many live workers offer it."""

    id: str
    engine: str
    name: str
    language: str
    workers: int

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "engine": self.engine,
            "name": self.name,
            "language": self.language,
            "workers": self.workers,
        }


def offered(workers: list[WorkerInfo], stale_after: float) -> list[Offered]:
    """The voices live workers offer, by id, each with its count of workers."""
    found: dict[str, Offered] = {}
    for worker in workers:
        if not worker.alive(stale_after):
            continue
        for voice in worker.voices or ():
            if not isinstance(voice, dict) or not isinstance(voice.get("id"), str):
                continue
            known = found.get(voice["id"])
            found[voice["id"]] = Offered(
                voice["id"],
                str(voice.get("engine", voice["id"].split(":", 1)[0])),
                str(voice.get("name", "")),
                str(voice.get("language", "")),
                (known.workers if known else 0) + 1,
            )
    return sorted(found.values(), key=lambda o: o.id)


def speaks(deck: Deck) -> bool:
    """Whether ``deck`` says anything aloud (a narration, or notes with
    ``options.narrate``): only then does its voice matter."""
    narrate = deck.options.narrate
    return any(s.spoken(narrate) for s in deck.slides)


def voice_problem(deck: Deck, workers: list[WorkerInfo], stale_after: float) -> str | None:
    """Why no live worker could speak ``deck`` (None: one can, or it says
    nothing, or nobody can tell).

    A deck that speaks (narration, or notes with ``options.narrate``): its
    ``options.voice`` must be offered by a live worker; a deck
    with speech and no voice gets its worker's default, so any live worker
    with a voice will do. Nothing is refused while no worker ever registered
    (the embedded mode before its first worker, ``make demo``) or while a
    live worker reports no list (an older version: it may have the voice)."""
    voice = deck.options.voice
    if not speaks(deck):
        return None  # nothing is spoken: the voice is never used
    if not workers:
        return None
    live = [w for w in workers if w.alive(stale_after)]
    if any(w.voices is None for w in live):
        return None
    ids = {o.id for o in offered(live, stale_after)}
    if voice is None:
        return None if ids else "no live worker offers any voice (espeak-ng or Piper)"
    if voice in ids:
        return None
    return f"no live worker offers the voice {voice} (GET /v1/voices lists those offered)"
