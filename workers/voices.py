"""The voices a render host speaks with: offline text-to-speech engines, each
run as a separate process (nothing leaves the machine).

A voice id is ``<engine>:<name>`` (``core.deck.VOICE_PATTERN``):
``espeak-ng:<language>`` for every language espeak-ng has (Debian package
``espeak-ng``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ESPEAK = "espeak-ng"
#: The voice a deck gets when it names none and the host has it.
DEFAULT_VOICE = "espeak-ng:en"
#: Seconds one synthesis may take before it is killed.
SYNTH_TIMEOUT = 120.0


class VoiceUnavailable(Exception):
    """This host has no such voice (or no engine for it)."""


class SynthesisFailed(Exception):
    """The engine could not speak the text."""


@dataclass(frozen=True)
class Voice:
    """One voice: its id, engine, display name, language (BCP 47-ish, e.g.
    ``en-us``) and what the engine calls it."""

    id: str
    engine: str
    name: str
    language: str
    engine_voice: str


@cache
def _espeak() -> str | None:
    return shutil.which(ESPEAK)


@cache
def available_voices() -> tuple[Voice, ...]:
    """Every voice this host can speak with (read once per process)."""
    binary = _espeak()
    if binary is None:
        return ()
    listed = subprocess.run(
        [binary, "--voices"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.splitlines()[1:]
    voices: dict[str, Voice] = {}
    aliases: dict[str, tuple[int, Voice]] = {}
    for line in listed:
        parts = line.split()
        if len(parts) < 5:
            continue
        language, name = parts[1], parts[3].replace("_", " ")
        voice = Voice(f"{ESPEAK}:{language}", ESPEAK, name, language, language)
        voices[voice.id] = voice
        # "(en 2)(en-gb 3)": other languages it speaks, best first by priority.
        for alias, priority in re.findall(r"\(([A-Za-z0-9-]+) (\d+)\)", line):
            if alias not in aliases or int(priority) < aliases[alias][0]:
                aliases[alias] = (int(priority), voice)
    for alias, (_, voice) in aliases.items():
        key = f"{ESPEAK}:{alias}"
        if key not in voices:
            voices[key] = Voice(key, ESPEAK, voice.name, alias, voice.engine_voice)
    return tuple(sorted(voices.values(), key=lambda v: v.id))


def default_voice() -> str | None:
    """The voice a deck that names none gets here, if any."""
    ids = [v.id for v in available_voices()]
    return DEFAULT_VOICE if DEFAULT_VOICE in ids else (ids[0] if ids else None)


def synthesize(
    voice_id: str, text: str, out: Path, should_stop: Callable[[], bool] | None = None
) -> None:
    """Speak ``text`` with ``voice_id`` into the WAV file ``out`` (mono, the
    engine's sample rate). :class:`VoiceUnavailable` for a voice this host
    lacks, :class:`SynthesisFailed` if the engine fails."""
    voice = {v.id: v for v in available_voices()}.get(voice_id)
    binary = _espeak()
    if voice is None or voice.engine != ESPEAK or binary is None:
        raise VoiceUnavailable(f"this render host has no voice {voice_id!r}")
    try:
        subprocess.run(
            [binary, "-v", voice.engine_voice, "-w", str(out), "--stdin"],
            input=text.encode(),
            capture_output=True,
            timeout=SYNTH_TIMEOUT,
            check=True,
        )
    except subprocess.TimeoutExpired as error:
        raise SynthesisFailed(f"{voice_id} took longer than {SYNTH_TIMEOUT:g} s") from error
    except subprocess.CalledProcessError as error:
        raise SynthesisFailed(
            f"{voice_id} failed: {error.stderr.decode(errors='replace')[:200]}"
        ) from error
